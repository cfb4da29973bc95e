-- Named subqueries (most over _periods) that several KPI definitions, or a KPI's facts and its
-- reduced facts, read, written once here. A definition names one like a table (`FROM
-- k_active_n`); loading the registry wraps its facts (and reduced facts) in `WITH k_active_n
-- AS MATERIALIZED (...)` (kpis/shared.py), so the facts stay one
-- self-contained statement wherever they run (a KPI's own statement, detail pages, the
-- registry's bind check). The batched engine lifts the WITH to the top of a statement that
-- holds several such KPIs: computed once for all of them, not once each.
-- Each block: a `-- shared: NAME` line, then one SELECT ending in `;`.

-- shared: k_active_n
-- N(org, grid) at each period end we of _periods: customers with ACTIVE(c, we), by mis_customer's
-- org_no and grid_no, from the customers counted per (org, grid) and dates, the dates clamped to
-- the span of the periods' days (cust_counts, kpis/sql/prelude.sql). 13 reliability KPIs read it;
-- each computing it on its own was ~0.4 s of their ~0.5 s facts at city.
SELECT p.we, c.org_no, c.grid_no, SUM(c.n) AS n
FROM cust_counts((SELECT MIN(CAST(we - INTERVAL 1 MICROSECOND AS DATE)) FROM _periods),
                 (SELECT MAX(CAST(we - INTERVAL 1 MICROSECOND AS DATE)) FROM _periods)) c
JOIN (SELECT DISTINCT we FROM _periods) p
  ON is_active(0, c.bd, NULL, c.cancel_date, c.status_code, p.we)
GROUP BY p.we, c.org_no, c.grid_no;

-- shared: k_tg_groups
-- Customers counted per settlement 台区, status and their ACTIVE dates clamped to the span of the
-- periods' we days (tg_cust_groups, kpis/sql/prelude.sql): NTG(g) at we is the sum of the groups
-- of g active at we. 19 reliability KPIs read it; each re-grouping the kept groups on its own was
-- ~0.03 s of each of them in a city evaluation.
SELECT g.tg_no, g.status_code, g.bd, g.cancel_date, g.n
FROM tg_cust_groups((SELECT MIN(CAST(we - INTERVAL 1 MICROSECOND AS DATE)) FROM _periods),
                    (SELECT MAX(CAST(we - INTERVAL 1 MICROSECOND AS DATE)) FROM _periods)) g;

-- shared: k_intr
-- INTR rows (CONVENTIONS.md §5) of each period's 12-month window: s in [we - 12 months, te), with
-- the 台区's org, grid and area class (dist_tg); an event later than as_of has not happened, so an
-- outage still open at as_of runs to MIN(as_of, we). 17 reliability KPIs read it, some keeping
-- only their outage types, area class or a shorter window (s >= we - 2 months); each joining the
-- outages, their 台区 and the periods on its own was ~0.02 s of CPU apiece in a city minute.
SELECT p.pid, p.we, o.outage_id, o.outage_type, g.tg_no, t.org_no, t.grid_no, t.rel_area_code,
       g.cust_count, o.actual_start_time AS s,
       COALESCE(upto(g.restore_time, p.as_of), upto(o.actual_end_time, p.as_of),
                LEAST(p.as_of, p.we)) AS e
FROM dist_outage o
JOIN dist_outage_tg g ON g.outage_id = o.outage_id AND g.is_deleted = 0
JOIN _periods p ON o.actual_start_time >= p.we - INTERVAL 12 MONTH AND o.actual_start_time < p.te
LEFT JOIN dist_tg t ON t.tg_no = g.tg_no AND t.is_deleted = 0
WHERE o.is_deleted = 0 AND o.status_code <> '05';

-- shared: k_bill_out
-- OUT(b, T) = rcvbl - allocations before T, for the billable bills (amt_type 01/02, not deleted)
-- of k_bill, as intervals (t_from, t_to] of constant OUT that are range-joined to the periods (no
-- period re-reads all allocations of all bills). A bill without allocations since before the
-- earliest te of _periods has one state for every period; only bills with recent allocations
-- need the step-by-step intervals (window over few rows). Columns: those of k_bill named in `b`,
-- due_ts, t_from, t_to, out_amt. Five bill stocks read it (each computing it on its own was
-- ~0.3 s of 2.4 M bills at city). Left out, as none of the five counts them at any te of the
-- periods: a bill due at or after the last te whose year has not ended by then (the arrears and
-- recovery stocks want te > due, old arrears te > 1 Jan of the next year; a NULL date or year
-- stays in), and a bill whose OUT is 0 from before the first te on (every reader drops OUT = 0).
-- Most of a city's bills at a month's start are not due yet; most of a long history is paid.
WITH lo AS (SELECT MIN(te) AS min_te, MAX(te) AS max_te FROM _periods),
b AS (
    SELECT b.bill_id, b.cons_no, b.org_no, b.cust_grid_no, b.rcvbl_amt, b.due_date, b.rcvbl_ym,
           CAST(b.due_date AS TIMESTAMP) AS due_ts
    FROM k_bill b
    -- due before the last te: due_date <= that te's day; the year ended before it: the year
    -- before that day's year (k_bill.rcvbl_year, no make_date per bill: this test runs on every
    -- bill of every pass; as a join to lo it was ~0.1 s of each city minute)
    WHERE b.is_deleted = 0 AND b.amt_type IN ('01', '02')
      AND (b.due_date IS NULL
           OR b.due_date < (SELECT CAST(max_te - INTERVAL 1 MICROSECOND AS DATE) + 1 FROM lo)
           OR COALESCE(b.rcvbl_year < (SELECT year(max_te - INTERVAL 1 MICROSECOND) FROM lo), TRUE))
),
tot AS (
    SELECT r.bill_id, SUM(r.rcved_amt) AS rcv, MAX(r.rcved_time) AS t_last
    FROM mis_rcved_flow r WHERE r.is_deleted = 0 GROUP BY r.bill_id
),
ev AS (
    SELECT r.bill_id, r.rcved_time AS t, SUM(r.rcved_amt) AS amt
    FROM mis_rcved_flow r JOIN tot ON tot.bill_id = r.bill_id CROSS JOIN lo
    WHERE r.is_deleted = 0 AND tot.t_last >= lo.min_te
    GROUP BY r.bill_id, r.rcved_time
),
iv AS (
    SELECT bill_id, t AS t_from, LEAD(t) OVER (PARTITION BY bill_id ORDER BY t) AS t_to,
           SUM(amt) OVER (PARTITION BY bill_id ORDER BY t
                          ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS rcv
    FROM ev
    UNION ALL
    SELECT bill_id, NULL, MIN(t), 0 FROM ev GROUP BY bill_id
),
o AS (
    SELECT b.*, TIMESTAMP '0001-01-01' AS t_from, TIMESTAMP '9999-12-31' AS t_to,
           b.rcvbl_amt - COALESCE(tot.rcv, 0) AS out_amt
    FROM b LEFT JOIN tot ON tot.bill_id = b.bill_id CROSS JOIN lo
    WHERE (tot.t_last IS NULL OR tot.t_last < lo.min_te) AND b.rcvbl_amt - COALESCE(tot.rcv, 0) <> 0
    UNION ALL
    SELECT b.*, COALESCE(iv.t_from, TIMESTAMP '0001-01-01'), COALESCE(iv.t_to, TIMESTAMP '9999-12-31'),
           b.rcvbl_amt - iv.rcv
    FROM b JOIN iv ON iv.bill_id = b.bill_id
)
SELECT * FROM o;

-- shared: k_coll_day
-- Collection rows of meters in collection scope (meter_coll_obj coll_flag 1, not deleted),
-- placed in the periods by data_date (pid), without the 免采 rows (coll_status 04): day D's row
-- counts (num 1) when collected successfully before 09:00 of D+1, a success later than as_of not
-- having happened yet. Both collection success rates read it (the join of a day's rows to the
-- collection objects on the meter's text key was most of each one's facts at city).
SELECT p.pid, m.org_no, t.grid_no, m.terminal_id,
       m.meter_asset_no || '/' || CAST(m.data_date AS VARCHAR) AS item_key,
       CASE WHEN m.coll_status = '01'
                 AND upto(m.success_time, p.as_of) < CAST(m.data_date AS TIMESTAMP) + INTERVAL 33 HOUR
            THEN 1 ELSE 0 END AS num
FROM meter_collection_daily m
JOIN _periods p ON CAST(m.data_date AS TIMESTAMP) >= p.ws AND CAST(m.data_date AS TIMESTAMP) < p.te
-- a semi join (meter_asset_no is meter_coll_obj's key, so it keeps the same rows): as an inner
-- join DuckDB built its hash table on the 3.5 M collection objects even when no reading falls in
-- the periods (today's readings come the next night), 0.14-0.3 s of every minute pass. As a semi
-- join it still did, 0.3-0.9 s of every minute all day (it proves the readings' side empty only
-- after the build): the guard (kpis/images.py _GUARD) empties the objects' side first when no
-- reading falls in the periods. It holds whenever a fact row does, so it never removes one.
SEMI JOIN (SELECT o.meter_asset_no FROM meter_coll_obj o
           WHERE o.is_deleted = 0 AND o.coll_flag = 1
             AND EXISTS (SELECT 1 AS guard FROM meter_collection_daily g
                         JOIN _periods gp ON CAST(g.data_date AS TIMESTAMP) >= gp.ws
                                         AND CAST(g.data_date AS TIMESTAMP) < gp.te
                         WHERE g.data_date >= CAST(periods_from() AS DATE))) o
     ON o.meter_asset_no = m.meter_asset_no
LEFT JOIN dist_tg t ON t.tg_no = m.tg_no AND t.is_deleted = 0
-- (periods_from(): the row groups of older days skipped, kpi-definitions.md)
WHERE m.is_deleted = 0 AND m.coll_status <> '04'
  AND m.data_date >= CAST(periods_from() AS DATE);

-- shared: k_pay
-- Payments (mis_payment, not deleted) placed in the periods by pay_time, with the grid of their
-- customer (mis_customer.grid_no of cons_no, kept in k_payment: the join of today's 180 k
-- payments to 3.5 M customers was ~0.15 s of every city minute pass). The collected amount and
-- the five payment-channel shares read it.
SELECT p.pid, y.org_no, y.cust_grid_no AS grid_no, y.charge_id, y.rcv_amt, y.pay_channel, y.status_code
FROM k_payment y JOIN _periods p ON y.pay_time >= p.ws AND y.pay_time < p.te
WHERE y.is_deleted = 0;

-- shared: k_visit_sat
-- Successful follow-up visits with a satisfaction (cs_visit, not deleted) placed in the periods
-- by visit_time, on orders neither deleted nor merged into another, with the order's ORGWO,
-- GRIDWO and type (k_wo). The three follow-up satisfaction rates (order.callback_satisfaction,
-- order.complaint_callback_satisfaction, repair.satisfaction) read it: each joined today's
-- ~28 k visits to every order of k_wo on its own (~0.025 s apiece a city minute at 10 days).
SELECT p.pid, w.attr_org, w.attr_grid, w.busi_type_code, v.visit_id, v.satisfaction
FROM cs_visit v
JOIN _periods p ON v.visit_time >= p.ws AND v.visit_time < p.te
JOIN k_wo w ON w.wo_no = v.wo_no
WHERE v.is_deleted = 0 AND v.visit_result = '01' AND v.satisfaction IS NOT NULL
  AND v.visit_time >= periods_from()
  AND w.is_deleted = 0 AND w.merged_into_wo_no IS NULL;

-- shared: k_cust_n
-- Customers counted per org, grid and what ACTIVE reads, the dates clamped to the span of the
-- periods' te days (cust_counts, kpis/sql/prelude.sql): the populations of the two "per 10k
-- customers" KPIs (order.complaint_rate_10k, repair.orders_per_10k). A pass may evaluate them in
-- two statements; kpis.batch.SharedCache computes it once for both (it reads _periods only
-- through te).
SELECT * FROM cust_counts((SELECT MIN(CAST(te - INTERVAL 1 MICROSECOND AS DATE)) FROM _periods),
                          (SELECT MAX(CAST(te - INTERVAL 1 MICROSECOND AS DATE)) FROM _periods));

-- shared: k_cust_groups
-- The reduced facts of the archive stocks (customer.active_total and the 17 others whose test
-- of a customer is ACTIVE(c, te) and its own fields): customers (is_deleted = 0) grouped by org,
-- grid and what ACTIVE reads, the dates clamped to the span of the periods' te days
-- (clamp_build, clamp_cancel: a date before all of them, or after all of them, acts alike for
-- every period), with one count or sum per stock (cust_stock_counts, kpis/sql/prelude.sql).
-- 3.5 M customers become a few thousand groups, read once by all of them; their facts (one row
-- per customer and period) stay the items. From the groups kept between passes (k_cust_stock_grp,
-- dates clamped at its floor day) when the first te day is not below the floor, else from the
-- customers (DuckDB skips that scan when the NOT EXISTS is false): grouping the 3.5 M customers
-- was ~0.6 s of each city sweep.
WITH x AS (SELECT MIN(CAST(te - INTERVAL 1 MICROSECOND AS DATE)) AS lo,
                  MAX(CAST(te - INTERVAL 1 MICROSECOND AS DATE)) AS hi
           FROM _periods),
g AS (
    SELECT k.org_no, k.grid_no, k.status_code, k.bd, k.cancel_date, k.n, k.n_residential,
           k.n_general_ci, k.n_large_industry, k.n_agriculture, k.n_other_class, k.n_hv,
           k.cap_mva, k.n_cap_ge_315, k.n_important, k.n_important_compliant,
           k.n_important_emergency, k.n_low_voltage, k.n_lv_echannel, k.n_lv_smart_payment,
           k.n_dg, k.n_valid_mobile, k.n_ebill
    FROM k_cust_stock_grp k
    WHERE k.floor_day <= (SELECT lo FROM x)
    UNION ALL
    SELECT * FROM cust_stock_counts((SELECT lo FROM x), NOT EXISTS (
        SELECT 1 FROM k_cust_stock_grp k WHERE k.floor_day <= (SELECT lo FROM x)))
)
SELECT g.org_no, g.grid_no, g.status_code,
       clamp_build(g.bd, x.lo, x.hi) AS bd, clamp_cancel(g.cancel_date, x.lo, x.hi) AS cancel_date,
       CAST(SUM(g.n) AS BIGINT) AS n,
       CAST(SUM(g.n_residential) AS BIGINT) AS n_residential,
       CAST(SUM(g.n_general_ci) AS BIGINT) AS n_general_ci,
       CAST(SUM(g.n_large_industry) AS BIGINT) AS n_large_industry,
       CAST(SUM(g.n_agriculture) AS BIGINT) AS n_agriculture,
       CAST(SUM(g.n_other_class) AS BIGINT) AS n_other_class,
       CAST(SUM(g.n_hv) AS BIGINT) AS n_hv,
       SUM(g.cap_mva) AS cap_mva,
       CAST(SUM(g.n_cap_ge_315) AS BIGINT) AS n_cap_ge_315,
       CAST(SUM(g.n_important) AS BIGINT) AS n_important,
       CAST(SUM(g.n_important_compliant) AS BIGINT) AS n_important_compliant,
       CAST(SUM(g.n_important_emergency) AS BIGINT) AS n_important_emergency,
       CAST(SUM(g.n_low_voltage) AS BIGINT) AS n_low_voltage,
       CAST(SUM(g.n_lv_echannel) AS BIGINT) AS n_lv_echannel,
       CAST(SUM(g.n_lv_smart_payment) AS BIGINT) AS n_lv_smart_payment,
       CAST(SUM(g.n_dg) AS BIGINT) AS n_dg,
       CAST(SUM(g.n_valid_mobile) AS BIGINT) AS n_valid_mobile,
       CAST(SUM(g.n_ebill) AS BIGINT) AS n_ebill
FROM g CROSS JOIN x
GROUP BY g.org_no, g.grid_no, g.status_code, clamp_build(g.bd, x.lo, x.hi),
         clamp_cancel(g.cancel_date, x.lo, x.hi);

-- shared: k_settle_groups
-- The reduced facts of the three stocks over settlement points (k_settle_mp): the points grouped
-- by org, grid and what ACTIVE reads of their customer, the dates clamped as in k_cust_groups,
-- with each stock's counts (settle_counts, kpis/sql/prelude.sql). 3.5 M points at city become a
-- few thousand groups; from the groups kept between passes (k_settle_grp, dates clamped at the
-- floor day) when the first te day is not below the floor, else from the points (~0.2 s of each
-- city sweep).
WITH x AS (SELECT MIN(CAST(te - INTERVAL 1 MICROSECOND AS DATE)) AS lo,
                  MAX(CAST(te - INTERVAL 1 MICROSECOND AS DATE)) AS hi
           FROM _periods),
g AS (
    SELECT k.org_no, k.grid_no, k.status_code, k.bd, k.cancel_date, k.n, k.n_smart,
           k.n_run_meter, k.n_run_meter_covered, k.n_lv_related, k.lv_rel_n, k.lv_rel_same
    FROM k_settle_grp k
    WHERE k.floor_day <= (SELECT lo FROM x)
    UNION ALL
    SELECT * FROM settle_counts((SELECT lo FROM x), NOT EXISTS (
        SELECT 1 FROM k_settle_grp k WHERE k.floor_day <= (SELECT lo FROM x)))
)
SELECT g.org_no, g.grid_no, g.status_code,
       clamp_build(g.bd, x.lo, x.hi) AS bd, clamp_cancel(g.cancel_date, x.lo, x.hi) AS cancel_date,
       CAST(SUM(g.n) AS BIGINT) AS n, CAST(SUM(g.n_smart) AS BIGINT) AS n_smart,
       CAST(SUM(g.n_run_meter) AS BIGINT) AS n_run_meter,
       CAST(SUM(g.n_run_meter_covered) AS BIGINT) AS n_run_meter_covered,
       CAST(SUM(g.n_lv_related) AS BIGINT) AS n_lv_related,
       SUM(g.lv_rel_n) AS lv_rel_n, SUM(g.lv_rel_same) AS lv_rel_same
FROM g CROSS JOIN x
GROUP BY g.org_no, g.grid_no, g.status_code, clamp_build(g.bd, x.lo, x.hi),
         clamp_cancel(g.cancel_date, x.lo, x.hi);

-- shared: k_app_open
-- Applications open at as_of (status 01, not connected by as_of) of the lead-time types, with
-- their measure and LIM(a) (kpis/definitions/newconn.yaml newconn.near_due): 101: WD(accept,
-- as_of) - customer delay, 5; 102/111: SSWD up to as_of, 6; 103/112: SSWD up to as_of, 32 for
-- two or more sources else 22. Open stages run to as_of; a stage ending before it starts leaves
-- the application out; `miss`: a date missing from the calendar. newconn.near_due and
-- newconn.overdue each read every open application's stages for it (~0.025 s apiece a city
-- minute).
WITH a AS (
    SELECT p.pid, p.as_of, a.*
    FROM mis_app a CROSS JOIN _periods p
    WHERE a.is_deleted = 0 AND a.status_code = '01' AND upto(a.connect_time, p.as_of) IS NULL
      AND a.busi_type_code IN ('101', '102', '103', '111', '112') AND a.accept_time <= p.as_of
),
st AS (
    SELECT a.pid, a.app_no, s.start_time,
           upto(s.end_time, a.as_of) < s.start_time AS bad,
           COALESCE(upto(s.end_time, a.as_of), a.as_of) AS stop
    FROM a JOIN mis_app_step s ON s.app_no = a.app_no
    WHERE a.busi_type_code <> '101'
      AND s.is_deleted = 0 AND s.resp_party = '01' AND s.start_time <= a.as_of
),
ss AS (
    SELECT st.pid, st.app_no, SUM(k2.wd_index - k1.wd_index) AS sswd,
           BOOL_OR(COALESCE(st.bad, FALSE)) AS bad,
           BOOL_OR(k1.wd_index IS NULL OR k2.wd_index IS NULL) AS miss
    FROM st
    LEFT JOIN k_calendar k1 ON k1.cal_date = CAST(st.start_time AS DATE)
    LEFT JOIN k_calendar k2 ON k2.cal_date = CAST(st.stop AS DATE)
    GROUP BY st.pid, st.app_no
)
SELECT a.pid, a.app_no, a.org_no, a.grid_no,
       CASE WHEN a.busi_type_code = '101' THEN k2.wd_index - k1.wd_index - a.customer_delay_days
            ELSE COALESCE(ss.sswd, 0) END AS measure,
       CASE WHEN a.busi_type_code = '101' THEN 5
            WHEN a.busi_type_code IN ('102', '111') THEN 6
            WHEN a.supply_source_type = '02' THEN 32 ELSE 22 END AS lim,
       CASE WHEN a.busi_type_code = '101' THEN k1.wd_index IS NULL OR k2.wd_index IS NULL
            ELSE COALESCE(ss.miss, FALSE) END AS miss
FROM a
LEFT JOIN ss ON ss.pid = a.pid AND ss.app_no = a.app_no
LEFT JOIN k_calendar k1 ON k1.cal_date = CAST(a.accept_time AS DATE)
LEFT JOIN k_calendar k2 ON k2.cal_date = CAST(a.as_of AS DATE)
WHERE NOT COALESCE(ss.bad, FALSE);
