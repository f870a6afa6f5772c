"""The fleet scenarios of the deploy test (run by deploy/tests/run.py after its own, on
the same sshd): HAProxy (deploy/ansible/haproxy.yml) in front of two stable replicas
(node-a, already on release A, and node-f) and a canary slot (node-canary), all SmolLM2,
with a client sending requests through HAProxy the whole time (streaming and not).

- HAProxy rendered and started by the playbook; node-f joins through site.yml.
- A good canary (release D): deployed to the slot, given traffic, watched, promoted: D is
  rolled out to node-a and node-f one at a time, each drained in HAProxy first, under
  load: not one request fails, each keeps only D (wick_keep_releases=1), and the canary
  slot ends at weight 0, stopped.
- A bad canary (release E on a slot that wants an API key the balancer does not send):
  rolled back by itself, the play failing with the reason; the slot ends at weight 0 and
  stopped; the stable replicas keep their processes and release, and no request they
  answered failed.
"""

import ast
import importlib.util
import json
import os
import re
import socket
import sys
import threading
import time
import types
import urllib.error
import urllib.request

from harness import FLEET, HOSTS, LB, ROOT, Failed, check, common_vars, log, pid, release_of, releases

STABLE = ("node-a", "node-f")


def host(name):
    return HOSTS.get(name) or FLEET[name]


def write_fleet_inventory(tmp, ssh_port, client_key, model, canary_key=None):
    f, c = FLEET["node-f"], FLEET["node-canary"]

    def paths(h):
        return {"wick_prefix": h["prefix"], "wick_config_dir": h["config"], "wick_state_dir": h["state"],
                "wick_cache_dir": h["cache"], "wick_log_dir": h["log"], "wick_systemd_unit_dir": h["units"],
                "wick_service_name": h["service"], "wick_user": h["user"], "wick_port": h["port"]}

    canary = paths(c)
    if canary_key:
        canary["wick_api_keys"] = [canary_key]
    inv = {
        "wick": {"hosts": {"node-a": {}, "node-f": paths(f)}},
        "wick_canary": {"hosts": {"node-canary": canary}},
        "wick_lb": {"hosts": {"lb": {
            "haproxy_config": f"{LB['dir']}/haproxy.cfg",
            "haproxy_admin_socket": f"{LB['dir']}/admin.sock",
            "haproxy_server_state_file": f"{LB['dir']}/server-state",
            "haproxy_log_dir": f"{LB['dir']}/log",
            "haproxy_bind": f"127.0.0.1:{LB['port']}",
            "haproxy_stats_bind": f"127.0.0.1:{LB['stats_port']}",
            "haproxy_check_interval": "1s",
            "haproxy_check_fastinterval": "250ms",
        }}},
        "all": {"vars": {
            **common_vars(ssh_port, client_key, model),
            "wick_require_gpu": False,
            "wick_lb_up_timeout": 30,
        }},
    }
    path = os.path.join(tmp, "fleet-inventory.json")
    with open(path, "w") as fh:
        json.dump(inv, fh, indent=2)
    return path


def haproxy(cmd):
    """One command on the fleet HAProxy's admin socket; its answer."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(f"{LB['dir']}/admin.sock")
    s.sendall(cmd.encode() + b"\n")
    out = b"".join(iter(lambda: s.recv(65536), b""))
    s.close()
    return out.decode()


def lb_servers():
    """{server: {"status", "weight", "stot"}} of backend wick, from `show stat`."""
    lines = haproxy("show stat").lstrip("# ").splitlines()
    head = lines[0].split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(head, line.split(",")))
        if row.get("pxname") == "wick" and row.get("svname") not in ("FRONTEND", "BACKEND"):
            out[row["svname"]] = {"status": row["status"], "weight": int(row["weight"] or 0),
                                  "stot": int(row["stot"] or 0)}
    return out


def wait_lb(pred, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        servers = lb_servers()
        if pred(servers):
            return servers
        time.sleep(0.5)
    raise Failed(f"HAProxy: {what} not reached within {timeout} s: {lb_servers()}")


class Load:
    """`concurrency` clients sending short chat completions through HAProxy, every other
    one streamed, each pausing 0.3 s between requests, until stopped; one record per
    request."""

    def __init__(self, concurrency=2):
        self.concurrency = concurrency
        self.records = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = []

    def one(self, i):
        stream = i % 2 == 1
        body = {"model": "smollm2", "max_tokens": 8, "temperature": 0, "stream": stream,
                "messages": [{"role": "user", "content": f"Count from {i % 50} to {i % 50 + 5}."}]}
        req = urllib.request.Request(f"http://127.0.0.1:{LB['port']}/v1/chat/completions",
                                     data=json.dumps(body).encode(), headers={"content-type": "application/json"})
        rec = {"i": i, "start": time.time(), "stream": stream, "status": None, "replica": None, "ok": False,
               "error": ""}
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                rec["status"], rec["replica"] = r.status, r.headers.get("x-wick-replica")
                if stream:
                    done = False
                    for line in r:
                        if line.strip() == b"data: [DONE]":
                            done = True
                        elif b'"error"' in line:
                            rec["error"] = line.decode(errors="replace")[:300]
                    rec["ok"] = done and not rec["error"]
                    rec["error"] = rec["error"] or ("" if done else "stream ended before [DONE]")
                else:
                    reply = json.loads(r.read())
                    rec["ok"] = reply.get("object") == "chat.completion" and len(reply.get("choices", [])) == 1
        except urllib.error.HTTPError as e:
            rec["status"], rec["replica"] = e.code, e.headers.get("x-wick-replica")
            rec["error"] = e.read().decode(errors="replace")[:300]
        except Exception as e:  # connection reset, timeout: a lost request
            rec["error"] = f"{type(e).__name__}: {e}"
        rec["end"] = time.time()
        with self.lock:
            self.records.append(rec)

    def worker(self, k):
        i = k
        while not self.stopping.is_set():
            self.one(i)
            i += self.concurrency
            # A pause between requests: steady load that leaves the two cores of CI some
            # room for Ansible, whose rollout is what is under test.
            self.stopping.wait(0.3)

    def start(self):
        self.threads = [threading.Thread(target=self.worker, args=(k,), daemon=True) for k in range(self.concurrency)]
        for t in self.threads:
            t.start()
        return self

    def take(self, since):
        """The records of requests started at or after `since`, so far."""
        with self.lock:
            return [r for r in self.records if r["start"] >= since]

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(150)
        return self.records


def summary(recs):
    by = {}
    for r in recs:
        key = r["replica"] or "-"
        ok, bad = by.get(key, (0, 0))
        by[key] = (ok + r["ok"], bad + (not r["ok"]))
    return ", ".join(f"{k}: {ok} ok / {bad} failed" for k, (ok, bad) in sorted(by.items()))


def failures(recs):
    return [r for r in recs if not r["ok"]]


def check_canary_module():
    """The canary module reads the series deploy/ansible/canary.promql lists (checked against a real
    wick's /metrics by tests/e2e/monitoring.rs), and computes what it should."""
    lib = os.path.join(ROOT, "deploy/ansible/library")
    tree = ast.parse(open(os.path.join(lib, "wick_canary_check.py")).read())
    selectors = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                     and any(getattr(t, "id", "") == "PROMQL_SELECTORS" for t in n.targets))
    with open(os.path.join(ROOT, "deploy/ansible/canary.promql")) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    check(selectors == lines, f"wick_canary_check.py reads {selectors}, canary.promql lists {lines}")

    # Its arithmetic, on figures worked out by hand (the fleet scenarios below run it for
    # real: a promotion and an error-rate rollback).
    stub = types.ModuleType("ansible.module_utils.basic")
    stub.AnsibleModule = object
    saved = {k: sys.modules.get(k) for k in ("ansible", "ansible.module_utils", "ansible.module_utils.basic")}
    sys.modules.update({"ansible": types.ModuleType("ansible"), "ansible.module_utils": types.ModuleType("m"),
                        "ansible.module_utils.basic": stub})
    try:
        spec = importlib.util.spec_from_file_location("wick_canary_check", os.path.join(lib, "wick_canary_check.py"))
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    inf = float("inf")
    check(abs(m.p95({0.1: 50, 0.5: 90, 1.0: 100, inf: 100}) - 0.75) < 1e-9, "p95 inside a bucket")
    check(m.p95({0.1: 0, inf: 0}) is None and m.p95({0.1: 10, 0.2: 19, inf: 20}) == 0.2, "p95 at the edges")
    text = ('wick:http_requests_total{route="/v1/chat/completions",status="200"} 90\n'
            'wick:http_requests_total{route="/v1/completions",status="401"} 10\n'
            'wick:http_requests_total{route="/metrics",status="200"} 500\n'
            'wick:time_to_first_token_seconds_bucket{model_name="m",le="0.5"} 80\n'
            'wick:time_to_first_token_seconds_bucket{model_name="m",le="+Inf"} 90\n')
    then = m.parse('wick:http_requests_total{route="/v1/chat/completions",status="200"} 40\n'
                   'wick:time_to_first_token_seconds_bucket{model_name="m",le="0.5"} 40\n'
                   'wick:time_to_first_token_seconds_bucket{model_name="m",le="+Inf"} 40\n')
    d = m.summary([m.delta(m.parse(text), then)])
    check(d == {"requests": 60, "errors": 10, "error_rate": round(10 / 60, 4), "ttft_p95": 0.5}, f"summary: {d}")
    p = {"min_requests": 5, "max_error_rate_increase": 0.01, "max_ttft_ratio": 1.5, "ttft_slack": 0.1}
    good = {"requests": 20, "errors": 0, "error_rate": 0.0, "ttft_p95": 0.3}
    for canary, final, verdict, why in [
        (dict(good, errors=2, error_rate=0.1), False, "rollback", "error rate"),
        (dict(good, requests=3), False, None, ""),
        (dict(good, requests=3), True, "rollback", "fewer than the 5"),
        (dict(good, ttft_p95=0.8), True, "rollback", "p95 TTFT"),
        (dict(good, ttft_p95=0.5), True, "promote", "canary error rate 0.0%"),
    ]:
        v, reason = m.judge(p, canary, good, final)
        check(v == verdict and why in reason, f"judge({canary}, final={final}): {v} {reason!r}")


def fleet_scenarios(ansible, tmp, ssh_port, client_key, model, tar_base, tar_d, tar_e):
    """tar_base: the release node-a runs already (A), which node-f joins on."""
    check_canary_module()
    fleet_inv = write_fleet_inventory(tmp, ssh_port, client_key, model)
    for name in ("node-f", "node-canary"):
        check(not host_port_open(host(name)), f"port {host(name)['port']} is taken")

    # 1. HAProxy, then node-f joins on the release node-a runs already (nothing changes there).
    ansible.playbook(None, play="haproxy.yml", inventory=fleet_inv, what="HAProxy for the fleet")
    servers = lb_servers()
    check(set(servers) == {"node-a-0", "node-f-0", "node-canary-0"}, f"HAProxy's servers: {servers}")
    check(servers["node-canary-0"]["weight"] == 0, f"the canary slot has weight: {servers}")
    pid_a = pid(HOSTS["node-a"]) if host_port_open(HOSTS["node-a"]) else None
    ansible.playbook(tar_base, "-e", "wick_serial=2", inventory=fleet_inv, what="node-f joins the fleet")
    check(pid_a is None or pid(HOSTS["node-a"]) == pid_a, "node-a restarted though nothing changed for it")
    wait_lb(lambda s: all(s[f"{n}-0"]["status"].startswith("UP") for n in STABLE), "both stable replicas UP")
    load = Load().start()
    try:
        time.sleep(3)
        first = load.take(0)
        check(first and not failures(first), f"requests through HAProxy fail: {failures(first)[:3]}")
        log(f"HAProxy in front of node-a and node-f: {len(first)} requests in 3 s ({summary(first)})")

        # 2. A good canary (D): promoted, then D rolled out to both stable replicas under load,
        # keeping one release (the older ones pruned).
        t0 = time.time()
        out = ansible.playbook(tar_d, "-e", "wick_keep_releases=1",
                               "-e", "wick_canary_weight=30", "-e", "wick_canary_window=20",
                               "-e", "wick_canary_interval=2", "-e", "wick_canary_min_requests=5",
                               "-e", "wick_canary_max_ttft_ratio=3", "-e", "wick_canary_ttft_slack=1",
                               play="canary.yml", inventory=fleet_inv, what="good canary D")
        check("PROMOTE:" in out and "PROMOTED" in out, f"the canary was not promoted:\n{out[-6000:]}")
        during = load.take(t0)
        check(not failures(during), f"requests failed during the canary and rolling upgrade: "
              f"{len(failures(during))} of {len(during)}: {failures(during)[:5]}")
        served = {r["replica"] for r in during}
        check("node-canary-0" in served, f"the canary served nothing: {summary(during)}")
        for n in STABLE:
            check(release_of(host(n)) == "D", f"{n} is not on D after the promotion")
            check(releases(host(n)) == ["D"], f"{n}: releases after pruning to 1: {releases(host(n))}")
        servers = wait_lb(lambda s: s["node-canary-0"]["weight"] == 0 and not s["node-canary-0"]["status"].startswith("UP"),
                          "the canary slot out of rotation")
        check(not host_port_open(host("node-canary")), "the promoted canary slot still runs")
        streamed = sum(r["stream"] for r in during)
        log(f"good canary D: promoted; rolled out to node-a and node-f under load, older releases "
            f"pruned: {len(during)} requests "
            f"({streamed} streamed), none failed ({summary(during)})")

        # 3. A bad canary (E): the slot wants an API key the balancer does not send.
        pids = {n: pid(host(n)) for n in STABLE}
        bad_inv = write_fleet_inventory(tmp, ssh_port, client_key, model, canary_key="sk-canary-only")
        t1 = time.time()
        out = ansible.playbook(tar_e, "-e", "wick_canary_weight=30", "-e", "wick_canary_window=60",
                               "-e", "wick_canary_interval=2", "-e", "wick_canary_min_requests=5",
                               play="canary.yml", inventory=bad_inv, expect_ok=False, what="bad canary E")
        during = load.take(t1)
        m = re.search(r"canary of release E ROLLED BACK: ([^\"\n]*)", out)
        check(m is not None and "error rate" in m.group(1), f"no rollback naming the error rate:\n{out[-6000:]}")
        for n in STABLE:
            check(pid(host(n)) == pids[n], f"{n} was restarted by a rolled-back canary")
            check(release_of(host(n)) == "D", f"{n} is not on D")
        stable_failed = [r for r in failures(during) if r["replica"] != "node-canary-0"]
        check(not stable_failed, f"requests not answered by the canary failed: {stable_failed[:5]}")
        canary_failed = [r for r in failures(during) if r["replica"] == "node-canary-0"]
        check(canary_failed and all(r["status"] == 401 for r in canary_failed),
              f"the bad canary's failures are not its 401s: {canary_failed[:5]}")
        wait_lb(lambda s: s["node-canary-0"]["weight"] == 0, "the bad canary at weight 0")
        check(not host_port_open(host("node-canary")), "the rolled-back canary still runs")
        after = time.time()
        time.sleep(3)
        later = load.take(after)
        check(later and not failures(later), f"requests fail after the rollback: {failures(later)[:3]}")
        log(f"bad canary E: rolled back by itself ({m.group(1).strip()}); "
            f"{len(canary_failed)} requests it answered 401, none of the stable replicas' "
            f"{len(during) - len(canary_failed)} failed; stable processes and release untouched")
    finally:
        records = load.stop()
        log(f"fleet load: {len(records)} requests in all ({summary(records)})")


def host_port_open(h):
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", h["port"])) == 0
