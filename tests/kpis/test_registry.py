"""The registry matches the agreed catalogue and reports every problem in one go."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from kpis.registry import DEFINITIONS_DIR, RegistryError, load_registry

CATALOGUE = Path(__file__).resolve().parents[2] / "contract" / "kpis.csv"


def catalogue() -> list[dict[str, str]]:
    return list(csv.DictReader(CATALOGUE.open(encoding="utf-8")))


@pytest.fixture(scope="module")
def registry():
    return load_registry(check_sql=True)


def test_every_catalogue_kpi_is_in_the_registry_unchanged(registry) -> None:
    problems = []
    for row in catalogue():
        k = registry.kpis.get(row["id"])
        if k is None:
            problems.append(f"{row['id']}: missing from kpis/definitions")
            continue
        expected = {
            "name_zh": row["name_zh"], "name_en": row["name_en"], "theme": row["theme"],
            "unit": row["unit"], "direction": row["direction"], "grain": row["grain"],
            "warning": row["warning_threshold"], "critical": row["critical_threshold"],
            "org_levels": tuple(row["org_levels"].split(";")),
            "min_sample": int(row["min_sample"]) if row["min_sample"] else None,
            "tier": row["tier"], "definition": row["definition"], "formula": row["formula"],
            "sources": tuple(sorted(s.replace("cs95598", "cs") for s in row["source_systems"].split(";"))),
        }
        for field, want in expected.items():
            have = getattr(k, field)
            if field == "sources":
                have = tuple(sorted(have))
            if have != want:
                problems.append(f"{row['id']}.{field}: registry {have!r} != catalogue {want!r}")
    assert not problems, "\n".join(problems)


def test_registry_has_nothing_the_catalogue_lacks(registry) -> None:
    ids = {r["id"] for r in catalogue()}
    assert not set(registry.kpis) - ids


def test_no_definition_is_a_constant(registry) -> None:
    """A facts query that reads no warehouse table cannot follow its formula."""
    from etl.contract import load_contract
    from kpis.prelude import ON_DEMAND
    tables = set(load_contract().tables) | {"k_customer", "k_queued", "k_tg"} | ON_DEMAND
    lazy = [k.id for k in registry.kpis.values()
            if not any(t in k.facts for t in tables)]
    assert not lazy


def test_every_problem_is_reported_with_file_line_and_id(tmp_path: Path) -> None:
    shutil.copy(DEFINITIONS_DIR / "repair.yaml", tmp_path / "repair.yaml")
    text = (tmp_path / "repair.yaml").read_text(encoding="utf-8")
    broken = text.replace('critical: "95"', 'critical: "99"', 1).replace("kind: mean", "kind: median", 1)
    item = ("  - id: {id}\n    name_zh: x\n    name_en: x\n    definition: x\n"
            "    formula: x\n    unit: furlongs\n    direction: lower_better\n    grain: daily\n"
            "    warning: '1'\n    critical: '2'\n    org_levels: [city]\n    tier: core\n"
            "    sources: [cs]\n    kind: count\n    shape: snapshot\n{extra}"
            "    facts: SELECT 1 AS pid, NULL AS org_no, NULL AS grid_no, 1 AS num, NULL AS den FROM nowhere\n")
    broken += item.format(id="repair.orders", extra="")
    broken += item.format(id="repair.spare", extra="    colour: red\n")
    (tmp_path / "repair.yaml").write_text(broken, encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        load_registry(tmp_path, check_sql=True)
    message = str(info.value)
    assert "repair.yaml:" in message
    assert "[repair.arrival_ontime_rate_urban]: critical" in message     # critical above warning
    assert "kind" in message and "median" in message                      # a bad enum value
    assert "colour" in message                                           # unknown field
    assert "id is also defined at repair.yaml:" in message               # duplicate id
    assert "unit 'furlongs' unknown" in message                          # unit rule
    assert "does not bind" in message and "nowhere" in message           # SQL binding
    assert len(info.value.issues) >= 6


def test_reduced_facts_must_carry_the_summed_columns_of_a_summed_kpi(tmp_path: Path) -> None:
    """`reduced` stands for the facts only where the engine sums them, with the same summed
    columns: a missing `den`, or reduced facts on a distinct count, are reported by id."""
    item = ("  - id: {id}\n    name_zh: x\n    name_en: x\n    definition: x\n"
            "    formula: x\n    unit: count\n    direction: band\n    grain: daily\n"
            "    warning: '1..2'\n    critical: '0..3'\n    org_levels: [city]\n    tier: core\n"
            "    sources: [mis]\n    kind: count\n    shape: stock\n{extra}"
            "    facts: SELECT p.pid, c.org_no, c.grid_no, c.cons_no AS item_key, 1 AS num, "
            "NULL AS den, c.cons_no AS num_key FROM mis_customer c CROSS JOIN _periods p\n"
            "    reduced: SELECT p.pid, c.org_no, c.grid_no, COUNT(*) AS num{den} "
            "FROM mis_customer c CROSS JOIN _periods p GROUP BY ALL\n")
    text = ("theme: customer\nkpis:\n"
            + item.format(id="customer.good", extra="", den=", NULL AS den")
            + item.format(id="customer.no_den", extra="", den="")
            + item.format(id="customer.distinct", extra="    num_agg: count_distinct\n", den=", NULL AS den"))
    (tmp_path / "customer.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        load_registry(tmp_path, check_sql=True)
    message = str(info.value)
    assert "customer.good" not in message
    assert "[customer.no_den]: reduced has column(s)" in message and "'den'" in message
    assert "[customer.distinct]: `reduced` on a KPI whose facts are not summed" in message


def test_time_steps_day_only_where_time_moves_the_kpi(tmp_path: Path) -> None:
    """time_steps: day lifts the every-minute evaluation of a KPI whose facts read as_of or stay
    pending: on one that reads neither, or on a snapshot, it is reported by id; another word
    than minute / day is refused."""
    item = ("  - id: {id}\n    name_zh: x\n    name_en: x\n    definition: x\n"
            "    formula: x\n    unit: count\n    direction: band\n    grain: {grain}\n"
            "    warning: '1..2'\n    critical: '0..3'\n    org_levels: [city]\n    tier: core\n"
            "    sources: [mis]\n    kind: ratio\n    shape: {shape}\n    time_steps: {steps}\n"
            "    presence: SELECT pid FROM _periods\n"
            "    facts: SELECT p.pid, a.org_no, a.grid_no, 1 AS num, 1 AS den{pending} FROM mis_app a "
            "JOIN _periods p ON a.accept_time >= p.ws AND a.accept_time < p.te\n")
    pending = ", CAST(a.accept_time AS DATE) + 31 > CAST(p.as_of AS DATE) AS pending"
    text = ("theme: newconn\nkpis:\n"
            + item.format(id="newconn.good", grain="daily", shape="flow", steps="day", pending=pending)
            + item.format(id="newconn.no_time", grain="daily", shape="flow", steps="day", pending="")
            + item.format(id="newconn.snap", grain="near-real-time", shape="snapshot", steps="day",
                          pending=pending)
            + item.format(id="newconn.bad_word", grain="daily", shape="flow", steps="hour",
                          pending=pending))
    (tmp_path / "newconn.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        load_registry(tmp_path, check_sql=True)
    message = str(info.value)
    assert "newconn.good" not in message
    assert "[newconn.no_time]: time_steps: day, but the KPI neither reads as_of nor has pending" in message
    assert "[newconn.snap]: time_steps: day, but the KPI is a snapshot" in message
    assert "[newconn.bad_word]" in message and "time_steps" in message


def test_settles_after_only_where_the_sql_reads_as_of(tmp_path: Path) -> None:
    """settles_after says when a day stops depending on as_of: on a KPI that does not read it,
    or in another form than 'N hours' / 'N days', it is reported by id."""
    item = ("  - id: {id}\n    name_zh: x\n    name_en: x\n    definition: x\n"
            "    formula: x\n    unit: count\n    direction: band\n    grain: daily\n"
            "    warning: '1..2'\n    critical: '0..3'\n    org_levels: [city]\n    tier: core\n"
            "    sources: [mis]\n    kind: ratio\n    shape: flow\n    settles_after: {after}\n"
            "    presence: SELECT pid FROM _periods\n"
            "    facts: SELECT p.pid, a.org_no, a.grid_no, 1 AS num, 1 AS den FROM mis_app a "
            "JOIN _periods p ON a.accept_time >= p.ws AND a.accept_time < p.te{cond}\n")
    reads = " AND upto(a.accept_time, p.as_of) IS NOT NULL"
    text = ("theme: newconn\nkpis:\n"
            + item.format(id="newconn.good", after="9 hours", cond=reads)
            + item.format(id="newconn.no_as_of", after="9 hours", cond="")
            + item.format(id="newconn.bad_form", after="9h", cond=reads))
    (tmp_path / "newconn.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        load_registry(tmp_path, check_sql=True)
    message = str(info.value)
    assert "newconn.good" not in message
    assert "[newconn.no_as_of]: settles_after: 9 hours, but the KPI's SQL does not read as_of" in message
    assert "[newconn.bad_form]" in message and "settles_after" in message


# The fields every KPI of the rule tests below shares; each test adds unit, thresholds and its rule.
_HEAD = ("  - id: {id}\n    name_zh: x\n    name_en: x\n    definition: x\n    formula: x\n"
         "    grain: daily\n    org_levels: [city]\n    tier: core\n    sources: [mis]\n"
         "    kind: ratio\n    shape: flow\n")
_BAND = "    unit: count\n    direction: band\n    warning: '1..2'\n    critical: '0..3'\n"


def test_settles_when_none_pending_only_on_resolved_or_due_flows_with_pending(tmp_path: Path) -> None:
    """settles_when_none_pending: on a KPI that is not resolved-or-due, whose facts flag no
    pending item, or that also says settles_after, it is reported by id with what is wrong."""
    item = (_HEAD + "    unit: '%'\n    direction: higher_better\n    warning: '98'\n"
            "    critical: '95'\n    scale: 100\n    settles_when_none_pending: true\n{extra}"
            "    facts: SELECT p.pid, a.org_no, a.grid_no, "
            "CASE WHEN upto(a.archive_time, p.as_of) IS NOT NULL THEN 1 ELSE 0 END AS num, 1 AS den{pending} "
            "FROM mis_app a JOIN _periods p ON a.accept_time >= p.ws AND a.accept_time < p.te\n")
    pending = ", upto(a.archive_time, p.as_of) IS NULL AS pending"
    rod = "    resolved_or_due: true\n"
    text = ("theme: newconn\nkpis:\n"
            + item.format(id="newconn.good", extra=rod, pending=pending)
            + item.format(id="newconn.not_due", extra="", pending=pending)
            + item.format(id="newconn.no_pending", extra=rod, pending="")
            + item.format(id="newconn.both", extra=rod + "    settles_after: 9 hours\n", pending=pending)
            # restated_by beside it names what changed rows restate (repair.arrival_ontime_rate)
            + item.format(id="newconn.restated", pending=pending, extra=rod + (
                "    restated_by: SELECT CAST(accept_time AS DATE) AS day FROM mis_app\n")))
    message = _load_errors(tmp_path, text)
    assert "newconn.good" not in message and "newconn.restated" not in message
    assert ("[newconn.not_due]: settles_when_none_pending: true, but the KPI is not resolved_or_due"
            in message)
    assert "[newconn.no_pending]: settles_when_none_pending: true, but its facts have no pending column" in message
    assert "[newconn.both]: settles_when_none_pending: true, but it also says settles_after: 9 hours" in message


def test_restated_by_only_on_flows_that_read_as_of_returning_days(tmp_path: Path) -> None:
    """restated_by: on a KPI whose SQL does not read as_of, beside another settle rule, or not
    returning one DATE column `day`, it is reported by id with what is wrong."""
    item = (_HEAD + _BAND + "{extra}"
            "    restated_by: {restated}\n"
            "    presence: SELECT pid FROM _periods\n"
            "    facts: SELECT p.pid, a.org_no, a.grid_no, 1 AS num, 1 AS den FROM mis_app a "
            "JOIN _periods p ON a.accept_time >= p.ws AND a.accept_time < p.te{cond}\n")
    reads = " AND upto(a.archive_time, p.as_of) IS NOT NULL"
    days = ("SELECT CAST(accept_time AS DATE) AS day FROM mis_app "
            "WHERE archive_time > $after AND archive_time <= $as_of")
    text = ("theme: newconn\nkpis:\n"
            + item.format(id="newconn.good", extra="", restated=days, cond=reads)
            + item.format(id="newconn.no_as_of", extra="", restated=days, cond="")
            + item.format(id="newconn.both", extra="    settles_after: 9 hours\n", restated=days, cond=reads)
            + item.format(id="newconn.shape", extra="", cond=reads,
                          restated="SELECT accept_time AS day FROM mis_app WHERE archive_time > $after"))
    message = _load_errors(tmp_path, text)
    assert "newconn.good" not in message
    assert "[newconn.no_as_of]: restated_by, but the KPI's SQL does not read as_of" in message
    assert "[newconn.both]: restated_by, but it also says settles_after: 9 hours" in message
    assert "[newconn.shape]: restated_by returns [('day', 'TIMESTAMP')]; expected one column day DATE" in message


def _load_errors(tmp_path: Path, text: str) -> str:
    """What loading a definitions file of this text reports (it must fail)."""
    (tmp_path / "newconn.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        load_registry(tmp_path, check_sql=True)
    return str(info.value)


def test_as_of_moves_only_beside_settles_after_returning_a_table_it_reads(tmp_path: Path) -> None:
    """as_of_moves (kpis/carry.py): without settles_after, beside a presence query, naming a table
    the KPI does not read, or returning other columns than its table's, it is reported by id."""
    item = (_HEAD + _BAND + "{extra}"
            "    as_of_moves: {moves}\n"
            "    facts: SELECT p.pid, a.org_no, a.grid_no, 1 AS num, 1 AS den FROM mis_app a "
            "JOIN _periods p ON a.accept_time >= p.ws AND a.accept_time < p.te "
            "AND upto(a.archive_time, p.as_of) IS NOT NULL\n")
    settles = "    settles_after: 9 hours\n"
    moves = "SELECT * FROM mis_app WHERE archive_time > $after AND archive_time <= $as_of"
    text = ("theme: newconn\nkpis:\n"
            + item.format(id="newconn.good", extra=settles, moves=moves)
            + item.format(id="newconn.unsettled", extra="", moves=moves)
            + item.format(id="newconn.present", moves=moves,
                          extra=settles + "    presence: SELECT pid FROM _periods\n")
            + item.format(id="newconn.elsewhere", extra=settles,
                          moves="SELECT * FROM cs_call WHERE end_time > $after")
            + item.format(id="newconn.columns", extra=settles,
                          moves="SELECT app_no FROM mis_app WHERE archive_time > $after"))
    message = _load_errors(tmp_path, text)
    assert "newconn.good" not in message
    assert "[newconn.unsettled]: as_of_moves, but it has no settles_after" in message
    assert "[newconn.present]: as_of_moves, but it has a presence query" in message
    assert "[newconn.elsewhere]: as_of_moves, but the KPI does not read cs_call" in message
    assert "[newconn.columns]: as_of_moves returns ['app_no']; expected the columns of mis_app" in message
