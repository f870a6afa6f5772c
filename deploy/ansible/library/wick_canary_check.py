#!/usr/bin/python
"""Ansible module wick_canary_check: watch a canary's wick replicas against the stable ones
over a window, from their /metrics, and say whether to promote it or roll it back."""

DOCUMENTATION = r"""
module: wick_canary_check
short_description: Compare a wick canary's error rate and p95 TTFT with the stable replicas'
description:
  - Reads every replica's /metrics at the start of the window and then every O(interval)
    seconds; compares what happened since the start (counter deltas), summed over the
    canary replicas and over the stable ones.
  - Error rate is the fraction of generation requests (/v1/completions,
    /v1/chat/completions) answered with status 400 or above. Clients' own mistakes reach
    canary and stable replicas alike, so a canary is judged by how much its rate exceeds
    the stable one's. p95 TTFT comes from the time_to_first_token histogram's buckets.
  - Rolls back as soon as the canary has O(min_requests) requests and an error rate over
    the limit; at the end of the window rolls back when the canary had fewer than
    O(min_requests) requests (nothing to judge), an error rate over the limit, or a p95
    TTFT over O(max_ttft_ratio) times the stable one's plus O(ttft_slack); else promotes.
options:
  canary: {description: URLs of the canary replicas' /metrics, type: list, elements: str, required: true}
  stable: {description: URLs of the stable replicas' /metrics, type: list, elements: str, required: true}
  window: {description: seconds to watch, type: float, default: 300}
  interval: {description: seconds between reads, type: float, default: 5}
  min_requests: {description: canary requests needed to judge, type: int, default: 50}
  max_error_rate_increase: {description: canary error rate minus stable error rate allowed, type: float, default: 0.01}
  max_ttft_ratio: {description: canary p95 TTFT allowed as a multiple of the stable one, type: float, default: 1.5}
  ttft_slack: {description: seconds added to that limit (histogram buckets are coarse), type: float, default: 0.1}
  validate_certs: {description: check TLS certificates of https URLs, type: bool, default: false}
"""

RETURN = r"""
verdict: {description: promote or rollback, type: str, returned: always}
reason: {description: why, in one sentence with the figures, type: str, returned: always}
canary: {description: "requests, errors, error_rate, ttft_p95 of the canary", type: dict, returned: always}
stable: {description: the same for the stable replicas, type: dict, returned: always}
elapsed: {description: seconds watched, type: float, returned: always}
"""

import re
import ssl
import time
import urllib.request

from ansible.module_utils.basic import AnsibleModule

# The series read, as PromQL selectors: the lines of deploy/ansible/canary.promql (not
# beside this file: Ansible would take it for this module), whose metric names
# tests/e2e/monitoring.rs checks on a real wick's /metrics with a PromQL parser
# (deploy/tests/fleet.py checks that the two lists agree).
PROMQL_SELECTORS = [
    'wick:http_requests_total{route=~"/v1/(chat/)?completions"}',
    "wick:time_to_first_token_seconds_bucket",
]
GENERATION_ROUTE = re.compile(r"^/v1/(chat/)?completions$")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """Prometheus text format -> {"requests": {status: n}, "ttft": {le: n}} (generation
    routes only; buckets summed over labels other than le)."""
    out = {"requests": {}, "ttft": {}}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))
        if name == "wick:http_requests_total" and GENERATION_ROUTE.match(labels.get("route", "")):
            status = labels.get("status", "")
            out["requests"][status] = out["requests"].get(status, 0.0) + value
        elif name == "wick:time_to_first_token_seconds_bucket":
            le = float(labels.get("le", "+Inf"))
            out["ttft"][le] = out["ttft"].get(le, 0.0) + value
    return out


def scrape(url, validate_certs):
    ctx = None if validate_certs else ssl._create_unverified_context()
    with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
        return parse(r.read().decode("utf-8", "replace"))


def delta(now, then):
    """Counter increase; a counter that went down (the replica restarted) counts from 0."""
    out = {}
    for key in ("requests", "ttft"):
        out[key] = {}
        for k, v in now[key].items():
            before = then[key].get(k, 0.0)
            out[key][k] = v - before if v >= before else v
    return out


def p95(buckets):
    """The 0.95 quantile of cumulative buckets {le: count}, interpolated linearly inside
    the bucket as Prometheus' histogram_quantile does; None without observations."""
    les = sorted(buckets)
    if not les or buckets[les[-1]] <= 0:
        return None
    rank = 0.95 * buckets[les[-1]]
    prev_le, prev_count = 0.0, 0.0
    for le in les:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return les[-1]


def summary(deltas):
    requests, errors, ttft = 0.0, 0.0, {}
    for d in deltas:
        for status, n in d["requests"].items():
            requests += n
            if status.isdigit() and int(status) >= 400:
                errors += n
        for le, n in d["ttft"].items():
            ttft[le] = ttft.get(le, 0.0) + n
    rate = errors / requests if requests else 0.0
    return {"requests": int(requests), "errors": int(errors), "error_rate": round(rate, 4),
            "ttft_p95": None if p95(ttft) is None else round(p95(ttft), 4)}


def judge(p, canary, stable, final):
    """(verdict or None to keep watching, reason)."""
    enough = canary["requests"] >= p["min_requests"]
    limit = stable["error_rate"] + p["max_error_rate_increase"]
    if enough and canary["error_rate"] > limit:
        return "rollback", ("canary error rate %.1f%% (%d of %d requests) is over the stable "
                            "replicas' %.1f%% + %.1f points" % (
                                100 * canary["error_rate"], canary["errors"], canary["requests"],
                                100 * stable["error_rate"], 100 * p["max_error_rate_increase"]))
    if not final:
        return None, ""
    if not enough:
        return "rollback", ("the canary answered %d requests in the window, fewer than the %d "
                            "needed to judge it" % (canary["requests"], p["min_requests"]))
    c, s = canary["ttft_p95"], stable["ttft_p95"]
    if c is not None and s is not None:
        ttft_limit = s * p["max_ttft_ratio"] + p["ttft_slack"]
        if c > ttft_limit:
            return "rollback", ("canary p95 TTFT %.3f s is over %.1fx the stable replicas' %.3f s "
                                "+ %.2f s" % (c, p["max_ttft_ratio"], s, p["ttft_slack"]))
    elif c is None and canary["requests"] > canary["errors"]:
        return "rollback", "the canary reports no time to first token for its requests"
    return "promote", ("canary error rate %.1f%% vs stable %.1f%%, p95 TTFT %s vs %s, over %d "
                       "canary and %d stable requests" % (
                           100 * canary["error_rate"], 100 * stable["error_rate"],
                           "-" if c is None else "%.3f s" % c, "-" if s is None else "%.3f s" % s,
                           canary["requests"], stable["requests"]))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            canary=dict(type="list", elements="str", required=True),
            stable=dict(type="list", elements="str", required=True),
            window=dict(type="float", default=300),
            interval=dict(type="float", default=5),
            min_requests=dict(type="int", default=50),
            max_error_rate_increase=dict(type="float", default=0.01),
            max_ttft_ratio=dict(type="float", default=1.5),
            ttft_slack=dict(type="float", default=0.1),
            validate_certs=dict(type="bool", default=False),
        ),
        supports_check_mode=False,
    )
    p = module.params
    if not p["canary"] or not p["stable"]:
        module.fail_json(msg="wick_canary_check needs at least one canary and one stable replica")
    urls = p["canary"] + p["stable"]

    def read_all():
        out = {}
        for url in urls:
            try:
                out[url] = scrape(url, p["validate_certs"])
            except Exception as e:  # an unreachable replica reads as "no change"
                out[url] = None
                module.warn("reading %s failed: %s" % (url, e))
        return out

    start_time = time.time()
    start = read_all()
    last = dict(start)
    verdict, reason = None, ""
    while verdict is None:
        final = time.time() - start_time >= p["window"]
        if not final:
            time.sleep(min(p["interval"], max(0.0, p["window"] - (time.time() - start_time))))
            final = time.time() - start_time >= p["window"]
        now = read_all()
        for url, v in now.items():
            if v is not None:
                last[url] = v
        deltas = {url: delta(last[url], start[url]) if last[url] and start[url] else
                  (last[url] or {"requests": {}, "ttft": {}}) for url in urls}
        canary = summary([deltas[u] for u in p["canary"]])
        stable = summary([deltas[u] for u in p["stable"]])
        verdict, reason = judge(p, canary, stable, final)
    module.exit_json(changed=False, verdict=verdict, reason=reason, canary=canary, stable=stable,
                     elapsed=round(time.time() - start_time, 1))


if __name__ == "__main__":
    main()
