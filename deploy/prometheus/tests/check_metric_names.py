#!/usr/bin/env python3
"""Every metric a rule, alert, dashboard or autoscaler reads exists.

Usage: check_metric_names.py METRICS_TEXT PATH...

METRICS_TEXT is what a real `wick serve` answered on GET /metrics. Each PATH is a file
or a directory (searched for *.yml, *.yaml, *.json and *.promql). From each file the
PromQL it holds is taken:

  - Prometheus rule files (`groups:`; also a prometheus-operator PrometheusRule's
    spec.groups): every `expr`; each `record` names a series the others may read;
  - KEDA ScaledObjects: the `query` of each trigger of type prometheus;
  - Grafana dashboards (JSON with `panels`): every target's `expr`, in rows too, and the
    templating queries (`label_values(SELECTOR, label)`, `query_result(EXPR)` or PromQL);
    Grafana's interval variables ($__rate_interval, $__interval, $__range) read as 5m;
  - *.promql: one expression a line (`#` starts a comment line), for queries that live
    in code, such as a canary check's.

promtool test files and Prometheus configurations hold no query to check and are
skipped; a file named on the command line must hold at least one expression, one found
in a directory need not (deploy/ holds Ansible YAML too).

Each expression is parsed by promql-parser (a real PromQL parser, not a regex) and each
vector selector's metric name must be in METRICS_TEXT (parsed by prometheus-client), be
recorded by one of the rule files given, or be `up` (Prometheus' own series for each
target). The label names a selector on an exposed metric matches on, and those an
aggregation over such selectors keeps with `by (...)`, must be labels of that metric or
the target labels Prometheus adds (job, instance). Exits 1 naming every miss.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import promql_parser as promql
import yaml
from prometheus_client.parser import text_string_to_metric_families

# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}
# Series Prometheus makes itself for each scrape target, with their labels.
SYNTHETIC = {"up": set()}
GRAFANA_INTERVALS = re.compile(r"\$(?:__rate_interval|__interval|__range)\b|\$\{(?:__rate_interval|__interval|__range)\}")
SUFFIXES = (".yml", ".yaml", ".json", ".promql")


@dataclass
class Query:
    """One PromQL expression and where it was found."""

    where: str
    expr: str


@dataclass
class Found:
    """What the files hold."""

    queries: list[Query] = field(default_factory=list)
    recorded: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


class _Loader(yaml.SafeLoader):
    """A safe loader that reads unknown tags (`!vault`, `!Ref`) as plain values."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def exposed_labels(text: str) -> dict[str, set[str]]:
    """Sample name -> label names, of a Prometheus text exposition."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def rule_groups(groups, where: str, found: Found) -> None:
    for group in groups or []:
        for rule in group.get("rules") or []:
            name = rule.get("record") or rule.get("alert")
            found.queries.append(Query(f"{where}: {name}", str(rule["expr"])))
            if "record" in rule:
                found.recorded[rule["record"]] = where


def from_yaml(path: Path, found: Found) -> None:
    for doc in yaml.load_all(path.read_text(), Loader=_Loader):
        if not isinstance(doc, dict):
            continue
        if "tests" in doc and "rule_files" in doc:
            continue  # a promtool test file: synthetic series on purpose
        kind = doc.get("kind")
        spec = doc.get("spec") or {}
        if isinstance(doc.get("groups"), list):
            rule_groups(doc["groups"], str(path), found)
        elif kind == "PrometheusRule":
            rule_groups(spec.get("groups"), str(path), found)
        elif kind == "ScaledObject":
            name = (doc.get("metadata") or {}).get("name")
            for trigger in spec.get("triggers") or []:
                if trigger.get("type") == "prometheus":
                    query = (trigger.get("metadata") or {})["query"]
                    found.queries.append(Query(f"{path}: ScaledObject {name}", query))


def grafana_variable(query: str) -> str | None:
    """The PromQL inside a Grafana Prometheus variable query; None for label_values(label)."""
    query = query.strip()
    for fn in ("label_values", "query_result"):
        if query.startswith(fn + "("):
            if not query.endswith(")"):
                raise ValueError(f"cannot read the variable query {query!r}")
            inner = query[len(fn) + 1 : -1].strip()
            if fn == "query_result":
                return inner
            # label_values(SELECTOR, label) or label_values(label): the selector is what
            # precedes the last comma outside braces and quotes.
            depth, quoted, cut = 0, False, -1
            for i, c in enumerate(inner):
                if c == '"' and inner[i - 1 : i] != "\\":
                    quoted = not quoted
                elif not quoted and c in "{(":
                    depth += 1
                elif not quoted and c in "})":
                    depth -= 1
                elif not quoted and depth == 0 and c == ",":
                    cut = i
            return inner[:cut].strip() if cut >= 0 else None
    if query.startswith(("metrics(", "label_names(")):
        raise ValueError(f"{query!r} names no metric that can be checked")
    return query


def from_dashboard(path: Path, dash: dict, found: Found) -> None:
    dash = dash.get("dashboard", dash)

    def panels(items):
        for p in items or []:
            yield p
            yield from panels(p.get("panels"))

    for p in panels(dash.get("panels")):
        for t in p.get("targets") or []:
            if t.get("expr"):
                found.queries.append(Query(f"{path}: panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
    for v in (dash.get("templating") or {}).get("list") or []:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        expr = grafana_variable(q or "")
        if expr:
            found.queries.append(Query(f"{path}: variable {v.get('name')}", expr))


def read(path: Path, found: Found, named: bool) -> None:
    before = len(found.queries)
    if path.suffix in (".yml", ".yaml"):
        from_yaml(path, found)
    elif path.suffix == ".json":
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and ("panels" in doc or "panels" in (doc.get("dashboard") or {})):
            from_dashboard(path, doc, found)
    elif path.suffix == ".promql":
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                found.queries.append(Query(f"{path}:{n}", line))
    if len(found.queries) > before:
        found.files.append(str(path))
    elif named:
        raise SystemExit(f"{path}: no PromQL found (not a rule file, dashboard, ScaledObject or .promql)")


def selectors(expr) -> list:
    out = []

    def visit(node):
        if isinstance(node, promql.VectorSelector):
            out.append(node)
        return True

    promql.walk(expr, visit)
    return out


def metric_name(sel) -> str | None:
    if sel.name:
        return sel.name
    for m in sel.matchers.matchers:
        if m.name == "__name__" and m.op == promql.MatchOp.Equal:
            return m.value
    return None


def check(query: Query, exposed: dict[str, set[str]], recorded: dict[str, str], used: dict[str, str]) -> list[str]:
    text = GRAFANA_INTERVALS.sub("5m", query.expr)
    try:
        expr = promql.parse(text)
    except Exception as e:  # the parser raises plain ValueErrors with its message
        return [f"{query.where}: does not parse as PromQL: {e}\n    {query.expr}"]
    errors = []

    def labels_of(name: str) -> set[str] | None:
        """Label names a raw series may carry; None for a recorded one (not checked)."""
        if name in exposed:
            return exposed[name] | TARGET_LABELS
        if name in SYNTHETIC:
            return SYNTHETIC[name] | TARGET_LABELS
        return None

    for sel in selectors(expr):
        name = metric_name(sel)
        if name is None:
            errors.append(f"{query.where}: a selector without a plain metric name cannot be checked: {sel}")
            continue
        if name in recorded:
            used.setdefault(name, f"recorded in {recorded[name]}")
        elif name in exposed:
            used.setdefault(name, "exposed on /metrics")
        elif name in SYNTHETIC:
            used.setdefault(name, "made by Prometheus for each target")
        else:
            errors.append(f"{query.where}: {name} is not on wick's /metrics nor recorded by a rule\n    {query.expr}")
            continue
        allowed = labels_of(name)
        if allowed is not None:
            for m in sel.matchers.matchers:
                if m.name != "__name__" and m.name not in allowed:
                    errors.append(f"{query.where}: {name} has no label {m.name!r} (it has {sorted(allowed)})")

    def visit(node):
        if isinstance(node, promql.AggregateExpr) and node.modifier and node.modifier.type == promql.AggModifierType.By:
            below = [metric_name(s) for s in selectors(node.expr)]
            sets = [labels_of(n) for n in below if n]
            if below and all(s is not None for s in sets):
                allowed = set().union(*sets)
                for label in node.modifier.labels:
                    if label not in allowed:
                        errors.append(f"{query.where}: `by ({label})` over {sorted(set(below))}, which have no such label")
        return True

    promql.walk(expr, visit)
    return errors


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    exposed = exposed_labels(Path(argv[1]).read_text())
    if not any(n.startswith("wick:") for n in exposed):
        raise SystemExit(f"{argv[1]}: no wick: metric in it; is it a wick /metrics page?")
    found = Found()
    seen: set[Path] = set()
    for arg in argv[2:]:
        path = Path(arg)
        named = not path.is_dir()
        files = [path] if named else sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        for f in files:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                read(f, found, named)
    used: dict[str, str] = {}
    errors = [e for q in found.queries for e in check(q, exposed, found.recorded, used)]
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"{len(errors)} problem(s) in {len(found.queries)} expressions", file=sys.stderr)
        return 1
    for name in sorted(used):
        print(f"  {name}: {used[name]}")
    print(f"metric names checked: {len(found.queries)} expressions in {len(found.files)} files, "
          f"{len(used)} names, all exist")
    for f in found.files:
        print(f"  read {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
