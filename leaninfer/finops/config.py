"""The FinOps settings of one server."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FinOpsConfig(BaseModel):
    """Keys, ledger, budgets, cache and routes of one server (``leaninfer serve`` flags carry the field names)."""

    model_config = ConfigDict(extra="forbid")

    auth: Literal["none", "keys"] = Field("none", description="none: open (bind it to 127.0.0.1); keys: every "
                                                              "request needs an API key (leaninfer keys create)")
    store: str | None = Field(None, description="where keys and the ledger live: a SQLite file path or "
                                                "postgresql://...; None: no ledger (needs one for --auth keys)")
    budget_timezone: str = Field("UTC", description="the timezone of daily and monthly budget windows (IANA name)")
    cache_max_bytes: int = Field(0, ge=0, description="size of the exact-match response cache in bytes; 0: off")
    cache_ttl_s: float = Field(600.0, gt=0, description="how long a cached answer is served")
    routes: list[str] = Field(default_factory=list, description="NAME=auto:FLOOR=VALUE[,...]: a model name that "
                                                                "resolves to the cheapest good-enough variant")
    alert_webhook: str | None = Field(None, description="POST spend and budget alerts (JSON) to this URL")
    cache_store_text: bool = Field(False, description="with shared state, also keep answers that contain "
                                                      "generated text in the store's cache (off: only "
                                                      "embeddings are cached there; no prompt or completion "
                                                      "text is written to disk unless an operator opts in)")
    metrics_auth: Literal["open", "admin"] = Field("open", description="open: /metrics answers without a key "
                                                                      "(bind the server where only your "
                                                                      "scraper reaches it); admin: it needs "
                                                                      "an admin key, as /v1/usage does")
    ledger_retention_days: int | None = Field(None, ge=35, description="delete ledger rows older than this "
                                              "many days (35 at least), in short batches while serving; the "
                                              "daily rollups stay, so reports and total budgets keep them")
    spend_report: Literal["daily", "weekly"] | None = Field(None, description="POST a spend summary (top "
                                                            "teams, keys, workflows, budget burn, savings; "
                                                            "Slack-shaped) to --alert-webhook after each day or "
                                                            "ISO week in --budget-timezone")
    max_metric_teams: int = Field(100, ge=1, description="distinct team labels in Prometheus; more: 'other'")
    shared_state: bool = Field(False, description="budgets, rate limits and the cache go through the store, "
                                                  "so several servers share them; without it a server takes "
                                                  "the store for itself, and a second server on the same "
                                                  "store is refused")

    @property
    def enabled(self) -> bool:
        return self.auth != "none" or self.store is not None or self.cache_max_bytes > 0 or bool(self.routes)
