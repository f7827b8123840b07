"""FinOps: who spent what, caps that hold under concurrency, and what caching and routing saved.

- :mod:`.gate`: the stage every request passes through: ``admit`` (key, model, limits, budget, cache, route),
  ``finish`` (the metered charge), ``close`` (settle, cache, alerts, the ledger row). No HTTP.
- :mod:`.store`: the two ports, ``Store`` (keys, the ledger) and ``State`` (the caps' counters), with one
  in-memory ``State`` and one SQL implementation of both (SQLite by default, PostgreSQL across hosts).
- :mod:`.budgets`, :mod:`.rate_limits`, :mod:`.cache`: each rule once, against ``State``.
- :mod:`.keys`: API keys (team, budgets, rate limits, allowed models), stored hashed.
- :mod:`.ledger`: one row per request (no prompt or completion text), money as integer nano-dollars.
- :mod:`.tariff`, :mod:`.routing`, :mod:`.alerts`, :mod:`.usage`, :mod:`.refusals`.
"""
