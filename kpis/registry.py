"""Loading and validating the KPI registry (kpis/definitions/*.yaml).

Three stages: parse (YAML -> KpiDef, one issue per bad field), cross-definition rules, and SQL
binding against the warehouse schema. Every problem is collected and reported together as
`file:line [kpi_id]: what is wrong, what was expected`, then loading fails.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from kpis import shared
from kpis.errors import KpiError
from kpis.spec import SOURCES, UNITS, KpiDef
from kpis.thresholds import parse_threshold

DEFINITIONS_DIR = Path(__file__).resolve().parent / "definitions"


@dataclass(frozen=True)
class Issue:
    file: str
    line: int | None
    kpi_id: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where} [{self.kpi_id or '-'}]: {self.message}"


class RegistryError(KpiError):
    """Every problem found in the definitions, one per line."""

    def __init__(self, issues: Sequence[Issue]):
        self.issues = list(issues)
        super().__init__(f"{len(self.issues)} problem(s) in KPI definitions:\n  "
                         + "\n  ".join(str(i) for i in self.issues))


@dataclass(frozen=True)
class Located:
    file: str
    line: int
    kpi: KpiDef


@dataclass(frozen=True)
class Registry:
    kpis: Mapping[str, KpiDef]
    where: Mapping[str, tuple[str, int]]

    def get(self, kpi_id: str) -> KpiDef:
        try:
            return self.kpis[kpi_id]
        except KeyError:
            raise KpiError(f"unknown KPI `{kpi_id}`; see `python -m kpis list`") from None

    def themes(self) -> list[str]:
        return list(dict.fromkeys(k.theme for k in self.kpis.values()))


class _LineLoader(yaml.SafeLoader):
    """Records the line of every mapping so an issue can point at it."""

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        mapping = super().construct_mapping(node, deep=True)
        mapping["__line__"] = node.start_mark.line + 1
        return mapping


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "__line__"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


Rule = Callable[[list[Located]], list[Issue]]


def unique_ids(parsed: list[Located]) -> list[Issue]:
    seen: dict[str, Located] = {}
    issues = []
    for loc in parsed:
        if loc.kpi.id in seen:
            first = seen[loc.kpi.id]
            issues.append(Issue(loc.file, loc.line, loc.kpi.id,
                                f"id is also defined at {first.file}:{first.line}; expected unique ids"))
        else:
            seen[loc.kpi.id] = loc
    return issues


def thresholds_agree_with_direction(parsed: list[Located]) -> list[Issue]:
    issues = []
    for loc in parsed:
        k = loc.kpi
        try:
            warn, crit = parse_threshold(k.warning), parse_threshold(k.critical)
            clear = parse_threshold(k.clear) if k.clear else None
        except ValueError as exc:
            issues.append(Issue(loc.file, loc.line, k.id, str(exc)))
            continue
        if (warn.relative or crit.relative) and k.baseline is None:
            issues.append(Issue(loc.file, loc.line, k.id,
                                "a rel: threshold needs `baseline`; expected one of the baselines of CONVENTIONS.md §7"))
        if warn.is_band != crit.is_band or (warn.is_band and k.direction != "band"):
            if not (warn.is_band and crit.is_band and k.direction == "band"):
                issues.append(Issue(loc.file, loc.line, k.id,
                                    f"band thresholds {k.warning!r}/{k.critical!r} need direction band "
                                    f"and both bands; got {k.direction}"))
            continue
        if warn.relative != crit.relative:
            continue
        if k.direction == "band":
            if not warn.is_band:
                issues.append(Issue(loc.file, loc.line, k.id, "direction band needs a..b thresholds"))
            elif not (crit.low <= warn.low and warn.high <= crit.high):  # type: ignore[operator]
                issues.append(Issue(loc.file, loc.line, k.id,
                                    f"critical band {k.critical!r} must contain warning band {k.warning!r}"))
        elif k.direction == "higher_better" and crit.low > warn.low:
            issues.append(Issue(loc.file, loc.line, k.id,
                                f"critical {k.critical!r} is not worse than warning {k.warning!r} for "
                                "higher_better; expected critical <= warning"))
        elif k.direction == "lower_better" and crit.low < warn.low:
            issues.append(Issue(loc.file, loc.line, k.id,
                                f"critical {k.critical!r} is not worse than warning {k.warning!r} for "
                                "lower_better; expected critical >= warning"))
        if clear is not None and not clear.is_band and not warn.is_band:
            bad = (k.direction == "higher_better" and clear.low < warn.low) or \
                  (k.direction == "lower_better" and clear.low > warn.low)
            if bad:
                issues.append(Issue(loc.file, loc.line, k.id,
                                    f"clear {k.clear!r} is not on the good side of warning {k.warning!r}"))
    return issues


def units_and_sources_known(parsed: list[Located]) -> list[Issue]:
    issues = []
    for loc in parsed:
        k = loc.kpi
        if k.unit not in UNITS:
            issues.append(Issue(loc.file, loc.line, k.id, f"unit {k.unit!r} unknown; expected one of {UNITS}"))
        for s in k.sources:
            if s not in SOURCES:
                issues.append(Issue(loc.file, loc.line, k.id, f"source {s!r} unknown"))
        if k.kind == "value" and not k.value:
            issues.append(Issue(loc.file, loc.line, k.id, "kind value needs `value`: SQL over num and den"))
        if k.kind == "quantile" and k.quantile is None:
            issues.append(Issue(loc.file, loc.line, k.id, "kind quantile needs `quantile` (0..1)"))
        if k.kind in ("count", "sum") and not k.presence and k.shape == "flow":
            issues.append(Issue(loc.file, loc.line, k.id,
                                "a flow count needs `presence` (no rows at all from its source is no_data, not 0)"))
    return issues


# Names of _periods columns and fact columns in a definition's SQL (comments dropped, strings kept).
_PERIOD_WORD = re.compile(r"\b(ws|we|te|grain|hours|as_of|pending)\b", re.IGNORECASE)
_COMMENT_OR_STRING = re.compile(r"'(?:[^']|'')*'|--[^\n]*")


def _period_words(k: KpiDef) -> list[str]:
    code = _COMMENT_OR_STRING.sub(lambda m: m[0] if m[0].startswith("'") else "",
                                  k.sql_text)
    return [w.lower() for w in _PERIOD_WORD.findall(code)]


def day_additive_blockers(k: KpiDef) -> list[str]:
    """Why a month of this KPI is not the exact sum of its days (empty: it is).

    A month equals the sum of its days when every fact row is placed by one time inside
    [ws, te) and reduced by sums only: then each row falls in exactly one day, and the day
    sums are exact DECIMALs. The shapes that break it: stocks, snapshots and rolling windows
    (a value at te, not a sum over the period), distinct counts, MAX and quantiles, items that
    stay pending, facts that read as_of (a day keeps moving after it ends, unless the author
    states when it stops: settles_after, kpis/day_store.py) or the period's
    end, length or grain. The first entries are hard (an override cannot lift them); two are
    soft (SOFT_BLOCKERS), lifted by `day_additive: true` after the author checked:
    `te without its ws`, a heuristic for a population taken at te beside a flow (e.g. a count
    of customers at the end), and a pending window that closes when the day settles (pending
    items and the period's end named beside settles_after: the day store keeps each day's
    pending flag, so the month is pending while a day of it is)."""
    from kpis.batch import batchable  # noqa: PLC0415  (batch imports the compiler)

    out = []
    if k.shape != "flow":
        out.append(f"shape {k.shape}")
    if not batchable(k):
        out.append("not a sum (distinct count, max or quantile)")
    if k.resolved_or_due and not k.settles_when_none_pending:
        out.append("resolved_or_due")
    words = _period_words(k)
    lifted = ({"as_of"} if k.settles_after or k.restated_by else set()) | (
        {"as_of", "pending"} if k.settles_when_none_pending else set())
    # pending items beside settles_after or restated_by alone: a window that closes later
    window = ({"we", "pending"} if k.settles_after or k.restated_by else set()) - lifted
    named = sorted(set(words) & {"we", "grain", "hours", "as_of", "pending"} - lifted - window)
    if named:
        out.append("names " + ", ".join(named))
    if set(words) & window:
        out.append(PENDING_WINDOW)
    if "ws" not in words or "te" not in words:
        out.append("does not place its rows in [ws, te)")
    elif words.count("te") != words.count("ws"):
        out.append(POPULATION_AT_TE)
    return out


PENDING_WINDOW = "a pending window beside settles_after or restated_by"
# a population taken at te beside the flow (customers active at the end): kpis/evaluate.py
# carries a change dated D through every later period end for it, as for a stock. A heuristic
# by words: it also finds other uses of te (billing.sales_kwh, call.fcr_rate), which the carry
# then re-reads for nothing, at no measurable cost (bench/RESULTS.md, session 32)
POPULATION_AT_TE = "te without its ws"
SOFT_BLOCKERS = frozenset({POPULATION_AT_TE, PENDING_WINDOW})


def day_additive(k: KpiDef) -> bool:
    """Whether months of the KPI are built from stored days (the YAML may say false; true is
    validated by day_additive_valid)."""
    if k.day_additive is not None:
        return k.day_additive
    return not day_additive_blockers(k)


# How an issue quotes a flag that is set: the boolean ones as written in the YAML.
_SAID = {"day_additive": ": true", "settles_when_none_pending": ": true"}


def _set_but_wrong(parsed: list[Located], what: str, wrongs: Callable[[KpiDef], list[str]],
                   expected: str) -> list[Issue]:
    """One issue per KPI whose field `what` is set while `wrongs` lists what contradicts it."""
    issues = []
    for loc in parsed:
        if getattr(loc.kpi, what) and (wrong := wrongs(loc.kpi)):
            issues.append(Issue(loc.file, loc.line, loc.kpi.id,
                                f"{what}{_SAID.get(what, '')}, but {'; '.join(wrong)}; "
                                f"expected {expected}"))
    return issues


def day_additive_valid(parsed: list[Located]) -> list[Issue]:
    """`day_additive: true` only where no hard blocker holds (SOFT_BLOCKERS may be lifted)."""
    return _set_but_wrong(
        parsed, "day_additive",
        lambda k: [b for b in day_additive_blockers(k) if b not in SOFT_BLOCKERS],
        "a flow summed over rows placed by one time in [ws, te)")


def settles_only_where_as_of_is_read(parsed: list[Located]) -> list[Issue]:
    """settles_after says when a day stops depending on as_of: only for facts that read it."""
    return [Issue(loc.file, loc.line, loc.kpi.id,
                  f"settles_after: {loc.kpi.settles_after}, but the KPI's SQL does not read as_of; "
                  "expected no settles_after")
            for loc in parsed
            if loc.kpi.settles_after and "as_of" not in _period_words(loc.kpi)]


def day_steps_only_where_time_moves_it(parsed: list[Located]) -> list[Issue]:
    """time_steps: day lifts the every-minute evaluation of a KPI that reads as_of or stays
    pending; on any other KPI it says nothing, and a snapshot is a new period every pass."""
    return [Issue(loc.file, loc.line, loc.kpi.id,
                  "time_steps: day, but the KPI "
                  + ("is a snapshot (near-real-time)" if loc.kpi.grain == "near-real-time"
                     else "neither reads as_of nor has pending facts")
                  + "; expected time_steps: minute (the default)")
            for loc in parsed
            if loc.kpi.time_steps == "day"
            and (loc.kpi.grain == "near-real-time"
                 or not {"as_of", "pending"} & set(_period_words(loc.kpi)))]


def reduced_only_where_summed(parsed: list[Located]) -> list[Issue]:
    """Reduced facts stand for the facts only where the engine sums them (kpis.batch.batchable)."""
    from kpis.batch import batchable  # noqa: PLC0415  (batch imports the compiler)

    return [Issue(loc.file, loc.line, loc.kpi.id,
                  f"`reduced` on a KPI whose facts are not summed (kind {loc.kpi.kind}, num_agg "
                  f"{loc.kpi.num_agg}, den_agg {loc.kpi.den_agg}); expected a sum, count, ratio, "
                  "mean or value of sums")
            for loc in parsed if loc.kpi.reduced and not batchable(loc.kpi)]


def settles_when_none_pending_valid(parsed: list[Located]) -> list[Issue]:
    """settles_when_none_pending: on a resolved-or-due flow whose facts read as_of and flag
    pending items, not beside settles_after (one rule says when a day settles)."""
    def wrongs(k: KpiDef) -> list[str]:
        fact_cols = {m.lower() for m in re.findall(r"\bAS\s+(\w+)", k.values_sql, re.IGNORECASE)}
        return ([] if k.resolved_or_due else ["the KPI is not resolved_or_due"]) + (
            [] if "as_of" in _period_words(k) else ["its SQL does not read as_of"]) + (
            [] if "pending" in fact_cols else ["its facts have no pending column"]) + (
            [f"it also says settles_after: {k.settles_after}"] if k.settles_after else [])
    return _set_but_wrong(parsed, "settles_when_none_pending", wrongs,
                          "a resolved-or-due flow whose facts flag its open items not yet due as "
                          "pending")


def restated_by_valid(parsed: list[Located]) -> list[Issue]:
    """restated_by: on a flow whose SQL reads as_of (what it stands in for), not beside
    settles_after (which says when a day stops moving by the clock alone). Beside
    settles_when_none_pending it adds the days a change restates that the dirty dates miss (a
    repair task moved to an order accepted on another day): a day is reused only when nothing
    of it was pending and it is not among them."""
    return _set_but_wrong(
        parsed, "restated_by",
        lambda k: ([] if "as_of" in _period_words(k) else ["the KPI's SQL does not read as_of"]) + (
            [f"it also says settles_after: {k.settles_after}"] if k.settles_after else []),
        "a flow that reads as_of and no settles_after")


def as_of_moves_valid(parsed: list[Located]) -> list[Issue]:
    """as_of_moves: beside settles_after, on a day-additive KPI without a presence query, naming
    one table the KPI reads (kpis/carry.py; the SQL's shape is checked by sql_binds)."""
    from kpis.carry import moves_table  # noqa: PLC0415
    from kpis.dependencies import tables_read  # noqa: PLC0415

    def wrongs(k: KpiDef) -> list[str]:
        table = moves_table(k)
        return ([] if k.settles_after else ["it has no settles_after"]) + (
            [] if day_additive(k) else ["it is not day-additive"]) + (
            ["it has a presence query"] if k.presence else []) + (
            ["it names no single table" if table is None
             else f"the KPI does not read {table}"] if table not in tables_read(k) else [])
    return _set_but_wrong(parsed, "as_of_moves", wrongs,
                          "the rows of one table the KPI reads, beside settles_after on a "
                          "day-additive flow without a presence query")


DEFAULT_RULES: tuple[Rule, ...] = (unique_ids, thresholds_agree_with_direction, units_and_sources_known,
                                   day_additive_valid, reduced_only_where_summed,
                                   settles_only_where_as_of_is_read, settles_when_none_pending_valid,
                                   restated_by_valid, as_of_moves_valid,
                                   day_steps_only_where_time_moves_it)


def sql_binds(parsed: list[Located]) -> list[Issue]:
    """Every facts query binds against an empty warehouse built from the schema and prelude."""
    import duckdb  # noqa: PLC0415  (only this rule needs a database)

    from etl.schema import ods_statements  # noqa: PLC0415
    from etl.warehouse import BOOKKEEPING  # noqa: PLC0415
    from kpis.compile import PERIODS_DDL, compile_kpi  # noqa: PLC0415
    from kpis.day_store import restated_params  # noqa: PLC0415
    from kpis.prelude import apply_prelude  # noqa: PLC0415

    con = duckdb.connect()
    for stmt in (*ods_statements(), *BOOKKEEPING):
        con.execute(stmt)
    apply_prelude(con)
    con.execute(PERIODS_DDL)
    issues = []
    for loc in parsed:
        k = loc.kpi
        try:
            cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM ({k.facts}) AS f").fetchall()}
            missing = {"pid", "org_no", "grid_no", "num", "den"} - cols
            if k.num_agg == "count_distinct":
                missing |= {"num_key"} - cols
            if k.den_agg == "count_distinct":
                missing |= {"den_key"} - cols
            if missing:
                issues.append(Issue(loc.file, loc.line, k.id,
                                    f"facts lack column(s) {sorted(missing)}; expected pid, org_no, grid_no, num, den"))
                continue
            con.execute("EXPLAIN " + compile_kpi(k, cols))
            if k.reduced:
                issues.extend(_reduced_binds(con, loc, cols))
            if k.presence:
                con.execute(f"EXPLAIN SELECT DISTINCT pid FROM ({k.presence})")
            if k.restated_by:
                shape = [(r[0], r[1]) for r in con.execute(
                    f"DESCRIBE SELECT * FROM ({k.restated_by})",
                    restated_params(k, 0, datetime(2000, 1, 1), datetime(2000, 1, 1))).fetchall()]
                if shape != [("day", "DATE")]:
                    issues.append(Issue(loc.file, loc.line, k.id, f"restated_by returns {shape}; "
                                        "expected one column day DATE"))
            if k.as_of_moves:
                issues.extend(_as_of_moves_binds(con, loc))
        except duckdb.Error as exc:
            msg = str(exc).splitlines()[0][:300]
            issues.append(Issue(loc.file, loc.line, k.id, f"SQL does not bind: {msg}"))
    con.close()
    return issues


def _as_of_moves_binds(con: object, loc: Located) -> list[Issue]:
    """as_of_moves returns its table's rows: the table's columns, in its order."""
    from kpis.carry import moves_params, moves_table  # noqa: PLC0415
    k = loc.kpi
    table = moves_table(k)
    if table is None:
        return []       # as_of_moves_valid says so
    got = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM ({k.as_of_moves})",
                                     moves_params(k, datetime(2000, 1, 1), datetime(2000, 1, 1))
                                     ).fetchall()]
    want = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {table}").fetchall()]
    if got != want:
        return [Issue(loc.file, loc.line, k.id, f"as_of_moves returns {got}; expected the columns "
                      f"of {table}: {want}")]
    return []


# Columns of the facts that the reduced facts carry alike (item keys are what they drop).
_SUMMED = {"pid", "org_no", "grid_no", "num", "den", "sample", "pending", "missing"}


def _reduced_binds(con: object, loc: Located, fact_cols: set[str]) -> list[Issue]:
    k = loc.kpi
    cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM ({k.reduced}) AS f").fetchall()}
    want = fact_cols & _SUMMED
    if cols & _SUMMED != want:
        return [Issue(loc.file, loc.line, k.id,
                      f"reduced has column(s) {sorted(cols & _SUMMED)}; expected those of the facts "
                      f"that are summed: {sorted(want)}")]
    return []


def load_registry(directory: Path = DEFINITIONS_DIR, rules: Sequence[Rule] = DEFAULT_RULES,
                  check_sql: bool = False) -> Registry:
    """Load every theme file; raise RegistryError listing all problems at once."""
    parsed: list[Located] = []
    issues: list[Issue] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_LineLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            issues.append(Issue(path.name, mark.line + 1 if mark else None, None, str(exc.problem)))
            continue
        if not isinstance(doc, dict) or "theme" not in doc or not isinstance(doc.get("kpis"), list):
            issues.append(Issue(path.name, 1, None, "expected a mapping with `theme` and a list `kpis`"))
            continue
        defaults = _strip(doc.get("defaults", {}))
        for raw in doc["kpis"]:
            line = raw.get("__line__") if isinstance(raw, dict) else None
            item = {**defaults, **_strip(raw), "theme": doc["theme"]}
            for field in ("facts", "reduced"):
                if isinstance(item.get(field), str):
                    item[field] = shared.expand(item[field])
            try:
                parsed.append(Located(path.name, line or 0, KpiDef.model_validate(item)))
            except ValidationError as exc:
                for err in exc.errors():
                    loc = ".".join(str(p) for p in err["loc"])
                    got = err.get("input")
                    shown = f"; got {got!r}"[:120] if not isinstance(got, dict) else ""
                    issues.append(Issue(path.name, line, item.get("id"), f"{loc}: {err['msg']}{shown}"))
    for rule in rules:
        issues.extend(rule(parsed))
    if check_sql:
        issues.extend(sql_binds(parsed))
    if issues:
        raise RegistryError(issues)
    kpis = {loc.kpi.id: loc.kpi for loc in parsed}
    return Registry(MappingProxyType(kpis), MappingProxyType({loc.kpi.id: (loc.file, loc.line) for loc in parsed}))
