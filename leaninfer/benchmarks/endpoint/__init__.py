"""``leaninfer bench --endpoint``: a measured tariff of any OpenAI-compatible endpoint (sweep, pricing, report)."""
