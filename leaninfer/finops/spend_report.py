"""Spend reports that arrive: a daily or weekly summary of the ledger (spend against the period before, top teams,
keys and workflows, budget burn, savings from the cache and routing), shaped as a Slack incoming-webhook message
(``text`` for notifications and clients without blocks, ``blocks`` of header, section, fields and context, in
mrkdwn), and POSTed to the alert webhook by the same sender as the alerts (:class:`~.alerts.WebhookSink`).

- ``leaninfer usage --report daily|weekly [--webhook URL | --print]``: once, now.
- ``leaninfer serve --spend-report daily|weekly`` (needs ``--alert-webhook``): at each period's end in the
  budget timezone. Replicas on one store send it once: the store records each report sent
  (:meth:`claim_report`: the first server to claim a period sends it; a restart doesn't send it again).

A daily report covers the last whole calendar day, a weekly one the last whole ISO week (Monday to Sunday), in
the report's timezone. The figures come from the usage code (:func:`.usage.usage_payload`: SQL sums or rollups),
nothing is recomputed here. Labels (teams, workflows, key names) are text clients chose: escaped for mrkdwn
(``&``, ``<``, ``>``: no ``<!channel>`` or link can be smuggled in) and cut to fit Slack's limits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from ..errors import LeaninferError, valid_list
from .alerts import WebhookSink
from .budget_admin import listing
from .money import to_usd
from .usage import usage_payload
from .windows import window_bounds

log = logging.getLogger("leaninfer.finops")
KINDS = ("daily", "weekly")
TOP = 5
BURN_WARN = 0.8
# Slack's documented limits (Block Kit reference): a section's text 3000 characters, its fields 10 of 2000 each;
# 50 blocks a message; a header's plain text 150; a context's elements 10.
SECTION_TEXT_MAX, FIELDS_MAX, FIELD_TEXT_MAX, BLOCKS_MAX, HEADER_MAX, CONTEXT_MAX = 3000, 10, 2000, 50, 150, 10
LABEL_MAX = 40  # characters of a team, workflow or key name shown


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise LeaninferError(f"unknown spend report {kind!r}; valid: {valid_list(KINDS)}")
    return kind


def period(kind: str, now: float, tz: ZoneInfo) -> tuple[float, float, float, str]:
    """``(start, end, previous start, label)`` of the last whole day or ISO week before ``now`` in ``tz``.

    Example:
        >>> period("daily", 1764979200.0 + 3600, ZoneInfo("UTC"))[3]   # 2025-12-06 01:00 UTC
        '2025-12-05'
    """
    check_kind(kind)
    today = datetime.fromtimestamp(now, tz).replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "daily":
        end, days = today, 1
    else:
        end, days = today - timedelta(days=today.weekday()), 7  # the Monday that began this week
    start, prev = _midnight(end - timedelta(days=days), tz), _midnight(end - timedelta(days=2 * days), tz)
    end_t = _midnight(end, tz)
    label = start.strftime("%Y-%m-%d") if days == 1 else \
        f"{start:%Y-%m-%d} to {(end - timedelta(days=1)):%Y-%m-%d}"
    return start.timestamp(), end_t.timestamp(), prev.timestamp(), label


def _midnight(d: datetime, tz: ZoneInfo) -> datetime:
    # the wall-clock midnight of that date in tz (a DST change inside the period moves it by an hour)
    return datetime(d.year, d.month, d.day, tzinfo=tz)


def next_run(kind: str, now: float, tz: ZoneInfo) -> float:
    """When the next report is due: the next midnight (daily) or Monday midnight (weekly) in ``tz``."""
    today = _midnight(datetime.fromtimestamp(now, tz), tz)
    days = 1 if kind == "daily" else 7 - today.weekday()
    return _midnight(today + timedelta(days=days), tz).timestamp()


def build(store, kind: str, tz: str = "UTC", now: float | None = None, top: int = TOP) -> dict:
    """The report's figures (JSON-serializable): ``period``, ``totals`` and ``previous`` (the period before),
    the ``top`` ``teams``, ``keys`` and ``workflows`` by spend, ``budgets`` (the most burnt first) and
    ``savings``. Blocking (store reads)."""
    z = ZoneInfo(tz)
    now = time.time() if now is None else now
    start, end, prev_start, label = period(kind, now, z)
    teams = usage_payload(store, ["team"], None, start, end, tz)
    keys = usage_payload(store, ["key_id"], None, start, end, tz)["groups"]
    workflows = usage_payload(store, ["workflow"], None, start, end, tz)["groups"]
    previous = usage_payload(store, ["team"], None, prev_start, start, tz)["totals"]
    records = {k.key_id: k for k in store.list_keys(include_revoked=True)}

    def row(g: dict, name: str) -> dict:
        return {"name": name, "spend_usd": g["spend_usd"], "requests": g["requests"],
                "tokens": g["input_tokens"] + g["output_tokens"]}

    key_rows = []
    for g in keys:
        if not g["key_id"]:
            continue
        k = records.get(g["key_id"])
        key_rows.append({**row(g, g["key_id"]), "team": k.policy.team if k else "", "label": k.policy.name if k else ""})
    tot = teams["totals"]
    return {
        "kind": kind, "period": {"label": label, "start": start, "end": end, "tz": tz},
        "totals": row(tot, "all"), "errors": tot["errors"], "source": teams["source"],
        "previous": row(previous, "previous"),
        "teams": [row(g, g["team"]) for g in teams["groups"][:top]],
        "keys": key_rows[:top],
        "workflows": [row(g, g["workflow"]) for g in workflows if g["workflow"]][:top],
        "budgets": budget_burn(store, records.values(), end, z)[:top],
        "savings": {"cache_usd": tot["cache_saved_usd"], "routing_usd": tot["routing_saved_usd"],
                    "cache_hits": tot["cache_hits"]},
    }


def budget_burn(store, keys, end: float, tz: ZoneInfo) -> list[dict]:
    """Each key budget's use in its window holding the report's last instant (spent up to ``end``, from the
    ledger), and each budget above the key's current use (month and total windows: a day window has just
    begun); the most burnt first."""
    out = []
    for k in keys:
        if not k.active:
            continue
        for name, (window, limit) in k.policy.budgets().items():
            ws, _ = window_bounds(window, end - 1, tz)
            nusd, tokens = store.spend(k.key_id, ws)
            after_usd, after_tokens = store.spend(k.key_id, end)
            used = to_usd(nusd - after_usd) if name.startswith("usd") else tokens - after_tokens
            out.append({"scope": f"key:{k.key_id}", "label": k.policy.name or k.policy.team, "budget": name,
                        "limit": limit, "used": used, "ratio": used / limit if limit else 1.0})
    try:
        scopes = listing(store, tz)
    except Exception as e:  # a store without budgets above the key: the key budgets alone
        log.debug("spend report: no scope budgets (%s)", e)
        scopes = []
    for b in scopes:
        for name, u in (b.get("usage") or {}).items():
            if name.endswith("_day"):
                continue
            out.append({"scope": b["scope"], "label": b["scope"], "budget": name, "limit": u["limit"],
                        "used": u["spent"], "ratio": u["spent"] / u["limit"] if u["limit"] else 1.0})
    out.sort(key=lambda b: -b["ratio"])
    return out


# -- Slack ----------------------------------------------------------------------------------------------------------
def escape(text: str, limit: int = LABEL_MAX) -> str:
    """``text`` safe in mrkdwn inside a code span: ``&<>`` escaped (Slack's rule: no mention or link can be
    injected), a backtick replaced, cut to ``limit`` characters.

    Example:
        >>> escape("<!channel> & `rm`")
        "&lt;!channel&gt; &amp; 'rm'"
    """
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("`", "'")  # shown inside `code`: a backtick would end it
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def usd(v: float) -> str:
    """Dollars for people: cents from a cent up, else the first significant digits.

    Example:
        >>> usd(1234.5), usd(0.00012345), usd(0)
        ('$1,234.50', '$0.000123', '$0')
    """
    if v == 0:
        return "$0"
    return f"${v:,.2f}" if abs(v) >= 0.01 else f"${v:.3g}" if abs(v) < 1e-4 else f"${v:.6f}".rstrip("0")


def _change(now: float, before: float) -> str:
    if before == 0:
        return "new" if now else "no change"
    return f"{(now - before) / before:+.0%} vs the period before"


def _ranked(title: str, rows: list[dict], total: float, extra=lambda r: "") -> dict | None:
    if not rows:
        return None
    lines = [f"*{title}*"]
    for i, r in enumerate(rows, 1):
        share = f" ({r['spend_usd'] / total:.0%})" if total else ""
        lines.append(f"{i}. `{escape(r['name'])}`{extra(r)} {usd(r['spend_usd'])}{share} · {r['requests']:,} req")
    return _section("\n".join(lines))


def _section(text: str) -> dict:
    if len(text) > SECTION_TEXT_MAX:
        text = text[: SECTION_TEXT_MAX - 1] + "…"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def slack_message(report: dict) -> dict:
    """The report as a Slack incoming-webhook message: ``text`` (the fallback) and ``blocks``."""
    p, t, prev = report["period"], report["totals"], report["previous"]
    title = f"leaninfer spend, {report['kind']}: {p['label']}"[:HEADER_MAX]
    headline = f"{usd(t['spend_usd'])} over {t['requests']:,} requests ({_change(t['spend_usd'], prev['spend_usd'])})"
    s = report["savings"]
    fields = [("Spend", usd(t["spend_usd"])), ("Requests", f"{t['requests']:,}"), ("Tokens", f"{t['tokens']:,}"),
              ("Errors", f"{report['errors']:,}"), ("Saved by the cache", f"{usd(s['cache_usd'])} "
                                                                          f"({s['cache_hits']:,} hits)"),
              ("Saved by routing", usd(s["routing_usd"])),
              ("Period before", f"{usd(prev['spend_usd'])} · {prev['requests']:,} req")]
    blocks = [{"type": "header", "text": {"type": "plain_text", "text": title}},
              _section(headline),
              {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"[:FIELD_TEXT_MAX]}
                                             for k, v in fields[:FIELDS_MAX]]}]
    total = t["spend_usd"]
    blocks += [b for b in (
        _ranked("Top teams", report["teams"], total),
        _ranked("Top keys", report["keys"], total,
                lambda r: f" ({escape(r['label'] or r['team'])})" if r.get("label") or r.get("team") else ""),
        _ranked("Top workflows", report["workflows"], total)) if b is not None]
    if report["budgets"]:
        lines = ["*Budget burn*"]
        for b in report["budgets"]:
            mark = ":warning: " if b["ratio"] >= BURN_WARN else ""
            used = usd(b["used"]) if b["budget"].startswith("usd") else f"{b['used']:,} tokens"
            cap = usd(b["limit"]) if b["budget"].startswith("usd") else f"{b['limit']:,}"
            lines.append(f"{mark}`{escape(b['label'])}` {b['budget']}: {used} of {cap} ({b['ratio']:.0%})")
        blocks.append(_section("\n".join(lines)))
    context = f"{p['tz']} · {_when(p['start'], p['tz'])} → {_when(p['end'], p['tz'])} · figures from the ledger's " \
              f"{report['source']}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": f"{title}: {headline}", "blocks": blocks[:BLOCKS_MAX]}


def _when(t: float, tz: str) -> str:
    return datetime.fromtimestamp(t, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")


# -- sending --------------------------------------------------------------------------------------------------------
def report_id(report: dict) -> str:
    """What identifies one report across replicas and restarts (claimed once in the store)."""
    return f"{report['kind']}:{report['period']['tz']}:{report['period']['start']:.0f}"


def send_due(store, sink, kind: str, tz: str, now: float | None = None) -> bool:
    """Build the report of the period that ended last and queue it on ``sink`` (a WebhookSink), unless a server
    on this store already claimed it. Returns whether this call sent it. Blocking."""
    report = build(store, kind, tz, now)
    if hasattr(store, "claim_report") and not store.claim_report(report_id(report), time.time()):
        return False
    return sink.send(slack_message(report), f"the {kind} spend report")


def send_once(store, kind: str, tz: str, url: str, timeout_s: float = 10.0) -> dict:
    """Build the report now and POST it to ``url`` (no claim: a person asked for it); the message sent. Raises
    LeaninferError when the webhook fails or refuses it."""
    message = slack_message(build(store, kind, tz))
    sink = WebhookSink(url, timeout_s=timeout_s)
    sink.send(message, f"the {kind} spend report")
    sink.close(timeout_s + 1.0)
    if sink.failed:
        raise LeaninferError(f"the webhook {url} did not take the {kind} spend report (see the log line above)")
    return message


def run_cli(store, kind: str, tz: str, webhook: str | None, print_it: bool) -> None:
    """``leaninfer usage --report KIND (--webhook URL | --print)``."""
    check_kind(kind)
    if (webhook is None) == (not print_it):
        raise LeaninferError("--report needs --webhook URL (send it) or --print (show its JSON), one of them")
    if print_it:
        print(json.dumps(slack_message(build(store, kind, tz)), indent=2, ensure_ascii=False))
    else:
        send_once(store, kind, tz, webhook)
        log.info("sent the %s spend report to %s", kind, webhook)


async def schedule(store, sink, kind: str, tz: str, clock=time.time) -> None:
    """Send the report at each period's end, for as long as the server runs (cancel the task to stop)."""
    z = ZoneInfo(tz)
    while True:
        due = next_run(kind, clock(), z)
        await asyncio.sleep(max(0.0, due - clock()) + 1.0)  # a second past midnight: the period has ended
        try:
            await asyncio.to_thread(send_due, store, sink, kind, tz)
        except Exception as e:  # a report that fails is logged; the server goes on
            log.warning("the %s spend report failed: %s", kind, e, exc_info=e)


__all__ = ["KINDS", "build", "check_kind", "next_run", "period", "run_cli", "schedule", "send_due", "send_once", "slack_message"]
