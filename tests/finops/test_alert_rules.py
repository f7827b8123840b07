"""The Alertmanager rules example names only series the server exports, with their own labels."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from leaninfer.engines.metrics import ServerMetrics
from leaninfer.finops.alerts import PrometheusSink
from leaninfer.finops.metrics import FinOpsMetrics

RULES = Path(__file__).parents[2] / "deploy" / "prometheus" / "leaninfer-alerts.yml"

# The per-team series of issue 10 item 8 as the rules (and the Grafana dashboard) expect them.
PER_TEAM = {
    "leaninfer_team_cost_usd_total": {"team", "model"},
    "leaninfer_team_tokens_total": {"team", "model", "kind"},
    "leaninfer_budget_used_ratio": {"key_id", "team", "window"},
    "leaninfer_scope_budget_used_ratio": {"scope", "window"},
}


def _exported() -> dict[str, set[str]]:
    """Every sample name the server can export -> its label names."""
    registry = CollectorRegistry()
    server = ServerMetrics()
    PrometheusSink(registry)
    FinOpsMetrics(registry)
    out = {}
    for reg in (server.registry, registry):
        for collector in list(reg._collector_to_names):  # noqa: SLF001 (label names have no public getter)
            labels = set(getattr(collector, "_labelnames", ()))
            for name in reg._collector_to_names[collector]:  # noqa: SLF001
                out[name] = labels | ({"le"} if name.endswith("_bucket") else set())
    return out


def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(leaninfer_[a-z0-9_]+)\b", expr))


def test_rules_are_well_formed():
    doc = yaml.safe_load(RULES.read_text())
    assert [g["name"] for g in doc["groups"]] == ["leaninfer-finops"]
    rules = _rules()
    assert len({r["alert"] for r in rules}) == len(rules) >= 5
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        assert "for" not in r or re.fullmatch(r"\d+[smh]", r["for"]), r["alert"]
        assert r["expr"].count("(") == r["expr"].count(")"), r["alert"]


def test_every_metric_in_the_rules_is_exported():
    exported = _exported()
    used = set().union(*(_metric_names(r["expr"]) for r in _rules()))
    assert used >= {"leaninfer_spend_alert_active", "leaninfer_budget_used_ratio", "leaninfer_team_cost_usd_total",
                    "leaninfer_request_errors_total"}
    assert not used - exported.keys(), f"not exported: {sorted(used - exported.keys())}"


def test_every_label_in_the_rules_belongs_to_its_metric():
    exported = _exported()
    for r in _rules():
        expr = r["expr"]
        names = _metric_names(expr)
        labels_of = set().union(*(exported[n] for n in names))
        for metric, matchers in re.findall(r"(leaninfer_[a-z0-9_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", matchers):
                assert label in exported[metric], f"{r['alert']}: {metric} has no label {label!r}"
        for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            for label in (x.strip() for x in group.split(",")):
                assert label in labels_of, f"{r['alert']}: no metric of {sorted(names)} has label {label!r}"
        kept = set().union(*(set(re.split(r"\s*,\s*", g.strip())) for g in re.findall(r"\bby\s*\(([^)]*)\)", expr)))
        for label in re.findall(r"\$labels\.([a-z_]+)", str(r["annotations"])):
            # after `sum by (...)` only those labels are left to print
            assert label in (kept or labels_of), f"{r['alert']}: annotation uses {label!r}, not kept"


def test_the_label_check_catches_a_typo():
    exported = _exported()
    for name, labels in PER_TEAM.items():
        assert exported[name] == labels, name
    assert "key" not in exported["leaninfer_budget_used_ratio"]
    assert exported["leaninfer_spend_alert_active"] == {"entity_kind", "entity", "kind"}
    assert exported["leaninfer_spend_alerts_total"] == {"entity_kind", "entity", "kind"}
