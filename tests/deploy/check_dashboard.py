#!/usr/bin/env python3
"""Structural check of the Grafana dashboard deploy/grafana/userstatus.json (ctest deploy.dashboard).

Grafana imports almost anything and shows broken panels silently, so this checks what an import would
not: the JSON parses; panel ids are unique; every panel has a title, a type, a grid position inside
the 24-column grid that overlaps no other panel, the dashboard's `${datasource}` variable as its data
source, and targets with unique refIds and a non-empty PromQL expr; every metric an expr (or an alert
rule) names is documented in docs/metrics.md; histogram_quantile is only applied to `_bucket` series
grouped by `le`. With promtool installed, every expr is also parsed by Prometheus itself (as a
recording rule in a scratch rules file, Grafana's variables replaced by plain values).

usage: check_dashboard.py REPO_ROOT
"""
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

GRID_COLUMNS = 24
PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text"}
METRIC = re.compile(r"\buserstatus_[a-z0-9_]+")
# Grafana's variables, replaced by values PromQL accepts when the exprs are parsed by promtool.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$job": "userstatus.*"}


def fail(errors):
    for e in errors:
        print("FAIL: " + e, file=sys.stderr)
    sys.exit(1)


def balanced(expr):
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    in_str = None
    for ch in expr:
        if in_str:
            if ch == in_str:
                in_str = None
            continue
        if ch in "\"'`":
            in_str = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and in_str is None


def documented_metrics(root):
    text = (root / "docs" / "metrics.md").read_text()
    return set(re.findall(r"`(userstatus_[a-z0-9_]+)", text))


def base_metric(name):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check(root):
    dash = json.loads((root / "deploy" / "grafana" / "userstatus.json").read_text())
    errors = []
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in dash:
            errors.append("dashboard has no %r" % key)
    if errors:
        fail(errors)
    variables = {v.get("name"): v for v in dash["templating"].get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        errors.append("no 'datasource' template variable of Prometheus data sources")

    docs = documented_metrics(root)
    seen_ids, cells, exprs = set(), {}, []
    for p in dash["panels"]:
        where = "panel %r (id %s)" % (p.get("title"), p.get("id"))
        pid = p.get("id")
        if not isinstance(pid, int) or pid in seen_ids:
            errors.append("%s: id missing or not unique" % where)
        seen_ids.add(pid)
        if p.get("type") not in PANEL_TYPES:
            errors.append("%s: unknown type %r" % (where, p.get("type")))
        if not p.get("title"):
            errors.append("%s: no title" % where)
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")):
            errors.append("%s: gridPos needs integer x, y, w, h" % where)
            continue
        if g["x"] < 0 or g["y"] < 0 or g["w"] < 1 or g["h"] < 1 or g["x"] + g["w"] > GRID_COLUMNS:
            errors.append("%s: gridPos %r outside the %d-column grid" % (where, g, GRID_COLUMNS))
        for cx in range(g["x"], g["x"] + g["w"]):
            for cy in range(g["y"], g["y"] + g["h"]):
                if (cx, cy) in cells:
                    errors.append("%s overlaps %s at (%d, %d)" % (where, cells[(cx, cy)], cx, cy))
                    break
                cells[(cx, cy)] = where
            else:
                continue
            break
        if p.get("type") in ("row", "text"):
            continue
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            errors.append("%s: datasource is not the ${datasource} variable" % where)
        targets = p.get("targets") or []
        if not targets:
            errors.append("%s: no targets" % where)
        refids = [t.get("refId") for t in targets]
        if len(set(refids)) != len(refids) or not all(refids):
            errors.append("%s: refIds missing or repeated: %r" % (where, refids))
        for t in targets:
            expr = (t.get("expr") or "").strip()
            if not expr:
                errors.append("%s target %s: empty expr" % (where, t.get("refId")))
                continue
            if (t.get("datasource") or {}).get("uid") not in (None, "${datasource}"):
                errors.append("%s target %s: datasource is not ${datasource}" % (where, t.get("refId")))
            if not balanced(expr):
                errors.append("%s target %s: unbalanced brackets in %r" % (where, t.get("refId"), expr))
            names = METRIC.findall(expr)
            if not names:
                errors.append("%s target %s: names no userstatus metric: %r" % (where, t.get("refId"), expr))
            for name in names:
                if base_metric(name) not in docs:
                    errors.append("%s: metric %s is not documented in docs/metrics.md" % (where, base_metric(name)))
            if "histogram_quantile" in expr and not ("_bucket" in expr and re.search(r"\ble\b", expr)):
                errors.append("%s: histogram_quantile needs _bucket series grouped by le: %r" % (where, expr))
            exprs.append((where, expr))

    alerts = (root / "deploy" / "prometheus" / "alerts.yml").read_text()
    for name in set(METRIC.findall(alerts)):
        if base_metric(name) not in docs:
            errors.append("alerts.yml: metric %s is not documented in docs/metrics.md" % base_metric(name))

    if errors:
        fail(errors)
    print("ok: %d panels, %d exprs, all metrics documented" % (len(dash["panels"]), len(exprs)))
    promtool_parse(exprs)


def promtool_parse(exprs):
    promtool = shutil.which("promtool")
    if promtool is None:
        print("note: promtool not found (Debian package prometheus); PromQL syntax not checked")
        return
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (_, expr) in enumerate(exprs):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        lines.append("      - record: dashboard:expr_%d" % i)
        lines.append("        expr: %s" % json.dumps(expr))  # a JSON string is a YAML string
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    if r.returncode != 0:
        fail(["promtool rejects a dashboard expr (record dashboard:expr_N = Nth expr in panel order):\n"
              + r.stdout + r.stderr])
    print("ok: promtool parses all %d exprs" % len(exprs))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    check(Path(sys.argv[1]).resolve())
