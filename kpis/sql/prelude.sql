-- Shared definitions of CONVENTIONS.md §3-§5, written once so that the ~190 KPI definitions
-- do not repeat them. Applied by kpis/prelude.py before every evaluation (cheap: views and
-- macros, plus small tables rebuilt from the org, grid and calendar tables). The on-demand
-- tables (k_settle_tg, k_bill, k_wo, k_task) are kept between the worker's passes and
-- re-derived per key (kpis/prelude.py FOLLOW): the rows of a key come from the rows of one base
-- table with that key, joined to other tables by their keys; keep it so when editing them.
-- k_settle_mp follows its points, and its meters, collection objects and terminals over their keys
-- (kpis/prelude.py Reverse).

-- Org units: every non-deleted org and grid, with its level. The tree comes from
-- parent_org_no (never code prefixes); a grid's parent is mis_grid.org_no.
CREATE OR REPLACE TABLE k_org AS
SELECT o.org_no AS unit_no, o.org_name AS unit_name, o.parent_org_no AS parent_no,
       CASE o.org_type WHEN '02' THEN 'province' WHEN '03' THEN 'city'
                       WHEN '04' THEN 'county' WHEN '05' THEN 'station' END AS unit_level,
       o.status_code
FROM mis_org o WHERE o.is_deleted = 0
UNION ALL
SELECT g.grid_no, g.grid_name, g.org_no, 'grid', g.status_code
FROM mis_grid g WHERE g.is_deleted = 0;

-- The root: the org without a parent; facts of unknown org go there (dropped if several roots).
CREATE OR REPLACE TABLE k_root AS
SELECT CASE WHEN COUNT(*) = 1 THEN MIN(unit_no) END AS unit_no
FROM k_org WHERE parent_no IS NULL AND unit_level <> 'grid';

-- Each unit paired with itself and every ancestor still in the tree.
CREATE OR REPLACE TABLE k_org_ancestor AS
WITH RECURSIVE up(unit_no, ancestor_no, depth) AS (
    SELECT unit_no, unit_no, 0 FROM k_org
    UNION ALL
    SELECT up.unit_no, o.parent_no, up.depth + 1
    FROM up JOIN k_org o ON o.unit_no = up.ancestor_no
    WHERE o.parent_no IS NOT NULL AND up.depth < 12
)
SELECT up.unit_no, up.ancestor_no, a.unit_level AS ancestor_level
FROM up JOIN k_org a ON a.unit_no = up.ancestor_no;

-- Working-day calendar: wd_index counts working days up to and including the date.
CREATE OR REPLACE TABLE k_calendar AS
SELECT cal_date, work_flag,
       SUM(CASE WHEN work_flag = 1 THEN 1 ELSE 0 END) OVER (ORDER BY cal_date) AS wd_index
FROM (SELECT cal_date, MAX(work_flag) AS work_flag FROM mis_work_calendar
      WHERE is_deleted = 0 GROUP BY cal_date);

-- known_org(x): x when it is a non-deleted org (not a grid), else NULL.
CREATE OR REPLACE MACRO known_org(x) AS
    (SELECT MIN(k.unit_no) FROM k_org k WHERE k.unit_no = x AND k.unit_level <> 'grid');
CREATE OR REPLACE MACRO known_grid(x) AS
    (SELECT MIN(k.unit_no) FROM k_org k WHERE k.unit_no = x AND k.unit_level = 'grid');

-- Durations as exact real numbers (never date_diff, which counts boundaries crossed).
CREATE OR REPLACE MACRO minutes_between(a, b) AS epoch(b) / 60.0 - epoch(a) / 60.0;
CREATE OR REPLACE MACRO seconds_between(a, b) AS epoch(b) - epoch(a);
CREATE OR REPLACE MACRO hours_between(a, b) AS epoch(b) / 3600.0 - epoch(a) / 3600.0;
-- An event later than as_of has not happened yet.
CREATE OR REPLACE MACRO upto(t, as_of) AS CASE WHEN t <= as_of THEN t END;
-- periods_from(): no period of _periods starts before it. A facts or presence query may filter a large
-- table's placing column on it (a row placed in [ws, te) is never before it): the batched
-- engine writes the earliest ws of the statement's periods in its place, a constant whose
-- comparison skips row groups by their min/max (kpis/batch.py). Elsewhere it bounds nothing.
CREATE OR REPLACE MACRO periods_from() AS TIMESTAMP '0001-01-01 00:00:00';
-- periods_te_from(): no period of _periods ends (te) before it; written by the batched engine
-- as the earliest te, like periods_from(). A stock read at te over a day-placed history (the
-- meters' last days before te) may bound that history with it: without, every day was read.
CREATE OR REPLACE MACRO periods_te_from() AS TIMESTAMP '0001-01-01 00:00:00';

-- WD(t1, t2): working dates x with DATE(t1) < x <= DATE(t2); NULL when a date is missing.
CREATE OR REPLACE MACRO wd(t1, t2) AS
    (SELECT MAX(CASE WHEN c.cal_date = CAST(t2 AS DATE) THEN c.wd_index END)
          - MAX(CASE WHEN c.cal_date = CAST(t1 AS DATE) THEN c.wd_index END)
     FROM k_calendar c WHERE c.cal_date IN (CAST(t1 AS DATE), CAST(t2 AS DATE)));
-- WDL(t, n): 00:00 of the (n+1)-th working day strictly after DATE(t) (exclusive deadline).
CREATE OR REPLACE MACRO wdl(t, n) AS
    (SELECT CAST(MIN(c.cal_date) AS TIMESTAMP) FROM k_calendar c
     WHERE c.work_flag = 1 AND c.wd_index = (SELECT d.wd_index FROM k_calendar d
                                             WHERE d.cal_date = CAST(t AS DATE)) + n + 1);

-- Working days by their index (00:00 of each): WDL(t, n) as a join, the working day at the index
-- of DATE(t) (k_calendar) + n + 1, for facts over many rows (wdl() above is a correlated
-- subquery: a DELIM join per statement, ~0.05 s each at city even for a few hundred orders).
CREATE OR REPLACE TABLE k_wd_day AS
SELECT wd_index, CAST(MIN(cal_date) AS TIMESTAMP) AS day_start
FROM k_calendar WHERE work_flag = 1 GROUP BY wd_index;

-- A text field filled in: not NULL and not only blanks, i.e. NULLIF(TRIM(x), '') IS NOT NULL.
-- TRIM of every value was 0.7 s of 3.5 M customers x 3 fields at city (CJK text); only a value
-- whose first character is one TRIM removes (the Unicode space separators, listed) needs it.
CREATE OR REPLACE MACRO has_text(x) AS
    CASE WHEN x IS NULL OR x = '' THEN FALSE
         WHEN unicode(x) NOT IN (32, 160, 5760, 8192, 8193, 8194, 8195, 8196, 8197, 8198, 8199,
                                 8200, 8201, 8202, 8239, 8287, 12288) THEN TRUE
         ELSE trim(x) <> '' END;

-- ACTIVE(c, T): on the books at instant T (X = the date of the instant just before T).
CREATE OR REPLACE MACRO is_active(is_deleted, build_date, created_at, cancel_date, status_code, t) AS
    is_deleted = 0
    AND COALESCE(build_date, CAST(created_at AS DATE)) <= CAST(t - INTERVAL 1 MICROSECOND AS DATE)
    AND (cancel_date IS NULL OR cancel_date > CAST(t - INTERVAL 1 MICROSECOND AS DATE))
    AND NOT (status_code = '04' AND cancel_date IS NULL);

-- A build (cancel) date of ACTIVE clamped to [lo - 1, hi + 1] ([lo, hi + 1]), lo and hi the
-- first and last day D that periods test: it answers ACTIVE alike for every D in [lo, hi], so
-- that customers group by few dates (kpis/sql/shared.sql k_cust_groups). NULL stays NULL.
CREATE OR REPLACE MACRO clamp_build(d, lo, hi) AS
    CASE WHEN d < lo THEN lo - 1 WHEN d > hi THEN hi + 1 ELSE d END;
CREATE OR REPLACE MACRO clamp_cancel(d, lo, hi) AS
    CASE WHEN d > hi THEN hi + 1 WHEN d < lo THEN lo ELSE d END;

-- Customers (is_deleted = 0) counted per org, grid, status and the dates ACTIVE reads, a date
-- before the floor day F clamped to F - 1 (cancel: F) as clamp_build and clamp_cancel do: it
-- answers ACTIVE alike for any day D >= F. F is the first day of the month 13 months before the
-- newest build date (cust_floor_day; the other kept customer groups use it too), so that the
-- days a pass tests (today, this and last month, the worker's first 100 days) are above it. A table kept between passes (kpis/prelude.py GATED): 3.5 M
-- customers are ~0.2 M groups at city, and cust_counts below grouped the 3.5 M customers again
-- in every pass that read them (~0.1 s of each city minute); customers change seldom.
CREATE OR REPLACE MACRO cust_floor_day() AS
    (SELECT CAST(date_trunc('month', MAX(COALESCE(build_date, CAST(created_at AS DATE))))
                 - INTERVAL 13 MONTH AS DATE)
     FROM mis_customer WHERE is_deleted = 0);
CREATE OR REPLACE TABLE k_cust_grp AS
WITH c AS (
    SELECT org_no, grid_no, status_code, cancel_date,
           COALESCE(build_date, CAST(created_at AS DATE)) AS bd
    FROM mis_customer WHERE is_deleted = 0
),
f AS (SELECT cust_floor_day() AS floor_day)
SELECT c.org_no, c.grid_no, c.status_code,
       clamp_build(c.bd, f.floor_day, DATE '9999-12-30') AS bd,
       clamp_cancel(c.cancel_date, f.floor_day, DATE '9999-12-30') AS cancel_date,
       f.floor_day, COUNT(*) AS n
FROM c CROSS JOIN f
GROUP BY c.org_no, c.grid_no, c.status_code, clamp_build(c.bd, f.floor_day, DATE '9999-12-30'),
         clamp_cancel(c.cancel_date, f.floor_day, DATE '9999-12-30'), f.floor_day;

-- N(x) of the MED KPIs (reliability.saidi_excl_med_min, reliability.med_days_ytd) per province
-- and city unit: customers are active at the end of day x from their build date until the day
-- before the cancel date, so N(x) is a running sum of +1 / -1 book events. The events are summed
-- per (org, day) before attribution, and the root is a joined row, not a scalar subquery in the
-- join condition: that condition could not be hashed, and at city the 7 M events were
-- nested-loop joined to the ancestors (~75 s CPU). A table kept between passes (kpis/prelude.py
-- GATED): both KPIs grouped the 3.5 M customers' events by org and day (0.7 M groups) in every
-- pass that read them (~0.5 s of a city full evaluation); a few thousand rows remain. The events
-- per unit and day are kept apart (n_ev counts them): a changed customer reaches them by
-- difference from its row images (OVER_IMAGED), and the running sum over them is rebuilt, a
-- window over those few thousand rows, where scanning the customers twice took 0.13-0.21 s of
-- every city minute in which a customer changed.
CREATE OR REPLACE TABLE k_unit_book_ev AS
SELECT an.ancestor_no AS unit_no, ev.d, SUM(ev.n_ev) AS n_ev, SUM(ev.delta) AS delta
FROM (SELECT org_no, d, COUNT(*) AS n_ev, SUM(delta) AS delta
      FROM (SELECT org_no, COALESCE(build_date, CAST(created_at AS DATE)) AS d, 1 AS delta
            FROM mis_customer
            WHERE is_deleted = 0 AND NOT (status_code = '04' AND cancel_date IS NULL)
            UNION ALL
            SELECT org_no, GREATEST(COALESCE(build_date, CAST(created_at AS DATE)), cancel_date), -1
            FROM mis_customer WHERE is_deleted = 0 AND cancel_date IS NOT NULL)
      GROUP BY org_no, d) ev
CROSS JOIN k_root rt
LEFT JOIN k_org ko ON ko.unit_no = ev.org_no AND ko.unit_level <> 'grid'
JOIN k_org_ancestor an ON an.unit_no = COALESCE(ko.unit_no, rt.unit_no)
                      AND an.ancestor_level IN ('province', 'city')
GROUP BY ALL;

CREATE OR REPLACE TABLE k_unit_book_n AS
SELECT unit_no, d, SUM(delta) OVER (PARTITION BY unit_no ORDER BY d) AS n
FROM k_unit_book_ev;

-- Customers (is_deleted = 0) counted per org, grid and what ACTIVE reads, the dates clamped to
-- [lo - 1, hi + 1] (clamp_build, clamp_cancel: lo and hi the first and last day D tested): 3.5 M
-- customers become a few thousand groups that answer ACTIVE at any D in [lo, hi] as the
-- customers do (grouped by their exact dates they stayed 2.6 M groups at city). Read by the
-- shared k_active_n (D from the periods' we) and k_cust_n (from their te). From the kept groups
-- (k_cust_grp) when lo is not below their floor day, else from the customers themselves (an
-- old period; DuckDB skips that scan when the NOT EXISTS is false).
CREATE OR REPLACE MACRO cust_counts(lo, hi) AS TABLE
WITH _span AS (SELECT lo AS lo, hi AS hi)
SELECT c.org_no, c.grid_no, c.status_code,
       clamp_build(c.bd, _span.lo, _span.hi) AS bd, clamp_cancel(c.cancel_date, _span.lo, _span.hi) AS cancel_date,
       CAST(SUM(c.n) AS BIGINT) AS n
FROM (SELECT g.org_no, g.grid_no, g.status_code, g.bd, g.cancel_date, g.n
      FROM k_cust_grp g WHERE g.floor_day <= lo
      UNION ALL
      SELECT org_no, grid_no, status_code, COALESCE(build_date, CAST(created_at AS DATE)),
             cancel_date, CAST(1 AS BIGINT)
      FROM mis_customer
      WHERE is_deleted = 0 AND NOT EXISTS (SELECT 1 FROM k_cust_grp g WHERE g.floor_day <= lo)) c CROSS JOIN _span
-- (the groups named, not BY ALL: kpis/dependencies.py reads BY ALL as "any column")
GROUP BY c.org_no, c.grid_no, c.status_code, clamp_build(c.bd, _span.lo, _span.hi),
         clamp_cancel(c.cancel_date, _span.lo, _span.hi);

-- The archive stocks' counts (kpis/sql/shared.sql k_cust_groups) of the customers (is_deleted =
-- 0) grouped by org, grid, status and the dates ACTIVE reads, a date before `lo_day` clamped to
-- lo_day - 1 (cancel: lo_day) as clamp_build and clamp_cancel do: the groups answer ACTIVE alike for
-- any day D >= lo_day; no customer is read unless `wanted` (a condition tested before the
-- scan, which DuckDB then skips when it is false). CLASS(c) is the ELEC_TYPE code's parent (mis_code's key is (code_type,
-- code_value), so the look-up adds no row); cap_mva sums the facts' exact per-customer value.
CREATE OR REPLACE MACRO cust_stock_counts(lo_day, wanted) AS TABLE
SELECT c.org_no, c.grid_no, c.status_code,
       clamp_build(c.bd, lo_day, DATE '9999-12-30') AS bd,
       clamp_cancel(c.cancel_date, lo_day, DATE '9999-12-30') AS cancel_date,
       COUNT(*) AS n,
       COUNT(*) FILTER (WHERE e.parent_value = '2') AS n_residential,
       COUNT(*) FILTER (WHERE e.parent_value = '4') AS n_general_ci,
       COUNT(*) FILTER (WHERE e.parent_value = '1') AS n_large_industry,
       COUNT(*) FILTER (WHERE e.parent_value = '3') AS n_agriculture,
       COUNT(*) FILTER (WHERE e.parent_value NOT IN ('1', '2', '3', '4') OR e.parent_value IS NULL) AS n_other_class,
       COUNT(*) FILTER (WHERE c.cons_sort_code = '01') AS n_hv,
       SUM(CAST(COALESCE(c.contract_cap, 0) / 1000.0 AS DECIMAL(38, 9))) AS cap_mva,
       COUNT(*) FILTER (WHERE c.contract_cap >= 315) AS n_cap_ge_315,
       COUNT(*) FILTER (WHERE c.impt_level IN ('01', '02', '03', '04')) AS n_important,
       COUNT(*) FILTER (WHERE (c.impt_level IN ('01', '02') AND c.supply_mode IN ('03', '04'))
                           OR (c.impt_level IN ('03', '04') AND c.supply_mode IN ('02', '03', '04'))) AS n_important_compliant,
       COUNT(*) FILTER (WHERE c.impt_level IN ('01', '02', '03', '04') AND c.emergency_power_flag = 1) AS n_important_emergency,
       COUNT(*) FILTER (WHERE c.cons_sort_code IN ('02', '03')) AS n_low_voltage,
       COUNT(*) FILTER (WHERE c.cons_sort_code IN ('02', '03') AND c.echannel_bind_flag = 1) AS n_lv_echannel,
       COUNT(*) FILTER (WHERE c.cons_sort_code IN ('02', '03') AND c.pay_mode IN ('02', '03')) AS n_lv_smart_payment,
       COUNT(*) FILTER (WHERE c.dg_flag = 1) AS n_dg,
       COUNT(*) FILTER (WHERE c.mobile_no IS NOT NULL AND TRIM(c.mobile_no) <> '' AND c.mobile_verified_flag = 1) AS n_valid_mobile,
       COUNT(*) FILTER (WHERE c.ebill_flag = 1) AS n_ebill
FROM (SELECT org_no, grid_no, status_code, cancel_date, elec_type_code, cons_sort_code,
             contract_cap, impt_level, supply_mode, emergency_power_flag, echannel_bind_flag,
             pay_mode, dg_flag, mobile_no, mobile_verified_flag, ebill_flag,
             COALESCE(build_date, CAST(created_at AS DATE)) AS bd
      FROM mis_customer WHERE is_deleted = 0 AND wanted) c
LEFT JOIN mis_code e ON e.code_type = 'ELEC_TYPE' AND e.code_value = c.elec_type_code AND e.is_deleted = 0
GROUP BY c.org_no, c.grid_no, c.status_code, clamp_build(c.bd, lo_day, DATE '9999-12-30'),
         clamp_cancel(c.cancel_date, lo_day, DATE '9999-12-30');

-- cust_stock_counts at the floor day of k_cust_grp's rule (the first day of the month 13 months
-- before the newest build date), kept between passes (kpis/prelude.py GATED): ~0.2 M groups
-- at city, which k_cust_groups re-clamps to the periods' days instead of grouping the 3.5 M
-- customers again (~0.6 s of each city sweep).
CREATE OR REPLACE TABLE k_cust_stock_grp AS
WITH f AS (SELECT cust_floor_day() AS floor_day)
SELECT s.org_no, s.grid_no, s.status_code, s.bd, s.cancel_date, s.n, s.n_residential,
       s.n_general_ci, s.n_large_industry, s.n_agriculture, s.n_other_class, s.n_hv, s.cap_mva,
       s.n_cap_ge_315, s.n_important, s.n_important_compliant, s.n_important_emergency,
       s.n_low_voltage, s.n_lv_echannel, s.n_lv_smart_payment, s.n_dg, s.n_valid_mobile,
       s.n_ebill, f.floor_day
FROM cust_stock_counts((SELECT floor_day FROM f), TRUE) s CROSS JOIN f;

-- Customers flagged service-sensitive (sensitive_flag = 1; deleted ones too, which ACTIVE never
-- counts), with what customer.sensitive_count reads of them. A table kept between passes
-- (kpis/prelude.py FOLLOW: a changed customer is re-derived alone): ~1 % of the 3.5 M city
-- customers, spread over every row group, so the KPI's filter decoded every customer's number,
-- org and grid (~0.03 s of CPU a city minute).
CREATE OR REPLACE TABLE k_cust_sensitive AS
SELECT cons_no, org_no, grid_no, is_deleted, build_date, created_at, cancel_date, status_code,
       sensitive_flag
FROM mis_customer WHERE sensitive_flag = 1;

-- Customers flagged important (impt_level 01-04) or service-sensitive, with the columns ACTIVE and
-- the attribution read: reliability.important_notice_rate's customers. A table kept between
-- passes (kpis/prelude.py FOLLOW: a changed customer is re-derived alone): ~1.4 % of the 3.5 M
-- city customers, spread over every row group, so the KPI's filter read every customer's dates,
-- codes and flags (~0.2 s of CPU each time an outage change woke it in a city minute).
CREATE OR REPLACE TABLE k_cust_important AS
SELECT cons_no, org_no, grid_no, is_deleted, build_date, created_at, cancel_date, status_code
FROM mis_customer WHERE impt_level IN ('01', '02', '03', '04') OR sensitive_flag = 1;

-- customer.archive_completeness_rate's test of each customer (not deleted): num 1 when every
-- mandatory field is present and valid, empty strings counting as missing; read by its facts
-- (one row per customer and period) and its reduced facts. Worked out once per customer, before
-- the customer meets its periods, and the 台区 test is a membership test (one hash of the
-- points, no DISTINCT of them first). Every look-up is on a key: one row a customer. A table
-- kept between passes (kpis/prelude.py FOLLOW: a changed customer is re-derived alone; a
-- change of the codes, the org tree or the settlement points rebuilds it): it reads no period;
-- computed in each evaluation (and copied into a TEMP table as a shared subquery) it was ~1.3 s
-- of each city sweep.
CREATE OR REPLACE TABLE k_cust_check AS
WITH tg_ok AS (
    SELECT mp.cons_no FROM mis_metering_point mp
    JOIN dist_tg t ON t.tg_no = mp.tg_no AND t.is_deleted = 0
    WHERE mp.is_deleted = 0 AND mp.mp_attr_code = '01' AND mp.status_code IN ('01', '02')
      AND mp.cons_no IS NOT NULL
)
SELECT c.cons_no, c.org_no, c.grid_no, c.build_date, c.created_at, c.cancel_date,
       c.status_code,
       CASE WHEN et.code_value IS NOT NULL
             AND has_text(c.prc_code)
             AND vt.code_value IS NOT NULL
             AND c.contract_cap > 0
             AND o.org_no IS NOT NULL
             AND g.grid_no IS NOT NULL
             AND has_text(c.elec_addr)
             AND has_text(c.trade_code)
             AND (c.cons_sort_code NOT IN ('02', '03')
                  OR COALESCE(c.cons_no IN (SELECT cons_no FROM tg_ok), FALSE))
            THEN 1 ELSE 0 END AS num
FROM mis_customer c
LEFT JOIN mis_code et ON et.code_type = 'ELEC_TYPE' AND et.code_value = c.elec_type_code
                     AND et.is_deleted = 0
LEFT JOIN mis_code vt ON vt.code_type = 'VOLT' AND vt.code_value = c.volt_code
                     AND vt.is_deleted = 0
LEFT JOIN mis_org o ON o.org_no = c.org_no AND o.is_deleted = 0
LEFT JOIN mis_grid g ON g.grid_no = c.grid_no AND g.is_deleted = 0
WHERE c.is_deleted = 0;

-- k_cust_check's customers counted per org, grid, status and the dates ACTIVE reads, with the
-- complete ones (num), a date before lo_day clamped as in cust_stock_counts; none read unless
-- `wanted`. The population and numerator of customer.archive_completeness_rate (check_groups).
CREATE OR REPLACE MACRO check_counts(lo_day, wanted) AS TABLE
SELECT c.org_no, c.grid_no, c.status_code,
       clamp_build(c.bd, lo_day, DATE '9999-12-30') AS bd,
       clamp_cancel(c.cancel_date, lo_day, DATE '9999-12-30') AS cancel_date,
       SUM(c.num) AS num, COUNT(*) AS n
FROM (SELECT org_no, grid_no, status_code, cancel_date, num,
             COALESCE(build_date, CAST(created_at AS DATE)) AS bd
      FROM k_cust_check WHERE wanted) c
GROUP BY c.org_no, c.grid_no, c.status_code, clamp_build(c.bd, lo_day, DATE '9999-12-30'),
         clamp_cancel(c.cancel_date, lo_day, DATE '9999-12-30');

-- check_counts at the floor day (cust_floor_day), kept between passes (kpis/prelude.py GATED):
-- grouping the 3.5 M checked customers was ~0.3 s of each city sweep.
CREATE OR REPLACE TABLE k_cust_check_grp AS
WITH f AS (SELECT cust_floor_day() AS floor_day)
SELECT c.org_no, c.grid_no, c.status_code, c.bd, c.cancel_date, c.num, c.n, f.floor_day
FROM check_counts((SELECT floor_day FROM f), TRUE) c CROSS JOIN f;

-- The customers of check_counts with their dates clamped to [lo - 1, hi + 1] ([lo, hi + 1] for
-- cancel: lo and hi the first and last day D tested): from the kept groups when lo is not below
-- their floor day, else from k_cust_check.
CREATE OR REPLACE MACRO check_groups(lo, hi) AS TABLE
WITH _span AS (SELECT lo AS lo, hi AS hi)
SELECT g.org_no, g.grid_no, g.status_code,
       clamp_build(g.bd, _span.lo, _span.hi) AS bd, clamp_cancel(g.cancel_date, _span.lo, _span.hi) AS cancel_date,
       CAST(SUM(g.num) AS BIGINT) AS num, CAST(SUM(g.n) AS BIGINT) AS n
FROM (SELECT k.org_no, k.grid_no, k.status_code, k.bd, k.cancel_date, k.num, k.n
      FROM k_cust_check_grp k WHERE k.floor_day <= lo
      UNION ALL
      SELECT * FROM check_counts(lo, NOT EXISTS (SELECT 1 FROM k_cust_check_grp k
                                                 WHERE k.floor_day <= lo))) g CROSS JOIN _span
GROUP BY g.org_no, g.grid_no, g.status_code, clamp_build(g.bd, _span.lo, _span.hi),
         clamp_cancel(g.cancel_date, _span.lo, _span.hi);

-- TG(c): the 台区 of the customer's settlement point with the smallest mp_no. A table, built
-- once per pass that needs it: as part of the view below it was recomputed over every metering
-- point by each KPI that read k_customer (the reliability KPIs now read this table directly).
-- mp_no names the point chosen:
-- kept between passes (kpis/prelude.py), a customer is re-derived when that point changes.
CREATE OR REPLACE TABLE k_settle_tg AS
SELECT cons_no, arg_min(tg_no, mp_no) AS tg_no, MIN(mp_no) AS mp_no FROM mis_metering_point
WHERE is_deleted = 0 AND mp_attr_code = '01' AND status_code IN ('01', '02')
GROUP BY cons_no;

-- Customers (is_deleted = 0) with a settlement 台区 TG(c) (k_settle_tg, the 台区 not deleted)
-- counted per org, grid, status, the reliability area of that 台区 (dist_tg.rel_area_code) and
-- the dates ACTIVE reads, a date before lo_day clamped as in cust_stock_counts; none read unless
-- `wanted`. The populations of reliability.rs1_urban and rs1_rural (cust_area_groups).
CREATE OR REPLACE MACRO cust_area_counts(lo_day, wanted) AS TABLE
SELECT c.org_no, c.grid_no, c.status_code, t.rel_area_code,
       clamp_build(c.bd, lo_day, DATE '9999-12-30') AS bd,
       clamp_cancel(c.cancel_date, lo_day, DATE '9999-12-30') AS cancel_date, COUNT(*) AS n
FROM (SELECT cons_no, org_no, grid_no, status_code, cancel_date,
             COALESCE(build_date, CAST(created_at AS DATE)) AS bd
      FROM mis_customer WHERE is_deleted = 0 AND wanted) c
-- `wanted` on this side too: with the customers' side empty DuckDB still built its hash table on
-- the 3.5 M customers' 台区 (0.037 s of each reliability statement at city that read the groups)
JOIN (SELECT cons_no, tg_no FROM k_settle_tg WHERE wanted) s ON s.cons_no = c.cons_no
JOIN dist_tg t ON t.tg_no = s.tg_no AND t.is_deleted = 0
GROUP BY c.org_no, c.grid_no, c.status_code, t.rel_area_code,
         clamp_build(c.bd, lo_day, DATE '9999-12-30'),
         clamp_cancel(c.cancel_date, lo_day, DATE '9999-12-30');

-- cust_area_counts at the floor day of k_cust_grp's rule, kept between passes (kpis/prelude.py
-- GATED): joining the 3.5 M customers to their 台区 was ~0.7 s of each city sweep for rs1_rural.
CREATE OR REPLACE TABLE k_cust_area_grp AS
WITH f AS (SELECT cust_floor_day() AS floor_day)
SELECT a.org_no, a.grid_no, a.status_code, a.rel_area_code, a.bd, a.cancel_date, a.n, f.floor_day
FROM cust_area_counts((SELECT floor_day FROM f), TRUE) a CROSS JOIN f;

-- The customers of cust_area_counts with their dates clamped to [lo - 1, hi + 1] ([lo, hi + 1]
-- for cancel: lo and hi the first and last day D tested): from the kept groups when lo is not
-- below their floor day, else from the customers.
CREATE OR REPLACE MACRO cust_area_groups(lo, hi) AS TABLE
WITH _span AS (SELECT lo AS lo, hi AS hi)
SELECT g.org_no, g.grid_no, g.status_code, g.rel_area_code,
       clamp_build(g.bd, _span.lo, _span.hi) AS bd, clamp_cancel(g.cancel_date, _span.lo, _span.hi) AS cancel_date,
       CAST(SUM(g.n) AS BIGINT) AS n
FROM (SELECT k.org_no, k.grid_no, k.status_code, k.rel_area_code, k.bd, k.cancel_date, k.n
      FROM k_cust_area_grp k WHERE k.floor_day <= lo
      UNION ALL
      SELECT * FROM cust_area_counts(lo, NOT EXISTS (SELECT 1 FROM k_cust_area_grp k
                                                     WHERE k.floor_day <= lo))) g CROSS JOIN _span
GROUP BY g.org_no, g.grid_no, g.status_code, g.rel_area_code, clamp_build(g.bd, _span.lo, _span.hi),
         clamp_cancel(g.cancel_date, _span.lo, _span.hi);

-- NTG(g) as groups: customers (is_deleted = 0) counted per settlement 台区 TG(c) (k_settle_tg),
-- status and the dates ACTIVE reads, a date before lo_day clamped as in cust_stock_counts; none
-- read unless `wanted`. The reliability KPIs' NTG of the 台区 their outages hit (tg_cust_groups).
CREATE OR REPLACE MACRO tg_cust_counts(lo_day, wanted) AS TABLE
SELECT s.tg_no, c.status_code,
       clamp_build(c.bd, lo_day, DATE '9999-12-30') AS bd,
       clamp_cancel(c.cancel_date, lo_day, DATE '9999-12-30') AS cancel_date, COUNT(*) AS n
FROM (SELECT cons_no, status_code, cancel_date,
             COALESCE(build_date, CAST(created_at AS DATE)) AS bd
      FROM mis_customer WHERE is_deleted = 0 AND wanted) c
JOIN (SELECT cons_no, tg_no FROM k_settle_tg WHERE wanted) s ON s.cons_no = c.cons_no   -- (as above)
GROUP BY s.tg_no, c.status_code, clamp_build(c.bd, lo_day, DATE '9999-12-30'),
         clamp_cancel(c.cancel_date, lo_day, DATE '9999-12-30');

-- tg_cust_counts at the floor day (cust_floor_day), kept between passes (kpis/prelude.py GATED):
-- 19 reliability KPIs each picked their 台区' customers out of the 3.5 M (k_settle_tg and
-- mis_customer scanned per KPI, ~0.2 s each in a city sweep).
CREATE OR REPLACE TABLE k_tg_cust_grp AS
WITH f AS (SELECT cust_floor_day() AS floor_day)
SELECT a.tg_no, a.status_code, a.bd, a.cancel_date, a.n, f.floor_day
FROM tg_cust_counts((SELECT floor_day FROM f), TRUE) a CROSS JOIN f;

-- The groups of tg_cust_counts with their dates clamped to [lo - 1, hi + 1] ([lo, hi + 1] for
-- cancel): from the kept groups when lo is not below their floor day, else from the customers.
CREATE OR REPLACE MACRO tg_cust_groups(lo, hi) AS TABLE
WITH _span AS (SELECT lo AS lo, hi AS hi)
SELECT g.tg_no, g.status_code,
       clamp_build(g.bd, _span.lo, _span.hi) AS bd, clamp_cancel(g.cancel_date, _span.lo, _span.hi) AS cancel_date,
       CAST(SUM(g.n) AS BIGINT) AS n
FROM (SELECT k.tg_no, k.status_code, k.bd, k.cancel_date, k.n
      FROM k_tg_cust_grp k WHERE k.floor_day <= lo
      UNION ALL
      SELECT * FROM tg_cust_counts(lo, NOT EXISTS (SELECT 1 FROM k_tg_cust_grp k
                                                   WHERE k.floor_day <= lo))) g CROSS JOIN _span
GROUP BY g.tg_no, g.status_code, clamp_build(g.bd, _span.lo, _span.hi), clamp_cancel(g.cancel_date, _span.lo, _span.hi);

-- Settlement metering points (mp_attr_code '01', status_code '01'/'02', not deleted) of
-- customers not deleted, with the customer's attribution and ACTIVE inputs and what the
-- metering stocks ask of the point's running meters (mis_meter status '01'): run_meter (it has
-- one), smart (one of type 26/28/29), covered (one collected, coll_flag 1, by an active
-- collection object under a running terminal), rel_n (its (running meter, active collection
-- object, terminal with a 台区) rows) and rel_same (those whose terminal's 台区 is the point's).
-- A table: three stocks walked this chain (point -> customer, point -> running meter ->
-- collection object -> terminal) over ~3.5 M rows a table each on their own at city. Grouped
-- by the point first and joined to the customer after: mp_no and cons_no are keys.
CREATE OR REPLACE TABLE k_settle_mp AS
WITH coll AS (
    SELECT o.meter_asset_no, o.coll_flag, t.tg_no, t.run_status
    FROM meter_coll_obj o
    JOIN meter_terminal t ON t.terminal_id = o.terminal_id AND t.is_deleted = 0
    WHERE o.is_deleted = 0 AND o.status_code = '01'
),
pt AS (
    SELECT mp.mp_no, ANY_VALUE(mp.cons_no) AS cons_no, ANY_VALUE(mp.tg_no) AS tg_no,
           COUNT(m.mp_no) > 0 AS run_meter,
           COALESCE(BOOL_OR(m.meter_type IN ('26', '28', '29')), FALSE) AS smart,
           COALESCE(BOOL_OR(k.coll_flag = 1 AND k.run_status = '01'), FALSE) AS covered,
           COUNT(k.tg_no) AS rel_n,
           COUNT(CASE WHEN k.tg_no = mp.tg_no THEN 1 END) AS rel_same
    FROM mis_metering_point mp
    LEFT JOIN mis_meter m ON m.mp_no = mp.mp_no AND m.is_deleted = 0 AND m.status_code = '01'
    LEFT JOIN coll k ON k.meter_asset_no = m.meter_asset_no
    WHERE mp.is_deleted = 0 AND mp.mp_attr_code = '01' AND mp.status_code IN ('01', '02')
    GROUP BY mp.mp_no
)
-- columns named, no star: a star would make every column of the five tables wake its readers
-- (kpis/dependencies.py columns_read), terminal heartbeats included; only the columns the
-- stocks read (writing 3.5 M rows is a good part of the build at city)
SELECT pt.mp_no, pt.run_meter, pt.smart, pt.covered, pt.rel_n, pt.rel_same, c.org_no, c.grid_no,
       c.cons_sort_code, c.build_date, c.created_at, c.cancel_date, c.status_code
FROM pt JOIN mis_customer c ON c.cons_no = pt.cons_no AND c.is_deleted = 0;

-- The point stocks' counts (kpis/sql/shared.sql k_settle_groups) of the settlement points of
-- k_settle_mp grouped by org, grid, status and the dates ACTIVE reads of their customer, a date
-- before lo_day clamped as in cust_stock_counts; none read unless `wanted`.
CREATE OR REPLACE MACRO settle_counts(lo_day, wanted) AS TABLE
SELECT s.org_no, s.grid_no, s.status_code,
       clamp_build(s.bd, lo_day, DATE '9999-12-30') AS bd,
       clamp_cancel(s.cancel_date, lo_day, DATE '9999-12-30') AS cancel_date,
       COUNT(*) AS n,
       COUNT(*) FILTER (WHERE s.smart) AS n_smart,
       COUNT(*) FILTER (WHERE s.run_meter) AS n_run_meter,
       COUNT(*) FILTER (WHERE s.run_meter AND s.covered) AS n_run_meter_covered,
       COUNT(*) FILTER (WHERE s.rel_n > 0 AND s.cons_sort_code IN ('02', '03')) AS n_lv_related,
       COALESCE(SUM(s.rel_n) FILTER (WHERE s.rel_n > 0 AND s.cons_sort_code IN ('02', '03')), 0) AS lv_rel_n,
       COALESCE(SUM(s.rel_same) FILTER (WHERE s.rel_n > 0 AND s.cons_sort_code IN ('02', '03')), 0) AS lv_rel_same
FROM (SELECT org_no, grid_no, status_code, cancel_date, smart, run_meter, covered, rel_n,
             rel_same, cons_sort_code, COALESCE(build_date, CAST(created_at AS DATE)) AS bd
      FROM k_settle_mp WHERE wanted) s
GROUP BY s.org_no, s.grid_no, s.status_code, clamp_build(s.bd, lo_day, DATE '9999-12-30'),
         clamp_cancel(s.cancel_date, lo_day, DATE '9999-12-30');

-- settle_counts at the floor day (cust_floor_day), kept between passes (kpis/prelude.py GATED):
-- k_settle_groups re-clamps them instead of grouping the 3.5 M points again (~0.2 s a sweep).
CREATE OR REPLACE TABLE k_settle_grp AS
WITH f AS (SELECT cust_floor_day() AS floor_day)
SELECT s.org_no, s.grid_no, s.status_code, s.bd, s.cancel_date, s.n, s.n_smart, s.n_run_meter,
       s.n_run_meter_covered, s.n_lv_related, s.lv_rel_n, s.lv_rel_same, f.floor_day
FROM settle_counts((SELECT floor_day FROM f), TRUE) s CROSS JOIN f;

-- Bills with the grid and use code of their customer (GRID(b) = mis_customer.grid_no of
-- b.cons_no). A table: 14 billing KPIs joined their bills to the 3.5 M customers each on their
-- own at city. Every bill is kept, deleted ones too (one row per bill: the kept table's count
-- guard), and only the columns those KPIs read: a bill column named here wakes each of them.
CREATE OR REPLACE TABLE k_bill AS
SELECT b.bill_id, b.cons_no, b.org_no, b.rcvbl_ym, b.amt_type, b.t_pq, b.rcvbl_amt,
       b.release_date, b.due_date, b.elec_type_code, b.read_type, b.invoice_type,
       b.invoice_time, b.is_deleted,
       c.grid_no AS cust_grid_no, c.elec_type_code AS cust_elec_type_code,
       -- the bill's year as a number (NULL when rcvbl_ym does not start with one): the bill
       -- stocks' pre-filter tested it on every bill of every pass
       TRY_CAST(SUBSTR(b.rcvbl_ym, 1, 4) AS INTEGER) AS rcvbl_year
FROM mis_bill b
LEFT JOIN mis_customer c ON c.cons_no = b.cons_no AND c.is_deleted = 0;

-- Payments with the grid of their customer (mis_customer.grid_no of cons_no). A table kept
-- between passes (kpis/prelude.py FOLLOW): the collected amount and the five payment-channel
-- shares joined each minute's payments to the 3.5 M customers at city (~0.15 s a pass). Every
-- payment is kept, deleted ones too (one row per payment), and only the columns they read.
CREATE OR REPLACE TABLE k_payment AS
SELECT y.charge_id, y.cons_no, y.org_no, y.pay_time, y.rcv_amt, y.pay_channel, y.status_code,
       y.is_deleted, c.grid_no AS cust_grid_no
FROM mis_payment y
LEFT JOIN mis_customer c ON c.cons_no = y.cons_no AND c.is_deleted = 0;

-- Disconnection and reconnection events with the grid of their customer (mis_customer.grid_no
-- of cons_no). A table kept between passes (kpis/prelude.py FOLLOW), for the same reason as
-- k_payment: billing.reconnect_within_24h_rate is evaluated every minute, and its few thousand
-- events joined the 3.5 M customers each time (~0.1 s at city). Every event is kept, deleted
-- ones too (one row per event), and only the columns the reconnection KPIs read.
CREATE OR REPLACE TABLE k_rc_event AS
SELECT r.rc_id, r.cons_no, r.org_no, r.cut_reason, r.cut_time, r.settle_time, r.recon_cmd_time,
       r.recon_remote_result, r.recon_time, r.status_code, r.is_deleted,
       c.grid_no AS cust_grid_no
FROM mis_rc_event r
LEFT JOIN mis_customer c ON c.cons_no = r.cons_no AND c.is_deleted = 0;

-- Customers with CLASS(c) and TG(c).
CREATE OR REPLACE VIEW k_customer AS
SELECT c.*, e.parent_value AS cust_class, tg.tg_no AS settle_tg_no
FROM mis_customer c
LEFT JOIN mis_code e ON e.code_type = 'ELEC_TYPE' AND e.code_value = c.elec_type_code
                    AND e.is_deleted = 0
LEFT JOIN k_settle_tg tg ON tg.cons_no = c.cons_no;

-- 台区 with their org and grid as known units.
CREATE OR REPLACE VIEW k_tg AS
SELECT g.*, ko.unit_no AS known_org_no, kg.unit_no AS known_grid_no
FROM dist_tg g
LEFT JOIN k_org ko ON ko.unit_no = g.org_no AND ko.unit_level <> 'grid'
LEFT JOIN k_org kg ON kg.unit_no = g.grid_no AND kg.unit_level = 'grid'
WHERE g.is_deleted = 0;

-- Work orders with ORGWO(w), GRIDWO(w), VWO(w) and VCOMP(w). A table, built once per
-- evaluation pass: about 25 KPIs read it, and the customer join is the costly part.
-- The cust_* columns are the order's customer (not deleted; NULL when none, which ACTIVE never
-- counts: its dates are NULL): what ACTIVE and the attribution of a customer stock read, so that
-- customer.sensitive_count finds its complainers' archive rows here rather than by a join over
-- the 3.5 M customers each minute (0.1 s at city).
CREATE OR REPLACE TABLE k_wo AS
SELECT w.*,
       COALESCE(o1.unit_no, o2.unit_no, o3.unit_no) AS attr_org,
       COALESCE(gc.unit_no, gt.unit_no) AS attr_grid,
       (w.is_deleted = 0 AND w.merged_into_wo_no IS NULL AND w.status_code <> '09') AS vwo,
       (w.is_deleted = 0 AND w.merged_into_wo_no IS NULL AND w.status_code <> '09'
        AND w.busi_type_code = '02' AND w.complaint_valid IN ('01', '02')) AS vcomp,
       c.org_no AS cust_org_no, c.grid_no AS cust_grid_no,
       c.build_date AS cust_build_date, c.created_at AS cust_created_at,
       c.cancel_date AS cust_cancel_date, c.status_code AS cust_status_code,
       c.sensitive_flag AS cust_sensitive_flag
FROM cs_work_order w
LEFT JOIN k_org o1 ON o1.unit_no = w.org_no AND o1.unit_level <> 'grid'
LEFT JOIN k_org o2 ON o2.unit_no = w.city_org_no AND o2.unit_level <> 'grid'
LEFT JOIN k_org o3 ON o3.unit_no = w.prov_org_no AND o3.unit_level <> 'grid'
LEFT JOIN mis_customer c ON c.cons_no = w.cons_no AND c.is_deleted = 0
LEFT JOIN k_org gc ON gc.unit_no = c.grid_no AND gc.unit_level = 'grid'
LEFT JOIN dist_tg t ON t.tg_no = w.tg_no AND t.is_deleted = 0
LEFT JOIN k_org gt ON gt.unit_no = t.grid_no AND gt.unit_level = 'grid';

-- Repair tasks with MAIN_TASK(t), START(t), AREA(t), the arrival limit and DL(t).
CREATE OR REPLACE TABLE k_task AS
SELECT t.*,
       (t.is_deleted = 0 AND t.parent_task_id IS NULL AND t.status_code <> '09') AS main_task,
       COALESCE(w.accept_time, t.receive_time) AS start_time,
       CASE WHEN COALESCE(t.urban_rural, g.urban_rural) IN ('01', '02', '03')
            THEN COALESCE(t.urban_rural, g.urban_rural) ELSE '01' END AS area,
       CASE CASE WHEN COALESCE(t.urban_rural, g.urban_rural) IN ('01', '02', '03')
                 THEN COALESCE(t.urban_rural, g.urban_rural) ELSE '01' END
            WHEN '01' THEN 45 WHEN '02' THEN 90 ELSE 120 END AS limit_min,
       COALESCE(w.accept_time, t.receive_time)
         + to_minutes(CASE CASE WHEN COALESCE(t.urban_rural, g.urban_rural) IN ('01', '02', '03')
                                THEN COALESCE(t.urban_rural, g.urban_rural) ELSE '01' END
                           WHEN '01' THEN 45 WHEN '02' THEN 90 ELSE 120 END) AS dl,
       g.grid_no AS tg_grid_no,
       w.cons_no AS wo_cons_no
FROM dist_repair_task t
LEFT JOIN cs_work_order w ON w.wo_no = t.wo_no AND w.is_deleted = 0
LEFT JOIN dist_tg g ON g.tg_no = t.tg_no AND g.is_deleted = 0;

-- QUEUED(W) population without the window: inbound calls that entered the queue, short
-- abandons (<= 5 s) left out.
CREATE OR REPLACE VIEW k_queued AS
SELECT x.* FROM cs_call x
WHERE x.is_deleted = 0 AND x.call_direction = '01' AND x.queue_start_time IS NOT NULL
  AND NOT (x.call_result IN ('03', '04') AND x.end_time IS NOT NULL
           AND x.end_time - x.queue_start_time <= INTERVAL 5 SECOND);

-- The clock checks (is_deleted = 0, clock_dev_s known) of the meters that have a check over the
-- 5-minute tolerance (ABS(clock_dev_s) > 300), all their days: metering.alarm_clock_deviation
-- looks for a meter's latest check only among such meters (a meter whose checks are all within
-- tolerance cannot end on one over it). A table kept between passes and followed by the rows'
-- updated_at (kpis/prelude.py MARKED): the KPI decoded 7 days x 3.5 M meter numbers at city to
-- find the ~14 k off meters' rows (0.55-0.73 s of each full evaluation with 10 days, more with
-- each day of the span), where the kept rows are ~14 k meters x the days kept.
CREATE OR REPLACE TABLE k_clock_off AS
SELECT meter_asset_no, data_date, clock_dev_s, org_no, tg_no
FROM meter_collection_daily
WHERE is_deleted = 0 AND clock_dev_s IS NOT NULL
  AND meter_asset_no IN (SELECT meter_asset_no FROM meter_collection_daily
                         WHERE is_deleted = 0 AND clock_dev_s IS NOT NULL AND ABS(clock_dev_s) > 300);
