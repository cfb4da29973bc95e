"""Alarm evaluation in the KPI job: kpi_value rows → alarm_state, alert_event, alert_outbox.

`process()` runs in the worker right after an evaluation, in the same DuckDB transaction, so a
crash can neither lose nor invent a notification (transactional outbox). Which rows drive an
alarm: for each (KPI, org unit) the row of the KPI's natural grain with the latest period_start
not after `now` (today, this hour, this month, the near-real-time snapshot), looked for back to
its grain's horizon (`horizon`: a day of snapshots, two of hours, three days, the month before);
restated past periods never alarm. It steps only when that row is among `changed_rows` (None: every KPI).
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pyarrow as pa
import yaml
from sqlalchemy import Engine

from kpis import outbox, value_layout
from kpis.alarms import Alarm, Observation, Policy, State, observe, step
from kpis.roster import Roster, active_silences, app_engine, delivery_config, load_roster

log = logging.getLogger(__name__)
POLICY_PATH = Path(__file__).with_name("alert_policy.yaml")

DDL = (
    """CREATE TABLE IF NOT EXISTS alarm_state (
        kpi_id VARCHAR, org_no VARCHAR, state VARCHAR, severity VARCHAR, count INTEGER,
        since TIMESTAMP, last_sent TIMESTAMP, held BOOLEAN, grain VARCHAR, period_start TIMESTAMP,
        value DOUBLE, updated_at TIMESTAMP, acked_at TIMESTAMP, acked_by VARCHAR,
        escalated_at TIMESTAMP, escalate_after_s INTEGER, last_item VARCHAR, row_at TIMESTAMP)""",
    # row_at: the computed_at of the kpi_value row the state was last written from (added in
    # session 20: warehouses created before have the table without it)
    "ALTER TABLE alarm_state ADD COLUMN IF NOT EXISTS row_at TIMESTAMP",
    """CREATE TABLE IF NOT EXISTS alert_event (
        event_id VARCHAR, created_at TIMESTAMP, kind VARCHAR, kpi_id VARCHAR, org_no VARCHAR,
        severity VARCHAR, grain VARCHAR, period_start TIMESTAMP, value DOUBLE, threshold VARCHAR,
        alarm_since TIMESTAMP, source VARCHAR, silenced BOOLEAN, detail VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS alert_source_state (
        source VARCHAR, state VARCHAR, since TIMESTAMP, last_good_high TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS alert_ack (
        ack_id VARCHAR, kpi_id VARCHAR, org_no VARCHAR, alarm_since TIMESTAMP, user_name VARCHAR,
        comment VARCHAR, acked_at TIMESTAMP)""",
    """CREATE TABLE IF NOT EXISTS alert_silence (
        silence_id VARCHAR, kpi_id VARCHAR, org_no VARCHAR, starts_at TIMESTAMP, ends_at TIMESTAMP,
        reason VARCHAR, user_name VARCHAR, created_at TIMESTAMP)""",
)
STATE_COLS = ("kpi_id", "org_no", "state", "severity", "count", "since", "last_sent", "held", "grain",
              "period_start", "value", "updated_at", "acked_at", "acked_by", "escalated_at",
              "escalate_after_s", "last_item", "row_at")
STATE_SCHEMA = pa.schema([
    ("kpi_id", pa.string()), ("org_no", pa.string()), ("state", pa.string()), ("severity", pa.string()),
    ("count", pa.int32()), ("since", pa.timestamp("us")), ("last_sent", pa.timestamp("us")),
    ("held", pa.bool_()), ("grain", pa.string()), ("period_start", pa.timestamp("us")),
    ("value", pa.float64()), ("updated_at", pa.timestamp("us")), ("acked_at", pa.timestamp("us")),
    ("acked_by", pa.string()), ("escalated_at", pa.timestamp("us")), ("escalate_after_s", pa.int32()),
    ("last_item", pa.string()), ("row_at", pa.timestamp("us"))])
EVENT_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("created_at", pa.timestamp("us")), ("kind", pa.string()),
    ("kpi_id", pa.string()), ("org_no", pa.string()), ("severity", pa.string()), ("grain", pa.string()),
    ("period_start", pa.timestamp("us")), ("value", pa.float64()), ("threshold", pa.string()),
    ("alarm_since", pa.timestamp("us")), ("source", pa.string()), ("silenced", pa.bool_()),
    ("detail", pa.string())])


def ensure_schema(con: Any) -> None:
    """Create the warehouse alert tables if missing (idempotent)."""
    for ddl in DDL:
        con.execute(ddl)
    outbox.ensure_schema(con)


# -- policy ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyBook:
    """Defaults, per-theme and per-KPI overrides from kpis/alert_policy.yaml."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    themes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    kpis: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def for_kpi(self, kdef: Any) -> Policy:
        """KPI override > theme override > registry entry > file defaults > Policy()."""
        merged: dict[str, Any] = dict(self.defaults)
        for key in ("pending", "recover_after", "clear"):
            if getattr(kdef, key, None) not in (None, ""):
                merged[key] = getattr(kdef, key)
        merged.update(self.themes.get(getattr(kdef, "theme", ""), {}) or {})
        merged.update(self.kpis.get(kdef.id, {}) or {})
        base = Policy()
        esc = merged.get("escalate_after_minutes", "unset")
        return Policy(
            pending=max(1, int(merged.get("pending", base.pending))),
            recover_after=max(1, int(merged.get("recover_after", base.recover_after))),
            repeat=timedelta(minutes=float(merged["repeat_minutes"])) if "repeat_minutes" in merged
            else base.repeat,
            escalate_after=base.escalate_after if esc == "unset"
            else None if esc is None else timedelta(minutes=float(esc)),
            clear=None if merged.get("clear") in (None, "") else str(merged["clear"]))


def load_policies(path: Path = POLICY_PATH) -> PolicyBook:
    """Read the policy file; unknown keys are an error naming the file and the entry."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}
    data = data or {}
    allowed = {"pending", "recover_after", "clear", "repeat_minutes", "escalate_after_minutes"}
    for section in ("themes", "kpis"):
        for name, entry in (data.get(section) or {}).items():
            bad = set(entry or {}) - allowed
            if bad:
                raise ValueError(f"{path}: {section}.{name}: unknown key(s) {sorted(bad)}; "
                                 f"expected some of {sorted(allowed)}")
    return PolicyBook(data.get("defaults") or {}, data.get("themes") or {}, data.get("kpis") or {})


@lru_cache(maxsize=8)
def _engine(path: str) -> Engine:
    return app_engine(path)


def kpi_sources(kdef: Any) -> tuple[str, ...]:
    """The registry's `sources` as a tuple, whether given as a list or as 'cs;dist' text."""
    raw = getattr(kdef, "sources", ()) or ()
    if isinstance(raw, str):
        raw = raw.replace(",", ";").split(";")
    return tuple(s.strip() for s in raw if s and s.strip())


def period_label(grain: str, start: datetime) -> str:
    """The `period` query value of the KPI detail link (kpis.queries.parse_period: day or month)."""
    if grain == "monthly":
        return start.strftime("%Y-%m")
    return start.strftime("%Y-%m-%d")                  # hourly and snapshots: their day (web periods)


def link_path(kpi_id: str, org_no: str, period: str) -> str:
    return "/kpi?" + urlencode({"kpi": kpi_id, "org": org_no, "period": period})


# -- the job step ---------------------------------------------------------------------------

@dataclass
class ProcessSummary:
    stepped: int = 0
    events: int = 0
    notifications: int = 0
    held: int = 0
    stale_sources: tuple[str, ...] = ()
    written: int = 0           # states written (new, changed, or firing from a recomputed row)


def process(con: Any, registry: Any, changed_rows: Iterable[Any] | None, now: datetime,
            settings: Any, policies: PolicyBook | None = None) -> ProcessSummary:
    """Step every alarm touched by this evaluation and write events and outbox rows.

    Runs inside the caller's transaction; `now` is naive Asia/Shanghai time like the sources.
    """
    ensure_schema(con)
    policies = policies or load_policies()
    engine = _engine(str(settings.app_db_path))
    cfg = delivery_config(engine, settings)
    roster, silences = load_roster(engine), active_silences(engine, now)
    summary = ProcessSummary()
    stale, freshness, source_items = _source_states(con, registry, now, settings.stale_after_s)
    summary.stale_sources = tuple(sorted(stale))

    kdefs = {k: d for k, d in registry.kpis.items()
             if getattr(d, "warning", None) not in (None, "") or getattr(d, "critical", None) not in (None, "")}
    stale_kpis = {k for k, d in kdefs.items() if any(s in stale for s in kpi_sources(d))}
    rows = _driving_rows(con, kdefs, changed_rows, now, stale_kpis)
    prev = _load_states(con)
    new_states: list[dict[str, Any]] = []
    gone: list[tuple[str, str]] = []
    events: list[dict[str, Any]] = []
    orgs = _org_info(con, {r["org_no"] for r in rows})
    # per KPI, not per row: at city the worker stepped ~78 k (KPI, unit) rows a minute, and
    # merging the policy, splitting the sources and building every row's message (its link
    # urlencoded) cost ~8 of ~10 s; a message is built only for a row that keeps a state or
    # raises an event
    kpi_policy: dict[str, Policy] = {}
    for r in rows:
        kdef = kdefs[r["kpi_id"]]
        if r["kpi_id"] not in kpi_policy:
            kpi_policy[r["kpi_id"]] = policies.for_kpi(kdef)
        policy, is_stale = kpi_policy[r["kpi_id"]], r["kpi_id"] in stale_kpis
        old = prev.get((r["kpi_id"], r["org_no"]))
        before = _alarm(old)
        obs: Observation = observe(r["status"], r["value"], r["baseline"], kdef.direction,
                                   kdef.warning, policy.clear, stale=is_stale)
        after, kinds = step(before, obs, policy, now)
        summary.stepped += 1
        summary.held += after.held
        if old is not None and old["acked_at"] is not None and after.since == before.since:
            kinds = tuple(k for k in kinds if k != "repeat")   # acknowledged: no reminders
        settled = after.state is State.OK and not after.held
        if settled and old is not None:
            gone.append((r["kpi_id"], r["org_no"]))
        escalate_s = None if policy.escalate_after is None else int(policy.escalate_after.total_seconds())
        # a firing or recovering alarm keeps its row's value and message current; rewritten only
        # when the row was recomputed since (or the alarm or its policy moved): ~8 k firing
        # alarms of a city were rewritten every minute, most from rows no pass had touched
        refresh = after.state in (State.FIRING, State.RECOVERING) and (
            old is None or old["row_at"] is None or r["computed_at"] != old["row_at"]
            or old["escalate_after_s"] != escalate_s)
        keep = not settled and (old is None or after != before or refresh)
        if not keep and not kinds:
            continue
        item = _item(r, kdef, after if after.state is not State.OK else before, policy, orgs,
                     freshness, kinds[0] if kinds else "state")
        if keep:
            fresh_episode = old is None or after.since != before.since
            new_states.append({
                "kpi_id": r["kpi_id"], "org_no": r["org_no"], "state": str(after.state),
                "severity": after.severity, "count": after.count, "since": after.since,
                "last_sent": after.last_sent, "held": after.held, "grain": r["grain"],
                "period_start": r["period_start"], "value": r["value"], "updated_at": now,
                "acked_at": None if fresh_episode else old["acked_at"],
                "acked_by": None if fresh_episode else old["acked_by"],
                "escalated_at": None if fresh_episode else old["escalated_at"],
                "escalate_after_s": escalate_s,
                "last_item": json.dumps(item, ensure_ascii=False, default=str),
                "row_at": r["computed_at"]})
        for kind in kinds:
            events.append(dict(item, kind=kind, severity=item["severity"] or before.severity))
    _write_states(con, gone, new_states)
    summary.written = len(new_states)
    events.extend(source_items)
    summary.events = len(events)
    summary.notifications = route_and_enqueue(con, events, roster, silences, now, cfg.deadline_s,
                                              orgs, role="primary")
    return summary


def _alarm(row: Mapping[str, Any] | None) -> Alarm:
    if row is None:
        return Alarm()
    return Alarm(State(row["state"]), row["severity"], row["count"] or 0, row["since"],
                 row["last_sent"], bool(row["held"]))


# How far before `now` a KPI's driving row may start, by natural grain: the worker writes the
# current period of every KPI each pass (a snapshot, this and the last hour, today) and at least
# every sweep; a monthly KPI defined for complete months only has last month's row at most.
_HORIZON = {"near-real-time": timedelta(days=1), "hourly": timedelta(days=2),
            "daily": timedelta(days=3)}


def horizon(grain: str, now: datetime) -> datetime | None:
    """The earliest period_start of a row that can drive an alarm at `now` (None: no bound)."""
    if grain in _HORIZON:
        return now - _HORIZON[grain]
    if grain != "monthly":
        return None
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first - timedelta(days=1)).replace(day=1)     # the month before this one


def _driving_rows(con: Any, kdefs: Mapping[str, Any], changed_rows: Iterable[Any] | None,
                  now: datetime, stale_kpis: Collection[str] = ()) -> list[dict[str, Any]]:
    """The latest natural-grain row per (KPI, org), restricted to those just (re)computed, and
    to those that can move an alarm (kpis.alarms.step): not an ok row of a unit without an
    alarm (ok to ok), nor a no-data or insufficient-sample row of a unit whose alarm is in that
    same state and not held (it stays, silent), unless a late source holds the KPI. At city
    ~70 k of the ~78 k rows a minute are such, and reading them into Python and stepping them
    were most of the alarm step."""
    changed = None if changed_rows is None else {_key(c) for c in changed_rows}
    ids = {k for k in kdefs} if changed is None else {c[0] for c in changed} & set(kdefs)
    if not ids:
        return []
    by_grain: dict[str, list[str]] = {}
    for k in sorted(ids):
        by_grain.setdefault(kdefs[k].grain, []).append(k)
    rows: list[dict[str, Any]] = []
    # One statement per grain, from its horizon on: a literal, which skips the history's row
    # groups (kpis/value_layout.py). The (KPI, grain) pairs are a table joined by value:
    # list_contains over a string built per row cost 2.1 s a minute at city with a day of
    # snapshots in kpi_value, 5.9-6.3 s with 120 days of history (one statement for all grains,
    # from the earliest horizon: 1.3-1.9 s; a UNION of the grains or the horizon as a join
    # condition: 3x slower over a day of minute snapshots).
    for grain, kpi_ids in sorted(by_grain.items()):
        since = horizon(grain, now)
        bound = "" if since is None else f"AND period_start >= {value_layout.literal(since)}"
        cur = con.execute(
            "SELECT n.* FROM (SELECT kpi_id, org_no, org_level, grain, period_start, period_end, value, "
            "numerator, denominator, baseline, status, watermarks, computed_at FROM kpi_value "
            "SEMI JOIN (SELECT unnest($ids::VARCHAR[]) AS kpi_id) w USING (kpi_id) "
            f"WHERE grain = $grain AND period_start <= $now {bound} "
            "QUALIFY row_number() OVER (PARTITION BY kpi_id, org_no ORDER BY period_start DESC) = 1) n "
            "LEFT JOIN alarm_state a ON a.kpi_id = n.kpi_id AND a.org_no = n.org_no "
            "WHERE list_contains($stale::VARCHAR[], n.kpi_id) "
            "OR (a.kpi_id IS NULL AND n.status IS DISTINCT FROM 'ok') "
            "OR (a.kpi_id IS NOT NULL AND NOT (n.status IN ('no_data', 'insufficient_sample') "
            "                                  AND a.state = n.status AND NOT COALESCE(a.held, FALSE)))",
            {"ids": kpi_ids, "grain": grain, "now": now, "stale": sorted(stale_kpis)})
        names = [d[0] for d in cur.description]
        rows += [dict(zip(names, r)) for r in cur.fetchall()]
    rows.sort(key=lambda r: (r["kpi_id"], r["org_no"]))
    if changed is None:
        return rows
    return [r for r in rows if (r["kpi_id"], r["org_no"], r["grain"], _ts(r["period_start"])) in changed]


def _ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    return datetime.fromisoformat(str(value))


def _key(c: Any) -> tuple[str, str, str, datetime]:
    """(kpi_id, org_no, grain, period_start) from a tuple, mapping or object."""
    if isinstance(c, Mapping):
        return c["kpi_id"], c["org_no"], c["grain"], _ts(c["period_start"])
    if isinstance(c, tuple | list):
        return c[0], c[1], c[2], _ts(c[3])
    return c.kpi_id, c.org_no, c.grain, _ts(c.period_start)


# What stepping an alarm reads of its stored state (not its last message, ~1 kB of JSON each:
# reading it for the ~8 k firing alarms of a city minute was most of the 0.7 s this took)
_STEP_COLS = ("kpi_id", "org_no", "state", "severity", "count", "since", "last_sent", "held",
              "acked_at", "acked_by", "escalated_at", "escalate_after_s", "row_at")


def _load_states(con: Any) -> dict[tuple[str, str], dict[str, Any]]:
    cur = con.execute(f"SELECT {', '.join(_STEP_COLS)} FROM alarm_state")
    return {(r[0], r[1]): dict(zip(_STEP_COLS, r)) for r in cur.fetchall()}


def _write_states(con: Any, gone: list[tuple[str, str]], new_states: list[dict[str, Any]]) -> None:
    """Set-based: one DELETE and one INSERT from Arrow, whatever the number of alarms."""
    keys = gone + [(s["kpi_id"], s["org_no"]) for s in new_states]
    if keys:
        # joined as a table: list_contains over a string built per row was ~0.5 s with the ~8 k
        # firing alarms a city minute rewrites
        view = f"_gone_{uuid.uuid4().hex[:8]}"
        con.register(view, pa.table({"kpi_id": [k for k, _ in keys], "org_no": [o for _, o in keys]}))
        try:
            con.execute(f"DELETE FROM alarm_state s USING {view} k "
                        "WHERE s.kpi_id = k.kpi_id AND s.org_no = k.org_no")
        finally:
            con.unregister(view)
    if new_states:
        _insert(con, "alarm_state", pa.Table.from_pylist(new_states, schema=STATE_SCHEMA))


def _insert(con: Any, table: str, data: pa.Table) -> None:
    view = f"_new_{table}_{uuid.uuid4().hex[:8]}"
    con.register(view, data)
    try:
        cols = ", ".join(data.column_names)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {view}")
    finally:
        con.unregister(view)


def _table_exists(con: Any, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = $n",
                            {"n": name}).fetchone()[0])


@dataclass(frozen=True)
class OrgInfo:
    names: Mapping[str, str]
    ancestors: Mapping[str, frozenset[str]]

    def lineage(self, org_no: str) -> frozenset[str]:
        return self.ancestors.get(org_no, frozenset()) | {org_no}


def _org_info(con: Any, org_nos: set[str]) -> OrgInfo:
    """Names and ancestors from the conformed dimensions when the ETL has built them."""
    names: dict[str, str] = {}
    ancestors: dict[str, set[str]] = {}
    if org_nos and _table_exists(con, "dim_org"):
        names = dict(con.execute("SELECT org_no, org_name FROM dim_org WHERE list_contains($o, org_no)",
                                 {"o": sorted(org_nos)}).fetchall())
    if org_nos and _table_exists(con, "dim_org_ancestor"):
        for org, anc in con.execute("SELECT org_no, ancestor_no FROM dim_org_ancestor "
                                    "WHERE list_contains($o, org_no)", {"o": sorted(org_nos)}).fetchall():
            ancestors.setdefault(org, set()).add(anc)
    return OrgInfo(names, {k: frozenset(v) for k, v in ancestors.items()})


def _item(r: Mapping[str, Any], kdef: Any, alarm: Alarm, policy: Policy, orgs: OrgInfo,
          freshness: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """Everything a message says about one (KPI, org unit), as JSON-ready values."""
    try:
        data_time = json.loads(r["watermarks"]) if r.get("watermarks") else {}
    except ValueError:
        data_time = {}
    if not isinstance(data_time, dict) or not data_time:
        data_time = {s: freshness.get(s) for s in kpi_sources(kdef)}
    period = period_label(r["grain"], _ts(r["period_start"]))
    severity = alarm.severity
    return {
        "kind": kind, "kpi_id": r["kpi_id"], "name_zh": getattr(kdef, "name_zh", r["kpi_id"]),
        "name_en": getattr(kdef, "name_en", ""), "unit": getattr(kdef, "unit", None),
        "org_no": r["org_no"], "org_name": orgs.names.get(r["org_no"]), "grain": r["grain"],
        "period": period, "period_start": str(r["period_start"]), "period_end": str(r["period_end"]),
        "value": r["value"], "numerator": r["numerator"], "denominator": r["denominator"],
        "baseline": r["baseline"], "severity": severity, "warning": kdef.warning,
        "critical": getattr(kdef, "critical", None), "clear": policy.clear or kdef.warning,
        "alarm_since": str(alarm.since) if alarm.since else None,
        "data_time": {k: str(v) for k, v in data_time.items() if v is not None},
        "link_path": link_path(r["kpi_id"], r["org_no"], period),
    }


# -- sources --------------------------------------------------------------------------------

def _source_states(con: Any, registry: Any, now: datetime, stale_after_s: int
                   ) -> tuple[set[str], dict[str, Any], list[dict[str, Any]]]:
    """Stale sources, their data time, and one source_late / source_back item per transition."""
    if not _table_exists(con, "etl_freshness"):
        return set(), {}, []
    fresh = dict(con.execute("SELECT source, last_good_high FROM etl_freshness").fetchall())
    known = {s: (st, since) for s, st, since in
             con.execute("SELECT source, state, since FROM alert_source_state").fetchall()}
    limit = now - timedelta(seconds=stale_after_s)
    stale = {s for s, high in fresh.items() if high is None or high < limit}
    items: list[dict[str, Any]] = []
    for source, high in sorted(fresh.items()):
        state = "late" if source in stale else "ok"
        before = known.get(source, ("ok", None))[0]
        if state == before and source in known:
            con.execute("UPDATE alert_source_state SET last_good_high = $h WHERE source = $s",
                        {"h": high, "s": source})
            continue
        con.execute("DELETE FROM alert_source_state WHERE source = $s", {"s": source})
        con.execute("INSERT INTO alert_source_state VALUES ($s, $st, $now, $h)",
                    {"s": source, "st": state, "now": now, "h": high})
        if state != before:
            held = sum(1 for d in registry.kpis.values() if source in kpi_sources(d))
            late = None if high is None else int((now - high).total_seconds() // 60)
            items.append({"kind": "source_late" if state == "late" else "source_back", "source": source,
                          "last_good_high": str(high) if high else None, "late_minutes": late,
                          "held_kpis": held, "severity": "critical" if state == "late" else None})
    return stale, fresh, items


# -- routing, silences, grouping --------------------------------------------------------------

def _silenced(ev: Mapping[str, Any], silences: list[dict[str, Any]], lineage: frozenset[str]) -> bool:
    if "kpi_id" not in ev:
        return False                                   # source alerts are never silenced by KPI/org
    return any((s["kpi_id"] in (None, "", ev["kpi_id"]))
               and (s["org_no"] in (None, "") or s["org_no"] in lineage) for s in silences)


def route_and_enqueue(con: Any, events: list[dict[str, Any]], roster: Roster,
                      silences: list[dict[str, Any]], now: datetime, deadline_s: int,
                      orgs: OrgInfo, role: str) -> int:
    """Record events; group the unsilenced ones into one outbox row per recipient and channel."""
    if not events:
        return 0
    groups: dict[tuple[str, str, str], tuple[list[dict[str, Any]], list[str]]] = {}
    records = []
    for ev in events:
        event_id = uuid.uuid4().hex
        lineage = orgs.lineage(ev["org_no"]) if "org_no" in ev else frozenset()
        muted = _silenced(ev, silences, lineage)
        records.append({
            "event_id": event_id, "created_at": now, "kind": ev["kind"], "kpi_id": ev.get("kpi_id"),
            "org_no": ev.get("org_no"), "severity": ev.get("severity"), "grain": ev.get("grain"),
            "period_start": _ts(ev["period_start"]) if ev.get("period_start") else None,
            "value": ev.get("value"),
            "threshold": ev.get("clear") if ev["kind"] == "resolved" else ev.get(ev.get("severity") or "warning"),
            "alarm_since": _ts(ev["alarm_since"]) if ev.get("alarm_since") else None,
            "source": ev.get("source"), "silenced": muted,
            "detail": json.dumps(ev, ensure_ascii=False, default=str)})
        if muted:
            continue
        units = lineage if "org_no" in ev else None
        for route in roster.routes(units, now, role=role, severity=ev.get("severity") or "warning"):
            items, ids = groups.setdefault((route.recipient, route.channel, route.address), ([], []))
            items.append(ev)
            ids.append(event_id)
    _insert(con, "alert_event", pa.Table.from_pylist(records, schema=EVENT_SCHEMA))
    kind = "escalation" if role == "escalation" else "alert"
    for (recipient, channel, address), (items, ids) in sorted(groups.items()):
        outbox.enqueue(con, recipient, channel, address, kind, items, ids, now, deadline_s)
    return len(groups)


def engine_for(settings: Any) -> Engine:
    """The app database engine for these settings (shared with kpis.dispatch and the page)."""
    return _engine(str(settings.app_db_path))


# -- alert centre reads (web side: a cursor on the published snapshot, authorised orgs) -----------

def _dicts(cur: Any, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    cur.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def firing_now(cur: Any, orgs: Iterable[str]) -> list[dict[str, Any]]:
    """Firing and recovering alarms in the authorised units, critical first, oldest first."""
    if not _table_exists(cur, "alarm_state"):
        return []
    return _dicts(cur, (
        "SELECT kpi_id, json_extract_string(last_item, '$.name_zh') AS name_zh, org_no, "
        "json_extract_string(last_item, '$.org_name') AS org_name, state, severity, since, value, "
        "json_extract_string(last_item, '$.unit') AS unit, json_extract_string(last_item, '$.period') AS period, "
        "acked_at, acked_by, escalated_at, held FROM alarm_state "
        "WHERE state IN ('firing', 'recovering') AND list_contains($orgs, org_no) "
        "ORDER BY severity = 'critical' DESC, since, kpi_id, org_no"), {"orgs": sorted(orgs)})


def history(cur: Any, orgs: Iterable[str], limit: int | None = 500) -> list[dict[str, Any]]:
    """State-change events, newest first; source alerts are shown to everyone."""
    if not _table_exists(cur, "alert_event"):
        return []
    sql = ("SELECT created_at, kind, kpi_id, json_extract_string(detail, '$.name_zh') AS name_zh, org_no, "
           "severity, grain, period_start, value, threshold, alarm_since, source, silenced, event_id "
           "FROM alert_event WHERE org_no IS NULL OR list_contains($orgs, org_no) "
           "ORDER BY created_at DESC, event_id")
    return _dicts(cur, sql + (f" LIMIT {int(limit)}" if limit else ""), {"orgs": sorted(orgs)})


def deliveries(cur: Any, orgs: Iterable[str], status: str | None = None) -> list[dict[str, Any]]:
    """Notifications (one per recipient and channel) whose events touch the authorised units."""
    if not _table_exists(cur, "alert_outbox"):
        return []
    sql = ("SELECT o.notification_id, o.created_at, o.recipient, o.channel, o.kind, o.status, o.attempts, "
           "o.sent_at, o.next_attempt_at, o.deadline, o.last_error FROM alert_outbox o "
           "WHERE ($status IS NULL OR o.status = $status) AND EXISTS (SELECT 1 FROM alert_event e "
           "WHERE list_contains(from_json(o.event_ids, '[\"VARCHAR\"]'), e.event_id) "
           "AND (e.org_no IS NULL OR list_contains($orgs, e.org_no))) ORDER BY o.created_at DESC")
    return _dicts(cur, sql, {"orgs": sorted(orgs), "status": status})


def attempts(cur: Any, notification_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Every delivery attempt of the given notifications."""
    if not _table_exists(cur, "alert_delivery"):
        return []
    return _dicts(cur, "SELECT * FROM alert_delivery WHERE list_contains($ids, notification_id) "
                       "ORDER BY attempted_at, attempt", {"ids": sorted(notification_ids)})


def engine_at(path: Path | str) -> Engine:
    """The app database engine at `path` (one per process and file)."""
    return _engine(str(path))
