#!/usr/bin/python
"""Ansible module wick_node_facts: what the wick role needs to know about a node, read in
one go and read-only (it never changes anything): its NVIDIA GPUs and the CUDA version
its driver supports (nvidia-smi), the glibc and libstdc++ (GLIBCXX_) versions it
provides, free disk under given paths, whether the model is a path on the node, which
CUDA runtime libraries the dynamic linker cannot find, the releases installed under a
prefix (with their install times) and the one `current` points at, whether supervisord
is installed, whether systemd is the init system (sd_booted: /run/systemd/system), and
whether apt is there."""

import os
import re
import shutil

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: wick_node_facts
short_description: What the wick role's preflight checks, read from a node.
description: >-
  Read-only; returns gpu, glibc, glibcxx, disk, model_on_node, cuda_libs_missing,
  releases, current, supervisord, systemd, apt.
options:
  paths:
    description: Paths (need not exist) whose file system's free space is reported.
    type: list
    elements: str
    default: []
  model:
    description: The --model value; model_on_node says whether it is a path on the node.
    type: str
    default: ""
  cuda_libraries:
    description: Shared libraries (sonames) to look up with ldconfig -p.
    type: list
    elements: str
    default: []
  cuda_lib_dirs:
    description: Directories also searched for cuda_libraries (the role's own copy).
    type: list
    elements: str
    default: []
  nvidia_smi:
    description: The nvidia-smi to ask (a name on PATH or a path).
    type: str
    default: nvidia-smi
  prefix:
    description: The install prefix (<prefix>/releases/*, <prefix>/current); "" for none.
    type: str
    default: ""
author: wick
"""


def version_key(v):
    return [int(x) for x in re.findall(r"\d+", v)]


def gpu_facts(module, name):
    smi = shutil.which(name) or (
        "/usr/bin/nvidia-smi" if name == "nvidia-smi" and os.path.exists("/usr/bin/nvidia-smi") else None
    )
    if smi is None:
        return {"status": "missing", "error": "%s not found" % name, "gpus": []}
    rc, out, err = module.run_command(
        [smi, "--query-gpu=index,name,driver_version,compute_cap", "--format=csv,noheader"]
    )
    if rc != 0:
        return {
            "status": "failed",
            "error": ((err or out).strip().splitlines() or ["exit %d" % rc])[-1],
            "gpus": [],
        }
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            gpus.append(
                {"index": int(parts[0]), "name": parts[1], "driver_version": parts[2], "compute_cap": parts[3]}
            )
    rc, out, _ = module.run_command([smi])
    m = re.search(r"CUDA Version:\s*([0-9.]+)", out or "")
    return {
        "status": "ok" if gpus else "failed",
        "error": "" if gpus else "nvidia-smi lists no GPU",
        "gpus": gpus,
        "cuda_version": m.group(1) if m else None,
    }


def glibc_version():
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").split()[-1]
    except (ValueError, OSError, AttributeError):
        return None


def ldconfig_libs(module):
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    rc, out, _ = module.run_command([ldconfig, "-p"])
    libs = {}
    if rc == 0:
        for line in out.splitlines():
            m = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
            # 64-bit entries only: "(libc6,x86-64)", "(libc6,AArch64)".
            if m and re.search(r"x86-64|AArch64|64bit", m.group(2)):
                libs.setdefault(m.group(1), m.group(3))
    return libs


def glibcxx_version(libs):
    path = libs.get("libstdc++.so.6")
    if not path:
        return None
    with open(path, "rb") as f:
        found = set(re.findall(rb"GLIBCXX_([0-9][0-9.]*[0-9])", f.read()))
    versions = [v.decode() for v in found]
    return max(versions, key=version_key) if versions else None


def disk_facts(paths):
    out = {}
    for p in paths:
        probe = os.path.abspath(p)
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        st = os.statvfs(probe)
        dev = os.stat(probe).st_dev
        out[p] = {"existing": probe, "device": dev, "avail_mb": st.f_bavail * st.f_frsize // (1024 * 1024)}
    return out


def release_facts(prefix):
    """[{name, mtime, complete}] of <prefix>/releases/* (complete: it has its manifest; a
    release directory only appears whole), and the release `current` points at."""
    releases, current = [], ""
    if not prefix:
        return releases, current
    root = os.path.join(prefix, "releases")
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                releases.append({
                    "name": name,
                    "mtime": os.stat(path).st_mtime,
                    "complete": os.path.isfile(os.path.join(path, "manifest.json")),
                })
    link = os.path.join(prefix, "current")
    if os.path.islink(link):
        current = os.path.basename(os.readlink(link).rstrip("/"))
    return releases, current


def main():
    module = AnsibleModule(
        argument_spec={
            "paths": {"type": "list", "elements": "str", "default": []},
            "model": {"type": "str", "default": ""},
            "cuda_libraries": {"type": "list", "elements": "str", "default": []},
            "cuda_lib_dirs": {"type": "list", "elements": "str", "default": []},
            "nvidia_smi": {"type": "str", "default": "nvidia-smi"},
            "prefix": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    p = module.params
    libs = ldconfig_libs(module)
    missing = []
    for lib in p["cuda_libraries"]:
        if lib in libs or any(os.path.exists(os.path.join(d, lib)) for d in p["cuda_lib_dirs"]):
            continue
        missing.append(lib)
    releases, current = release_facts(p["prefix"])
    module.exit_json(
        changed=False,
        releases=releases,
        current=current,
        supervisord=os.path.exists("/usr/bin/supervisord") or shutil.which("supervisord") is not None,
        systemd=os.path.isdir("/run/systemd/system"),
        apt=shutil.which("apt-get") is not None,
        gpu=gpu_facts(module, p["nvidia_smi"]),
        glibc=glibc_version(),
        glibcxx=glibcxx_version(libs),
        disk=disk_facts(p["paths"]),
        model_on_node=bool(p["model"]) and os.path.exists(p["model"]),
        cuda_libs_missing=missing,
    )


if __name__ == "__main__":
    main()
