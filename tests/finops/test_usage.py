"""`leaninfer usage`: grouped sums from a hand-built ledger written through the SQLite store, the CLI's outputs,
its errors, and the plot's series."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import pytest
from typer.testing import CliRunner

from leaninfer.cli import app
from leaninfer.errors import LeaninferError
from leaninfer.finops.keys import KeyPolicy, KeyRecord
from leaninfer.finops.ledger import LedgerRow
from leaninfer.finops.money import to_usd
from leaninfer.finops.store import open_store
from leaninfer.finops.usage import daily_budgets, totals, usage_payload, usage_report
from leaninfer.finops.usage_plot import plot_usage, save_figure
from leaninfer.finops.windows import timezone

from .conftest import bearer, finops_client, make_key

DAY1 = 1740787200.0  # 2025-03-01T00:00:00Z
H = 3600.0


def _row(i, t, team, workflow, key, model, endpoint="embeddings", cost=0, dur=0.1, status=200, **kw):
    return LedgerRow(request_id=f"r{i}", created_at=t, finished_at=t + dur, endpoint=endpoint,
                     requested_model=kw.pop("requested_model", model), served_model=model, key_id=key, team=team,
                     workflow=workflow, cost_nusd=cost, duration_s=dur, status=status, **kw)


ROWS = [
    _row(1, DAY1 + 9 * H + 600, "search", "rag", "k1", "minilm", cost=1_000_000_001, dur=0.10, input_tokens=100),
    _row(2, DAY1 + 9 * H + 1200, "search", "rag", "k1", "minilm", cost=2_000_000_002, dur=0.20, input_tokens=200),
    _row(3, DAY1 + 10 * H + 300, "search", "chat", "k1", "gpt2-int8", "chat.completions", cost=500_000_000, dur=1.5,
         input_tokens=50, output_tokens=30, route="chat", requested_model="chat", fp32_cost_nusd=750_000_000,
         routing_saved_nusd=250_000_000, cache="miss"),
    _row(4, DAY1 + 10 * H + 360, "search", "chat", "k1", "gpt2-int8", "chat.completions", cost=0, dur=0.01,
         input_tokens=50, output_tokens=30, cached_tokens=80, cache="hit", cache_saved_nusd=500_000_000),
    _row(5, DAY1 + 11 * H, "ads", "tagging", "k2", "minilm", cost=300_000_003, dur=0.05, input_tokens=40),
    _row(6, DAY1 + 11 * H + 1800, "ads", "tagging", "k2", "", status=429, dur=0.0, requested_model="minilm",
         error_class="budget_exceeded"),
    # 02:00 UTC on March 2 is still March 1 in New York
    _row(7, DAY1 + 26 * H, "ads", "tagging", "k2", "minilm", cost=700_000_000, dur=0.3, input_tokens=10),
    _row(8, DAY1 + 32 * H + 1800, "search", "rag", "k1", "minilm", cost=100, dur=0.4, input_tokens=10),
]


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "ledger.db"
    store = open_store(path)
    store.add_key(KeyRecord("k1", "h1", KeyPolicy(team="search", budget_usd_day=5.0), DAY1 - 10))
    store.add_key(KeyRecord("k2", "h2", KeyPolicy(team="ads", budget_usd_day=2.0), DAY1 - 9))
    store.add_key(KeyRecord("k3", "h3", KeyPolicy(team="ads"), DAY1 - 8))  # no cap: the team has none
    store.append(ROWS[:4])
    store.append(ROWS[4:])
    store.close()
    return path


@pytest.fixture
def store(store_path):
    s = open_store(store_path)
    yield s
    s.close()


def test_by_team_sums_exactly_from_the_store(store):
    report = usage_report(store.rows(), by=["team"])
    assert [g["team"] for g in report] == ["search", "ads"]  # by spend, largest first
    search, ads = report
    assert search["spend_nusd"] == 3_500_000_103 and search["spend_usd"] == to_usd(3_500_000_103)
    assert ads["spend_nusd"] == 1_000_000_003 and ads["spend_usd"] == to_usd(1_000_000_003)
    assert (search["requests"], search["input_tokens"], search["output_tokens"]) == (5, 410, 60)
    assert (ads["requests"], ads["input_tokens"], ads["errors"]) == (3, 50, 1)
    assert search["errors"] == 0
    assert (search["cache_hits"], search["cache_saved_usd"], search["routing_saved_usd"]) == (1, 0.5, 0.25)
    assert (ads["cache_hits"], ads["cache_saved_usd"], ads["routing_saved_usd"]) == (0, 0.0, 0.0)
    # p95, numpy's linear interpolation: search's 5 durations sorted 0.01 0.1 0.2 0.4 1.5, rank 0.95*4 = 3.8
    assert search["p95_latency_s"] == pytest.approx(0.4 + 0.8 * (1.5 - 0.4))
    assert search["latency_n"] == 5 and search["few_latency_samples"] is True
    # ads: the 429 is an error, not a latency sample: 0.05 and 0.3, rank 0.95
    assert ads["p95_latency_s"] == pytest.approx(0.05 + 0.95 * 0.25) and ads["latency_n"] == 2


def test_many_samples_are_not_marked_and_p95_is_exact():
    rows = [_row(i, DAY1 + i, "t", "w", "k", "m", dur=float(i)) for i in range(1, 21)]
    g = totals(rows)
    assert g["p95_latency_s"] == pytest.approx(19.05) and g["latency_n"] == 20
    assert g["few_latency_samples"] is False


def test_by_team_workflow_and_day_and_by_model(store):
    report = usage_report(store.rows(), by=["team", "workflow"], period="day")
    got = [(g["period"], g["team"], g["workflow"], g["spend_nusd"], g["requests"]) for g in report]
    assert got == [
        ("2025-03-01", "search", "rag", 3_000_000_003, 2),
        ("2025-03-01", "search", "chat", 500_000_000, 2),
        ("2025-03-01", "ads", "tagging", 300_000_003, 2),
        ("2025-03-02", "ads", "tagging", 700_000_000, 1),
        ("2025-03-02", "search", "rag", 100, 1),
    ]
    by_model = {g["model"]: g for g in usage_report(store.rows(), by=["model", "endpoint"])}
    assert by_model["gpt2-int8"]["endpoint"] == "chat.completions"
    assert by_model["minilm"]["requests"] == 6  # the refused request counts under the model it asked for
    by_key = {g["key_id"]: g["spend_nusd"] for g in usage_report(store.rows(), by=["key_id"])}
    assert by_key == {"k1": 3_500_000_103, "k2": 1_000_000_003}


def test_hours_and_days_follow_the_time_zone(store):
    ny = usage_report(store.rows(), by=["team"], period="day", tz="America/New_York")
    ads = {g["period"]: g["requests"] for g in ny if g["team"] == "ads"}
    assert ads == {"2025-03-01": 3}  # 02:00 UTC on the 2nd is 21:00 on the 1st in New York
    hours = usage_report(store.rows(), by=[], period="hour")
    assert [(g["period"], g["requests"]) for g in hours][:3] == [
        ("2025-03-01T09:00", 2), ("2025-03-01T10:00", 2), ("2025-03-01T11:00", 2)]


def test_totals_match_the_sum_of_groups(store):
    rows = store.rows()
    tot = totals(rows)
    assert tot["spend_nusd"] == sum(g["spend_nusd"] for g in usage_report(rows, by=["team"])) == 4_500_000_106
    assert tot["requests"] == 8 and tot["errors"] == 1
    assert totals([])["requests"] == 0 and totals([])["p95_latency_s"] is None


def test_bad_group_or_period_names_it_and_lists_the_valid_ones():
    with pytest.raises(LeaninferError, match=r"unknown group-by 'colour'; valid: endpoint, key_id, model, team, "
                                             r"user, workflow"):
        usage_report(ROWS, by=["team", "colour"])
    with pytest.raises(LeaninferError, match=r"unknown period 'week'; valid: day, hour"):
        usage_report(ROWS, period="week")
    with pytest.raises(LeaninferError, match="unknown time zone 'Mars/Olympus'"):
        usage_report(ROWS, tz="Mars/Olympus")


def test_payload_filters_by_time_and_is_json(store):
    p = usage_payload(store, ["team"], "day", since="2025-03-02", until="2025-03-03")
    assert [(g["team"], g["spend_nusd"]) for g in p["groups"]] == [("ads", 700_000_000), ("search", 100)]
    assert p["totals"]["requests"] == 2 and p["since"] == DAY1 + 86_400
    assert {b["key_id"]: b.get("usd_day") for b in p["budgets"]} == {"k1": 5.0, "k2": 2.0}
    assert json.loads(json.dumps(p)) == p
    with pytest.raises(LeaninferError, match="'yesterday' is not an ISO date"):
        usage_payload(store, since="yesterday")


def test_daily_budgets_per_key_and_per_team(store):
    assert daily_budgets(store, "key_id") == {"k1": 5.0, "k2": 2.0}
    assert daily_budgets(store, "team") == {"search": 5.0}  # ads has an unbudgeted key: no team cap


def _invoke(*args):
    return CliRunner().invoke(app, ["usage", *args])


def test_cli_json_and_csv(store_path):
    res = _invoke("--store", str(store_path), "--by", "team,workflow", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [(g["team"], g["workflow"], g["spend_nusd"]) for g in doc] == [
        ("search", "rag", 3_000_000_103), ("ads", "tagging", 1_000_000_003), ("search", "chat", 500_000_000)]
    res = _invoke("--store", str(store_path), "--by", "team", "--period", "day", "--csv")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [(r["period"], r["team"], r["spend_nusd"], r["requests"]) for r in rows] == [
        ("2025-03-01", "search", "3500000003", "4"), ("2025-03-01", "ads", "300000003", "2"),
        ("2025-03-02", "ads", "700000000", "1"), ("2025-03-02", "search", "100", "1")]
    assert {"spend_usd", "p95_latency_s", "cache_saved_usd", "routing_saved_usd", "errors"} <= rows[0].keys()


def test_cli_table_shows_long_group_names_whole(tmp_path):
    path = tmp_path / "l.db"
    s = open_store(path)
    name = "a-very-long-workflow-name-that-a-narrow-table-would-cut-" + "x" * 30
    s.append([_row(1, DAY1, "search", name, "k1", "minilm", cost=10)])
    s.close()
    res = _invoke("--store", str(path), "--by", "team,workflow,model,endpoint,key_id")
    assert res.exit_code == 0, res.output
    assert name in res.stdout


def test_cli_bad_by_and_period_exit_2_naming_the_value(store_path):
    res = _invoke("--store", str(store_path), "--by", "team,colour")
    assert res.exit_code == 2
    assert "unknown group-by 'colour'" in res.output and "endpoint, key_id, model, team, user, workflow" in res.output
    res = _invoke("--store", str(store_path), "--period", "week")
    assert res.exit_code == 2 and "unknown period 'week'; valid: day, hour" in res.output


def test_cli_missing_store_is_an_error_and_creates_nothing(tmp_path):
    path = tmp_path / "nope.db"
    res = _invoke("--store", str(path))
    assert res.exit_code != 0 and "no ledger at" in res.output and "nope.db" in res.output
    assert not path.exists()


def test_plot_series_budget_lines_and_labels(store):
    fig = plot_usage(store.rows(), daily_budgets(store, "team"), by="team", period="day")
    spend_ax, bars_ax = fig.axes
    lines = {ln.get_label(): ln for ln in spend_ax.get_lines()}
    assert set(lines) == {"search", "ads", "search budget $5.00/day"}
    budget = lines["search budget $5.00/day"]
    assert budget.get_linestyle() == "--" and list(budget.get_ydata()) == [5.0, 5.0]
    assert list(lines["search"].get_ydata()) == pytest.approx([to_usd(3_500_000_003), to_usd(100)])
    assert list(lines["ads"].get_ydata()) == pytest.approx([to_usd(300_000_003), 0.7])
    assert [t.get_text() for t in spend_ax.get_xticklabels()] == ["2025-03-01", "2025-03-02"]
    legend = spend_ax.get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 > spend_ax.get_window_extent().x1 - 1
    assert [t.get_text() for t in bars_ax.get_yticklabels()] == ["ads", "search"]  # largest on top
    assert [p.get_width() for p in bars_ax.patches] == pytest.approx([to_usd(1_000_000_003), to_usd(3_500_000_103)])
    # per hour, the budget line is the even pace: the daily budget / 24; an "other" line sums the rest
    fig = plot_usage(store.rows(), {"k1": 5.0}, by="key_id", period="hour", top_n=1)
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"k1", "k1 budget $5.00/day ÷ 24", "other (1 key_id)"}
    assert lines["k1 budget $5.00/day ÷ 24"].get_ydata()[0] == pytest.approx(5 / 24)
    assert len(lines["k1"].get_ydata()) == 24  # 09:00 on the 1st to 08:00 on the 2nd, empty hours as zeros


def test_cli_plot_writes_a_png_atomically(store_path, tmp_path):
    out = tmp_path / "plots" / "usage.png"
    res = _invoke("--store", str(store_path), "--by", "team", "--period", "day", "--plot", str(out), "--json")
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["usage.png"]  # no temp file left behind
    res = _invoke("--store", str(store_path), "--plot", str(tmp_path / "usage.txt"))
    assert res.exit_code == 2 and "give a file ending in pdf, png, svg" in res.output


def test_save_figure_keeps_the_old_file_when_writing_fails(store, tmp_path):
    out = tmp_path / "plots" / "u.png"
    out.parent.mkdir()
    out.write_bytes(b"old")
    fig = plot_usage(store.rows(), by="team")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    fig.savefig = broken
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, out)
    assert out.read_bytes() == b"old" and [p.name for p in out.parent.iterdir()] == ["u.png"]


BAD_ZONES = ["", "x" * 300, "../../etc/passwd", "\x00", "Europe/Nowhere", "Europe", "/etc/localtime", "UTC\n"]


@pytest.mark.parametrize("tz", BAD_ZONES)
def test_every_bad_time_zone_is_a_user_error_naming_it(store, store_path, tz):
    # ZoneInfo raises ValueError ("", "../x", NUL), OSError (a name too long for a file, a folder) and
    # ZoneInfoNotFoundError: all of them must be a LeaninferError, which the server answers with a 400
    for call in (lambda: usage_payload(store, tz=tz), lambda: usage_report(ROWS, tz=tz), lambda: timezone(tz)):
        with pytest.raises(LeaninferError, match="valid values are IANA names like Europe/Berlin") as e:
            call()
        message = str(e.value)
        assert repr(tz[:40]) in message and len(message) < 200  # named, cut, control characters escaped
        assert "\x00" not in message and "\n" not in message
    res = _invoke("--store", str(store_path), "--tz", tz)
    assert res.exit_code == 2 and "unknown time zone" in res.output and "Traceback" not in res.output


def test_cli_bad_time_zone_is_named_before_the_store_is_opened(tmp_path):
    res = _invoke("--store", str(tmp_path / "missing.db"), "--tz", "x" * 300)
    assert res.exit_code == 2, res.output
    assert "unknown time zone 'xxxx" in res.output and "(300 characters)" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def _hostile_ledger(tmp_path):
    path = tmp_path / "hostile.db"
    s = open_store(path)
    s.append([
        _row(1, DAY1, "search", "rag\x1b[2J\x1b[H[bold red]pwned[/]", "k1", "m\x1b]0;title\x07[link=x]y[/link]",
             cost=10, tags={"env": "\x9b31mprod\u202e"}),
        _row(2, DAY1 + 1, "search", "plain", "k1", "minilm", cost=5, requested_model="\x1b[5mblink"),
    ])
    s.close()
    return path


def test_cli_table_prints_client_strings_inert(tmp_path):
    path = _hostile_ledger(tmp_path)
    res = _invoke("--store", str(path), "--by", "team,workflow,model,endpoint,key_id")
    assert res.exit_code == 0, res.output
    out = res.stdout
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw not in out
    assert "[bold red]pwned[/]" in out and "[link=x]y[/link]" in out  # markup printed as its text
    assert "rag\\x1b[2J\\x1b[H[bold red]pwned[/]" in out  # each control visible as an escape
    assert "m\\x1b]0;title\\x07[link=x]y[/link]" in out


def test_json_output_escapes_controls_too(tmp_path):
    res = _invoke("--store", str(_hostile_ledger(tmp_path)), "--by", "workflow", "--json")
    assert res.exit_code == 0 and "\x1b" not in res.stdout
    assert "rag\x1b[2J\x1b[H[bold red]pwned[/]" in {g["workflow"] for g in json.loads(res.stdout)}


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_non_finite_since_or_until_is_a_user_error(store, value):
    # a NaN or an infinity would reach the SQL, and /v1/usage's JSON answer can't hold it (a 500)
    for kw in ({"since": value}, {"until": value}):
        with pytest.raises(LeaninferError, match="is not a finite number of unix seconds"):
            usage_payload(store, **kw)


def test_long_time_values_are_cut_in_the_error(store):
    with pytest.raises(LeaninferError, match=r"\(5000 characters\) is not an ISO date") as e:
        usage_payload(store, since="y" * 5000)
    assert len(str(e.value)) < 200


def test_usage_endpoint_answers_bad_zones_and_times_with_a_400(served, tmp_path):
    store = str(tmp_path / "l.db")

    async def go():
        admin = make_key(store, team="ops", admin=True)
        async with finops_client(served, auth="keys", store=store) as c:
            return [await c.get("/v1/usage", params=params, headers=bearer(admin))
                    for params in [{"tz": tz} for tz in BAD_ZONES] + [{"since": "nan"}, {"until": "1e400"}]]

    for res in asyncio.run(go()):
        assert res.status_code == 400, res.text
        message = res.json()["error"]["message"]
        assert "IANA names like Europe/Berlin" in message or "not a finite number" in message
        assert len(message) < 200


@pytest.mark.parametrize("tz", ["x" * 300, "Europe/Nowhere", "../../etc/passwd"])
def test_a_bad_budget_timezone_is_refused_at_start_naming_it(served, tmp_path, tz):
    async def go():
        async with finops_client(served, auth="keys", store=str(tmp_path / "l.db"), budget_timezone=tz):
            pass

    with pytest.raises(LeaninferError, match=r"unknown time zone .*IANA names like Europe/Berlin"):
        asyncio.run(go())
