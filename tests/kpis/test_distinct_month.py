"""Months of distinct-count flows from a base of the month's earlier keys (kpis/distinct_month.py):
the month to date equals the month read whole, worked by hand here, and the base is rebuilt
when what it holds may have changed."""
from __future__ import annotations

from datetime import datetime, timedelta

import duckdb
import pytest

from kpis import day_store, distinct_month
from kpis.batch import compute_plan, fact_columns
from kpis.evaluate import ensure_schema, periods_for
from kpis.periods import Period, day, month
from kpis.prelude import apply_prelude
from kpis.registry import load_registry
from tests.kpis.harness import load_inputs

KPI = "call.repeat_caller_rate_24h"
AS_OF = datetime(2024, 7, 3, 12, 0)


def _call(cid: str, key: str, answered: str, org: str = "C1") -> dict:
    t = datetime.fromisoformat(answered)
    return {"call_id": cid, "call_direction": "01", "org_no": org, "cons_no": key,
            "busi_type_code": "01", "arrive_time": str(t - timedelta(seconds=30)),
            "answer_time": answered, "call_result": "01"}


# Answered calls of one request type; the base holds July's days before 07-03 (today).
CALLS = [
    _call("c1", "K100", "2024-07-01 10:00:00"),
    _call("c2", "K100", "2024-07-02 09:00:00"),        # 23 h after c1: a repeat (base)
    _call("c3", "K200", "2024-07-02 11:00:00", "K1"),  # county K1 -> city C1
    _call("c4", "K200", "2024-07-03 10:00:00"),        # 23 h after c3: a repeat (today)
    _call("c5", "K300", "2024-07-03 09:00:00"),        # a caller new today
    _call("c6", "K100", "2024-07-03 11:00:00"),        # 26 h after c2: no repeat; K100 in the base
    _call("c7", "K400", "2024-07-03 13:00:00"),        # after as_of: not yet
    _call("c8", "K500", "2024-07-02 08:00:00", "ZZ"),  # unknown org -> the province only
    _call("c9", "K500", "2024-07-03 07:00:00", "ZZ"),  # 23 h after c8: a repeat (today)
]
# Month to date (07-01 00:00 to 07-03 12:00), by hand:
#   C1: callers K100, K200, K300 = 3; repeaters K100 (c2), K200 (c4) = 2 -> 100 * 2 / 3.
#       The base (07-01, 07-02) holds callers {K100, K200}, repeater {K100}; today adds caller
#       K300 and repeater K200; K100 and K200 called today too and count once.
#   P:  C1's and K500 (callers 4, repeaters 3: K500 by c9) -> 100 * 3 / 4.
EXPECTED = {"C1": (2, 3), "P": (3, 4)}
# Today (07-03 00:00 to 12:00): callers K200 (c4), K300 (c5), K100 (c6) at C1, K500 (c9) at P;
# repeaters K200 (23 h after c3) and K500 (23 h after c8), not K100 (26 h) -> C1 1 of 3, P 2 of 4.
EXPECTED_TODAY = {"C1": (1, 3), "P": (2, 4)}


@pytest.fixture(autouse=True)
def _base_from_two_days(monkeypatch):
    """The hand-worked month has two days before July 3: the base is used from there (in the
    worker from MIN_BASE_DAYS days on; test_a_month_of_few_days_is_read_whole)."""
    monkeypatch.setattr(distinct_month, "MIN_BASE_DAYS", 2)


@pytest.fixture()
def con():
    c = duckdb.connect()
    load_inputs(c, {"calendar": "2024-06-01..2024-08-31", "inputs": {"cs_call": CALLS}})
    ensure_schema(c)
    apply_prelude(c, needed=())
    c.execute("CREATE TABLE etl_dirty (run_id BIGINT, source VARCHAR, table_name VARCHAR, "
              "business_date DATE)")
    yield c
    c.close()


def _month(con, k, as_of: datetime, mode: day_store.Mode | None, grain: str = "monthly"
           ) -> dict[str, tuple]:
    errors: dict[str, str] = {}
    ps = periods_for(k, [day(as_of.date()), month(as_of.year, as_of.month)], as_of)
    compute_plan(con, [(k, ps)], as_of, errors, mode)
    assert errors == {}
    return {org: (num, den, value, status, is_final) for org, num, den, value, status, is_final in con.execute(
        "SELECT org_no, numerator, denominator, value, status, is_final FROM _result "
        "WHERE grain = $g ORDER BY org_no", {"g": grain}).fetchall()}


def _head(con) -> tuple | None:
    return con.execute("SELECT upto, built_at FROM kpi_distinct_head WHERE kpi_id = $k",
                       {"k": KPI}).fetchone()


def test_the_month_from_the_base_is_the_month_worked_by_hand(con) -> None:
    k = load_registry().get(KPI)
    assert distinct_month.eligible(k, fact_columns(con, k))
    direct = _month(con, k, AS_OF, None)
    at = datetime(2024, 7, 3, 12, 0, 5)
    seen: list[str] = []

    class Recording:
        def execute(self, sql, *args):
            seen.append(sql)
            return con.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(con, name)

    via = _month(Recording(), k, AS_OF, day_store.Mode(refresh=False, computed_at=at))
    # today's rows were counted from today's keys, its facts not read again for them
    assert sum("FROM _dkeys GROUP BY unit_no" in q for q in seen) == 1
    assert _head(con) == (datetime(2024, 7, 3).date(), at)        # the base was built
    for org, (num, den) in EXPECTED.items():
        assert via[org][:3] == (num, den, pytest.approx(100 * num / den)), org
        assert via[org][4] is False                               # the month runs on
    assert via == direct
    # base keys before today: callers K100, K200 (C1; and K500 at P), repeater K100
    # today from today's keys (the base path) as read from its facts (the direct path)
    today = con.execute("SELECT org_no, numerator, denominator, value, status, is_final, period_start "
                        "FROM _result WHERE grain = 'daily' ORDER BY org_no").fetchall()
    for org, (num, den) in EXPECTED_TODAY.items():
        assert [r[1:3] for r in today if r[0] == org] == [(num, den)], org
    assert {r[6] for r in today} == {datetime(2024, 7, 3)} and not any(r[5] for r in today)
    assert {r[0]: r[1:6] for r in today} == _month(con, k, AS_OF, None, "daily")
    keys = set(con.execute("SELECT unit_no, is_num, k FROM kpi_distinct_key WHERE k IS NOT NULL").fetchall())
    assert keys == {("C1", False, "K100"), ("C1", False, "K200"), ("C1", True, "K100"),
                    ("P", False, "K100"), ("P", False, "K200"), ("P", False, "K500"),
                    ("P", True, "K100")}


def test_a_past_day_whose_changed_columns_the_kpi_does_not_read_keeps_the_base(con) -> None:
    """A call's quality check (qa_score, qa_time) is filled about two days after the call and
    marks the call's day dirty; the repeat callers read neither column, so the base stays. A
    changed caller on that day rebuilds it."""
    k = load_registry().get(KPI)
    con.execute("ALTER TABLE etl_dirty ADD COLUMN changed_columns VARCHAR[]")
    t0 = datetime(2024, 7, 3, 12, 0, 5)
    _month(con, k, AS_OF, day_store.Mode(refresh=False, computed_at=t0, run_id=1))
    built = _head(con)
    con.execute("UPDATE cs_call SET qa_score = 90, qa_time = '2024-07-03 11:59:00' WHERE call_id = 'c1'")
    con.execute("INSERT INTO etl_dirty VALUES (2, 'cs', 'cs_call', DATE '2024-07-01', "
                "['qa_score', 'qa_time', 'updated_at']), (2, 'cs', 'cs_call', DATE '2024-07-03', "
                "['qa_score', 'qa_time', 'updated_at'])")
    t1 = t0 + timedelta(minutes=1)
    via = _month(con, k, AS_OF, day_store.Mode(refresh=False, computed_at=t1, run_id=2))
    assert _head(con) == built and via == _month(con, k, AS_OF, None)
    con.execute("UPDATE cs_call SET cons_no = 'K900' WHERE call_id = 'c1'")
    con.execute("INSERT INTO etl_dirty VALUES (3, 'cs', 'cs_call', DATE '2024-07-01', "
                "['cons_no', 'updated_at'])")
    t2 = t1 + timedelta(minutes=1)
    via = _month(con, k, AS_OF, day_store.Mode(refresh=False, computed_at=t2, run_id=3))
    assert _head(con)[1] == t2
    # as worked in the test below: C1's callers K900, K100, K200, K300 = 4, repeaters 1
    assert via["C1"][:2] == (1, 4) and via == _month(con, k, AS_OF, None)


def test_the_base_is_kept_within_the_day_and_rebuilt_when_it_may_be_stale(con) -> None:
    k = load_registry().get(KPI)
    t0 = datetime(2024, 7, 3, 12, 0, 5)
    _month(con, k, AS_OF, day_store.Mode(refresh=False, computed_at=t0, run_id=1))
    built = _head(con)
    # the next minutes: the base serves (not rebuilt); a new call today moves the month
    con.execute("INSERT INTO cs_call (call_id, call_direction, org_no, cons_no, busi_type_code, "
                "arrive_time, answer_time, call_result, is_deleted, created_at, updated_at) VALUES "
                "('c10', '01', 'C1', 'K600', '01', '2024-07-03 12:00:30', '2024-07-03 12:00:40', '01', 0, "
                "'2024-07-03 12:00:40', '2024-07-03 12:00:40')")
    later = AS_OF + timedelta(minutes=1)
    via = _month(con, k, later, day_store.Mode(refresh=False, computed_at=t0 + timedelta(minutes=1), run_id=2))
    assert _head(con) == built
    assert via["C1"][:2] == (2, 4) and via == _month(con, k, later, None)
    # a restated day of the month before today (etl_dirty): rebuilt
    con.execute("UPDATE cs_call SET cons_no = 'K900' WHERE call_id = 'c1'")
    con.execute("INSERT INTO etl_dirty VALUES (3, 'cs', 'cs_call', DATE '2024-07-01')")
    t3 = t0 + timedelta(minutes=2)
    via = _month(con, k, later, day_store.Mode(refresh=False, computed_at=t3, run_id=3))
    assert _head(con)[1] == t3
    # K900 (c1) and K100 (c2, c6) are now two callers; c2's repeat is gone (no K100 call 24 h
    # before it); K200 still repeats: C1 callers K900, K100, K200, K300, K600 = 5, repeaters 1
    assert via["C1"][:2] == (1, 5) and via == _month(con, k, later, None)
    # a dirty date of today or of another table does not rebuild, nor a sweep: the KPI reads
    # one table besides the org tree, whose changed rows mark their own dates
    con.execute("INSERT INTO etl_dirty VALUES (4, 'cs', 'cs_call', DATE '2024-07-03'), "
                "(4, 'cs', 'cs_visit', DATE '2024-07-01')")
    _month(con, k, later, day_store.Mode(refresh=False, computed_at=t3 + timedelta(minutes=1), run_id=4))
    _month(con, k, later, day_store.Mode(refresh=True, computed_at=t3 + timedelta(minutes=2), run_id=4))
    assert _head(con)[1] == t3
    # a row before the month that a key inside it depends on (c1's 24 h window reaches June 30)
    con.execute("INSERT INTO etl_dirty VALUES (5, 'cs', 'cs_call', DATE '2024-06-30')")
    t5 = t3 + timedelta(minutes=3)
    _month(con, k, later, day_store.Mode(refresh=False, computed_at=t5, run_id=5))
    assert _head(con)[1] == t5
    # with a joined table the sweep rebuilds (a joined row's change marks no date of the month)
    joined = k.model_copy(update={"facts": k.facts.replace(
        "WHERE x.is_deleted = 0", "WHERE x.is_deleted = 0 AND NOT EXISTS (SELECT 1 FROM cs_visit v "
        "WHERE v.wo_no = x.wo_no AND v.is_deleted = 1)", 1)})
    assert joined.facts != k.facts
    _month(con, joined, later, day_store.Mode(refresh=False, computed_at=t5, run_id=5))
    t6 = t5 + timedelta(minutes=1)
    assert _month(con, joined, later, day_store.Mode(refresh=True, computed_at=t6, run_id=5)) == via
    assert _head(con)[1] == t6
    # the next day: the base moves up to its start
    next_day = datetime(2024, 7, 4, 0, 5)
    via = _month(con, k, next_day, day_store.Mode(refresh=False, computed_at=next_day, run_id=4))
    assert _head(con)[0] == next_day.date() and via == _month(con, k, next_day, None)
    # a changed definition is another base
    changed = k.model_copy(update={"facts": k.facts + "\n"})
    _month(con, changed, next_day, day_store.Mode(refresh=False, computed_at=next_day + timedelta(1), run_id=4))
    assert _head(con)[1] == next_day + timedelta(1)


def test_only_key_counting_flows_that_see_ws_and_te_qualify(con) -> None:
    k = load_registry().get(KPI)
    cols = fact_columns(con, k)
    assert distinct_month.eligible(k, cols)
    assert not distinct_month.eligible(k, cols | {"sample"})
    assert not distinct_month.eligible(k, cols | {"pending"})
    assert not distinct_month.eligible(k.model_copy(update={"facts": k.facts.replace(
        "r.answer_time < p.te", "r.answer_time < p.te AND p.we > p.ws")}), cols)
    assert not distinct_month.eligible(k.model_copy(update={"num_agg": "sum"}), cols)


def test_a_kpi_whose_other_periods_fail_leaves_no_month_behind(con) -> None:
    """The month comes from the base in a statement of its own; when the KPI's other periods
    then fail (here: any hour), the KPI fails whole and none of its rows stay in _result."""
    k = load_registry().get(KPI)
    failing = k.model_copy(update={"facts": k.facts.replace(
        "FROM r JOIN _periods p ON r.answer_time >= p.ws AND r.answer_time < p.te",
        "FROM r JOIN _periods p ON r.answer_time >= p.ws AND r.answer_time < p.te\n"
        "WHERE CASE WHEN p.te - p.ws <= INTERVAL 1 HOUR THEN error('an hour fails') ELSE TRUE END")})
    assert failing.facts != k.facts and distinct_month.eligible(failing, fact_columns(con, failing))
    errors: dict[str, str] = {}
    hour = Period("hourly", datetime(2024, 7, 3, 11), datetime(2024, 7, 3, 12))
    compute_plan(con, [(failing, [day(AS_OF.date()), month(2024, 7), hour])], AS_OF, errors,
                 day_store.Mode(refresh=False, computed_at=AS_OF))
    assert "an hour fails" in errors[KPI]
    assert con.execute("SELECT COUNT(*) FROM _result").fetchone()[0] == 0


def test_a_month_of_few_days_is_read_whole(con, monkeypatch) -> None:
    """Until MIN_BASE_DAYS days of the month have passed, the base's fixed cost is more than the
    month read whole: no base is built and the month is that read directly; from then on the
    base serves it, with the same values."""
    k = load_registry().get(KPI)
    direct = _month(con, k, AS_OF, None)
    mode = day_store.Mode(refresh=False, computed_at=datetime(2024, 7, 3, 12, 0, 5))
    monkeypatch.setattr(distinct_month, "MIN_BASE_DAYS", 3)     # July 3: two days before it
    assert _month(con, k, AS_OF, mode) == direct
    assert _head(con) is None
    monkeypatch.setattr(distinct_month, "MIN_BASE_DAYS", 2)
    assert _month(con, k, AS_OF, mode) == direct
    assert _head(con) is not None


def _built(con) -> dict:
    return dict(con.execute("SELECT day, built_at FROM kpi_distinct_day WHERE kpi_id = $k ORDER BY day",
                            {"k": KPI}).fetchall())


def test_only_the_days_that_may_have_changed_are_read_again() -> None:
    """The base is kept per day: a dirty date reads that day and the days after it again (a
    changed call on 07-04 decides whether 07-05's call repeats), the next day adds yesterday
    alone, and a base of the older layout (one period, no days) is read whole. Each month
    equals the month read directly and the values worked by hand."""
    c = duckdb.connect()
    calls = [_call("e1", "K1", "2024-07-01 10:00:00"), _call("e2", "K2", "2024-07-02 10:00:00"),
             _call("e3", "K3", "2024-07-03 10:00:00"), _call("e4", "K4", "2024-07-04 22:00:00"),
             _call("e5", "K4", "2024-07-05 09:00:00"),     # 11 h after e4: a repeat
             _call("e6", "K5", "2024-07-06 08:00:00")]
    load_inputs(c, {"calendar": "2024-06-01..2024-08-31", "inputs": {"cs_call": calls}})
    ensure_schema(c)
    apply_prelude(c, needed=())
    c.execute("CREATE TABLE etl_dirty (run_id BIGINT, source VARCHAR, table_name VARCHAR, "
              "business_date DATE)")
    k = load_registry().get(KPI)
    as_of = datetime(2024, 7, 6, 12, 0)
    t1 = as_of + timedelta(seconds=5)
    # callers K1..K5 = 5, repeater K4 (e5)
    assert _month(c, k, as_of, day_store.Mode(refresh=False, computed_at=t1, run_id=1))["C1"][:2] == (1, 5)
    assert _built(c) == {datetime(2024, 7, d).date(): t1 for d in range(1, 6)}
    # the ETL corrects e4's caller: 07-04 marked. Now callers K1, K2, K3, K9, K4, K5 = 6 and no
    # repeater: e5 finds no K4 call in the 24 h before it, though its day was not marked
    c.execute("UPDATE cs_call SET cons_no = 'K9' WHERE call_id = 'e4'")
    c.execute("INSERT INTO etl_dirty VALUES (2, 'cs', 'cs_call', DATE '2024-07-04')")
    t2 = t1 + timedelta(minutes=1)
    via = _month(c, k, as_of, day_store.Mode(refresh=False, computed_at=t2, run_id=2))
    assert via["C1"][:2] == (0, 6) and via == _month(c, k, as_of, None)
    assert _built(c) == {**{datetime(2024, 7, d).date(): t1 for d in range(1, 4)},
                         **{datetime(2024, 7, d).date(): t2 for d in (4, 5)}}
    # the next day: yesterday added, the rest as kept
    nxt = datetime(2024, 7, 7, 0, 5)
    via = _month(c, k, nxt, day_store.Mode(refresh=False, computed_at=nxt, run_id=2))
    assert via["C1"][:2] == (0, 6) and via == _month(c, k, nxt, None)
    assert _built(c)[datetime(2024, 7, 6).date()] == nxt
    assert _built(c)[datetime(2024, 7, 5).date()] == t2
    # a base of the older layout is read whole
    c.execute("UPDATE kpi_distinct_head SET per_day = NULL")
    t4 = nxt + timedelta(minutes=1)
    assert _month(c, k, nxt, day_store.Mode(refresh=False, computed_at=t4, run_id=2)) == via
    assert set(_built(c).values()) == {t4}
    c.close()
