"""The ledger as CloudEvents 1.0, one JSON object a line (``leaninfer usage --export``): what a metering or
billing system (OpenMeter's ``/api/v1/events`` takes this shape) ingests.

Each request is one event: ``id`` its request id (so a re-export deduplicates downstream), ``time`` when it
arrived (RFC 3339, UTC), ``subject`` its key (or its team when it had none), ``type``
:data:`EVENT_TYPE`, ``data`` the ledger row's fields. The ledger holds no prompt or completion text, and
neither does an event. Rows are read a page at a time (``(created_at, request_id)`` order), never all at once.

Hand-written rather than through the ``cloudevents`` SDK: an event here is a dict of fixed keys, and the
SDK would be a dependency for ``json.dumps``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from .ledger import LedgerRow
from .store.ledger_sql import PAGE_ROWS, LedgerSQL

SPECVERSION = "1.0"
EVENT_TYPE = "dev.leaninfer.request.metered"
SOURCE = "leaninfer"


def rfc3339(t: float) -> str:
    """Example:
    >>> rfc3339(1740787200.25)
    '2025-03-01T00:00:00.250000Z'
    """
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def event(row: LedgerRow, source: str = SOURCE) -> dict:
    return {"specversion": SPECVERSION, "type": EVENT_TYPE, "source": source, "id": row.request_id,
            "time": rfc3339(row.created_at), "subject": row.key_id or row.team or "anonymous",
            "datacontenttype": "application/json", "data": row.to_record()}


def ledger_rows(store, since: float | None, until: float | None) -> Iterator[LedgerRow]:
    """The rows of ``[since, until)`` in arrival order, read a page at a time."""
    if not hasattr(store, "ledger_read"):
        yield from store.rows(since, until)
        return
    after = None
    while True:
        page = store.ledger_read(LedgerSQL.page, since, until, after, PAGE_ROWS)
        yield from page
        if len(page) < PAGE_ROWS:
            return
        after = (page[-1].created_at, page[-1].request_id)


def export(store, out: TextIO, since: float | None = None, until: float | None = None,
           source: str = SOURCE) -> int:
    """Write one CloudEvent line per ledger row of ``[since, until)`` to ``out``; how many."""
    n = 0
    for row in ledger_rows(store, since, until):
        out.write(json.dumps(event(row, source), allow_nan=False) + "\n")
        n += 1
    return n


def export_events(store, path: Path | None, since: float | None = None, until: float | None = None) -> int:
    """:func:`export` to ``path`` (written whole or not at all: a temporary file renamed at the end), or stdout."""
    if path is None:
        return export(store, sys.stdout, since, until)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            n = export(store, f, since, until)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n
