"""What deploy/tests/run.py drives the deploy test with: the two hosts' settings, a
private sshd, release tarballs, ansible-playbook runs and their recaps, the service as a
client sees it (over HTTP or HTTPS), and the cleanup of everything installed."""

import hashlib
import json
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE_DIR = os.path.join(ROOT, "deploy/ansible")
EXAMPLES = os.path.join(ANSIBLE_DIR, "group_vars.example")
SUPERVISORD_CONF = "/etc/supervisor/supervisord.conf"
ALT = "/srv/wick-deploy-test"
# The test's sshd writes its pid here, so that a run killed before it could stop its sshd
# has that sshd stopped by the next run.
SSHD_PIDFILE = "/run/wick-deploy-test-sshd.pid"

# node-a: the role's defaults. node-b: everything overridden.
HOSTS = {
    "node-a": {
        "prefix": "/opt/wick",
        "config": "/etc/wick",
        "state": "/var/lib/wick",
        "cache": "/var/cache/wick",
        "log": "/var/log/wick",
        "units": "/etc/systemd/system",
        "served": "smollm2",
        "service": "wick",
        "user": "wick",
        "port": 8000,
        "key": None,
        "tls": None,
    },
    "node-b": {
        "prefix": f"{ALT}/opt",
        "config": f"{ALT}/etc",
        "state": f"{ALT}/state",
        "cache": f"{ALT}/cache",
        "log": f"{ALT}/log",
        "units": f"{ALT}/systemd",
        "served": "tiny",  # a tiny Llama-3 fixture with two LoRA adapters
        "service": "wick-test",
        "user": "wick-test",
        "port": 8200,
        "key": None,  # read from the example vault
        "tls": f"{ALT}/tls",  # a self-signed certificate for 127.0.0.1, made here
    },
}

# The fleet scenarios (deploy/tests/fleet.py): node-a (above) and node-f are the stable
# replicas behind HAProxy, node-canary the canary slot; all serve SmolLM2.
FLEET_DIR = "/srv/wick-fleet-test"


def _fleet_host(name, service, port):  # one user each: the role sets its home
    d = f"{FLEET_DIR}/{name}"
    return {
        "prefix": f"{d}/opt", "config": f"{d}/etc", "state": f"{d}/state", "cache": f"{d}/cache",
        "log": f"{d}/log", "units": f"{d}/systemd", "served": "smollm2", "service": service,
        "user": service, "port": port, "key": None, "tls": None,
    }


FLEET = {
    "node-f": _fleet_host("f", "wick-f", 8300),
    "node-canary": _fleet_host("canary", "wick-canary", 8330),
}
# HAProxy of the fleet (deploy/ansible/haproxy.yml, under supervisord here).
LB = {
    "dir": f"{FLEET_DIR}/haproxy",
    "port": 8380,
    "stats_port": 8381,
    "program": "haproxy-wick",
}


def log(msg):
    print(f"[deploy-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Failed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failed(msg)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# ---------------------------------------------------------------------------------------
# Prerequisites, cleanup
# ---------------------------------------------------------------------------------------


def prerequisites(ansible_bin):
    missing = []
    if os.geteuid() != 0:
        missing.append("root (the role installs users, /opt/wick, /etc/wick)")
    for path, how in [
        ("/usr/sbin/sshd", "apt-get install -y openssh-server"),
        ("/usr/bin/ssh", "apt-get install -y openssh-client"),
        ("/usr/bin/ssh-keygen", "apt-get install -y openssh-client"),
        ("/usr/bin/supervisord", "apt-get install -y supervisor"),
        ("/usr/bin/supervisorctl", "apt-get install -y supervisor"),
        ("/usr/bin/systemd-analyze", "apt-get install -y systemd"),
        ("/usr/bin/setpriv", "apt-get install -y util-linux"),
        ("/usr/bin/python3", "apt-get install -y python3"),
        ("/usr/bin/openssl", "apt-get install -y openssl"),
        ("/usr/bin/readelf", "apt-get install -y binutils"),
        ("/usr/bin/strip", "apt-get install -y binutils"),
        ("/usr/sbin/haproxy", "apt-get install -y haproxy"),
        (os.path.join(ansible_bin, "ansible-playbook"), "scripts/ansible-venv.sh"),
    ]:
        if not os.path.exists(path):
            missing.append(f"{path} (install: {how})")
    if missing:
        raise Failed("missing prerequisites:\n  " + "\n  ".join(missing))


def supervisorctl(*args):
    return run(["supervisorctl", "-c", SUPERVISORD_CONF, *args])


def supervisord_running():
    return re.fullmatch(r"\d+", supervisorctl("pid").stdout.strip()) is not None


def cleanup():
    """Removes everything the role or this test installed (also leftovers of an
    interrupted run): its sshd, supervisor programs and their processes, paths, units,
    users."""
    try:
        sshd = int(open(SSHD_PIDFILE).read().split()[0])
        if "wick-deploy-test-" in open(f"/proc/{sshd}/cmdline").read():
            os.kill(sshd, 15)
    except (OSError, ValueError, IndexError):
        pass
    if os.path.exists(SSHD_PIDFILE):
        os.remove(SSHD_PIDFILE)
    hosts = list(HOSTS.values()) + list(FLEET.values())
    for conf in [f"/etc/supervisor/conf.d/{h['service']}.conf" for h in hosts] + [
            f"/etc/supervisor/conf.d/{LB['program']}.conf"]:
        if os.path.exists(conf):
            os.remove(conf)
    if supervisord_running():
        supervisorctl("update")  # removes the groups whose files are gone (stops them)
    for h in hosts:
        for path in [h["prefix"], h["config"], h["state"], h["cache"], h["log"],
                     f"{h['units']}/{h['service']}@.service"]:
            if os.path.islink(path) or os.path.isfile(path):
                os.remove(path)
            elif os.path.isdir(path):
                shutil.rmtree(path)
        try:
            pwd.getpwnam(h["user"])
            run(["userdel", h["user"]])
        except KeyError:
            pass
        run(["groupdel", h["user"]])
    shutil.rmtree(ALT, ignore_errors=True)
    shutil.rmtree(FLEET_DIR, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# sshd
# ---------------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port, host="127.0.0.1"):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def start_sshd(tmp):
    d = os.path.join(tmp, "ssh")
    os.makedirs(d, mode=0o700)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/host_key"]).check_returncode()
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/client_key"]).check_returncode()
    shutil.copy(f"{d}/client_key.pub", f"{d}/authorized_keys")
    os.chmod(f"{d}/authorized_keys", 0o600)
    port = free_port()
    with open(f"{d}/sshd_config", "w") as f:
        f.write(
            f"""ListenAddress 127.0.0.1
Port {port}
HostKey {d}/host_key
PidFile {SSHD_PIDFILE}
AuthorizedKeysFile {d}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
"""
        )
    os.makedirs("/run/sshd", exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", f"{d}/sshd_config"],
        stdout=open(f"{d}/sshd.log", "w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 20
    while not port_open(port):
        if proc.poll() is not None or time.time() > deadline:
            raise Failed(f"sshd did not start:\n{open(f'{d}/sshd.log').read()}")
        time.sleep(0.1)
    log(f"sshd on 127.0.0.1:{port} (pid {proc.pid})")
    return proc, port, f"{d}/client_key"


# ---------------------------------------------------------------------------------------
# Releases
# ---------------------------------------------------------------------------------------


def build_release(wick, name, out):
    r = run([os.path.join(ROOT, "scripts/build-release.sh"), "--binary", wick, "--release", name, "--out", out])
    check(r.returncode == 0, f"build-release.sh {name} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout.strip().splitlines()[-1]


def craft_release(name, out, files, manifest_extra):
    """A release tarball made by hand (what build-release.sh would write, with
    `files` as given), for releases that must be broken or need more than the node has."""
    stage = tempfile.mkdtemp(dir=out)
    rel = os.path.join(stage, name)
    manifest = {
        "release": name, "version": "0.1.0", "git_sha": "test", "features": ["cpu"],
        "built": "2026-01-01T00:00:00Z", "cuda_version": None, "compute_capability": None,
        "cuda_libraries": [], "cuda_runtime_wheels": [], "glibc": "2.17", "glibcxx": None,
        "files": {},
    }
    manifest.update(manifest_extra)
    for path, (text, mode) in files.items():
        full = os.path.join(rel, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
        os.chmod(full, mode)
        manifest["files"][path] = {"sha256": hashlib.sha256(text.encode()).hexdigest(), "size": len(text)}
    with open(os.path.join(rel, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    tarball = os.path.join(out, f"wick-{name}.tar.gz")
    with tarfile.open(tarball, "w:gz") as t:
        t.add(rel, arcname=name)
    shutil.rmtree(stage)
    return tarball


# ---------------------------------------------------------------------------------------
# Ansible
# ---------------------------------------------------------------------------------------


class Ansible:
    def __init__(self, bin_dir, tmp, inventory, vault_pw):
        self.bin = bin_dir
        self.inventory = inventory
        self.vault_pw = vault_pw
        self.env = dict(os.environ)
        self.env.update(
            ANSIBLE_HOST_KEY_CHECKING="False",
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_RETRY_FILES_ENABLED="False",
            ANSIBLE_PIPELINING="True",
            ANSIBLE_LOCAL_TEMP=os.path.join(tmp, "ansible-local"),
            ANSIBLE_SSH_CONTROL_PATH_DIR=os.path.join(tmp, "cp"),
            ANSIBLE_HOME=os.path.join(tmp, "ansible-home"),
            ANSIBLE_CONFIG=os.path.join(tmp, "ansible.cfg"),  # none: defaults, not a stray one
            ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3",
            ANSIBLE_DEPRECATION_WARNINGS="False",
            PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
        )
        self.env.pop("ANSIBLE_VAULT_PASSWORD_FILE", None)
        self.runs = 0

    def playbook(self, tarball, *extra, expect_ok=True, what="", play="site.yml", inventory=None):
        self.runs += 1
        cmd = [
            os.path.join(self.bin, "ansible-playbook"), "-i", inventory or self.inventory,
            os.path.join(ANSIBLE_DIR, play),
            "--vault-password-file", self.vault_pw,
            "-e", f"@{os.path.join(EXAMPLES, 'wick/vault.yml')}",
            *(["-e", f"wick_release_tarball={tarball}"] if tarball else []),
            *extra,
        ]
        t0 = time.time()
        r = run(cmd, env=self.env, cwd=ROOT)
        out = r.stdout + r.stderr
        logfile = os.path.join(os.path.dirname(self.inventory), f"run-{self.runs}.log")
        with open(logfile, "w") as f:
            f.write(out)
        log(f"ansible-playbook ({what}): rc {r.returncode} in {time.time() - t0:.0f} s, log {logfile}")
        if expect_ok:
            check(r.returncode == 0, f"ansible-playbook ({what}) failed (rc {r.returncode}):\n{out[-12000:]}")
        else:
            check(r.returncode != 0, f"ansible-playbook ({what}) should have failed:\n{out[-6000:]}")
        return out


def recap(out):
    """{host: {ok: n, changed: n, ...}} from the PLAY RECAP."""
    hosts = {}
    for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", out, re.M):
        hosts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return hosts


def failure_message(out, host):
    """The text of `fatal: [host]: FAILED! => {...}` lines for host."""
    return "\n".join(m.group(0) for m in re.finditer(rf"^fatal: \[{re.escape(host)}\].*$", out, re.M))


# ---------------------------------------------------------------------------------------
# The service as a client sees it
# ---------------------------------------------------------------------------------------


def make_certificate(d):
    """A self-signed certificate for 127.0.0.1 in d (cert.pem, key.pem), for node-b's TLS."""
    os.makedirs(d, mode=0o755, exist_ok=True)
    r = run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem"])
    check(r.returncode == 0, f"openssl req failed: {r.stderr}")
    os.chmod(f"{d}/key.pem", 0o644)  # the service user must read it (a test key, thrown away)


def http(h, path, body=None, key=None, timeout=120):
    """(status, json) of a request to h's instance 0: https checked against h's own
    certificate when h serves TLS; (None, None) when it cannot connect."""
    ctx = None
    scheme = "http"
    if h.get("tls"):
        scheme, ctx = "https", ssl.create_default_context(cafile=f"{h['tls']}/cert.pem")
    req = urllib.request.Request(f"{scheme}://127.0.0.1:{h['port']}{path}")
    if body is not None:
        req.data = json.dumps(body).encode()
        req.add_header("content-type", "application/json")
    if key:
        req.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
        return None, None


def wait_ready(h, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if http(h, "/ready", timeout=5)[0] == 200:
            return
        time.sleep(0.5)
    raise Failed(f"{h['service']} on port {h['port']} not ready within {timeout} s")


def release_of(h):
    status, body = http(h, "/version", key=h["key"], timeout=10)
    check(status == 200, f"GET /version on port {h['port']}: {status}")
    return body.get("release")


def chat(h, key="default", model=None):
    key = h["key"] if key == "default" else key
    body = {"model": model or h["served"], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    return http(h, "/v1/chat/completions", body, key=key)


def pid(h):
    r = supervisorctl("pid", f"{h['service']}:{h['service']}-0")
    out = r.stdout.strip()
    check(re.fullmatch(r"\d+", out) is not None and out != "0", f"no running {h['service']}-0: {out}")
    return int(out)


def process_user(p):
    """The name of the user process p runs as (its real uid)."""
    with open(f"/proc/{p}/status") as f:
        uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
    return pwd.getpwuid(uid).pw_name


def current(h):
    return os.readlink(os.path.join(h["prefix"], "current"))


def releases(h):
    return sorted(n for n in os.listdir(os.path.join(h["prefix"], "releases")) if not n.startswith("."))


def assert_serving(h, release):
    wait_ready(h)
    check(release_of(h) == release, f"{h['service']}: /version says {release_of(h)}, want {release}")
    check(current(h) == f"releases/{release}", f"{h['prefix']}/current -> {current(h)}, want releases/{release}")
    status, body = chat(h)
    check(status == 200, f"{h['service']}: chat completion answered {status}")
    msg = body["choices"][0]["message"]
    check(body["object"] == "chat.completion" and msg["role"] == "assistant" and isinstance(msg["content"], str),
          f"{h['service']}: unexpected chat completion {body}")


# ---------------------------------------------------------------------------------------
# The scenarios
# ---------------------------------------------------------------------------------------


def common_vars(ssh_port, client_key, model):
    """Settings every host of both inventories shares (the fleet's node-a is run.py's)."""
    return {
        "ansible_host": "127.0.0.1",
        "ansible_port": ssh_port,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": client_key,
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "wick_model": model,
        "wick_served_model_name": HOSTS["node-a"]["served"],
        "wick_serve_flags": {"kv-cache-memory": "256MiB"},
        "wick_ready_timeout": 120,
        "wick_drain_timeout": 5,
    }


def write_inventory(tmp, ssh_port, client_key, model, tiny):
    """node-a: SmolLM2 (`model`) with the role's defaults. node-b: the tiny Llama-3 fixture
    directory `tiny` and two of its LoRA adapters, one copied from the controller and one
    used in place, with everything overridden."""
    b = HOSTS["node-b"]
    inv = {
        "wick": {
            "hosts": {
                "node-a": {},
                "node-b": {
                    "wick_prefix": b["prefix"], "wick_config_dir": b["config"],
                    "wick_state_dir": b["state"], "wick_cache_dir": b["cache"],
                    "wick_log_dir": b["log"], "wick_systemd_unit_dir": b["units"],
                    "wick_service_name": b["service"],
                    "wick_user": b["user"], "wick_port": b["port"],
                    "wick_host": "0.0.0.0",
                    "wick_api_keys": "{{ vault_wick_api_keys }}",
                    "wick_hf_token": "{{ vault_wick_hf_token }}",
                    "wick_ssl_certfile": f"{b['tls']}/cert.pem",
                    "wick_ssl_keyfile": f"{b['tls']}/key.pem",
                    "wick_model": tiny,
                    "wick_served_model_name": b["served"],
                    "wick_lora_adapters": [
                        {"name": "all-r8", "src": f"{tiny}/adapters/all-r8"},
                        {"name": "qv", "path": f"{tiny}/adapters/qv-r4-rslora"},
                    ],
                },
            },
            "vars": common_vars(ssh_port, client_key, model),
        }
    }
    path = os.path.join(tmp, "inventory.json")
    with open(path, "w") as f:
        json.dump(inv, f, indent=2)
    return path


def vault_key(ansible_bin, vault_pw):
    r = run([os.path.join(ansible_bin, "ansible-vault"), "view", "--vault-password-file", vault_pw,
             os.path.join(EXAMPLES, "wick/vault.yml")])
    check(r.returncode == 0, f"ansible-vault view of the example vault failed: {r.stderr}")
    m = re.search(r"vault_wick_api_keys:\s*\n\s*-\s*(\S+)", r.stdout)
    check(m is not None, f"no vault_wick_api_keys in the example vault:\n{r.stdout}")
    return m.group(1)


def lint(ansible_bin, env):
    for play in ("site.yml", "haproxy.yml", "canary.yml"):
        r = run([os.path.join(ansible_bin, "ansible-playbook"), "--syntax-check", "-i", "localhost,",
                 os.path.join(ANSIBLE_DIR, play)], env=env, cwd=ROOT)
        check(r.returncode == 0, f"ansible-playbook --syntax-check {play} failed:\n{r.stdout}{r.stderr}")
    t0 = time.time()
    r = run([os.path.join(ansible_bin, "ansible-lint"), "--offline", "--strict", "--nocolor",
             "deploy/ansible/site.yml", "deploy/ansible/haproxy.yml", "deploy/ansible/canary.yml",
             "deploy/ansible/roles/wick", "deploy/ansible/roles/haproxy"], env=env, cwd=ROOT)
    check(r.returncode == 0, f"ansible-lint --offline failed:\n{r.stdout}{r.stderr}")
    log(f"syntax-check and ansible-lint --offline: clean ({time.time() - t0:.0f} s)")
