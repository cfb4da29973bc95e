"""Business rules checked on loaded rows (etl_dq), derived from the contract where it can be.

Code columns come from the DDL comments (a comment starting with a code type of the system's
*_code list), references from the declared `REFERENCES`, org columns by name; interval pairs
and non-negative quantities are listed or recognised from their units.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from etl.contract import Contract, Table, load_contract

# (start, end) pairs whose order the KPIs rely on (CONVENTIONS.md §1: end < start is invalid)
INTERVALS: dict[str, tuple[tuple[str, str], ...]] = {
    "mis_customer": (("build_date", "cancel_date"),),
    "mis_app": (("accept_time", "connect_time"), ("accept_time", "archive_time")),
    "mis_app_step": (("start_time", "end_time"),),
    "mis_rc_event": (("cut_time", "recon_time"), ("settle_time", "recon_time")),
    "mis_hall_ticket": (("take_time", "call_time"), ("take_time", "finish_time")),
    "mis_payment": (("pay_time", "acct_time"),),
    "cs_work_order": (("accept_time", "reply_time"), ("accept_time", "close_time")),
    "cs_call": (("arrive_time", "end_time"), ("arrive_time", "queue_start_time"),
                ("queue_start_time", "answer_time")),
    "cs_agent_state": (("start_time", "end_time"),),
    "dist_outage": (("actual_start_time", "actual_end_time"), ("plan_start_time", "plan_end_time")),
    "dist_repair_task": (("receive_time", "arrive_time"), ("receive_time", "restore_time")),
    "meter_event": (("start_time", "end_time"),),
    "meter_collection_daily": (("first_try_time", "success_time"),),
    "meter_theft_case": (("found_time", "close_time"),),
}
# Registers (档案): one row per customer, meter or terminal, holding its current state. An update
# of such a row is dated by the dates it moves and by its own updated_at, not by every date the
# row carries: a customer closed today changes no period placed by its build date of 2019
# (etl/load.py _flags_sql; docs/decisions.md, session 31).
ARCHIVES = frozenset({"mis_customer", "mis_meter", "meter_terminal"})
# quantities that may legitimately be negative although measured in kWh / 元
SIGNED = {"loss_kwh", "loss_rate", "clock_dev_s"}
_UNITS = ("kWh", "元", "kVA")
_REF = re.compile(r"^\s+(\w+)\s+.*?REFERENCES (\w+) \((\w+)\)")
_CODE_HEAD = re.compile(r"^(?:\[ADDED\]\s*)?([A-Z][A-Z0-9_]+)\b")


@dataclass(frozen=True)
class TableRules:
    codes: tuple[tuple[str, str], ...]           # (column, code_type)
    orgs: tuple[str, ...]                         # columns holding a mis_org unit
    refs: tuple[tuple[str, str, str], ...]        # (column, parent table, parent column)
    intervals: tuple[tuple[str, str], ...]
    nonneg: tuple[str, ...]
    business_dates: tuple[str, ...]               # SQL expressions giving a DATE
    archive: bool = False                         # ARCHIVES


def _references(ddl: str) -> dict[str, list[tuple[str, str, str]]]:
    refs: dict[str, list[tuple[str, str, str]]] = {}
    current = None
    for line in ddl.splitlines():
        m = re.match(r"^CREATE TABLE (\w+) \($", line)
        if m:
            current = m.group(1)
            continue
        if line.startswith(");"):
            current = None
        elif current and (r := _REF.match(line)):
            refs.setdefault(current, []).append((r.group(1), r.group(2), r.group(3)))
    return refs


@lru_cache(maxsize=8)
def _all_refs(ddl: str) -> dict[str, list[tuple[str, str, str]]]:
    return _references(ddl)


def table_rules(table: Table, contract: Contract | None = None) -> TableRules:
    """The rules of one table."""
    contract = contract or load_contract()
    code_types = {ct for ct, _ in contract.codes.get(f"{table.system}_code", {})}
    codes, orgs, nonneg, dates = [], [], [], []
    for c in table.columns:
        m = _CODE_HEAD.match(c.comment)
        if c.base_type == "VARCHAR" and m and m.group(1) in code_types and not table.name.endswith("_code"):
            codes.append((c.name, m.group(1)))
        if (c.name == "org_no" or c.name.endswith("_org_no")) and table.name != "mis_org":
            orgs.append(c.name)
        if c.base_type in ("NUMERIC", "INTEGER", "BIGINT") and c.name not in SIGNED \
                and any(u in c.comment for u in _UNITS) and "负" not in c.comment:
            nonneg.append(c.name)
        if c.base_type in ("DATE", "TIMESTAMP") and c.name not in ("created_at", "updated_at"):
            dates.append(f'CAST("{c.name}" AS DATE)')
        elif c.name.endswith("_ym"):
            dates.append(f"CAST(TRY_STRPTIME(\"{c.name}\" || '01', '%Y%m%d') AS DATE)")
    if table.name == "mis_org":
        orgs.append("parent_org_no")
    refs = tuple(r for r in _all_refs(contract.ddl).get(table.name, []) if r[1] != "mis_org")
    archive = table.name in ARCHIVES
    if archive and not {"updated_at", "is_deleted"} <= {c.name for c in table.columns}:
        raise ValueError(f"{table.name}: a register (etl.rules.ARCHIVES) needs updated_at and is_deleted")
    return TableRules(tuple(codes), tuple(orgs), refs, INTERVALS.get(table.name, ()),
                      tuple(nonneg), tuple(dates), archive)
