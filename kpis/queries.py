"""KpiService: the read API that pages and export endpoints call, over the serving snapshot.

Every method takes the caller's `scope` (required, so forgetting it is a TypeError) and reads
only units under the scope's grants. Results are small frames, memoised under a key holding the
authorised sorted org tuple, the snapshot version, the filters and the language
(ARCHITECTURE.md §6), so a publish invalidates every entry and no scope leaks between users.
"""
from __future__ import annotations

import hashlib
import re
import threading
from calendar import monthrange
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd

from kpis.scope import authorise
from kpis.serving import SnapshotReader

STATUS_RANK = {"critical": 0, "warning": 1, "insufficient_sample": 2, "no_data": 3, "ok": 4}
SOURCES = ("mis", "cs", "dist", "meter")
AREA_LIMIT_MIN = {"01": 45, "02": 90, "03": 120}
_PERIOD = re.compile(r"^(today|\d{4}-\d{2}-\d{2}|\d{4}-\d{2})$")


@dataclass(frozen=True)
class Period:
    """A filter period: one day or one calendar month, [start, end)."""
    kind: str           # day | month
    start: datetime
    end: datetime
    label: str          # the URL value: YYYY-MM-DD or YYYY-MM

    @property
    def grain(self) -> str:
        return "daily" if self.kind == "day" else "monthly"

    def previous(self) -> Period:
        if self.kind == "day":
            d = self.start.date() - timedelta(days=1)
            return day_period(d)
        prev = (self.start.replace(day=1) - timedelta(days=1)).date()
        return month_period(prev.year, prev.month)


def day_period(d: date) -> Period:
    start = datetime(d.year, d.month, d.day)
    return Period("day", start, start + timedelta(days=1), d.isoformat())


def month_period(year: int, month: int) -> Period:
    start = datetime(year, month, 1)
    return Period("month", start, start + timedelta(days=monthrange(year, month)[1]),
                  f"{year:04d}-{month:02d}")


def parse_period(text: str | None, today: date) -> Period:
    """'today', 'YYYY-MM-DD' or 'YYYY-MM'; anything else raises ValueError naming the value."""
    text = (text or "today").strip()
    if not _PERIOD.match(text):
        raise ValueError(f"period `{text}`: expected today, YYYY-MM-DD or YYYY-MM")
    if text == "today":
        return day_period(today)
    if len(text) == 7:
        return month_period(int(text[:4]), int(text[5:7]))
    return day_period(date.fromisoformat(text))


def source_systems(text: object) -> tuple[str, ...]:
    """The source systems named in a kpi_def `sources` cell (any separator)."""
    words = re.findall(r"[a-z]+", str(text or "").lower())
    return tuple(s for s in SOURCES if s in words)


class KpiService:
    """Read API over the current snapshot; one per web process."""

    def __init__(self, reader: SnapshotReader, cache: Any = None, refresh_s: int = 30,
                 stale_after_s: int = 300, timeout_s: int = 600) -> None:
        self.reader = reader
        self.cache = cache
        self.refresh_ms = refresh_s * 1000
        self.stale_after_s = stale_after_s
        self.timeout_s = timeout_s
        # newest published version -> version to serve; the web app's cache warmer holds a new
        # snapshot back until the pages in use are rendered for it (dashboards/_warm.py)
        self.version_gate: Callable[[int], int] | None = None
        self._building: dict[str, threading.Lock] = {}
        self._building_lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------
    def version(self) -> int | None:
        """The snapshot version to serve (None before the first publish)."""
        newest = self.reader.version()
        if newest is None or self.version_gate is None:
            return newest
        return self.version_gate(newest)

    def _memo(self, name: str, version: int, orgs: tuple[str, ...], filters: tuple[Any, ...],
              build: Callable[[], Any]) -> Any:
        if self.cache is None:
            return build()
        key = _memo_key(name, version, orgs, filters)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        # one build per key in this process: threads asking for the same missing entry wait for
        # it instead of all rendering it (builds nest outer to inner, so waits cannot cycle)
        with self._building_lock:
            lock = self._building.setdefault(key, threading.Lock())
        try:
            with lock:
                hit = self.cache.get(key)
                if hit is not None:
                    return hit
                value = build()
                self.cache.set(key, value, timeout=self.timeout_s)
                return value
        finally:
            with self._building_lock:
                if self._building.get(key) is lock and not lock.locked():
                    del self._building[key]

    def cached_view(self, name: str, scope: Any, filters: dict[str, Any], build: Callable[[], Any],
                    version: int | None = None) -> Any:
        """A finished page body, memoised like the frames: keyed by the snapshot version, the
        authorised units and the filters (building figures costs more than reading DuckDB)."""
        version = version or self._require_version()
        return self._memo(VIEW_MEMO + name, version, self.visible_orgs(scope, version),
                          _view_filters(filters), build)

    def cached_view_only(self, name: str, scope: Any, filters: dict[str, Any], version: int) -> Any:
        """The entry `cached_view` would return for these arguments if it is cached, else None
        (never builds: the web fast path answers hits only and lets Dash render misses)."""
        if self.cache is None:
            return None
        key = _memo_key(VIEW_MEMO + name, version, self.visible_orgs(scope, version), _view_filters(filters))
        return self.cache.get(key)

    def _df(self, sql: str, params: list[Any] | dict[str, Any] | None = None,
            version: int | None = None) -> pd.DataFrame:
        with self.reader.cursor(version) as (_v, cur):
            return cur.execute(sql, params or []).df()

    def _tables(self, version: int) -> frozenset[str]:
        def build() -> frozenset[str]:
            df = self._df("SELECT table_name FROM information_schema.tables", version=version)
            return frozenset(df["table_name"])
        return self._memo("tables", version, (), (), build)

    def visible_orgs(self, scope: Any, version: int) -> tuple[str, ...]:
        """Every unit the scope may see (Scope.org_nos already holds the granted subtrees)."""
        return tuple(sorted(getattr(scope, "org_nos", ()) or ()))

    def authorise(self, scope: Any, org: str | None, version: int) -> tuple[str | None, tuple[str, ...]]:
        """(selected unit, authorised units under it); (None, ()) when the unit is not granted.

        No unit asked for means the top authorised unit."""
        if not self.visible_orgs(scope, version):
            return None, ()
        if not org:
            tree = self.org_tree(scope, version=version)
            if tree.empty:
                return None, ()
            org = str(tree.iloc[0]["org_no"])
        under = authorise(scope, org)
        return (org, under) if under else (None, ())

    # -- orgs, definitions, freshness -------------------------------------------------------
    def org_tree(self, scope: Any, version: int | None = None) -> pd.DataFrame:
        """Authorised units (org_no, org_name, org_level, parent_no, depth), top first."""
        version = version or self._require_version()
        visible = self.visible_orgs(scope, version)

        def build() -> pd.DataFrame:
            return self._df("SELECT org_no, org_name, org_level, parent_no, depth FROM dim_org "
                            "WHERE list_contains(?::VARCHAR[], org_no) ORDER BY depth, org_no",
                            [list(visible)], version)
        return self._memo("org_tree", version, visible, (), build)

    def breadcrumb(self, scope: Any, org: str, version: int) -> pd.DataFrame:
        """The chain from the top authorised unit down to `org`."""
        visible = set(self.visible_orgs(scope, version))
        df = self._df("SELECT a.ancestor_no AS org_no, d.org_name, d.depth FROM dim_org_ancestor a "
                      "JOIN dim_org d ON d.org_no = a.ancestor_no WHERE a.org_no = ? ORDER BY d.depth",
                      [org], version)
        return df[df["org_no"].isin(visible)].reset_index(drop=True)

    def children(self, scope: Any, org: str, version: int) -> pd.DataFrame:
        visible = set(self.visible_orgs(scope, version))
        df = self._df("SELECT org_no, org_name, org_level FROM dim_org WHERE parent_no = ? "
                      "ORDER BY org_no", [org], version)
        return df[df["org_no"].isin(visible)].reset_index(drop=True)

    def kpi_defs(self, version: int | None = None) -> pd.DataFrame:
        """kpi_def with normalised columns: kpi_id, name_zh, name_en, theme, unit, ... sources."""
        version = version or self._require_version()

        def build() -> pd.DataFrame:
            df = (self._df("SELECT * FROM kpi_def", version=version)
                  if "kpi_def" in self._tables(version) else pd.DataFrame())
            if df.empty:
                df = _registry_frame()
            df = df.rename(columns={"id": "kpi_id", "warning_threshold": "warning",
                                    "critical_threshold": "critical", "source_systems": "sources"})
            for col in ("kpi_id", "name_zh", "name_en", "theme", "unit", "direction", "grain", "warning",
                        "critical", "definition", "formula", "sources", "tier"):
                if col not in df:
                    df[col] = None
            df["sort"] = df["sort_no"] if "sort_no" in df else range(len(df))
            return df
        return self._memo("kpi_defs", version, (), (), build)

    def data_today(self, version: int) -> date:
        """The data's current day: the newest daily period evaluated (else the newest update)."""
        def build() -> date:
            tables = self._tables(version)
            if "kpi_value" in tables:
                got = self._df("SELECT MAX(period_start)::DATE AS d FROM kpi_value WHERE grain = 'daily'",
                               version=version)["d"].iloc[0]
                if pd.notna(got):
                    return pd.Timestamp(got).date()
            if "source_table_stats" in tables:
                got = self._df("SELECT MAX(max_updated_at) AS d FROM source_table_stats",
                               version=version)["d"].iloc[0]
                if pd.notna(got):
                    return pd.Timestamp(got).date()
            return date.today()
        return self._memo("today", version, (), (), build)

    def published_at(self, version: int) -> datetime | None:
        if "snapshot_info" not in self._tables(version):
            return None
        got = self._df("SELECT published_at FROM snapshot_info", version=version)["published_at"].iloc[0]
        return pd.Timestamp(got).to_pydatetime()

    def freshness(self, scope: Any, version: int | None = None) -> pd.DataFrame:
        """Per source: data as of, lag behind the snapshot time, stale flag, last pass status."""
        version = version or self._require_version()
        cols = ["source", "data_as_of", "lag_s", "stale", "last_status", "last_pass_at", "last_error"]
        if not getattr(scope, "org_nos", None):
            return pd.DataFrame(columns=cols)

        def build() -> pd.DataFrame:
            tables = self._tables(version)
            out = pd.DataFrame({"source": list(SOURCES)})
            if "source_table_stats" in tables:
                st = self._df("SELECT source, MAX(max_updated_at) AS max_updated_at "
                              "FROM source_table_stats GROUP BY source", version=version)
                out = out.merge(st, on="source", how="left")
            else:
                out["max_updated_at"] = pd.NaT
            if "etl_freshness" in tables:
                fr = self._df("SELECT source, MAX(last_good_high) AS last_good_high, "
                              "MAX(last_pass_at) AS last_pass_at, arg_max(last_status, last_pass_at) "
                              "AS last_status, arg_max(last_error, last_pass_at) AS last_error "
                              "FROM etl_freshness GROUP BY source", version=version)
                out = out.merge(fr, on="source", how="left")
            for col in ("last_good_high", "last_pass_at", "last_status", "last_error"):
                if col not in out:
                    out[col] = None
            # the loaded window's upper end is what the data is complete up to
            out["data_as_of"] = pd.to_datetime(out["last_good_high"]).fillna(
                pd.to_datetime(out["max_updated_at"]))
            ref = self.published_at(version) or datetime.now()
            out["lag_s"] = (pd.Timestamp(ref) - out["data_as_of"]).dt.total_seconds()
            failed = out["last_status"].fillna("").astype(str).str.lower().isin(["failed", "error", "down"])
            out["stale"] = out["lag_s"].isna() | (out["lag_s"] > self.stale_after_s) | failed
            return out[cols]
        return self._memo("freshness", version, (), (), build)

    def last_runs(self, version: int) -> pd.DataFrame | None:
        """The latest etl_run per source: status, when, error text (columns as the ETL names them)."""
        if "etl_run" not in self._tables(version):
            return None
        df = self._df("SELECT * FROM etl_run", version=version)
        if df.empty or "source" not in df:
            return None
        when = next((c for c in ("finished_at", "ended_at", "started_at", "run_at") if c in df), None)
        status = next((c for c in ("status", "state", "outcome") if c in df), None)
        error = next((c for c in ("error", "message", "error_message") if c in df), None)
        if when:
            df = df.sort_values(when)
        last = df.groupby("source", as_index=False).tail(1)
        return pd.DataFrame({
            "source": last["source"].values,
            "last_status": last[status].values if status else None,
            "last_run_at": last[when].values if when else None,
            "last_error": last[error].values if error else None,
        })

    def sources(self, scope: Any, version: int | None = None) -> pd.DataFrame:
        """One row per source table: rows, deleted, newest updated_at, rejected rows."""
        version = version or self._require_version()
        if not getattr(scope, "org_nos", None):
            return pd.DataFrame(columns=["source", "table_name", "row_count", "deleted_count",
                                         "max_updated_at", "reject_count"])

        def build() -> pd.DataFrame:
            tables = self._tables(version)
            if "source_table_stats" not in tables:
                return pd.DataFrame(columns=["source", "table_name", "row_count", "deleted_count",
                                             "max_updated_at", "reject_count"])
            df = self._df("SELECT * FROM source_table_stats ORDER BY source, table_name", version=version)
            df["reject_count"] = 0
            if "etl_reject_count" in tables:
                rj = self._df("SELECT * FROM etl_reject_count", version=version)
                if "table_name" in rj:
                    per = rj.groupby("table_name")["reject_count"].sum()
                    df["reject_count"] = df["table_name"].map(per).fillna(0).astype(int)
            return df
        return self._memo("sources", version, (), (), build)

    def _require_version(self) -> int:
        version = self.version()
        if version is None:
            from kpis.serving import SnapshotUnavailable
            raise SnapshotUnavailable(f"no snapshot published yet in `{self.reader.serving_dir}`")
        return version

    # -- KPI values -------------------------------------------------------------------------
    def values(self, scope: Any, org: str | None, period: Period, theme: str | None = None,
               kpi_id: str | None = None, version: int | None = None) -> pd.DataFrame:
        """One row per KPI for the unit and period, with definition, previous value and stale flag."""
        version = version or self._require_version()
        org, under = self.authorise(scope, org, version)
        if org is None:
            return pd.DataFrame()

        def build() -> pd.DataFrame:
            return self._decorate(self._pick([org], period, theme, kpi_id, version), version)
        return self._memo("values", version, under, (org, period, theme, kpi_id), build)

    def child_values(self, scope: Any, org: str | None, period: Period, theme: str | None = None,
                     kpi_id: str | None = None, version: int | None = None) -> pd.DataFrame:
        """The same KPIs for each authorised child unit of `org` (for the drill-down table)."""
        version = version or self._require_version()
        org, under = self.authorise(scope, org, version)
        if org is None:
            return pd.DataFrame()

        def build() -> pd.DataFrame:
            kids = self.children(scope, org, version)
            if kids.empty:
                return pd.DataFrame()
            df = self._decorate(self._pick(list(kids["org_no"]), period, theme, kpi_id, version), version)
            return df.merge(kids[["org_no", "org_name"]], on="org_no", how="left")
        return self._memo("child_values", version, under, (org, period, theme, kpi_id), build)

    def _pick(self, orgs: list[str], period: Period, theme: str | None, kpi_id: str | None,
              version: int) -> pd.DataFrame:
        """Per (KPI, unit) the row for the period (see _pick_sql), with the previous period's
        value as prev_value, in one query."""
        if "kpi_value" not in self._tables(version):
            return pd.DataFrame(columns=["kpi_id", "org_no", "grain", "period_start", "value",
                                         "numerator", "denominator", "status", "is_final", "prev_value"])
        sql = f"""
            WITH cur AS ({_pick_sql("c")}), prev AS ({_pick_sql("p")})
            SELECT cur.*, prev.value AS prev_value
            FROM cur LEFT JOIN prev ON prev.kpi_id = cur.kpi_id AND prev.org_no = cur.org_no
        """
        params = {"orgs": orgs, "theme": theme, "kpi": kpi_id,
                  **self._pick_params("c", period, version), **self._pick_params("p", period.previous(), version)}
        return self._df(sql, params, version)

    def _pick_params(self, prefix: str, period: Period, version: int) -> dict[str, Any]:
        month = month_period(period.start.year, period.start.month)
        today = self.data_today(version)
        return {f"{prefix}grain": period.grain, f"{prefix}start": period.start,
                f"{prefix}month": month.start, f"{prefix}live": period.start.date() <= today < period.end.date(),
                f"{prefix}live_from": datetime.combine(today - timedelta(days=1), datetime.min.time())}

    def _decorate(self, df: pd.DataFrame, version: int) -> pd.DataFrame:
        defs = self.kpi_defs(version)
        keep = [c for c in ("kpi_id", "name_zh", "name_en", "unit", "direction", "warning",
                            "critical", "sources", "sort") if c in defs]
        df = df.merge(defs[keep], on="kpi_id", how="left", suffixes=("", "_def"))
        df["trend"] = [trend_arrow(v, p) for v, p in zip(df["value"], df["prev_value"])]
        fresh = self.freshness(_ANY_SCOPE, version)
        stale = {s for s, flag in zip(fresh["source"], fresh["stale"]) if flag}
        df["stale_sources"] = [",".join(s for s in source_systems(x) if s in stale)
                               for x in df.get("sources", pd.Series([None] * len(df)))]
        df["rank"] = df["status"].map(STATUS_RANK).fillna(5)
        return df.sort_values(["rank", "sort"] if "sort" in df else ["rank"]).reset_index(drop=True)

    def matrix(self, scope: Any, org: str | None, period: Period,
               version: int | None = None) -> pd.DataFrame:
        """KPI × unit (the unit and its children) statuses, most severe KPIs first."""
        version = version or self._require_version()
        own = self.values(scope, org, period, version=version)
        kids = self.child_values(scope, org, period, version=version)
        if own.empty:
            return own
        org_sel, _ = self.authorise(scope, org, version)
        names = self.org_tree(scope, version=version).set_index("org_no")["org_name"]
        own = own.assign(org_name=own["org_no"].map(names))
        df = pd.concat([own, kids], ignore_index=True) if not kids.empty else own
        worst = df.groupby("kpi_id")["rank"].min().rename("worst")
        df = df.merge(worst, on="kpi_id")
        df["is_self"] = df["org_no"] == org_sel
        return df.sort_values(["worst", "sort", "is_self"], ascending=[True, True, False]).reset_index(drop=True)

    def theme_counts(self, scope: Any, org: str | None, period: Period,
                     version: int | None = None) -> pd.DataFrame:
        """Per theme at the selected unit: KPIs in warning and critical."""
        df = self.values(scope, org, period, version=version)
        if df.empty:
            return pd.DataFrame(columns=["theme", "warning", "critical", "total"])
        return (df.assign(warning=df["status"].eq("warning"), critical=df["status"].eq("critical"))
                .groupby("theme", as_index=False)
                .agg(warning=("warning", "sum"), critical=("critical", "sum"), total=("kpi_id", "count")))

    def trend(self, scope: Any, kpi_id: str, org: str | None, period: Period,
              version: int | None = None) -> pd.DataFrame:
        """Values of one KPI for the unit over the 30 days (or 13 months) ending with the period."""
        version = version or self._require_version()
        org, under = self.authorise(scope, org, version)
        if org is None or "kpi_value" not in self._tables(version):
            return pd.DataFrame(columns=["period_start", "value", "status"])
        span = timedelta(days=30) if period.kind == "day" else timedelta(days=396)

        def build() -> pd.DataFrame:
            return self._df("SELECT period_start, value, status, is_final FROM kpi_value "
                            "WHERE kpi_id = ? AND org_no = ? AND grain = ? AND period_start >= ? "
                            "AND period_start < ? ORDER BY period_start",
                            [kpi_id, org, period.grain, period.end - span, period.end], version)
        return self._memo("trend", version, under, (kpi_id, org, period), build)

    # -- repair operations (core tables) ----------------------------------------------------
    def open_repair_tasks(self, scope: Any, org: str | None, as_of: datetime | None = None,
                          version: int | None = None) -> pd.DataFrame:
        """Open main repair tasks under the unit: minutes elapsed vs the arrival limit, overdue first."""
        version = version or self._require_version()
        org, under = self.authorise(scope, org, version)
        if org is None or "dist_repair_task" not in self._tables(version):
            return pd.DataFrame(columns=["task_id", "org_no", "area", "start_time", "elapsed_min",
                                         "limit_min", "overdue", "arrived", "lon", "lat"])
        ref = as_of or self._data_now(version)

        def build() -> pd.DataFrame:
            has_wo = "cs_work_order" in self._tables(version)
            start = ("COALESCE((SELECT MIN(w.accept_time) FROM cs_work_order w WHERE w.wo_no = t.wo_no "
                     "AND w.is_deleted = 0), t.receive_time)") if has_wo else "t.receive_time"
            sql = f"""
                WITH t AS (
                    SELECT t.task_id, t.org_no, t.status_code, t.arrive_time, t.lon, t.lat,
                           {start} AS start_time,
                           CASE WHEN COALESCE(t.urban_rural, g.urban_rural) IN ('01', '02', '03')
                                THEN COALESCE(t.urban_rural, g.urban_rural) ELSE '01' END AS area
                    FROM dist_repair_task t
                    LEFT JOIN dist_tg g ON g.tg_no = t.tg_no AND g.is_deleted = 0
                    WHERE t.is_deleted = 0 AND t.parent_task_id IS NULL
                      AND t.status_code IN ('01', '02', '03', '04', '05') AND t.restore_time IS NULL
                      AND list_contains(?::VARCHAR[], t.org_no) AND t.receive_time <= ?)
                SELECT *, epoch(?::TIMESTAMP - start_time) / 60.0 AS elapsed_min,
                       CASE area WHEN '02' THEN 90 WHEN '03' THEN 120 ELSE 45 END AS limit_min,
                       arrive_time IS NOT NULL AND arrive_time <= ? AS arrived
                FROM t ORDER BY (NOT arrived AND elapsed_min > limit_min) DESC, elapsed_min DESC
            """
            df = self._df(sql, [list(under), ref, ref, ref], version)
            df["overdue"] = (~df["arrived"]) & (df["elapsed_min"] > df["limit_min"])
            return df
        return self._memo("open_tasks", version, under, (org, ref), build)

    def repair_by_hour(self, scope: Any, org: str | None, day: date,
                       version: int | None = None) -> pd.DataFrame:
        """Main repair tasks received per clock hour of `day` under the unit."""
        version = version or self._require_version()
        org, under = self.authorise(scope, org, version)
        if org is None or "dist_repair_task" not in self._tables(version):
            return pd.DataFrame(columns=["hour", "tasks"])
        start = datetime(day.year, day.month, day.day)

        def build() -> pd.DataFrame:
            df = self._df("SELECT hour(receive_time) AS hour, COUNT(*) AS tasks FROM dist_repair_task "
                          "WHERE is_deleted = 0 AND parent_task_id IS NULL AND status_code <> '09' "
                          "AND receive_time >= ? AND receive_time < ? "
                          "AND list_contains(?::VARCHAR[], org_no) GROUP BY 1 ORDER BY 1",
                          [start, start + timedelta(days=1), list(under)], version)
            full = pd.DataFrame({"hour": range(24)})
            return full.merge(df, on="hour", how="left").fillna({"tasks": 0})
        return self._memo("repair_by_hour", version, under, (org, day), build)

    def _data_now(self, version: int) -> datetime:
        """The newest source update in the snapshot: 'now' for elapsed times."""
        if "source_table_stats" in self._tables(version):
            got = self._df("SELECT MAX(max_updated_at) AS t FROM source_table_stats "
                           "WHERE source = 'dist'", version=version)["t"].iloc[0]
            if pd.notna(got):
                return pd.Timestamp(got).to_pydatetime()
        return datetime.now().replace(microsecond=0)

    # -- detail records and exports ---------------------------------------------------------
    def detail_page(self, scope: Any, kpi_id: str, org: str | None, period: Period,
                    page: int = 0, page_size: int = 50, version: int | None = None) -> pd.DataFrame:
        """One page of the source records behind a value (not cached: detail bypasses the cache)."""
        version = version or self._require_version()
        gen = self.detail_batches(scope, kpi_id, org, period, version, rows_per_batch=page_size,
                                  page=(page, page_size))
        if gen is None:
            return pd.DataFrame()
        names = next(gen)
        batches = list(gen)
        if not batches:
            return pd.DataFrame(columns=names)
        import pyarrow as pa
        return pa.Table.from_batches(batches).to_pandas()

    def detail_batches(self, scope: Any, kpi_id: str, org: str | None, period: Period,
                       version: int, rows_per_batch: int = 50_000,
                       page: tuple[int, int] | None = None) -> Iterator[Any] | None:
        """Column names, then Arrow record batches of the records behind a value, streamed from
        one snapshot cursor (kpis.detail's SQL); None when not authorised or the KPI is unknown."""
        org, under = self.authorise(scope, org, version)
        if org is None:
            return None
        from kpis.detail import detail_sql, prepare
        from kpis.periods import day, month
        from kpis.registry import load_registry
        kdef = load_registry().kpis.get(kpi_id)
        if kdef is None:
            return None
        first = self.detail_first_day(kpi_id, period, version)
        if first is not None:
            raise DetailOutsideWindow(kpi_id, first)
        engine_period = day(period.start.date()) if period.kind == "day" else month(
            period.start.year, period.start.month)
        # as the engine evaluates: events up to the data time, the window cut at the period end
        # (prepare: te = min(period end, as_of)); a day's meter readings collected the next
        # morning count as they do in the value
        as_of = self._data_time(version)

        def gen() -> Iterator[Any]:
            with self.reader.cursor(version) as (_v, cur):
                prepare(cur, engine_period, as_of, kdef)
                cols = {r[0] for r in cur.execute(f"DESCRIBE SELECT * FROM ({kdef.facts}) AS f").fetchall()}
                sql = detail_sql(kdef, cols)
                params: dict[str, Any] = {"units": [org]}
                if page is not None:
                    sql = f"SELECT * FROM ({sql}) LIMIT $lim OFFSET $off"
                    params.update(lim=page[1], off=page[0] * page[1])
                reader = cur.execute(sql, params).to_arrow_reader(rows_per_batch)
                yield list(reader.schema.names)
                yield from reader
        return gen()

    def detail_first_day(self, kpi_id: str, period: Period, version: int) -> date | None:
        """For a KPI reading a metering firehose table (the snapshot holds only its last days,
        table detail_window): the first day with complete records when `period` begins before
        it; None when the period's records are all in the snapshot."""
        windows = self._detail_windows(version)
        if not windows:
            return None
        from kpis.registry import load_registry
        kdef = load_registry().kpis.get(kpi_id)
        facts = str(getattr(kdef, "facts", "") or "")
        firsts = [first for table, first in windows.items()
                  if first is not None and re.search(rf"\b{re.escape(table)}\b", facts)]
        if not firsts or period.start.date() >= max(firsts):
            return None
        return max(firsts)

    def _detail_windows(self, version: int) -> dict[str, date | None]:
        def build() -> dict[str, date | None]:
            if "detail_window" not in self._tables(version):
                return {}
            df = self._df("SELECT table_name, first_day FROM detail_window", version=version)
            return {str(t): (None if pd.isna(d) else pd.Timestamp(d).date())
                    for t, d in zip(df["table_name"], df["first_day"])}
        return self._memo("detail_window", version, (), (), build)

    def _data_time(self, version: int) -> datetime:
        """The newest source update in the snapshot (any source): the as_of of detail records."""
        def build() -> datetime:
            if "source_table_stats" in self._tables(version):
                got = self._df("SELECT MAX(max_updated_at) AS t FROM source_table_stats",
                               version=version)["t"].iloc[0]
                if pd.notna(got):
                    return pd.Timestamp(got).to_pydatetime()
            return datetime.now().replace(microsecond=0)
        return self._memo("data_time", version, (), (), build)

    def query_batches(self, sql: str, params: list[Any], version: int,
                      rows_per_batch: int = 50_000) -> Iterator[Any]:
        """Column names, then Arrow batches, of a bound query on one snapshot (bench and exports)."""
        with self.reader.cursor(version) as (_v, cur):
            reader = cur.execute(sql, params).to_arrow_reader(rows_per_batch)
            yield list(reader.schema.names)
            yield from reader


class DetailOutsideWindow(LookupError):
    """The records behind a metering KPI for a period older than the snapshot's detail window."""

    def __init__(self, kpi_id: str, first_day: date) -> None:
        super().__init__(f"detail records of `{kpi_id}` are kept from {first_day.isoformat()} on; "
                         f"choose a day from then")
        self.kpi_id = kpi_id
        self.first_day = first_day


# page bodies are cached as the UTF-8 JSON text Dash sends; the prefix changed with the value
# type, so a cache directory shared with an older web process never hands one the other's type
VIEW_MEMO = "viewjson:"


def _memo_key(name: str, version: int, orgs: tuple[str, ...], filters: tuple[Any, ...]) -> str:
    raw = repr((name, version, orgs, filters)).encode("utf-8")
    return f"kpi:{name}:{version}:{hashlib.sha1(raw).hexdigest()}"


def _view_filters(filters: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in filters.items()))


def _pick_sql(p: str) -> str:
    """Per (KPI, unit) the row for a period (parameters named with prefix `p`): its own grain
    first, then the containing month, then (for the data's current day or month) the newest
    near-real-time snapshot (taken since the day before the data's current day). One branch per
    grain, each a plain conjunction, so that DuckDB prunes row groups by their min/max (the
    snapshot stores kpi_value ordered by grain, period_start); one OR across the grains made every
    read scan all of kpi_value (~90 ms at county scale). The snapshot branch read every snapshot
    ever kept before it had a lower bound: 12-15 s a page with 120 days of hourly snapshots at
    city, 0.25-0.33 s with it."""
    return f"""
        WITH picked AS (
            SELECT * FROM kpi_value WHERE grain = ${p}grain AND period_start = ${p}start
            UNION ALL
            SELECT * FROM kpi_value WHERE grain = 'monthly' AND period_start = ${p}month
            UNION ALL
            SELECT * FROM kpi_value WHERE ${p}live AND grain = 'near-real-time'
                                          AND period_start >= ${p}live_from)
        SELECT kpi_id, theme, org_no, org_level, grain, period_start, period_end, value,
               numerator, denominator, baseline, status, is_final, computed_at
        FROM picked
        WHERE list_contains($orgs::VARCHAR[], org_no)
          AND ($theme::VARCHAR IS NULL OR theme = $theme) AND ($kpi::VARCHAR IS NULL OR kpi_id = $kpi)
        QUALIFY row_number() OVER (PARTITION BY kpi_id, org_no ORDER BY
            CASE WHEN grain = 'near-real-time' THEN 0 WHEN grain = ${p}grain THEN 1 ELSE 2 END,
            period_start DESC) = 1"""


def _registry_frame() -> pd.DataFrame:
    """kpi_def from the registry itself, for snapshots published before kpi_def was filled."""
    try:
        from kpis.registry import load_registry
    except ImportError:
        return pd.DataFrame()
    rows = [{"kpi_id": k.id, "name_zh": k.name_zh, "name_en": k.name_en, "theme": k.theme, "unit": k.unit,
             "direction": k.direction, "grain": k.grain, "warning": k.warning, "critical": k.critical,
             "definition": k.definition, "formula": k.formula, "sources": ";".join(k.sources),
             "tier": k.tier, "sort_no": i} for i, k in enumerate(load_registry().kpis.values())]
    return pd.DataFrame(rows)


def trend_arrow(value: object, previous: object) -> str:
    """↑ / ↓ / → against the previous period; empty when either is missing."""
    if value is None or previous is None or pd.isna(value) or pd.isna(previous):
        return ""
    if float(value) > float(previous):
        return "↑"
    if float(value) < float(previous):
        return "↓"
    return "→"


@dataclass(frozen=True)
class _AnyScope:
    """Freshness is not per unit; the scope check happens in the calling method."""
    org_nos: frozenset[str] = frozenset({"*"})


_ANY_SCOPE = _AnyScope()
