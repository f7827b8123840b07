"""reserve+settle per request: key only vs key + team, tag, org budgets (BudgetBook on MemoryState, SQLite).

Run: flock /tmp/cpu.lock .venv/bin/python scripts/bench_scope_budgets.py
"""
import tempfile
import time
from zoneinfo import ZoneInfo

from leaninfer.finops.budget_admin import set_budget
from leaninfer.finops.budgets import BudgetBook
from leaninfer.finops.keys import KeyPolicy, KeyRecord
from leaninfer.finops.scope_budgets import ScopeLimits, covering, request_scopes
from leaninfer.finops.store import open_store
from leaninfer.finops.store.memory import MemoryState

d = tempfile.mkdtemp()
store = open_store(f"{d}/b.db")
for s in ("team:search", "tag:env=prod", "org"):
    set_budget(store, s, ScopeLimits(usd_day=1e6, tokens_day=10**15))
key = KeyRecord("k1", "h", KeyPolicy(team="search", budget_usd_day=1e6, budget_tokens_day=10**15), 0.0)
scopes = covering(store.get_scope_budgets(request_scopes("search", "m", {"env": "prod"}, None)), "search", "m",
                  {"env": "prod"}, None)
for name, state, n in (("memory", MemoryState(spend=store.budget_spend), 20000), ("sqlite", store, 2000)):
    book = BudgetBook(state, ZoneInfo("UTC"))
    for label, sc in (("key only", ()), ("key + team, tag, org", scopes)):
        for _ in range(50):
            book.settle(book.reserve(key, 10, 10, sc), 5, 5)
        t = time.perf_counter()
        for _ in range(n):
            book.settle(book.reserve(key, 10, 10, sc), 5, 5)
        print(f"{name:7s} {label:22s} {1e6 * (time.perf_counter() - t) / n:8.1f} us per reserve+settle")
