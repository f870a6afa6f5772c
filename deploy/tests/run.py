#!/usr/bin/env python3
"""End-to-end test of deploy/ansible against this machine, reached over real SSH.

Starts a private sshd on 127.0.0.1 (generated host and client keys, its own sshd_config
in a temp dir), and an inventory of two hosts on it: node-a with the role's defaults
(/opt/wick, /etc/wick, service `wick`, user `wick`, port 8000) and node-b with every path,
the service name, the user and the port overridden (under /srv/wick-deploy-test, service
`wick-test`, port 8200, bound to 0.0.0.0 behind an API key from the example vault, over
HTTPS with a self-signed certificate made here, serving the tiny Llama-3 fixture with two
LoRA adapters, one copied from the controller). There
is no systemd as PID 1 here, so the role runs wick under supervisord (Debian's
`supervisor`), and checks its systemd units with systemd-analyze verify.

Scenarios, each asserted: ansible-lint --offline and --syntax-check; the preflight fails
on this GPU-less host naming what is missing (GPU, glibc of a release that needs more,
API key for a non-loopback bind) and installs nothing; release A deploys to both hosts
(ready, chat completion, /version A, the service user, the secrets file's mode); a broken
release C (ready, but with a context too short for the smoke request) is rolled back to A
on node-a, node-b is never touched and the play fails naming host and step; SIGKILL of
wick is answered by the supervisor's restart; a second run of A changes nothing
(changed=0) and restarts nothing (same pids); then the fleet (deploy/tests/fleet.py):
HAProxy, a good canary promoted by a rolling upgrade under load (each host drained first,
pruning to wick_keep_releases=1), a bad canary rolled back. Everything installed is
removed at the end, also on failure, and at the start (leftovers of an interrupted run).

Usage: deploy/tests/run.py --wick target/debug/wick --model <SmolLM2 gguf>
         --tiny-model ../shared/fixtures/tiny/llama3-tied
         [--ansible-bin .cache/ansible-venv/bin] [--keep]
Needs root, openssh-server, supervisor, systemd (for systemd-analyze), openssl, util-linux
(setpriv), and Ansible (scripts/ansible-venv.sh). Prints `deploy checks passed`.
"""

import argparse
import fcntl
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the repository
from fleet import fleet_scenarios  # noqa: E402 (deploy/tests/fleet.py)
from harness import (  # noqa: E402 (deploy/tests/harness.py)
    Ansible,
    EXAMPLES,
    Failed,
    HOSTS,
    ROOT,
    assert_serving,
    build_release,
    chat,
    check,
    cleanup,
    craft_release,
    failure_message,
    http,
    lint,
    log,
    make_certificate,
    pid,
    port_open,
    prerequisites,
    process_user,
    recap,
    release_of,
    releases,
    run,
    start_sshd,
    supervisorctl,
    supervisord_running,
    vault_key,
    wait_ready,
    write_inventory,
)


def scenarios(args, tmp):
    ssh_proc, ssh_port, client_key = start_sshd(tmp)
    try:
        rel_dir = os.path.join(tmp, "releases")
        os.makedirs(rel_dir)
        vault_pw = os.path.join(EXAMPLES, "vault-password.example")
        HOSTS["node-b"]["key"] = vault_key(args.ansible_bin, vault_pw)
        inventory = write_inventory(tmp, ssh_port, client_key, args.model, args.tiny_model)
        make_certificate(HOSTS["node-b"]["tls"])
        ansible = Ansible(args.ansible_bin, tmp, inventory, vault_pw)
        a, b = HOSTS["node-a"], HOSTS["node-b"]
        for h in (a, b):
            check(not port_open(h["port"]), f"port {h['port']} is taken: the test needs it free")

        lint(args.ansible_bin, ansible.env)
        if args.fleet_only:
            tar_a, tar_d, tar_e = (build_release(args.wick, r, rel_dir) for r in "ADE")
            fleet_scenarios(ansible, tmp, ssh_port, client_key, args.model, tar_a, tar_d, tar_e)
            return

        # Releases: this build packed as A (D and E for the fleet, below); C starts but serves another model
        # name (the smoke request fails); G needs a glibc no node has.
        tar_a = build_release(args.wick, "A", rel_dir)
        broken = (f"#!/bin/sh\n# Broken on purpose: ready, but with a context too short for the smoke request.\n"
                  f"exec {args.wick} \"$@\" --release-name C --max-model-len 8\n")
        tar_c = craft_release("C", rel_dir, {"bin/wick": (broken, 0o755)}, {})
        tar_g = craft_release("G", rel_dir, {"bin/wick": ("#!/bin/sh\nexit 1\n", 0o755)}, {"glibc": "2.99"})

        # 1. Preflight on a node without GPU, wick_require_gpu at its default (true).
        out = ansible.playbook(tar_g, "-e", '{"wick_api_keys": []}', expect_ok=False, what="preflight")
        fa, fb = failure_message(out, "node-a"), failure_message(out, "node-b")
        for f, host in ((fa, "node-a"), (fb, "node-b")):
            check("wick preflight failed on " + host in f, f"{host}: no preflight failure:\n{out[-6000:]}")
            check("no usable NVIDIA GPU (nvidia-smi not found)" in f and "wick_require_gpu=false" in f,
                  f"{host}: the GPU is not named:\n{f}")
            check("needs glibc 2.99" in f, f"{host}: glibc is not named:\n{f}")
        check("binds beyond loopback but wick_api_keys is empty" in fb, f"node-b: the open bind is not refused:\n{fb}")
        check("binds beyond loopback" not in fa, f"node-a binds loopback, yet:\n{fa}")
        check(not os.path.exists(a["prefix"]) and not os.path.exists(b["prefix"]), "preflight failed, yet installed")
        log("preflight: fails naming GPU, glibc and the open bind; nothing installed")

        # 1b. A CUDA release on a node whose driver and GPUs are too old (a fake nvidia-smi).
        smi = os.path.join(tmp, "nvidia-smi")
        with open(smi, "w") as f:
            f.write("#!/bin/sh\ncase \"$1\" in\n"
                    "  --query-gpu=*) echo '0, NVIDIA A100-SXM4-80GB, 550.54.15, 8.0'; echo '1, NVIDIA A100-SXM4-80GB, 550.54.15, 8.0' ;;\n"
                    "  *) echo '| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |' ;;\nesac\n")
        os.chmod(smi, 0o755)
        tar_h = craft_release("H", rel_dir, {"bin/wick": ("#!/bin/sh\nexit 1\n", 0o755)}, {
            "features": ["cuda"], "cuda_version": "13.0", "compute_capability": "sm_90",
            "cuda_libraries": ["libcudart.so.13"], "cuda_runtime_wheels": ["nvidia-cuda-runtime==13.0.96"]})
        out = ansible.playbook(tar_h, "--limit", "node-a", "-e", f"wick_nvidia_smi={smi}", expect_ok=False,
                               what="preflight, old driver")
        fa = failure_message(out, "node-a")
        check("the NVIDIA driver 550.54.15 supports CUDA 12.4; release H is built with CUDA 13.0: "
              "upgrade the driver to 580.65.06 or newer" in fa, f"the old driver is not named:\n{out[-6000:]}")
        check("built for sm_90, but the node's GPUs have compute capability 8.0 (NVIDIA A100-SXM4-80GB)" in fa,
              f"the old GPU is not named:\n{fa}")
        check("no usable NVIDIA GPU" not in fa and not os.path.exists(a["prefix"]), f"unexpected:\n{fa}")
        log("preflight of a CUDA release: fails naming the old driver and the compute capability")

        no_gpu = ("-e", "wick_require_gpu=false")

        # 2. Fresh deploy of A.
        ansible.playbook(tar_a, *no_gpu, "-e", "wick_serial=2", what="deploy A (both hosts in one batch)")
        for h in (a, b):
            assert_serving(h, "A")
            user = process_user(pid(h))
            check(user == h["user"], f"{h['service']} runs as {user}, want {h['user']}")
            env = os.stat(os.path.join(h["config"], "env"))
            check(env.st_mode & 0o777 == 0o600 and env.st_uid == 0, f"{h['config']}/env: mode {oct(env.st_mode)}")
            check(os.path.exists(f"{h['units']}/{h['service']}@.service"), f"no {h['service']}@.service")
        check(chat(b, key=None)[0] == 401, "node-b answers without its API key")
        check("ssl-certfile" in open(os.path.join(b["config"], "wick.toml")).read(), "node-b: no TLS in wick.toml")
        status, models = http(b, "/v1/models", key=b["key"])
        adapters = {m["id"]: m.get("parent") for m in (models or {}).get("data", [])}
        check(status == 200 and adapters.get("all-r8") == "tiny" and adapters.get("qv") == "tiny",
              f"node-b: /v1/models {status} {models}: want adapters all-r8 and qv of tiny")
        check(os.path.isfile(f"{b['state']}/adapters/all-r8/adapter_model.safetensors"), "all-r8 not copied")
        check(chat(b, model="all-r8")[0] == 200, "node-b: no chat completion through adapter all-r8")
        check("WICK_API_KEY='" + b["key"] in open(os.path.join(b["config"], "env")).read(), "node-b: key not in env")
        log("deploy A: both hosts ready, chat completions answer, /version A; node-b over HTTPS, behind its key, with both adapters")

        # 3. Broken C: node-a rolls back to A, node-b is never touched. (Upgrades that succeed,
        # one host at a time and each drained first, and pruning are the fleet's, below.)
        pids = {n: pid(h) for n, h in HOSTS.items()}
        out = ansible.playbook(tar_c, *no_gpu, expect_ok=False, what="broken C")
        fa = failure_message(out, "node-a")
        check("wick rollout of release C FAILED on host node-a at step smoke" in fa,
              f"the failure does not name host and step:\n{out[-8000:]}")
        check("rolled back to release A: healthy" in fa, f"no healthy rollback reported:\n{fa}")
        check("Last log lines of wick (supervisord)" in fa and "release=C" in fa and "max_model_len=8" in fa,
              f"the failure does not show the service's log lines:\n{fa}")
        check(failure_message(out, "node-b") == "", "node-b failed too")
        rc = recap(out)
        check(rc.get("node-a", {}).get("failed") == 1, f"recap: {rc}")
        for h in (a, b):
            assert_serving(h, "A")
        check(pid(b) == pids["node-b"], "node-b was restarted")
        check("C" not in releases(b), "node-b got release C")
        check(pid(a) != pids["node-a"], "node-a was not restarted back")
        log("broken C: node-a rolled back to A and healthy, node-b untouched, the play failed naming host and step")

        # 4. SIGKILL: the supervisor restarts wick.
        for h in (a, b):
            old = pid(h)
            os.kill(old, signal.SIGKILL)
            deadline = time.time() + 60
            while time.time() < deadline:
                r = supervisorctl("pid", f"{h['service']}:{h['service']}-0").stdout.strip()
                if r.isdigit() and int(r) not in (0, old):
                    break
                time.sleep(0.5)
            check(pid(h) != old, f"{h['service']} was not restarted after SIGKILL")
            wait_ready(h)
            check(release_of(h) == "A", "not A after the restart")
        log("SIGKILL: restarted by supervisord and ready again")

        # 5. The same release again: nothing changes, nothing restarts.
        pids = {n: pid(h) for n, h in HOSTS.items()}
        out = ansible.playbook(tar_a, *no_gpu, "-e", "wick_serial=2", what="A again")
        rc = recap(out)
        for n in HOSTS:
            check(rc.get(n, {}).get("changed") == 0, f"{n}: changed={rc.get(n)} on a second run:\n{out[-8000:]}")
            check(pid(HOSTS[n]) == pids[n], f"{n}: restarted on a second run")
        log(f"second run of A: changed=0 on both, same pids ({rc})")

        # 6. The fleet behind HAProxy: a good canary promoted by a rolling upgrade under load
        # (pruning to one release), a bad canary rolled back.
        tar_d = build_release(args.wick, "D", rel_dir)
        tar_e = build_release(args.wick, "E", rel_dir)
        fleet_scenarios(ansible, tmp, ssh_port, client_key, args.model, tar_a, tar_d, tar_e)

    finally:
        # Ansible's SSH connection masters (ControlPersist) would outlive the test a minute.
        cp = os.path.join(tmp, "cp")
        for sock in os.listdir(cp) if os.path.isdir(cp) else []:
            run(["ssh", "-o", f"ControlPath={os.path.join(cp, sock)}", "-O", "exit", "wick-deploy-test"])
        ssh_proc.terminate()
        try:
            ssh_proc.wait(10)
        except subprocess.TimeoutExpired:
            ssh_proc.kill()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wick", required=True, help="the wick binary to pack as releases")
    p.add_argument("--model", required=True, help="SmolLM2 GGUF (scripts/fetch-test-model.sh)")
    p.add_argument("--tiny-model", required=True,
                   help="the tiny Llama-3 fixture with LoRA adapters (../shared/fixtures/tiny/llama3-tied)")
    p.add_argument("--ansible-bin", default=os.path.join(ROOT, ".cache/ansible-venv/bin"))
    p.add_argument("--keep", action="store_true", help="leave the installed paths and the temp dir")
    p.add_argument("--fleet-only", action="store_true",
                   help="only the fleet scenarios (deploy/tests/fleet.py), node-a deployed by them")
    args = p.parse_args()
    args.wick = os.path.abspath(args.wick)
    args.model = os.path.abspath(args.model)
    args.tiny_model = os.path.abspath(args.tiny_model)
    t0 = time.time()
    try:
        prerequisites(args.ansible_bin)
    except Failed as e:
        print(f"deploy test: {e}", file=sys.stderr)
        return 2
    # One deploy test at a time on a machine: they share /opt/wick, ports, supervisord.
    lock = open("/run/wick-deploy-test.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("another deploy test runs on this machine: waiting for it to finish")
        fcntl.flock(lock, fcntl.LOCK_EX)
    started_supervisord = not supervisord_running()
    cleanup()
    tmp = tempfile.mkdtemp(prefix="wick-deploy-test-")
    ok = False
    try:
        scenarios(args, tmp)
        ok = True
    except Failed as e:
        print(f"deploy test FAILED: {e}", file=sys.stderr)
    finally:
        if not args.keep:
            cleanup()
            if started_supervisord and supervisord_running():
                supervisorctl("shutdown")
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept: {tmp} and the installed paths")
    if ok:
        print(f"deploy checks passed in {time.time() - t0:.0f} s")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
