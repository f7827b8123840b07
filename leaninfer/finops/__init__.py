"""FinOps: who spent what, caps that hold under concurrency, and what caching and routing saved.

- :mod:`.keys`: API keys (team, budgets, rate limits, allowed models), stored hashed.
- :mod:`.ledger`: one row per request (no prompt or completion text), money as integer nano-dollars.
- :mod:`.store` / :mod:`.sqlite_store`: where keys and the ledger persist (SQLite in WAL mode by default).
- :mod:`.budgets`: reserve the worst case at admission, settle the true cost after.
- :mod:`.rate_limits`, :mod:`.cache`, :mod:`.routing`, :mod:`.alerts`, :mod:`.usage`.
"""
