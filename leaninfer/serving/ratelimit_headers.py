"""The rate-limit and cost headers of a response, beside the body: what clients that read headers, not bodies, get.

- IETF ``RateLimit-Policy`` / ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers): one item per limit of the key
  (``"rpm";q=600;w=60`` and ``"rpm";r=599;t=60``). A 429 already carried them for the limit or budget it hit
  (:mod:`.errors`); a success now carries them for the key's rpm and tpm too.
- OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, reset written as a Go duration ("1s",
  "6m0s", "12ms") as OpenAI sends it, on successes and 429s of a key with an rpm or tpm: what OpenAI clients,
  dashboards and retry wrappers read. Tokens are counted as leaninfer counts them, the worst case (prompt +
  max_tokens) at admission.
- On a 429: ``retry-after-ms`` beside ``Retry-After`` (the OpenAI SDKs read it first, and wait that long when it is
  under a minute), and ``x-should-retry: false`` where retrying can't help soon: a lifetime budget spent, or a
  window that resets in more than a minute (the SDK would otherwise retry at once, a few times, in vain).
- ``x-leaninfer-cost-usd`` on a metered non-streamed answer: exactly the dollars charged (the ledger's
  nano-dollars as a decimal; ``0`` for a cache hit). A stream's headers leave before its cost is known: it gets
  no cost header (not the reserved worst case, which would mislead); its cost is in the last chunk's ``usage``
  (``stream_options.include_usage``) and in the ledger.
"""

from __future__ import annotations

import math
import time

COST_HEADER = "x-leaninfer-cost-usd"
_OPENAI_NAME = {"rpm": "requests", "tpm": "tokens"}
RETRY_SOON_S = 60.0  # the OpenAI SDKs honour a retry-after of at most this; past it they retry on their own backoff


def go_duration(seconds: float) -> str:
    """``seconds`` as Go's ``time.Duration`` prints it, at millisecond precision (OpenAI's reset format).

    Example:
        >>> go_duration(0.012), go_duration(1), go_duration(1.5), go_duration(360), go_duration(3723.25)
        ('12ms', '1s', '1.5s', '6m0s', '1h2m3.25s')
    """
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms < 1000:
        return f"{ms}ms"
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if h:
        return f"{h}h{m}m{s}"
    return f"{m}m{s}" if m else s


def usd_text(nano: int) -> str:
    """Nano-dollars as an exact decimal string.

    Example:
        >>> usd_text(1_234_500), usd_text(0), usd_text(2_000_000_001)
        ('0.0012345', '0', '2.000000001')
    """
    whole, frac = divmod(int(nano), 10**9)
    return f"{whole}.{frac:09d}".rstrip("0").rstrip(".")


def limit_headers(limits: dict[str, tuple[int, int, float]], now: float | None = None) -> dict[str, str]:
    """IETF and OpenAI headers of ``{"rpm"|"tpm": (quota, remaining, reset_at)}`` (a key's rate limits as
    :class:`~leaninfer.finops.rate_limits.RateLimits` reports them); empty for a key without rpm or tpm."""
    if not limits:
        return {}
    now = time.time() if now is None else now
    out, policy, state = {}, [], []
    for name, (quota, remaining, reset_at) in limits.items():
        wait = max(0.0, reset_at - now)
        policy.append(f'"{name}";q={quota};w=60')
        state.append(f'"{name}";r={remaining};t={math.ceil(wait)}')
        kind = _OPENAI_NAME[name]
        out[f"x-ratelimit-limit-{kind}"] = str(quota)
        out[f"x-ratelimit-remaining-{kind}"] = str(remaining)
        out[f"x-ratelimit-reset-{kind}"] = go_duration(wait)
    out["RateLimit-Policy"], out["RateLimit"] = ", ".join(policy), ", ".join(state)
    return out


def refusal_headers(headers: dict[str, str], limits: dict[str, tuple[int, int, float]]) -> dict[str, str]:
    """A 429's headers (``headers``: its ``Retry-After`` and IETF items for what it hit) with the OpenAI ones of
    the key's rate limits, ``retry-after-ms`` and ``x-should-retry``. The IETF items the refusal set stay
    first: they name what refused it."""
    out = dict(headers)
    extra = limit_headers(limits)
    for name in ("RateLimit-Policy", "RateLimit"):
        mine = extra.pop(name, None)
        if mine and name in out:
            hit = out[name].split(";", 1)[0]  # '"rpm"': the refusal's own item replaces the key's
            others = [item for item in mine.split(", ") if not item.startswith(hit + ";")]
            out[name] = ", ".join([out[name], *others])
        elif mine:
            out[name] = mine
    out.update(extra)
    wait = out.get("Retry-After")
    if wait is not None:
        out["retry-after-ms"] = str(int(wait) * 1000)
    if wait is None or int(wait) > RETRY_SOON_S:
        out["x-should-retry"] = "false"
    return out


__all__ = ["COST_HEADER", "go_duration", "limit_headers", "refusal_headers", "usd_text"]
