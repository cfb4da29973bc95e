"""Rows whose inputs changed: an ordinary pass rolls up and stores only the org units whose
attributed facts differ from those the last pass stored.

A city minute re-reads today's facts of ~90 KPIs and used to roll up, value, baseline and write
all ~159 k rows of their open periods (today, the month, the running hours) although ~2 k of
them changed (22:30, `bench/bench_kpi_minute.py`): most grids receive no row in a minute. The
facts are still read whole (a KPI's SQL is not maintained by difference); what is kept between
passes is their reduction per (KPI, period, attributed org, attributed grid), `kpi_fact_last`,
and a marker per KPI and period, `kpi_fact_seen`, with a hash of everything else a row depends
on (the definition with its thresholds, the org tree) and whether the period had data (§7:
presence). A unit's row depends only on the facts attributed to its subtree (org levels) or to
it (grid), on presence, on its baseline and on the definition, so a pass

- compares this pass's reduced facts with the kept ones: the units on the path of a difference
  (every ancestor of its org, and its grid) are recomputed;
- recomputes every unit of a KPI and period with no marker, another hash or presence, a
  snapshot (a new period each pass), or a baseline that reads a period of the same pass (its
  source may change now: today's `previous_period` when yesterday is restated with it);
- leaves the other rows as stored, computed_at included: they were not re-evaluated because
  nothing they are computed from changed (the issue's "only the periods touched by new or
  corrected rows are re-evaluated", down to the org unit).

The sweep at each new hour recomputes every row and rewrites the kept facts: a change this
bookkeeping could miss is at most an hour late. The sweeps within the hour (every 10 minutes:
restated closed periods, kpis.evaluate.SWEEP_EVERY) are restricted like ordinary passes. The
kept facts are written in the transaction that stores the rows (kpis.evaluate.store): a crash
leaves both as they were.
"""
from __future__ import annotations

import hashlib

import duckdb

from kpis.spec import KpiDef

DDL = [
    """CREATE TABLE IF NOT EXISTS kpi_fact_last (
        kpi_id VARCHAR, grain VARCHAR, period_start TIMESTAMP, attr_org VARCHAR,
        attr_grid VARCHAR, num DECIMAL(38, 9), den DECIMAL(38, 9), sample DECIMAL(38, 9),
        pending BOOLEAN, missing BOOLEAN)""",
    """CREATE TABLE IF NOT EXISTS kpi_fact_seen (
        kpi_id VARCHAR, grain VARCHAR, period_start TIMESTAMP, key_hash VARCHAR, present BOOLEAN)""",
    # a digest of the KPI-period's kept facts: a pair whose facts hash as before is not compared
    # row by row (a marker from before the column has none and is compared)
    "ALTER TABLE kpi_fact_seen ADD COLUMN IF NOT EXISTS fact_hash UBIGINT",
]

_VALUES = ("num", "den", "sample", "pending", "missing")


def _facts(a: str) -> str:
    return ", ".join(f"{a}.{c}" for c in ("attr_org", "attr_grid", *_VALUES))


def key_hash(k: KpiDef, tree: str) -> str:
    """What a KPI's rows depend on besides its facts, presence and baseline."""
    return hashlib.sha256(f"{k.model_dump_json()}\x00{tree}".encode()).hexdigest()[:24]


def tree_signature(con: duckdb.DuckDBPyConnection) -> str:
    """The org tree as the roll-up reads it (k_org, which k_org_ancestor is built from)."""
    return con.execute("""
        SELECT md5(COALESCE(string_agg(concat_ws('|', unit_no, COALESCE(parent_no, ''),
                                                 COALESCE(unit_level, '')),
                                       ',' ORDER BY unit_no, parent_no), ''))
        FROM k_org""").fetchone()[0]


def prepare(con: duckdb.DuckDBPyConnection, hashes: dict[int, str], whole: set[tuple[int, int]],
            restrict: bool, follows: set[tuple[int, int, int]] = frozenset()) -> None:
    """After the attribution (_fg, grouped per attributed org and grid) of a batched plan: the
    keys of this pass's KPI-periods (_fd_key), the differences of their facts from the kept
    ones (_fd_diff) and, when `restrict`, the units to recompute (_todo: kix, pid, unit_no,
    unit_level). `whole`: (kix, pid) recomputed whole in any case. `follows`: (kix, pid, source
    pid): the pid's baseline reads the source's values, so the units recomputed in the source
    (every one whose facts changed: those whose value may) are recomputed in the pid too."""
    # a digest of each pair's facts, the same whatever order the rows come in (XOR of the rows'
    # hashes: _fg holds one row per key); no facts, 0
    con.execute("""CREATE OR REPLACE TEMP TABLE _fd_key AS
                   WITH fh AS (SELECT kix, pid, bit_xor(hash(attr_org, attr_grid, num, den, sample,
                                                              pending, missing)) AS fact_hash
                               FROM _fg GROUP BY kix, pid)
                   SELECT kp.kix, kp.pid, km.kpi_id, p.grain, p.ws AS period_start,
                          h.key_hash, pr.kix IS NOT NULL AS present, w.kix IS NOT NULL AS whole,
                          COALESCE(fh.fact_hash, 0) AS fact_hash
                   FROM _kperiod kp
                   LEFT JOIN fh ON fh.kix = kp.kix AND fh.pid = kp.pid
                   JOIN _kmeta km ON km.kix = kp.kix
                   JOIN _periods_all p ON p.pid = kp.pid
                   JOIN (SELECT unnest($k) AS kix, unnest($h) AS key_hash) h ON h.kix = kp.kix
                   LEFT JOIN (SELECT DISTINCT kix, pid FROM _present) pr
                          ON pr.kix = kp.kix AND pr.pid = kp.pid
                   LEFT JOIN (SELECT unnest($wk) AS kix, unnest($wp) AS pid) w
                          ON w.kix = kp.kix AND w.pid = kp.pid
                   WHERE p.grain <> 'near-real-time'""",
                {"k": list(hashes), "h": list(hashes.values()),
                 "wk": [k for k, _ in whole], "wp": [p for _, p in whole]})
    # restricted: a marker with the same hash and presence, and not whole for another reason;
    # `same`: its facts hash as those kept (of a city minute's ~300 pairs most: only the rows of
    # the others are compared, the full join of all ~110 k rows was ~0.03 s)
    con.execute("""CREATE OR REPLACE TEMP TABLE _fd_restricted AS
                   SELECT k.kix, k.pid, k.kpi_id, k.grain, k.period_start,
                          s.fact_hash IS NOT DISTINCT FROM k.fact_hash AS same
                   FROM _fd_key k
                   JOIN kpi_fact_seen s ON s.kpi_id = k.kpi_id AND s.grain = k.grain
                        AND s.period_start = k.period_start AND s.key_hash = k.key_hash
                        AND s.present = k.present
                   WHERE $restrict AND NOT k.whole""", {"restrict": restrict})
    # the differences of the restricted ones (_fg holds one row per key, kpi_fact_last too): a
    # row on the old side leaves the kept facts, one on the new side enters them
    same = " AND ".join(f"n.{c} IS NOT DISTINCT FROM o.{c}" for c in _VALUES)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _fd_diff AS
                    WITH n AS (SELECT g.* FROM _fg g SEMI JOIN _fd_restricted r
                                          ON r.kix = g.kix AND r.pid = g.pid AND NOT r.same),
                    o AS (SELECT r.kix, r.pid, {_facts('s')}
                          FROM kpi_fact_last s JOIN _fd_restricted r
                               ON s.kpi_id = r.kpi_id AND s.grain = r.grain
                               AND s.period_start = r.period_start AND NOT r.same)
                    SELECT COALESCE(n.kix, o.kix) AS kix, COALESCE(n.pid, o.pid) AS pid,
                           COALESCE(n.attr_org, o.attr_org) AS attr_org,
                           CASE WHEN n.kix IS NULL THEN o.attr_grid ELSE n.attr_grid END AS attr_grid,
                           {", ".join(f"n.{c}" for c in _VALUES)},
                           n.kix IS NOT NULL AS in_new, o.kix IS NOT NULL AS in_old
                    FROM n FULL JOIN o ON n.kix = o.kix AND n.pid = o.pid
                         AND n.attr_org = o.attr_org AND n.attr_grid IS NOT DISTINCT FROM o.attr_grid
                    WHERE n.kix IS NULL OR o.kix IS NULL OR NOT ({same})""")
    if not restrict:
        return
    con.execute("""CREATE OR REPLACE TEMP TABLE _todo AS
                   WITH units AS (
                       SELECT d.kix, d.pid, an.ancestor_no AS unit_no
                       FROM _fd_diff d JOIN k_org_ancestor an ON an.unit_no = d.attr_org
                       UNION
                       SELECT kix, pid, attr_grid FROM _fd_diff WHERE attr_grid IS NOT NULL
                   )
                   SELECT kp.kix, kp.pid, u.unit_no, u.unit_level
                   FROM _kperiod kp
                   JOIN _klevel kl ON kl.kix = kp.kix
                   JOIN k_org u ON u.unit_level = kl.level
                   ANTI JOIN _fd_restricted r ON r.kix = kp.kix AND r.pid = kp.pid
                   UNION ALL
                   SELECT t.kix, t.pid, u.unit_no, u.unit_level
                   FROM units t
                   JOIN k_org u ON u.unit_no = t.unit_no
                   JOIN _klevel kl ON kl.kix = t.kix AND kl.level = u.unit_level""")
    if follows:
        # a row's baseline is the same unit's value in the source period: in a real minute the
        # ETL dirties several consecutive past days (orders accepted then, changed now), and each
        # day whose baseline is the day before was recomputed whole (~0.3 s of a city minute)
        cols = list(zip(*sorted(follows)))
        con.execute("""CREATE OR REPLACE TEMP TABLE _todo AS
                       SELECT DISTINCT * FROM (
                           SELECT * FROM _todo
                           UNION ALL
                           SELECT f.kix, f.pid, t.unit_no, t.unit_level
                           FROM _todo t
                           JOIN (SELECT unnest($k) AS kix, unnest($p) AS pid, unnest($s) AS src) f
                             ON f.kix = t.kix AND f.src = t.pid)""",
                    {"k": list(cols[0]), "p": list(cols[1]), "s": list(cols[2])})


_TEMP = ("_fd_key", "_fd_restricted", "_fd_diff", "_todo")


def reset(con: duckdb.DuckDBPyConnection) -> None:
    """Before a compute: no bookkeeping of an earlier one on this connection is taken for it."""
    for t in _TEMP:
        con.execute(f"DROP TABLE IF EXISTS temp.{t}")


def prepared(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether prepare() ran for the compute just done (else nothing is kept or restricted)."""
    return con.execute("SELECT COUNT(*) FROM duckdb_tables() WHERE temporary AND table_name IN "
                       "('_fd_key', '_fd_restricted', '_fd_diff')").fetchone()[0] == 3


def remember(con: duckdb.DuckDBPyConnection) -> None:
    """Keep this pass's reduced facts for the next one (inside the caller's transaction): the
    differences of the restricted KPI-periods, every row of the others."""
    con.execute("""DELETE FROM kpi_fact_last s USING _fd_key k
                   WHERE s.kpi_id = k.kpi_id AND s.grain = k.grain AND s.period_start = k.period_start
                     AND NOT EXISTS (SELECT 1 FROM _fd_restricted r
                                     WHERE r.kix = k.kix AND r.pid = k.pid)""")
    con.execute(f"""INSERT INTO kpi_fact_last
                    SELECT k.kpi_id, k.grain, k.period_start, {_facts('g')}
                    FROM _fg g JOIN _fd_key k ON k.kix = g.kix AND k.pid = g.pid
                    ANTI JOIN _fd_restricted r ON r.kix = g.kix AND r.pid = g.pid""")
    con.execute("""DELETE FROM kpi_fact_last s USING (
                       SELECT r.kpi_id, r.grain, r.period_start, d.attr_org, d.attr_grid
                       FROM _fd_diff d JOIN _fd_restricted r ON r.kix = d.kix AND r.pid = d.pid
                       WHERE d.in_old) o
                   WHERE s.kpi_id = o.kpi_id AND s.grain = o.grain AND s.period_start = o.period_start
                     AND s.attr_org = o.attr_org AND s.attr_grid IS NOT DISTINCT FROM o.attr_grid""")
    con.execute(f"""INSERT INTO kpi_fact_last
                    SELECT r.kpi_id, r.grain, r.period_start, {_facts('d')}
                    FROM _fd_diff d JOIN _fd_restricted r ON r.kix = d.kix AND r.pid = d.pid
                    WHERE d.in_new""")
    con.execute("""DELETE FROM kpi_fact_seen s USING _fd_key k
                   WHERE s.kpi_id = k.kpi_id AND s.grain = k.grain AND s.period_start = k.period_start""")
    con.execute("INSERT INTO kpi_fact_seen (kpi_id, grain, period_start, key_hash, present, "
                "fact_hash) SELECT kpi_id, grain, period_start, key_hash, present, fact_hash "
                "FROM _fd_key")


def prune(con: duckdb.DuckDBPyConnection, day_start: object, month_start: object) -> None:
    """Forget closed periods: days and hours before today, months before this one."""
    for table in ("kpi_fact_last", "kpi_fact_seen"):
        con.execute(f"DELETE FROM {table} WHERE period_start < CASE WHEN grain = 'monthly' "
                    "THEN CAST($m AS TIMESTAMP) ELSE CAST($d AS TIMESTAMP) END",
                    {"d": day_start, "m": month_start})


def forget(con: duckdb.DuckDBPyConnection) -> None:
    """Drop every kept fact (the next pass recomputes every row)."""
    con.execute("DELETE FROM kpi_fact_last")
    con.execute("DELETE FROM kpi_fact_seen")
