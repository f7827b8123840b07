"""The Grafana dashboard (deploy/grafana): every query names a series the server exports, and Grafana can import it."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
import yaml

from leaninfer.engines.engine import BatchingConfig
from leaninfer.serving.app import ServerConfig, create_app

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "leaninfer-dashboard.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "leaninfer.yaml"

# The FinOps series (per team, budgets, alerts, cache), as their engineer specified them. Checked against /metrics
# once FinOps exports them: a name found in /metrics is checked there (type included); one not found yet must be
# in this list, with the name as exported (a counter with _total).
FINOPS = {
    "leaninfer_team_cost_usd_total",  # counter {team, model}
    "leaninfer_team_tokens_total",  # counter {team, model, kind=input|output}
    "leaninfer_budget_used_ratio",  # gauge {key_id, team, window}
    "leaninfer_spend_alerts_total",  # counter {entity_kind, entity}
    "leaninfer_spend_alert_active",  # gauge {entity_kind, entity}
    "leaninfer_cache_hits_total",  # counter {model}
    "leaninfer_cache_saved_usd_total",  # counter {model}
}
# What the issue asks the dashboard to show, by series: traffic, errors, TTFT/ITL/e2e, queue, utilization, tokens, $.
REQUIRED = {"leaninfer_requests_total", "leaninfer_request_errors_total", "leaninfer_server_errors_total",
            "leaninfer_time_to_first_token_seconds", "leaninfer_inter_token_latency_seconds",
            "leaninfer_e2e_latency_seconds", "leaninfer_queue_depth", "leaninfer_engine_utilization",
            "leaninfer_input_tokens_total", "leaninfer_output_tokens_total", "leaninfer_cost_usd_total"} | FINOPS

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
             "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, labels or numbers."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals (label values, regexes)
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges: [5m], [$__rate_interval]
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    e = re.sub(r"\$\w+", " ", e)  # dashboard variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", e):
        if m.group(2) or m.group(1).lower() in _KEYWORDS:
            continue  # a function call, or a keyword
        names.add(m.group(1))
    return names


def test_metric_names_parser():
    e = ('histogram_quantile(0.95, sum by (le, model) (rate(leaninfer_e2e_latency_seconds_bucket{model=~"$model"}'
         '[$__rate_interval]))) / on (model) group_left max by (model) (up{job="x"}) > bool 1e-3')
    assert metric_names(e) == {"leaninfer_e2e_latency_seconds_bucket", "up"}


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # a collapsed row holds its panels
    return out


def queries(dash: dict) -> list[str]:
    exprs = [t["expr"] for p in panels(dash) for t in p.get("targets", [])]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", q))  # label_values(metric, label)
    return exprs


def exported_series(text: str) -> dict[str, str]:
    """name as queried -> type, from the `# TYPE` lines (every registered family, observed or not)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            out[name + "_total" if kind == "counter" and not name.endswith("_total") else name] = kind
    return out


def scrape(minilm) -> str:
    async def main():
        app = create_app({"minilm": minilm}, ServerConfig(BatchingConfig(), usd_per_hour=3.6))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                r = await c.post("/v1/embeddings", json={"model": "minilm", "input": "a dashboard check"})
                assert r.status_code == 200, r.text
                m = await c.get("/metrics")
                assert m.status_code == 200
                return m.text

    return asyncio.run(main())


@pytest.mark.timeout(120)
def test_every_query_names_an_exported_series(minilm):
    text = scrape(minilm)
    exported = exported_series(text)
    assert "leaninfer_requests_total" in exported and 'leaninfer_requests_total{' in text  # the request counted
    seen, bad = set(), []
    for expr in queries(load()):
        for name in metric_names(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base != name and exported.get(base) == "histogram":
                if name.endswith("_bucket") and "histogram_quantile" in expr:
                    assert re.search(r"by \(le\b", expr), f"quantile without `by (le, ...)`: {expr}"
                seen.add(base)
            elif name in exported or name in FINOPS:
                assert exported.get(name) != "histogram", f"histogram {name} queried without _bucket/_sum/_count"
                seen.add(name)
            else:
                bad.append(f"{name} in {expr}")
    assert not bad, "series not exported by the server (nor a FinOps series):\n" + "\n".join(bad)
    assert REQUIRED <= seen, f"the dashboard shows no {sorted(REQUIRED - seen)}"


def test_grafana_can_import_and_provision_it():
    dash = load()
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert dash["uid"] and dash["title"]
    ds_vars = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert len(ds_vars) == 1 and ds_vars[0]["query"] == "prometheus"
    ds = {"type": "prometheus", "uid": "${" + ds_vars[0]["name"] + "}"}
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in panels(dash) if p["type"] != "row"]
    assert len(graphs) >= 20
    for p in graphs:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0 and g["y"] >= 0, p["title"]
        assert p["datasource"] == ds, f"panel {p['title']!r} must use the data source variable"
        assert p["targets"], f"panel {p['title']!r} has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)) and all(t["expr"].strip() for t in p["targets"])
        assert all(t["datasource"] == ds for t in p["targets"])
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert any("FinOps" in r for r in rows)
    # a dashboard for provisioning carries no `id` (Grafana assigns it) and names no fixed data source uid
    assert "id" not in dash and '"uid": "prometheus"' not in DASHBOARD.read_text()
    prov = yaml.safe_load(PROVISIONING.read_text())
    assert prov["apiVersion"] == 1 and prov["providers"][0]["type"] == "file"
