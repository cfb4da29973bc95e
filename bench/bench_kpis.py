"""KPI engine speed: full evaluation, incremental evaluation after a one-minute ETL pass, pandas side by side.

Usage: python bench/bench_kpis.py --scale county|city [--days 45] [--workdir DIR] [--skip-incremental] [--skip-pandas]
       python bench/bench_kpis.py --data-dir DIR [--skip-incremental] [--skip-pandas]
                                  [--advance-hours H] [--minutes N] [--minutes-only]
                                  [--churn N] [--sweep-last]
(--skip-incremental: only (a) cold and (c); the first incremental run backfills ~100 days;
--minutes-only: only (b), on a DIR an earlier run left after its backfill)
Builds (or reuses) the simulator's sources and a warehouse in DIR (default bench/out/<scale>,
git-ignored), or works in an existing data directory (a copy: the run writes into it) holding
source_*.db, simulator_state.json and warehouse.duckdb as `make run` / `app.py worker` leave
them. Then prints, each with the command that reproduces it (wall and CPU seconds, load average):
(a) all KPIs x all org units for today, its hours, the current and the last closed month, on an
    empty kpi_value (cold) and again once kpi_value holds the backfilled history (warm), as the
    worker runs it (one evaluate_and_store over all KPIs); where the time goes by statement kind;
(b) evaluate_incremental after one simulated minute of live mode and one ETL pass (its first
    run, the backfill, is timed separately and not counted), N minutes in a row (default 3),
    with the median and the slowest of the ordinary passes (not sweeps: a new hour or
    SWEEP_EVERY after the last); --advance-hours H first runs the live simulator and the ETL
    H hours on (one catch-up pass, not counted), so that the minutes are taken later in the
    day than the data's clock (a build's clock is midnight, whose minutes are not typical);
(c) 10 core KPIs computed with pandas from the same warehouse tables, values asserted equal to
    the engine's (computing the 10 as one plan, as a pass does), and the time ratio;
(d) the same 10 KPIs in hand-written DuckDB statements (the floor of ARCHITECTURE.md §5), values
    compared, and engine/floor for the 10 and for the full evaluation.
"""
from __future__ import annotations

import argparse
import math
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from etl.pipeline import run_pass  # noqa: E402
from etl.settings import SOURCE_NAMES, load_settings  # noqa: E402
from etl.warehouse import Warehouse  # noqa: E402
from kpis import batch, value_layout  # noqa: E402
from kpis.batch import compute_plan  # noqa: E402
from kpis.evaluate import (SWEEP_EVERY, apply_baselines, ensure_schema, evaluate_and_store,  # noqa: E402
                           evaluate_incremental, periods_for)
from kpis.periods import Period, day, hours_of, month, previous_month  # noqa: E402
from kpis.prelude import apply_prelude  # noqa: E402
from kpis.registry import Registry, load_registry  # noqa: E402
from kpis.spec import KpiDef  # noqa: E402

SIM_EPOCH = datetime(2000, 1, 1)   # simulator.clock.EPOCH: the state's clock counts seconds from it


def command(args: argparse.Namespace) -> str:
    flags = "".join(f" --{f}" for f in ("skip-incremental", "skip-pandas", "minutes-only")
                    if getattr(args, f.replace("-", "_")))
    flags += f" --minutes {args.minutes}" if args.minutes != 3 else ""
    flags += f" --advance-hours {args.advance_hours:g}" if args.advance_hours else ""
    flags += f" --churn {args.churn}" if args.churn else ""
    flags += " --sweep-last" if args.sweep_last else ""
    flags += f" --again {args.again}" if args.again else ""
    flags += " --day-store" if args.day_store else ""
    flags += f" --top {args.top}" if args.top else ""
    flags += " --per-kpi" if args.per_kpi else ""
    if args.data_dir:
        return f"python bench/bench_kpis.py --data-dir {args.data_dir}{flags}"
    extra = f" --workdir {args.workdir}" if args.workdir_given else ""
    return f"python bench/bench_kpis.py --scale {args.scale} --days {args.days}{extra}{flags}"


def prepare(args: argparse.Namespace) -> tuple[dict[str, str], object, Path]:
    """Sources (built once) and settings for a warehouse in the work dir."""
    import simulator
    if args.data_dir:
        root = args.data_dir
        urls = {s: f"sqlite:///{root / f'source_{s}.db'}" for s in SOURCE_NAMES}
        env = {"DATA_DIR": str(root), **{f"SOURCE_{s.upper()}_URL": u for s, u in urls.items()}}
        return urls, load_settings(env), root
    root = args.workdir
    root.mkdir(parents=True, exist_ok=True)
    urls = {s: f"sqlite:///{root / f'source_{s}.db'}" for s in SOURCE_NAMES}
    side = root / "side"
    if not (side / "simulator_state.json").exists():
        t = time.perf_counter()
        simulator.build(urls, scale=args.scale, seed=42, days=args.days, side=side)
        print(f"simulator build {args.scale} {args.days} d: {time.perf_counter() - t:.1f} s")
    env = {"DATA_DIR": str(root / "data"), "WAREHOUSE_PATH": str(root / "data" / "warehouse.duckdb"),
           "ETL_SAFETY_LAG_S": "0", **{f"SOURCE_{s.upper()}_URL": u for s, u in urls.items()}}
    return urls, load_settings(env), side


def sim_clock(side: Path) -> datetime:
    from simulator import state
    return SIM_EPOCH + timedelta(seconds=state.load(side).clock)


def full_periods(as_of: datetime) -> list[Period]:
    today = day(as_of.date())
    cur = month(as_of.year, as_of.month)
    return sorted({today, cur, previous_month(cur), *hours_of(today)})


# kpis/batch.py's facts statements (a statement of KPIs that share a subquery opens with WITH)
FACTS_STATEMENTS = ("INSERT INTO _fr SELECT * FROM (", "INSERT INTO _fr WITH ")


class Timed:
    """A connection that adds up the time of each kind of statement the engine sends."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con = con
        self.kinds: dict[str, list[float]] = {}
        self.statements: list[tuple[float, str]] = []

    def execute(self, sql: str, *args: object) -> duckdb.DuckDBPyConnection:
        t = time.perf_counter()
        try:
            return self._con.execute(sql, *args)
        finally:
            text = " ".join(sql.split())
            kind = ("facts (reduced per KPI, period, org, grid)" if text.startswith(FACTS_STATEMENTS)
                    else "kept prelude tables (kpis/prelude.py)" if ("kpi_prelude_state" in text or "_k_aff" in text
                                                                    or "FROM etl_run" in text)
                    else "wake by columns (kpis/wake.py)" if "kpi_wake_fp" in text or "SUM(hash(" in text
                    else "attribution" if text.startswith("INSERT INTO _fg")
                    else "day store (kpis/day_store.py)" if ("kpi_day" in text or "_dmap" in text
                                                             or "_mmap" in text)
                    else "presence" if text.startswith("INSERT INTO _present")
                    else "roll-up, value, status (all batched KPIs)" if text.startswith("INSERT INTO _result WITH agg")
                    else "non-additive KPIs (own statement)" if text.startswith("INSERT INTO _result SELECT")
                    else "baselines" if "baseline" in text[:80] or text.startswith("UPDATE _result SET status")
                    else "prelude" if text.startswith(("CREATE OR REPLACE TABLE k_", "CREATE OR REPLACE VIEW",
                                                       "CREATE OR REPLACE TEMP TABLE k_",
                                                       "CREATE OR REPLACE MACRO", "SELECT table_name"))
                    else "store" if any(w in text[:60] for w in ("kpi_value", "_batch", "COMMIT", "BEGIN"))
                    else "other")
            c = self.kinds.setdefault(kind, [0, 0.0])
            c[0] += 1
            c[1] += time.perf_counter() - t
            if TOP:
                names = _KPI_NAMED.findall(sql)
                self.statements.append((time.perf_counter() - t, (
                    f"facts of {', '.join(names[:3])}" + (f" +{len(names) - 3}" if len(names) > 3 else "")
                    if names and kind.startswith("facts") else text[:100])))

    def __getattr__(self, name: str) -> object:
        return getattr(self._con, name)


def load() -> str:
    return "load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --top N: the N slowest statements of each pass (facts named by their KPIs)
TOP = 0
_KPI_NAMED = re.compile(r"-- (\S+) \(named")

# --day-store: (a) as the worker evaluates, months of day-additive KPIs summed from stored days
DAY_STORE = False


def full_evaluation(con: duckdb.DuckDBPyConnection, registry: Registry, as_of: datetime
                    ) -> tuple[float, float, int, dict[str, list[float]]]:
    """All KPIs for today, its hours, the current and the last closed month, stored, as the
    worker does it; wall and CPU seconds (CPU of every thread of this process), rows."""
    timed = Timed(con)
    print(f"    (full evaluation starts; {load()})")
    t, c = time.perf_counter(), time.process_time()
    s = evaluate_and_store(timed, registry, full_periods(as_of), as_of, use_day_store=DAY_STORE)
    for kid, err in s.errors.items():
        print(f"  ERROR {kid}: {err.splitlines()[0][:200]}")
    for sec, text in sorted(timed.statements, key=lambda x: -x[0])[:TOP]:
        print(f"      {sec:.3f}  {text}")
    return time.perf_counter() - t, time.process_time() - c, s.rows, timed.kinds


def print_kinds(kinds: dict[str, list[float]]) -> None:
    print("    by statement kind: " + "; ".join(f"{k} {t:.2f}s ({n})" for k, (n, t) in
                                                 sorted(kinds.items(), key=lambda x: -x[1][1])))


# --- (c) pandas -------------------------------------------------------------------------------

class Frames:
    """Warehouse tables and shared views read once with DuckDB .df() (counted in pandas time)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self._cache: dict[str, pd.DataFrame] = {}

    def __getitem__(self, sql: str) -> pd.DataFrame:
        if sql not in self._cache:
            self._cache[sql] = self.con.execute(sql).df()
        return self._cache[sql]


def _window(df: pd.DataFrame, col: str, periods: list[tuple[int, Period]], as_of: datetime) -> pd.DataFrame:
    parts = []
    for pid, p in periods:
        part = df[(df[col] >= p.ws) & (df[col] < p.te(as_of))]
        parts.append(part.assign(pid=pid))
    return pd.concat(parts, ignore_index=True) if parts else df.assign(pid=pd.Series(dtype=int))


def _present(df: pd.DataFrame, col: str, periods: list[tuple[int, Period]], as_of: datetime) -> set[int]:
    return {pid for pid, p in periods if ((df[col] >= p.ws) & (df[col] < p.te(as_of))).any()}


def rollup(fr: Frames, k: KpiDef, facts: pd.DataFrame, periods: list[tuple[int, Period]],
           present: set[int] | None = None) -> pd.DataFrame:
    """CONVENTIONS.md §4 roll-up: unknown org -> root, every ancestor, grids, every unit x period."""
    org = fr["SELECT unit_no, unit_level FROM k_org"]
    anc = fr["SELECT unit_no, ancestor_no, ancestor_level FROM k_org_ancestor"]
    root = fr["SELECT unit_no FROM k_root"].unit_no.iloc[0]
    orgs = set(org.unit_no[org.unit_level != "grid"])
    grids = set(org.unit_no[org.unit_level == "grid"])
    f = facts.assign(attr_org=facts.org_no.where(facts.org_no.isin(orgs), root),
                     attr_grid=facts.grid_no.where(facts.grid_no.isin(grids)))
    levels = [lv for lv in k.org_levels if lv != "grid"]
    up = f.merge(anc[anc.ancestor_level.isin(levels)], left_on="attr_org", right_on="unit_no")
    agg = [up.groupby(["pid", "ancestor_no"])[["num", "den"]].sum().reset_index()
           .rename(columns={"ancestor_no": "org_no"})]
    if "grid" in k.org_levels:
        agg.append(f[f.attr_grid.notna()].groupby(["pid", "attr_grid"])[["num", "den"]].sum()
                   .reset_index().rename(columns={"attr_grid": "org_no"}))
    agg_df = pd.concat(agg, ignore_index=True)
    units = org[org.unit_level.isin(k.org_levels)][["unit_no"]].rename(columns={"unit_no": "org_no"})
    grid = units.merge(pd.DataFrame({"pid": [pid for pid, _ in periods]}), how="cross")
    out = grid.merge(agg_df, on=["pid", "org_no"], how="left")
    counting = k.kind in ("count", "sum")
    out["num"] = out.num.fillna(0.0)
    out["den"] = float("nan") if counting else out.den.fillna(0.0)
    if present is not None:
        gone = ~out.pid.isin(present)
        out.loc[gone, ["num", "den"]] = float("nan")
    out["value"] = out.num if counting else k.scale * out.num / out.den.where(out.den != 0)
    meta = pd.DataFrame([(pid, p.grain, p.ws) for pid, p in periods], columns=["pid", "grain", "period_start"])
    return out.merge(meta, on="pid").assign(kpi_id=k.id)


def _is_active(c: pd.DataFrame, te: datetime) -> pd.Series:
    x = (te - timedelta(microseconds=1)).date()
    built = pd.to_datetime(c.build_date).dt.date.where(c.build_date.notna(), pd.to_datetime(c.created_at).dt.date)
    cancel = pd.to_datetime(c.cancel_date).dt.date
    return ((c.is_deleted == 0) & (built <= x) & (cancel.isna() | (cancel > x))
            & ~((c.status_code == "04") & c.cancel_date.isna()))


def p_arrival_urban(fr, k, periods, as_of):
    t = fr["SELECT * FROM k_task"]
    t = t[t.main_task & t.appoint_time.isna() & (t.area == "01")]
    t = _window(t, "start_time", periods, as_of)
    arr = t.arrive_time.where(t.arrive_time <= as_of)
    t = t[~(arr < t.start_time).fillna(False)]
    arr = arr.loc[t.index]
    facts = pd.DataFrame({"pid": t.pid, "org_no": t.org_no, "grid_no": t.tg_grid_no,
                          "num": (arr <= t.dl).astype(float),
                          "den": (arr.notna() | (t.dl <= as_of)).astype(float)})
    return rollup(fr, k, facts, periods)


def _queued(fr):
    x = fr["SELECT * FROM cs_call"]
    short = x.call_result.isin(["03", "04"]) & x.end_time.notna() & \
        ((x.end_time - x.queue_start_time) <= pd.Timedelta(seconds=5))
    return x[(x.is_deleted == 0) & (x.call_direction == "01") & x.queue_start_time.notna() & ~short]


def p_answer_rate(fr, k, periods, as_of):
    x = _window(_queued(fr), "queue_start_time", periods, as_of)
    facts = pd.DataFrame({"pid": x.pid, "org_no": x.org_no, "grid_no": None,
                          "num": (x.call_result == "01").astype(float), "den": 1.0})
    return rollup(fr, k, facts, periods)


def p_inbound_calls(fr, k, periods, as_of):
    x = fr["SELECT * FROM cs_call"]
    present = _present(x, "arrive_time", periods, as_of)
    x = _window(x[(x.is_deleted == 0) & (x.call_direction == "01")], "arrive_time", periods, as_of)
    facts = pd.DataFrame({"pid": x.pid, "org_no": x.org_no, "grid_no": None, "num": 1.0, "den": float("nan")})
    return rollup(fr, k, facts, periods, present)


def _orders(fr, k, periods, as_of, complaint: bool):
    present = _present(fr["SELECT accept_time FROM cs_work_order"], "accept_time", periods, as_of)
    w = fr["SELECT * FROM k_wo"]
    w = w[w.vwo & ((w.busi_type_code == "02") if complaint else True)]
    w = _window(w, "accept_time", periods, as_of)
    facts = pd.DataFrame({"pid": w.pid, "org_no": w.attr_org, "grid_no": w.attr_grid, "num": 1.0,
                          "den": float("nan")})
    return rollup(fr, k, facts, periods, present)


def p_order_total(fr, k, periods, as_of):
    return _orders(fr, k, periods, as_of, complaint=False)


def p_order_complaint(fr, k, periods, as_of):
    return _orders(fr, k, periods, as_of, complaint=True)


def p_repair_orders(fr, k, periods, as_of):
    present = _present(fr["SELECT receive_time FROM dist_repair_task"], "receive_time", periods, as_of)
    t = fr["SELECT * FROM k_task"]
    t = _window(t[t.main_task], "receive_time", periods, as_of)
    facts = pd.DataFrame({"pid": t.pid, "org_no": t.org_no, "grid_no": t.tg_grid_no, "num": 1.0,
                          "den": float("nan")})
    return rollup(fr, k, facts, periods, present)


def p_residential_share(fr, k, periods, as_of):
    c = fr["SELECT * FROM mis_customer"]
    code = fr["SELECT code_value, parent_value FROM mis_code WHERE code_type = 'ELEC_TYPE' AND is_deleted = 0"]
    c = c.merge(code, left_on="elec_type_code", right_on="code_value", how="left")
    parts = []
    for pid, p in periods:
        a = c[_is_active(c, p.te(as_of))]
        parts.append(pd.DataFrame({"pid": pid, "org_no": a.org_no, "grid_no": a.grid_no,
                                   "num": (a.parent_value == "2").astype(float), "den": 1.0}))
    return rollup(fr, k, pd.concat(parts, ignore_index=True), periods)


def p_collect_success(fr, k, periods, as_of):
    m = fr["SELECT * FROM meter_collection_daily WHERE is_deleted = 0 AND coll_status <> '04'"]
    o = fr["SELECT meter_asset_no FROM meter_coll_obj WHERE is_deleted = 0 AND coll_flag = 1"]
    tg = fr["SELECT tg_no, grid_no FROM dist_tg WHERE is_deleted = 0"]
    m = m.merge(o, on="meter_asset_no").merge(tg, on="tg_no", how="left", suffixes=("", "_tg"))
    m["d"] = pd.to_datetime(m.data_date)
    m = _window(m, "d", periods, as_of)
    ok = (m.coll_status == "01") & (m.success_time <= as_of) & (m.success_time < m.d + pd.Timedelta(hours=33))
    facts = pd.DataFrame({"pid": m.pid, "org_no": m.org_no, "grid_no": m.grid_no_tg if "grid_no_tg" in m else m.grid_no,
                          "num": ok.astype(float), "den": 1.0})
    return rollup(fr, k, facts, periods)


def p_online_payment(fr, k, periods, as_of):
    y = fr["SELECT * FROM mis_payment WHERE is_deleted = 0 AND status_code = '01'"]
    c = fr["SELECT cons_no, grid_no FROM mis_customer WHERE is_deleted = 0"]
    y = _window(y.merge(c, on="cons_no", how="left"), "pay_time", periods, as_of)
    online = y.pay_channel.isin(["0104", "0105", "0106", "0207", "0208", "0209"])
    facts = pd.DataFrame({"pid": y.pid, "org_no": y.org_no, "grid_no": y.grid_no,
                          "num": online.astype(float), "den": 1.0})
    return rollup(fr, k, facts, periods)


def p_online_application(fr, k, periods, as_of):
    a = fr["SELECT * FROM mis_app WHERE is_deleted = 0"]
    a = a[a.busi_type_code.isin(["101", "102", "103", "111", "112", "121", "122", "131"])]
    a = _window(a, "accept_time", periods, as_of)
    facts = pd.DataFrame({"pid": a.pid, "org_no": a.org_no, "grid_no": a.grid_no,
                          "num": a.accept_channel.isin(["02", "05", "06"]).astype(float), "den": 1.0})
    return rollup(fr, k, facts, periods)


PANDAS: dict[str, Callable] = {
    "repair.arrival_ontime_rate_urban": p_arrival_urban,
    "repair.orders": p_repair_orders,
    "call.answer_rate": p_answer_rate,
    "call.inbound_calls": p_inbound_calls,
    "order.total": p_order_total,
    "order.complaint": p_order_complaint,
    "customer.residential_share": p_residential_share,
    "metering.daily_collect_success_rate": p_collect_success,
    "billing.online_payment_share": p_online_payment,
    "newconn.online_application_share": p_online_application,
}


def side_by_side(con: duckdb.DuckDBPyConnection, registry: Registry, as_of: datetime) -> None:
    """The engine computes the 10 KPIs as it computes a pass (kpis.batch, one plan: compute and
    baselines, no store); pandas computes each from DataFrames."""
    req = full_periods(as_of)
    apply_prelude(con)
    plan = [(registry.get(kid), periods_for(registry.get(kid), req, as_of)) for kid in PANDAS]
    t, c = time.perf_counter(), time.process_time()
    errors: dict[str, str] = {}
    apply_baselines(con, compute_plan(con, plan, as_of, errors))
    all_rows = con.execute("SELECT kpi_id, org_no, org_level, grain, period_start, period_end, value, "
                           "numerator, denominator, baseline, status, is_final FROM _result").df()
    eng_t, eng_cpu = time.perf_counter() - t, time.process_time() - c
    if errors:
        raise SystemExit(f"engine failed: {errors}")
    pd_t, pd_cpu, mismatches, compared = 0.0, 0.0, [], 0
    fr = Frames(con)
    lines = []
    for k, ps in plan:
        kid, fn = k.id, PANDAS[k.id]
        t, c = time.perf_counter(), time.process_time()
        mine = fn(fr, k, list(enumerate(ps)), as_of)
        tp = time.perf_counter() - t
        pd_t, pd_cpu = pd_t + tp, pd_cpu + time.process_time() - c
        eng = all_rows[all_rows.kpi_id == kid]
        m = eng.merge(mine, on=["kpi_id", "org_no", "grain", "period_start"], how="outer", indicator="merge_")
        compared += len(m)
        for r in m.itertuples():
            same = r.merge_ == "both" and all(
                (pd.isna(a) and pd.isna(b)) or (not pd.isna(a) and not pd.isna(b) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9))
                for a, b in ((r.value_x, r.value_y), (r.numerator, r.num)))
            if not same:
                mismatches.append(f"{kid} {r.grain} {r.period_start} {r.org_no}: engine {r.value_x} "
                                  f"({r.numerator}/{r.denominator}) pandas {r.value_y} ({r.num}/{r.den}) {r.merge_}")
        lines.append(f"    {kid:40s} pandas {tp * 1000:8.0f} ms   rows {len(eng)}")
    print("(c) 10 core KPIs, engine (one plan: compute + baselines, no store) vs pandas "
          "(reads via .df() included):")
    print("\n".join(lines))
    print(f"    total: engine {eng_t:.2f} s wall ({eng_cpu:.2f} s CPU), pandas {pd_t:.2f} s wall "
          f"({pd_cpu:.2f} s CPU), pandas/engine = {pd_t / eng_t:.1f}x wall, {pd_cpu / eng_cpu:.1f}x CPU; "
          f"{compared} values compared, {len(mismatches)} mismatches; {load()}")
    for line in mismatches[:15]:
        print("    MISMATCH " + line)
    if mismatches:
        raise SystemExit(f"{len(mismatches)} values differ between the engine and pandas")


# --- (d) the floor: the same 10 core KPIs in plain hand-written DuckDB statements --------------
#
# ARCHITECTURE.md §5 measured a floor (10 core KPIs at every org level in one set of DuckDB
# statements); a goal below it is reported as a ratio to it, measured side by side. Each flow is
# read once over the whole window and reduced to (hour or day, org, grid) before being placed in
# its periods; the stock is counted at every period end in one statement; one roll-up for all
# ten. Inputs are the warehouse tables and the prelude tables k_task / k_wo (as for pandas).

# kpi id -> (bucket, SQL of (t, org_no, grid_no, num, den)) for flows placed by one time t
FLOOR_FLOWS = {
    "repair.arrival_ontime_rate_urban": ("day", """
        SELECT start_time AS t, org_no, tg_grid_no AS grid_no,
               CASE WHEN upto(arrive_time, $as_of) <= dl THEN 1 ELSE 0 END AS num,
               CASE WHEN upto(arrive_time, $as_of) IS NOT NULL OR dl <= $as_of THEN 1 ELSE 0 END AS den
        FROM k_task WHERE main_task AND appoint_time IS NULL AND area = '01'
          AND NOT COALESCE(upto(arrive_time, $as_of) < start_time, FALSE)"""),
    "repair.orders": ("hour", """
        SELECT receive_time AS t, org_no, tg_grid_no AS grid_no, 1 AS num, 0 AS den
        FROM k_task WHERE main_task"""),
    "call.answer_rate": ("hour", """
        SELECT queue_start_time AS t, org_no, NULL AS grid_no,
               CASE WHEN call_result = '01' THEN 1 ELSE 0 END AS num, 1 AS den
        FROM cs_call WHERE is_deleted = 0 AND call_direction = '01' AND queue_start_time IS NOT NULL
          AND NOT (call_result IN ('03', '04') AND end_time IS NOT NULL
                   AND end_time - queue_start_time <= INTERVAL 5 SECOND)"""),
    "call.inbound_calls": ("hour", """
        SELECT arrive_time AS t, org_no, NULL AS grid_no, 1 AS num, 0 AS den
        FROM cs_call WHERE is_deleted = 0 AND call_direction = '01'"""),
    "order.total": ("day", """
        SELECT accept_time AS t, attr_org AS org_no, attr_grid AS grid_no, 1 AS num, 0 AS den
        FROM k_wo WHERE vwo"""),
    "order.complaint": ("day", """
        SELECT accept_time AS t, attr_org AS org_no, attr_grid AS grid_no, 1 AS num, 0 AS den
        FROM k_wo WHERE vwo AND busi_type_code = '02'"""),
    "metering.daily_collect_success_rate": ("day", """
        SELECT CAST(m.data_date AS TIMESTAMP) AS t, m.org_no, g.grid_no,
               CASE WHEN m.coll_status = '01' AND upto(m.success_time, $as_of)
                         < CAST(m.data_date AS TIMESTAMP) + INTERVAL 33 HOUR THEN 1 ELSE 0 END AS num,
               1 AS den
        FROM meter_collection_daily m
        JOIN meter_coll_obj o ON o.meter_asset_no = m.meter_asset_no AND o.is_deleted = 0
                             AND o.coll_flag = 1
        LEFT JOIN dist_tg g ON g.tg_no = m.tg_no AND g.is_deleted = 0
        WHERE m.is_deleted = 0 AND m.coll_status <> '04'
          AND m.data_date >= CAST($lo AS DATE) AND m.data_date <= CAST($as_of AS DATE)"""),
    "billing.online_payment_share": ("day", """
        SELECT y.pay_time AS t, y.org_no, c.grid_no,
               CASE WHEN y.pay_channel IN ('0104', '0105', '0106', '0207', '0208', '0209')
                    THEN 1 ELSE 0 END AS num, 1 AS den
        FROM mis_payment y LEFT JOIN mis_customer c ON c.cons_no = y.cons_no AND c.is_deleted = 0
        WHERE y.is_deleted = 0 AND y.status_code = '01'
          AND y.pay_time >= $lo AND y.pay_time < $as_of"""),
    "newconn.online_application_share": ("day", """
        SELECT accept_time AS t, org_no, grid_no,
               CASE WHEN accept_channel IN ('02', '05', '06') THEN 1 ELSE 0 END AS num, 1 AS den
        FROM mis_app WHERE is_deleted = 0
          AND busi_type_code IN ('101', '102', '103', '111', '112', '121', '122', '131')"""),
}
# Counts whose period has no source row at all are no_data (the definition's presence).
FLOOR_PRESENCE = {"repair.orders": ("dist_repair_task", "receive_time"),
                  "call.inbound_calls": ("cs_call", "arrive_time"),
                  "order.total": ("cs_work_order", "accept_time"),
                  "order.complaint": ("cs_work_order", "accept_time")}
# The stock: customers grouped by their validity dates first, then counted at every period end.
FLOOR_RESIDENTIAL = """
    WITH c AS (
        SELECT c.org_no, c.grid_no, COALESCE(c.build_date, CAST(c.created_at AS DATE)) AS d_from,
               c.cancel_date AS d_to, CASE WHEN e.parent_value = '2' THEN 1 ELSE 0 END AS res,
               COUNT(*) AS n
        FROM mis_customer c
        LEFT JOIN mis_code e ON e.code_type = 'ELEC_TYPE' AND e.code_value = c.elec_type_code
                            AND e.is_deleted = 0
        WHERE c.is_deleted = 0 AND NOT (c.status_code = '04' AND c.cancel_date IS NULL)
        GROUP BY ALL)
    SELECT p.kix, p.pid, c.org_no, c.grid_no, SUM(c.res * c.n) AS num, SUM(c.n) AS den
    FROM c JOIN _flp p ON p.kix = $kix AND c.d_from <= p.x AND (c.d_to IS NULL OR c.d_to > p.x)
    GROUP BY ALL"""


def floor_sql(con: duckdb.DuckDBPyConnection, plan: list[tuple[KpiDef, list[Period]]],
              as_of: datetime) -> list[tuple]:
    """The 10 KPIs by hand: rows (kpi_id, org_no, grain, period_start, value, numerator)."""
    rows = [(kix, p.grain, p.ws, p.we, p.te(as_of)) for kix, (_, ps) in enumerate(plan) for p in ps]
    con.execute("CREATE OR REPLACE TEMP TABLE _flp AS SELECT row_number() OVER () AS pid, kix, grain, "
                "ws, we, te, CAST(te - INTERVAL 1 MICROSECOND AS DATE) AS x FROM "
                "(SELECT unnest($k) AS kix, unnest($g) AS grain, unnest($ws) AS ws, unnest($we) AS we, "
                "unnest($te) AS te)", {"k": [r[0] for r in rows], "g": [r[1] for r in rows],
                                       "ws": [r[2] for r in rows], "we": [r[3] for r in rows],
                                       "te": [r[4] for r in rows]})
    con.execute("CREATE OR REPLACE TEMP TABLE _flr (kix INTEGER, pid BIGINT, org_no VARCHAR, "
                "grid_no VARCHAR, num HUGEINT, den HUGEINT)")
    lo = min(r[2] for r in rows)
    for kix, (k, _) in enumerate(plan):
        if k.id == "customer.residential_share":
            con.execute(f"INSERT INTO _flr {FLOOR_RESIDENTIAL}", {"kix": kix})
            continue
        bucket, facts = FLOOR_FLOWS[k.id]
        params = {"kix": kix, "as_of": as_of, **({"lo": lo} if "$lo" in facts else {})}
        con.execute(f"""INSERT INTO _flr
            WITH b AS (SELECT date_trunc('{bucket}', t) AS b, org_no, grid_no, SUM(num) AS num,
                              SUM(den) AS den
                       FROM ({facts}) f WHERE t < $as_of GROUP BY ALL)
            SELECT p.kix, p.pid, b.org_no, b.grid_no, SUM(b.num), SUM(b.den)
            FROM b JOIN _flp p ON p.kix = $kix AND b.b >= p.ws AND b.b < p.we
            GROUP BY ALL""", params)
    absent = [f"SELECT pid FROM _flp WHERE kix = {kix} AND NOT EXISTS (SELECT 1 FROM {table} x "
              f"WHERE x.{col} >= _flp.ws AND x.{col} < _flp.te)"
              for kix, (k, _) in enumerate(plan) if k.id in FLOOR_PRESENCE
              for table, col in [FLOOR_PRESENCE[k.id]]]
    meta = [(kix, k.id, float(k.scale), k.kind in ("count", "sum"), lvl)
            for kix, (k, _) in enumerate(plan) for lvl in k.org_levels]
    con.execute("CREATE OR REPLACE TEMP TABLE _flmeta AS SELECT unnest($a) AS kix, unnest($b) AS kpi_id, "
                "unnest($c) AS scale, unnest($d) AS counting, unnest($e) AS level",
                {n: [m[i] for m in meta] for i, n in enumerate("abcde")})
    return con.execute(f"""
        WITH a AS (
            SELECT r.kix, r.pid, COALESCE(ko.unit_no, (SELECT unit_no FROM k_root)) AS org,
                   kg.unit_no AS grid, SUM(r.num) AS num, SUM(r.den) AS den
            FROM _flr r
            LEFT JOIN k_org ko ON ko.unit_no = r.org_no AND ko.unit_level <> 'grid'
            LEFT JOIN k_org kg ON kg.unit_no = r.grid_no AND kg.unit_level = 'grid'
            GROUP BY ALL),
        up AS (
            SELECT a.kix, a.pid, an.ancestor_no AS unit_no, SUM(a.num) AS num, SUM(a.den) AS den
            FROM a JOIN k_org_ancestor an ON an.unit_no = a.org GROUP BY ALL
            UNION ALL
            SELECT kix, pid, grid, SUM(num), SUM(den) FROM a WHERE grid IS NOT NULL GROUP BY ALL),
        absent AS ({" UNION ALL ".join(absent) or "SELECT NULL::BIGINT AS pid WHERE FALSE"})
        SELECT m.kpi_id, u.unit_no, p.grain, p.ws,
               CASE WHEN p.pid IN (SELECT pid FROM absent) THEN NULL
                    WHEN m.counting THEN CAST(COALESCE(up.num, 0) AS DOUBLE)
                    ELSE m.scale * CAST(up.num AS DOUBLE) / NULLIF(CAST(up.den AS DOUBLE), 0) END,
               CASE WHEN p.pid IN (SELECT pid FROM absent) THEN NULL
                    ELSE CAST(COALESCE(up.num, 0) AS DOUBLE) END
        FROM _flp p JOIN _flmeta m ON m.kix = p.kix
        JOIN k_org u ON u.unit_level = m.level
        LEFT JOIN up ON up.kix = p.kix AND up.pid = p.pid AND up.unit_no = u.unit_no""").fetchall()


def floor_side_by_side(con: duckdb.DuckDBPyConnection, registry: Registry, as_of: datetime,
                       full_cpu: float, full_wall: float) -> None:
    """Engine (one plan, compute + baselines) vs the hand-written floor for the 10 core KPIs,
    values compared; and the full evaluation against the same floor."""
    req = full_periods(as_of)
    apply_prelude(con)
    plan = [(registry.get(kid), periods_for(registry.get(kid), req, as_of)) for kid in PANDAS]
    start = load()
    t, c = time.perf_counter(), time.process_time()
    errors: dict[str, str] = {}
    apply_baselines(con, compute_plan(con, plan, as_of, errors))
    eng = {(r[0], r[1], r[2], r[3]): (r[4], r[5]) for r in con.execute(
        "SELECT kpi_id, org_no, grain, period_start, value, numerator FROM _result").fetchall()}
    eng_t, eng_cpu = time.perf_counter() - t, time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    mine = {(r[0], r[1], r[2], r[3]): (r[4], r[5]) for r in floor_sql(con, plan, as_of)}
    fl_t, fl_cpu = time.perf_counter() - t, time.process_time() - c
    if errors:
        raise SystemExit(f"engine failed: {errors}")

    def same(a: object, b: object) -> bool:
        return (a is None and b is None) or (a is not None and b is not None
                                             and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9))
    bad = [key for key in eng.keys() | mine.keys()
           if key not in eng or key not in mine or not all(map(same, eng[key], mine[key]))]
    print(f"(d) floor: 10 core KPIs in hand-written DuckDB SQL (ARCHITECTURE.md §5) vs the engine "
          f"(one plan: compute + baselines); {start} at the start")
    print(f"    engine {eng_t:.2f} s wall ({eng_cpu:.2f} s CPU), floor {fl_t:.2f} s wall "
          f"({fl_cpu:.2f} s CPU): engine/floor = {eng_t / fl_t:.2f}x wall, {eng_cpu / fl_cpu:.2f}x CPU; "
          f"full evaluation (all KPIs)/floor = {full_wall / fl_t:.1f}x wall, {full_cpu / fl_cpu:.1f}x CPU; "
          f"{len(eng.keys() | mine.keys())} values compared, mismatches = {len(bad)}; {load()} at the end")
    for key in sorted(bad, key=str)[:15]:
        print(f"    MISMATCH {key}: engine {eng.get(key)} floor {mine.get(key)}")
    if bad:
        raise SystemExit(f"{len(bad)} values differ between the engine and the floor")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="county", choices=("small", "county", "city"))
    ap.add_argument("--days", type=int, default=45)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="an existing data directory (a copy: the run writes into it)")
    ap.add_argument("--skip-incremental", action="store_true")
    ap.add_argument("--day-store", action="store_true",
                    help="(a) with the day store (kpis/day_store.py) as the worker uses it: months "
                         "of day-additive KPIs summed from stored days, a day re-read when the "
                         "ETL's record shows a change")
    ap.add_argument("--again", type=int, default=0,
                    help="run (a) this many times more, with the kept tables (a) built: the full "
                         "evaluation of a running worker, whose kept tables exist")
    ap.add_argument("--skip-pandas", action="store_true", help="leave out (c); (d), the floor, still runs")
    ap.add_argument("--minutes", type=int, default=3, help="one-minute passes measured in (b)")
    ap.add_argument("--churn", type=int, default=0,
                    help="customers closed in the MIS source before each measured minute's ETL pass")
    ap.add_argument("--sweep-last", action="store_true",
                    help="make the last measured minute a sweep (its last one taken SWEEP_EVERY "
                         "before), to measure the sweep after N churn minutes without waiting for it")
    ap.add_argument("--minutes-only", action="store_true",
                    help="only (b), on a --data-dir whose backfill (b0) an earlier run did (a copy)")
    ap.add_argument("--advance-hours", type=float, default=0,
                    help="live hours run (and loaded) before the measured minutes")
    ap.add_argument("--top", type=int, default=0,
                    help="list the N slowest statements of each full evaluation and live minute")
    ap.add_argument("--per-kpi", action="store_true",
                    help="facts KPI by KPI (kpis.batch.CHUNK = 1: more statements, a larger total)")
    args = ap.parse_args()
    global DAY_STORE, TOP
    DAY_STORE, TOP = args.day_store, args.top
    if args.per_kpi:
        batch.CHUNK = 1
    args.workdir_given = args.workdir is not None
    args.workdir = args.workdir or REPO / "bench" / "out" / args.scale
    urls, settings, side = prepare(args)
    cmd = command(args)
    print(f"machine: {platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
          f"python {platform.python_version()}, duckdb {duckdb.__version__}, {datetime.now():%Y-%m-%d %H:%M}")
    fresh = not settings.warehouse_path.exists()
    registry = load_registry()
    with Warehouse(settings.warehouse_path, threads=2, memory_limit="8GB") as wh:
        if fresh:
            t = time.perf_counter()
            r = run_pass(settings, wh)
            print(f"initial ETL load: {time.perf_counter() - t:.1f} s ok={r.ok}")
        con = wh.cursor()
        ensure_schema(con)
        as_of = sim_clock(side) - timedelta(seconds=1)
        if args.minutes_only:
            done = con.execute("SELECT COUNT(*) FROM kpi_eval_state WHERE last_full_at IS NOT NULL")
            if done.fetchone()[0] == 0:
                sys.exit("--minutes-only needs a DIR whose backfill (b0) is done")
            live_minutes(args, settings, wh, con, registry, side, urls, cmd)
            return
        con.execute("DELETE FROM kpi_value")
        con.execute("DELETE FROM kpi_eval_state")   # so that (b0) below is the backfill
        wall, cpu, rows, kinds = full_evaluation(con, registry, as_of)
        units = con.execute("SELECT unit_level, COUNT(*) FROM k_org GROUP BY 1 ORDER BY 2").fetchall()
        print(f"as_of {as_of}; org units {dict(units)}; {len(registry.kpis)} KPIs")
        print(f"(a) full evaluation, cold (empty kpi_value): {wall:.2f} s wall, {cpu:.2f} s CPU, "
              f"{rows} rows; {load()}")
        print_kinds(kinds)
        print(f"    reproduce: {cmd}")
        if not args.skip_pandas:
            side_by_side(con, registry, as_of)
        floor_side_by_side(con, registry, as_of, cpu, wall)
        print(f"    reproduce: {cmd}")
        for n in range(args.again):
            wall2, cpu2, _, kinds = full_evaluation(con, registry, as_of)
            print(f"(a{n + 2}) the same full evaluation again, the tables kept between passes "
                  f"(kpis/prelude.py) as (a) left them: {wall2:.2f} s wall, {cpu2:.2f} s CPU; {load()}")
            print_kinds(kinds)
        if args.skip_incremental:
            return
        t = time.perf_counter()
        s = evaluate_incremental(con, registry, as_of)
        n_hist = con.execute("SELECT COUNT(*) FROM kpi_value").fetchone()[0]
        print(f"(b0) evaluate_incremental first run (backfill, not the figure): {time.perf_counter() - t:.1f} s, "
              f"{s.periods} KPI-periods, kpi_value now {n_hist} rows, errors {len(s.errors)}")
        t = time.perf_counter()
        moved = value_layout.sort_after_large_pass(con, s.rows)   # as the worker's cycle does
        print(f"(b0') {moved} rows re-appended in period order after the backfill (the worker's "
              f"cycle, kpis/value_layout.py): {time.perf_counter() - t:.1f} s")
        wall, cpu, rows, kinds = full_evaluation(con, registry, as_of)
        print(f"(a') full evaluation, warm (kpi_value holding {n_hist} rows): {wall:.2f} s wall, "
              f"{cpu:.2f} s CPU; {load()}")
        print_kinds(kinds)
        wal = wh.wal_bytes()
        t = time.perf_counter()
        wh.fold_wal(above=0)    # the minutes start as after a worker cycle that folded
        print(f"    WAL of the backfill and (a') folded before the minutes: {wal / 2**20:.1f} MB in "
              f"{time.perf_counter() - t:.2f} s")
        live_minutes(args, settings, wh, con, registry, side, urls, cmd)


def close_accounts(url: str, n: int, clock: datetime, minute: int) -> int:
    """Close n active customers in the MIS source at the simulator's clock (销户: status 04 and a
    cancel date, as the territory writes its closed customers): the archive churn a real MIS has
    and the simulator lacks (docs/simulator.md, Limits). Which ones: the active customers at
    rowids k * 7919 + minute * 104729 (mod the table), the same in every run from the same
    state; stamped 30 s before the clock, inside the window of the pass that follows."""
    import sqlite3
    path = url.removeprefix("sqlite:///")
    stamp = (clock - timedelta(seconds=30)).strftime("%Y-%m-%d %H:%M:%S")
    with sqlite3.connect(path) as src:
        top = src.execute("SELECT MAX(rowid) FROM mis_customer").fetchone()[0]
        picked, k = [], 0
        while len(picked) < n and k < 100 * n:
            row = src.execute("SELECT cons_no FROM mis_customer WHERE rowid = ? AND status_code = '01' "
                              "AND is_deleted = 0", [(k * 7919 + minute * 104729) % top + 1]).fetchone()
            picked += [row[0]] if row else []
            k += 1
        src.executemany("UPDATE mis_customer SET status_code = '04', cancel_date = ?, updated_at = ? "
                        "WHERE cons_no = ?", [(stamp[:10], stamp, c) for c in picked])
    return len(picked)


def live_minutes(args, settings, wh, con, registry, side, urls, cmd) -> None:
    """(b): --advance-hours, then --minutes one-minute live steps, each with its ETL pass and
    its evaluate_incremental."""
    from simulator import live
    if args.advance_hours:
        t = time.perf_counter()
        left = args.advance_hours * 3600
        while left > 0:
            live.step(urls, int(min(3600, left)), side=side)
            left -= 3600
            run_pass(settings, wh)
        as_of = sim_clock(side)
        c = time.perf_counter()
        s = evaluate_incremental(con, registry, as_of)
        wh.fold_wal(above=0)
        print(f"    advanced {args.advance_hours} h to {as_of} in {c - t:.0f} s; its catch-up pass "
              f"{time.perf_counter() - c:.1f} s ({s.kpis} KPIs; not a figure)")
    ordinary = []
    for i in range(args.minutes):
        written = sum(live.step(urls, 60, side=side).values())
        if args.churn:
            written += close_accounts(urls["mis"], args.churn, sim_clock(side), i)
        t = time.perf_counter()
        r = run_pass(settings, wh)
        etl = time.perf_counter() - t
        as_of = sim_clock(side)
        if args.sweep_last and i == args.minutes - 1:
            con.execute("UPDATE kpi_eval_state SET last_sweep_at = ?", [as_of - SWEEP_EVERY])
        start = load()
        timed = Timed(con)
        t, c = time.perf_counter(), time.process_time()
        s = evaluate_incremental(timed, registry, as_of)
        inc, cpu = time.perf_counter() - t, time.process_time() - c
        swept = con.execute("SELECT last_sweep_at = last_eval_at FROM kpi_eval_state").fetchone()[0]
        if not swept:
            ordinary.append((inc, cpu))
        print(f"(b) minute {i + 1} ({as_of:%H:%M}, {'sweep' if swept else 'ordinary'}): live wrote "
              f"{written} rows, ETL pass {etl:.2f} s ok={r.ok}, "
              f"evaluate_incremental {inc:.2f} s wall, {cpu:.2f} s CPU ({s.kpis} KPIs, "
              f"{s.skipped} skipped by columns, {len(getattr(s, 'as_stored', ()))} days as stored, "
              f"{s.periods} KPI-periods, {s.rows} rows, {len(s.changed)} changed, "
              f"errors {len(s.errors)}); {start} at the start, {load()} at the end")
        rebuilt = sorted(n for n, how in getattr(s, "kept", {}).items() if how == "full")
        print(f"    kept tables: {len(getattr(s, 'kept', {}))} read, rebuilt whole: {', '.join(rebuilt) or 'none'}")
        print_kinds(timed.kinds)
        for sec, text in sorted(timed.statements, key=lambda x: -x[0])[:TOP]:
            print(f"      {sec:.3f}  {text}")
        wal = wh.wal_bytes()
        t, c = time.perf_counter(), time.process_time()
        folded = wh.fold_wal()      # as the worker does after its publish
        print(f"    WAL after the pass {wal / 2**20:.1f} MB; "
              + (f"folded (worker: after the publish) in {time.perf_counter() - t:.2f} s wall, "
                 f"{time.process_time() - c:.2f} s CPU" if folded else "not folded (under 64 MB)"))
    if ordinary:
        walls = [w for w, _ in ordinary]
        print(f"(b) ordinary passes: {len(walls)}, median {statistics.median(walls):.2f} s wall "
              f"({statistics.median(c for _, c in ordinary):.2f} s CPU), slowest {max(walls):.2f} s wall")
    # what the minutes left in the WAL, folded now: its cost per minute is part of a cycle
    wal = wh.wal_bytes()
    t, c = time.perf_counter(), time.process_time()
    wh.fold_wal(above=0)
    print(f"(b') folding the WAL the {args.minutes} minutes left ({wal / 2**20:.1f} MB): "
          f"{time.perf_counter() - t:.2f} s wall, {time.process_time() - c:.2f} s CPU "
          "(the worker does it after a publish once the WAL passes 64 MB)")
    print(f"    reproduce: {cmd}")


if __name__ == "__main__":
    main()
