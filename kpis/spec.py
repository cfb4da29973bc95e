"""The schema of one KPI definition (pydantic): catalogue fields plus its computation."""
from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Level = Literal["province", "city", "county", "station", "grid"]
LEVELS: tuple[str, ...] = ("province", "city", "county", "station", "grid")
Grain = Literal["hourly", "daily", "monthly", "near-real-time"]
Direction = Literal["higher_better", "lower_better", "band"]
Kind = Literal["ratio", "count", "sum", "mean", "max", "quantile", "value"]
Shape = Literal["flow", "stock", "snapshot", "rolling"]
Baseline = Literal["previous_period", "same_weekday_4w", "same_hour_weekday_4w",
                   "same_month_last_year", "mean_prev_3_months", "value_7_days_earlier",
                   "snapshot_same_time_4w", "snapshot_same_time_7d", "snapshot_7_days_earlier",
                   "same_day_prev_month", "previous_month_end"]
SOURCES = ("mis", "cs", "dist", "meter")
UNITS = ("%", "count", "minutes", "working days", "yuan", "interruptions/customer", "seconds",
         "MVA", "per 1,000 applications", "MWh", "points", "per 10k customers per year",
         "per 10k customers", "hours/customer", "hours", "days")


class KpiDef(BaseModel):
    """One KPI: what the catalogue agreed, and how it is computed over the warehouse."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z]+\.[a-z0-9_]+$")
    name_zh: str
    name_en: str
    theme: str
    sources: tuple[Literal["mis", "cs", "dist", "meter"], ...]
    definition: str
    formula: str
    unit: str
    direction: Direction
    grain: Grain
    warning: str
    critical: str
    clear: str | None = None           # recovery level for alarms; default: the warning level
    pending: int | None = None         # evaluations a breach must hold before firing
    recover_after: int | None = None   # evaluations back past the clear level before resolving
    reference: str = ""
    org_levels: tuple[Level, ...]
    min_sample: int | None = None
    tier: Literal["core", "standard"]
    # computation
    kind: Kind
    scale: float = 1.0                 # ratio: value = scale * num / den
    value: str | None = None           # kind value: SQL over num, den (e.g. 100 * (1 - num / den))
    num_agg: Literal["sum", "count_distinct", "max", "quantile"] = "sum"
    den_agg: Literal["sum", "count_distinct"] = "sum"
    quantile: float | None = None
    shape: Shape
    baseline: Baseline | None = None
    complete_months_only: bool = False
    resolved_or_due: bool = False
    # Months built from stored day reductions (kpis/day_store.py). None: derived from the
    # definition (kpis.registry.day_additive); false opts out; true is accepted only where the
    # derivation finds no shape that makes days non-additive.
    day_additive: bool | None = None
    # A flow whose facts read as_of (a success counts once it has happened by as_of) but whose
    # day no longer depends on it from this long after the day's end on: e.g. "9 hours" when a
    # day's collection counts if it succeeded before 09:00 of the next day. Lifts the day store's
    # "names as_of" blocker; a stored day is then reused only when it was computed at an as_of
    # at least this long after the day's end (kpis/day_store.py).
    settles_after: str | None = Field(default=None, pattern=r"^[1-9][0-9]* (hours|days)$")
    # A resolved-or-due flow whose facts flag every item that a later as_of could still change
    # (open and not yet due) as pending: a day with no pending item no longer depends on as_of.
    # Lifts the day store's resolved_or_due blocker; a stored day is then reused only when none
    # of its rows was pending and it was computed at an as_of not after the pass's
    # (kpis/day_store.py). tests/kpis/test_day_store.py holds every such claim on simulated data.
    settles_when_none_pending: bool = False
    # A flow whose facts read as_of only to leave out what has not happened by then (a visit
    # after as_of), and whose day otherwise changes through rows that the ETL's dirty dates do
    # not place on it (an order's visits, dated later): SQL returning `day` (DATE), the days
    # whose stored facts may differ now, given $run (the ETL run they are up to: rows merged
    # after it, from etl_keys of the tables it names as quoted literals) and $after / $as_of
    # (the earliest as_of up to which they were checked, and the pass's). Lifts the day store's
    # "names as_of" blocker (kpis/day_store.py); tests/kpis/test_day_store.py holds each claim.
    # Beside settles_when_none_pending (which covers what as_of passing moves) it names only the
    # days changed rows restate that their dirty dates miss (a repair task moved to an order
    # accepted on another day): tests/kpis/test_incremental.py.
    restated_by: str | None = None
    # Beside settles_after: SQL returning the rows of one table the KPI reads (SELECT * of it)
    # whose facts may differ between $after and $as_of (a reading whose success_time falls in
    # between), the rows unchanged. Every other way as_of reaches the facts must be through
    # such rows. The store then keeps an unsettled day's rows, and an ordinary pass brings them
    # forward by the difference of the changed rows' facts instead of reading the day
    # (kpis/carry.py).
    as_of_moves: str | None = None
    # How often the values can move with as_of alone, the tables it reads unchanged: "minute"
    # (an item falls due at any time: resolved-or-due deadlines, pending windows) or "day"
    # (every comparison with as_of is of dates: a bill's release date + 31 days). An ordinary
    # pass evaluates a "day" KPI only when its tables changed; the sweep of each new hour
    # (midnight's too) evaluates it with the rest (kpis.evaluate.evaluate_incremental).
    time_steps: Literal["minute", "day"] = "minute"
    presence: str | None = None        # SQL returning rows when the source delivered data for p
    facts: str                         # SQL returning pid, org_no, grid_no, num, den [, ...]
    # The facts already summed: the same columns less item_key (and the count_distinct keys),
    # rows of one (pid, org_no, grid_no) may be split. Values come from it; the facts stay the
    # items (detail pages, exports) and the own statement, which tests hold equal to it. For a
    # stock of millions of rows that many share their attributes (customers at each te).
    reduced: str | None = None

    @field_validator("warning", "critical", "clear", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        return None if v is None else str(v)

    @property
    def settles(self) -> timedelta | None:
        """settles_after as a duration."""
        if self.settles_after is None:
            return None
        n, unit = self.settles_after.split()
        return timedelta(**{unit: int(n)})

    @property
    def values_sql(self) -> str:
        """What the batched engine sums: the reduced facts where the definition has them."""
        return self.reduced or self.facts

    @property
    def sql_text(self) -> str:
        """All of the KPI's SQL (for what it reads, names and depends on)."""
        return "\n".join(x for x in (self.facts, self.reduced, self.presence) if x)

    @property
    def has_sample(self) -> bool:
        return self.min_sample is not None
