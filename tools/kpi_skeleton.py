"""Print a YAML skeleton for catalogue KPIs of one theme (catalogue fields filled in).

Usage: python tools/kpi_skeleton.py THEME > kpis/definitions/THEME.yaml
Used once to start a theme file; the computation fields are then written by hand.
"""
from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

CATALOGUE = Path(__file__).resolve().parent.parent / "contract" / "kpis.csv"
BASELINES = [
    ("same clock hour on the same weekday over the previous 4 weeks", "same_hour_weekday_4w"),
    ("same weekday and clock time in each of the previous 4 weeks", "snapshot_same_time_4w"),
    ("same clock time on each of the previous 7 days", "snapshot_same_time_7d"),
    ("value at the same time 7 days earlier", "snapshot_7_days_earlier"),
    ("mean of the same weekday over the previous 4 weeks", "same_weekday_4w"),
    ("same weekday of the previous week", "value_7_days_earlier"),
    ("value 7 days earlier", "value_7_days_earlier"),
    ("same day of month in the previous month", "same_day_prev_month"),
    ("same month of the previous year", "same_month_last_year"),
    ("same calendar month of the previous year", "same_month_last_year"),
    ("3 previous months", "mean_prev_3_months"),
    ("previous month", "previous_period"),
    ("previous day", "previous_period"),
]


def q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main(theme: str) -> None:
    rows = [r for r in csv.DictReader(CATALOGUE.open(encoding="utf-8")) if r["theme"] == theme]
    print(f"theme: {theme}\nkpis:")
    for r in rows:
        m = re.search(r"baseline: (.*)", r["formula"])
        baseline = next((b for phrase, b in BASELINES if m and phrase in m.group(1)), None)
        print(f"  - id: {r['id']}")
        for key in ("name_zh", "name_en", "definition", "formula", "unit", "direction", "grain"):
            print(f"    {key}: {q(r[key])}")
        print(f"    warning: {q(r['warning_threshold'])}")
        print(f"    critical: {q(r['critical_threshold'])}")
        print(f"    reference: {q(r['reference'])}")
        print(f"    org_levels: [{', '.join(r['org_levels'].split(';'))}]")
        if r["min_sample"]:
            print(f"    min_sample: {int(r['min_sample'])}")
        print(f"    tier: {r['tier']}")
        print(f"    sources: [{', '.join(s.replace('cs95598', 'cs') for s in r['source_systems'].split(';'))}]")
        if baseline:
            print(f"    baseline: {baseline}")
        print("    kind: TODO\n    shape: TODO\n    facts: |\n      TODO\n")


if __name__ == "__main__":
    main(sys.argv[1])
