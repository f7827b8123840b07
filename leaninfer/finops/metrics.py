"""Per-team Prometheus series for spend, tokens, budgets and the cache.

Label cardinality stays bounded: teams come from keys an admin creates, and past ``max_teams`` distinct
teams the rest are counted under ``team="other"``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class FinOpsMetrics:
    def __init__(self, registry: CollectorRegistry, max_teams: int = 100):
        self.max_teams, self._teams = max_teams, set()
        self.team_cost = Counter("leaninfer_team_cost_usd_total", "charged cost of served requests, by team",
                                 ["team", "model"], registry=registry)
        self.team_tokens = Counter("leaninfer_team_tokens_total", "tokens of served requests, by team",
                                   ["team", "model", "kind"], registry=registry)
        self.budget_used = Gauge("leaninfer_budget_used_ratio", "share of a key's budget spent (settled) in its current window",
                                 ["key_id", "team", "window"], registry=registry)
        # budgets above the key, by scope id (an admin sets each: bounded); the default end-user budget's
        # per-user accounts have no series (one per end user would be unbounded)
        self.scope_budget_used = Gauge("leaninfer_scope_budget_used_ratio", "share of a budget above the key "
                                       "(team, tag, model, org, end user) spent (settled) in its current window",
                                       ["scope", "window"], registry=registry)
        self.cache_hits = Counter("leaninfer_cache_hits_total", "requests answered from the response cache",
                                  ["model"], registry=registry)
        self.cache_saved = Counter("leaninfer_cache_saved_usd_total", "what cached answers cost when first made",
                                   ["model"], registry=registry)
        self.rejected = Counter("leaninfer_finops_rejected_total", "requests refused by auth, budgets or limits",
                                ["team", "reason"], registry=registry)

    def team(self, team: str) -> str:
        if team in self._teams:
            return team
        if len(self._teams) < self.max_teams:
            self._teams.add(team)
            return team
        return "other"

    def observe(self, team: str, model: str, input_tokens: int, output_tokens: int, usd: float) -> None:
        team = self.team(team)
        self.team_cost.labels(team, model).inc(usd)
        self.team_tokens.labels(team, model, "input").inc(input_tokens)
        self.team_tokens.labels(team, model, "output").inc(output_tokens)
