"""Conformed dimensions rebuilt from the core tables: org tree, ancestors, calendar, 台区, class."""
from __future__ import annotations

import duckdb

# The tree comes from parent_org_no only (never code prefixes); CONVENTIONS.md §4.
ORG_LEVELS = {"02": "province", "03": "city", "04": "county", "05": "station"}
MAX_DEPTH = 12     # guards the recursion against a cycle in bad source data

DIM_STATEMENTS = [
    """CREATE TABLE IF NOT EXISTS dim_org (org_no VARCHAR, org_name VARCHAR, org_level VARCHAR,
       parent_no VARCHAR, depth INTEGER, is_root BOOLEAN)""",
    """CREATE TABLE IF NOT EXISTS dim_org_ancestor (org_no VARCHAR, ancestor_no VARCHAR,
       ancestor_level VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS dim_calendar (cal_date DATE, work_flag SMALLINT, wd_index INTEGER)""",
    """CREATE TABLE IF NOT EXISTS dim_tg (tg_no VARCHAR, org_no VARCHAR, grid_no VARCHAR,
       urban_rural VARCHAR, feeder_no VARCHAR)""",
    """CREATE OR REPLACE VIEW dim_elec_type AS SELECT code_value AS elec_type_code,
       parent_value AS cust_class FROM mis_code WHERE code_type = 'ELEC_TYPE' AND is_deleted = 0""",
]
INPUTS = ("mis_org", "mis_grid", "mis_work_calendar", "dist_tg")


def signature(cur: duckdb.DuckDBPyConnection) -> str:
    """Count and newest updated_at of every input: rebuild when it differs from the stored one."""
    parts = " UNION ALL ".join(
        f"SELECT '{t}', count(*), max(updated_at)::VARCHAR FROM {t}" for t in INPUTS)
    return "|".join(f"{t}:{n}:{m}" for t, n, m in cur.execute(parts).fetchall())


def rebuild_if_changed(cur: duckdb.DuckDBPyConnection) -> bool:
    """Rebuild all dimensions in one transaction when their inputs changed; True if rebuilt."""
    sig = signature(cur)
    row = cur.execute("SELECT signature FROM etl_dim_state WHERE name = 'dims'").fetchone()
    if row and row[0] == sig:
        return False
    cur.execute("BEGIN TRANSACTION")
    try:
        rebuild(cur)
        cur.execute("DELETE FROM etl_dim_state WHERE name = 'dims'")
        cur.execute("INSERT INTO etl_dim_state VALUES ('dims', ?, now()::TIMESTAMP)", [sig])
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    return True


def rebuild(cur: duckdb.DuckDBPyConnection) -> None:
    """Replace dim_org, dim_org_ancestor, dim_calendar and dim_tg (caller holds the transaction)."""
    level_case = "CASE org_type " + " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in ORG_LEVELS.items()) + " END"
    cur.execute("DELETE FROM dim_org")
    cur.execute(f"""INSERT INTO dim_org
        WITH RECURSIVE units AS (
            SELECT org_no, org_name, {level_case} AS org_level, parent_org_no AS parent_no
            FROM mis_org WHERE is_deleted = 0
            UNION ALL
            SELECT grid_no, grid_name, 'grid', org_no FROM mis_grid WHERE is_deleted = 0),
        tree(org_no, depth) AS (
            SELECT org_no, 0 FROM units WHERE parent_no IS NULL
            UNION ALL
            SELECT u.org_no, t.depth + 1 FROM units u JOIN tree t ON u.parent_no = t.org_no
            WHERE t.depth < {MAX_DEPTH})
        SELECT u.org_no, u.org_name, u.org_level, u.parent_no,
               (SELECT min(depth) FROM tree t WHERE t.org_no = u.org_no), u.parent_no IS NULL
        FROM units u""")
    cur.execute("DELETE FROM dim_org_ancestor")
    cur.execute(f"""INSERT INTO dim_org_ancestor
        WITH RECURSIVE anc(org_no, ancestor_no, n) AS (
            SELECT org_no, org_no, 0 FROM dim_org
            UNION ALL
            SELECT a.org_no, d.parent_no, a.n + 1 FROM anc a JOIN dim_org d ON d.org_no = a.ancestor_no
            WHERE d.parent_no IS NOT NULL AND a.n < {MAX_DEPTH})
        SELECT DISTINCT a.org_no, a.ancestor_no, d.org_level
        FROM anc a JOIN dim_org d ON d.org_no = a.ancestor_no""")
    cur.execute("DELETE FROM dim_calendar")
    cur.execute("""INSERT INTO dim_calendar
        SELECT cal_date, work_flag,
               CAST(sum(CASE WHEN work_flag = 1 THEN 1 ELSE 0 END) OVER (ORDER BY cal_date) AS INTEGER)
        FROM mis_work_calendar WHERE is_deleted = 0""")
    cur.execute("DELETE FROM dim_tg")
    cur.execute("""INSERT INTO dim_tg SELECT tg_no, org_no, grid_no, urban_rural, feeder_no
        FROM dist_tg WHERE is_deleted = 0""")
