#!/usr/bin/env python3
"""Checks the Grafana dashboard and the alert rules against the gateway's real metrics.

  * dashboard.json parses, has unique panel ids, and every panel has a PromQL target;
  * every directline_gateway_* name used in dashboard.json or alerts.yml is a metric the
    gateway registers (names read from src/metrics/; histogram names may carry
    _bucket/_sum/_count);
  * with --metrics FILE (a scrape of a running gateway): every family in it is known;
  * with --promql-rules OUT: writes every dashboard query as a recording rule, with the
    Grafana variables replaced, so `promtool check rules OUT` parses all of them.

Usage: check_metrics_refs.py METRICS_RS DASHBOARD_JSON ALERTS_YML
           [--metrics SCRAPE.txt] [--promql-rules OUT.yml]
"""

import json
import os
import re
import sys

import yaml

PREFIX = "directline_gateway_"
errors = []


# Files (relative to src/metrics/) that build the families: the family list, and modules that
# register families of their own into the gateway's registry.
REGISTERED_ELSEWHERE = ["families.rs", "streamed_answers.rs"]


def registered_metrics(metrics_rs):
    """(name -> kind) for every metric constructed in src/metrics/ and the modules that
    build families of their own for it (REGISTERED_ELSEWHERE)."""
    text = open(metrics_rs, encoding="utf-8").read()
    here = os.path.dirname(metrics_rs)
    for extra in REGISTERED_ELSEWHERE:
        text += open(os.path.join(here, extra), encoding="utf-8").read()
    found = {}
    pattern = re.compile(
        r"\b(Opts|HistogramOpts|IntGauge|IntCounter|IntGaugeVec|IntCounterVec|Histogram|HistogramVec)::new\(\s*\"([a-z0-9_]+)\"")
    for kind, name in pattern.findall(text):
        found[PREFIX + name] = "histogram" if kind == "HistogramOpts" else "other"
    # The livestream counters are made by a small closure, `counter("name", …)`.
    for name in re.findall(r"\bcounter\(\s*\"([a-z0-9_]+)\"", text):
        found[PREFIX + name] = "other"
    return found


def known(name, metrics):
    if name in metrics:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and metrics.get(name[: -len(suffix)]) == "histogram":
            return True
    return False


def names_in(text):
    return set(re.findall(r"\b" + PREFIX + r"[a-z0-9_]+", text))


def main(argv):
    args = argv[1:]
    options = {}
    while len(args) > 3:
        value, key = args.pop(), args.pop()
        options[key] = value
    if len(args) != 3 or not set(options) <= {"--metrics", "--promql-rules"}:
        print(__doc__, file=sys.stderr)
        return 2
    metrics_rs, dashboard_path, alerts_path = args
    metrics = registered_metrics(metrics_rs)
    if len(metrics) < 15:
        errors.append(f"found only {len(metrics)} metrics in {metrics_rs}: has its layout changed?")

    dashboard = json.load(open(dashboard_path, encoding="utf-8"))
    panels = dashboard.get("panels", [])
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        errors.append("dashboard panel ids are not unique")
    if not dashboard.get("uid"):
        errors.append("dashboard has no uid")
    exprs = []
    for panel in panels:
        if panel.get("type") == "row":
            continue
        targets = [t.get("expr", "") for t in panel.get("targets", [])]
        if not targets or not all(targets):
            errors.append(f"panel {panel.get('title')!r} has no PromQL target")
        exprs += [(panel.get("title"), e) for e in targets]

    alerts_text = open(alerts_path, encoding="utf-8").read()
    used = names_in(alerts_text)
    for _, expr in exprs:
        used |= names_in(expr)
    for name in sorted(used):
        if not known(name, metrics):
            errors.append(f"{name} is used but the gateway does not register it")
    unused = sorted(n for n in metrics if not any(u == n or u.startswith(n + "_") for u in used))
    if unused:
        print(f"note: metrics not on the dashboard or in alerts: {', '.join(unused)}")

    if "--metrics" in options:
        scraped = set(re.findall(r"^# TYPE (" + PREFIX + r"[a-z0-9_]+) ", open(options["--metrics"]).read(), re.M))
        if not scraped:
            errors.append("the scrape holds no directline_gateway_ family")
        for name in sorted(scraped - set(metrics)):
            errors.append(f"scraped family {name} is not in src/metrics/")
        print(f"scrape: {len(scraped)} families, all known")

    if "--promql-rules" in options:
        rules = []
        for i, (title, expr) in enumerate(exprs):
            concrete = (expr.replace("$__rate_interval", "5m")
                        .replace("$job", ".*").replace("$instance", ".*"))
            rules.append({"record": f"dashboard:panel_query:{i}", "expr": concrete})
        with open(options["--promql-rules"], "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, sort_keys=False)

    if errors:
        for e in errors:
            print(f"FAIL {e}", file=sys.stderr)
        return 1
    print(f"dashboard: {len(panels)} panels, {len(exprs)} queries; {len(used)} metric names checked against src/metrics/")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
