#!/usr/bin/env python3
"""deploy/kubernetes, rendered and validated offline by the real tools.

Usage: validate.py [--wick PATH]   (run by the venv of setup.sh beside this script)

1. `kubectl kustomize` renders deploy/kubernetes (KEDA) and deploy/kubernetes/hpa (HPA);
   each holds the Deployment, Service, PodDisruptionBudget and ServiceMonitor and
   exactly one autoscaler for the Deployment.
2. Every object of a built-in kind (and secret.example.yaml) validates, strictly
   (unknown fields are errors), against the Kubernetes API schemas kubernetes-validate
   ships, for the oldest and newest Kubernetes versions in KUBERNETES_VERSIONS.
3. The KEDA ScaledObject and the ServiceMonitor validate against their CRDs' published
   schemas: validate-crds.mjs, through @kubernetes-models/keda and
   @kubernetes-models/prometheus-operator. A kind neither validator knows is an error.
4. What the manifests promise: a GPU per pod; probes on /health (startup, sized for a
   model load of 20 minutes or more; liveness) and /ready; a termination grace period
   longer than preStop's sleep plus wick's --drain-timeout; non-root, read-only root file
   system, no privilege escalation, all capabilities dropped; HF_HUB_CACHE and /tmp on
   writable volumes; WICK_API_KEY from a Secret; --replica-id from the pod's name; the
   ServiceMonitor's job is `wick` (deploy/prometheus's alerts select up{job="wick"}) and
   the KEDA query sums wick:num_requests_waiting over that job. With --wick, each
   `--flag` of the container's args is one `wick serve --help` lists.
5. Negative checks: broken copies (a misspelled field, a wrong type, a missing required
   field) must fail each validator, so that a validator that accepts everything is caught.

Prints what it checked; exits 1 naming every failure.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
K8S = HERE.parent
ROOT = K8S.parent.parent
NPM = ROOT / ".cache/kubernetes-npm/node_modules"
# The oldest Kubernetes these manifests are for, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
CRD_KINDS = {"keda.sh/v1alpha1/ScaledObject", "monitoring.coreos.com/v1/ServiceMonitor"}
MODEL_LOAD_S = 20 * 60

failures: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)
    print(f"FAIL {msg}")


def ok(msg: str) -> None:
    print(f"ok   {msg}")


def render(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        raise SystemExit("kubectl is not on PATH: run scripts/install-test-deps.sh")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"kubectl kustomize {path} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def key(obj: dict) -> str:
    return f"{obj['apiVersion']}/{obj['kind']}"


def k8s_errors(obj: dict) -> list[str]:
    """kubernetes-validate's complaints about a built-in object, for each version."""
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{version}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{version}: no schema: {e}")
    return errors


def crd_errors(objs: list[dict]) -> list[list[str]]:
    """validate-crds.mjs's complaints about each custom resource."""
    node = shutil.which("node")
    if not node or not NPM.is_dir():
        raise SystemExit(f"node or {NPM} is missing: run deploy/kubernetes/tests/setup.sh")
    out = subprocess.run([node, str(HERE / "validate-crds.mjs"), str(NPM)], input=json.dumps(objs),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"validate-crds.mjs failed ({out.returncode}):\n{out.stderr}")
    results = json.loads(out.stdout)
    assert len(results) == len(objs), results
    return [r["errors"] for r in results]


def validate_all(name: str, objs: list[dict]) -> None:
    crds = [o for o in objs if key(o) in CRD_KINDS]
    for obj in objs:
        if key(obj) not in CRD_KINDS:
            errs = k8s_errors(obj)
            what = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
            fail(f"{what}: {errs}") if errs else ok(f"{what}: Kubernetes {' and '.join(KUBERNETES_VERSIONS)} schemas")
    for obj, errs in zip(crds, crd_errors(crds) if crds else []):
        what = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        fail(f"{what}: {errs}") if errs else ok(f"{what}: its CRD's schema")


def one(objs: list[dict], kind: str) -> dict:
    found = [o for o in objs if o["kind"] == kind]
    if len(found) != 1:
        raise SystemExit(f"expected one {kind}, found {len(found)}")
    return found[0]


def check_kinds(name: str, objs: list[dict], autoscaler: str) -> None:
    kinds = sorted(o["kind"] for o in objs)
    want = sorted(["Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor", autoscaler])
    fail(f"{name}: kinds {kinds}, want {want}") if kinds != want else ok(f"{name}: renders {', '.join(want)}")
    target = one(objs, autoscaler)["spec"]["scaleTargetRef"]
    deployment = one(objs, "Deployment")["metadata"]["name"]
    if (target.get("kind"), target.get("name")) != ("Deployment", deployment):
        fail(f"{name}: {autoscaler} scales {target}, not Deployment/{deployment}")


def arg_after(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def check_promises(objs: list[dict], wick: str | None) -> None:
    def need(cond: bool, msg: str) -> None:
        ok(msg) if cond else fail(msg)

    dep = one(objs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    [c] = pod["containers"]
    args = c["args"]
    env = {e["name"]: e for e in c.get("env", [])}
    need(str(c["resources"]["limits"].get("nvidia.com/gpu")) == "1", "one nvidia.com/gpu per pod")
    need(args[0] == "serve" and arg_after(args, "--host") == "0.0.0.0" and arg_after(args, "--port") == "8000",
         "wick serve on 0.0.0.0:8000")
    need(arg_after(args, "--replica-id") == "$(POD_NAME)"
         and env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
         "--replica-id is the pod's name (downward API)")
    model = arg_after(args, "--model")
    need(model is not None, "--model given")
    port = c["ports"][0]
    for probe, path in [("startupProbe", "/health"), ("livenessProbe", "/health"), ("readinessProbe", "/ready")]:
        get = c.get(probe, {}).get("httpGet", {})
        need(get.get("path") == path and get.get("port") in (port["name"], port["containerPort"]),
             f"{probe} on {path}")
    sp = c["startupProbe"]
    budget = sp.get("failureThreshold", 3) * sp.get("periodSeconds", 10)
    need(budget >= MODEL_LOAD_S, f"startupProbe allows {budget} s for the model load (>= 20 min)")
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    need(sleep[0] == "sleep", f"preStop sleeps ({sleep})")
    drain = int(arg_after(args, "--drain-timeout") or 30)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    need(grace > int(sleep[1]) + drain,
         f"terminationGracePeriodSeconds {grace} > preStop {sleep[1]} s + --drain-timeout {drain} s")
    sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
    need((sc.get("runAsNonRoot") or psc.get("runAsNonRoot")) is True and psc.get("runAsUser", 0) != 0, "non-root")
    need(sc.get("readOnlyRootFilesystem") is True, "read-only root file system")
    need(sc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"], "all capabilities dropped")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    cache = env.get("HF_HUB_CACHE", {}).get("value", "")
    under = [p for p in mounts if cache == p or cache.startswith(p.rstrip("/") + "/")]
    need(bool(under) and not mounts[under[0]] == "tmp" and mounts[under[0]] in volumes,
         f"HF_HUB_CACHE ({cache}) on a writable volume")
    need("/tmp" in mounts and "emptyDir" in volumes.get(mounts["/tmp"], {}), "/tmp on an emptyDir")
    need("secretKeyRef" in env.get("WICK_API_KEY", {}).get("valueFrom", {}), "WICK_API_KEY from a Secret")
    svc = one(objs, "Service")
    sm = one(objs, "ServiceMonitor")
    job = svc["metadata"]["labels"].get(sm["spec"].get("jobLabel", ""), svc["metadata"]["name"])
    need(job == "wick", f"the ServiceMonitor's job is {job!r} (deploy/prometheus/wick-alerts.yml: up{{job=\"wick\"}})")
    need(all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
         and sm["spec"]["endpoints"][0]["path"] == "/metrics"
         and sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"],
         "the ServiceMonitor scrapes the Service's /metrics")
    need(all(dep["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items()),
         "the Service selects the Deployment's pods")
    pdb = one(objs, "PodDisruptionBudget")
    need(pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"],
         "the PodDisruptionBudget covers the Deployment's pods")
    if wick:
        # Every flag the container passes is one wick serve has.
        help_text = subprocess.run([wick, "serve", "--help"], capture_output=True, text=True, check=True).stdout
        flags = [a for a in args if a.startswith("--")]
        def listed(flag: str) -> bool:
            return re.search(rf"(^|\s){re.escape(flag)}[\s=<,]", help_text, re.M) is not None

        missing = [f for f in flags if not listed(f)]
        need(not missing, f"wick serve --help lists {flags}" + (f"; not {missing}" if missing else ""))
        need(not listed("--replica-idd"), "negative: a misspelled flag (--replica-idd) is not listed")
        m = re.search(r"--drain-timeout.*?\[default: (\d+)\]", help_text, re.S)
        need(m is not None and int(m.group(1)) <= drain,
             f"--drain-timeout {drain} given, wick's default {m.group(1) if m else '?'}")


def check_keda(objs: list[dict]) -> None:
    so = one(objs, "ScaledObject")
    [trigger] = so["spec"]["triggers"]
    q = trigger["metadata"]["query"].replace(" ", "")
    cond = trigger["type"] == "prometheus" and q.startswith("sum(") and 'wick:num_requests_waiting{job="wick"}' in q
    ok(f"KEDA: {trigger['metadata']['query']}") if cond else fail(f"KEDA trigger {trigger}")


def expect_rejected(what: str, errors: list[str]) -> None:
    if errors:
        ok(f"negative: {what} is rejected ({errors[0][:120]})")
    else:
        fail(f"negative: {what} was accepted")


def negative_checks(objs: list[dict]) -> None:
    dep = one(objs, "Deployment")
    bad = copy.deepcopy(dep)
    c = bad["spec"]["template"]["spec"]["containers"][0]
    c["readinessPorbe"] = c.pop("readinessProbe")
    expect_rejected("Deployment with a misspelled readinessProbe", k8s_errors(bad))
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "60"
    expect_rejected("Deployment with terminationGracePeriodSeconds a string", k8s_errors(bad))
    svc = copy.deepcopy(one(objs, "Service"))
    svc["spec"]["ports"][0]["port"] = "http"
    expect_rejected("Service with a port a string", k8s_errors(svc))

    so, sm = one(objs, "ScaledObject"), one(objs, "ServiceMonitor")
    cases = []
    b = copy.deepcopy(so)
    b["spec"]["minReplicaCount"] = "1"
    cases.append(("ScaledObject with minReplicaCount a string", b))
    b = copy.deepcopy(so)
    b["spec"]["scaleTargetref"] = b["spec"].pop("scaleTargetRef")
    cases.append(("ScaledObject with scaleTargetRef misspelled (required)", b))
    b = copy.deepcopy(sm)
    b["spec"]["endpoints"][0]["interval"] = 15
    cases.append(("ServiceMonitor with an interval a number", b))
    b = copy.deepcopy(sm)
    b["spec"]["selecter"] = b["spec"].pop("selector")
    cases.append(("ServiceMonitor with selector misspelled (required)", b))
    for (what, _), errs in zip(cases, crd_errors([o for _, o in cases])):
        expect_rejected(what, errs)


def main(argv: list[str]) -> int:
    wick = argv[argv.index("--wick") + 1] if "--wick" in argv else None
    keda = render(K8S)
    hpa = render(K8S / "hpa")
    check_kinds("deploy/kubernetes", keda, "ScaledObject")
    check_kinds("deploy/kubernetes/hpa", hpa, "HorizontalPodAutoscaler")
    validate_all("deploy/kubernetes", keda)
    validate_all("deploy/kubernetes/hpa", [one(hpa, "HorizontalPodAutoscaler")])
    validate_all("secret.example.yaml", [d for d in yaml.safe_load_all((K8S / "secret.example.yaml").read_text()) if d])
    check_promises(keda, wick)
    check_keda(keda)
    negative_checks(keda)
    if failures:
        print(f"{len(failures)} failure(s)", file=sys.stderr)
        return 1
    print("deploy/kubernetes: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
