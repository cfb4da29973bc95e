"""Interface text in Chinese (default) and English; pages never hard-code a label."""
from __future__ import annotations

LANGS = ("zh", "en")

TEXT: dict[str, tuple[str, str]] = {
    "app_title": ("营销服务指标监控", "Marketing & Service KPI Monitor"),
    "sources": ("数据源", "Sources"),
    "overview": ("总览", "Overview"),
    "customer": ("客户构成", "Customers"),
    "repair": ("抢修", "Repair"),
    "service": ("95598服务", "95598 service"),
    "reliability": ("供电可靠性", "Reliability"),
    "metering": ("计量与线损", "Metering & line loss"),
    "newconn": ("业扩报装", "New connections"),
    "billing": ("电费与缴费", "Billing & payments"),
    "kpi": ("指标详情", "KPI detail"),
    "alerts": ("告警中心", "Alerts"),
    "call": ("95598话务", "95598 calls"),
    "order": ("工单与投诉", "Work orders & complaints"),
    "grid": ("网格服务", "Grid service"),
    "org": ("单位", "Unit"),
    "period": ("周期", "Period"),
    "today": ("今日", "Today"),
    "period_hint": ("今日 / 日期 YYYY-MM-DD / 月份 YYYY-MM", "today / YYYY-MM-DD / YYYY-MM"),
    "switch_lang": ("English", "中文"),
    "logout": ("退出", "Sign out"),
    "system": ("系统", "System"),
    "table": ("表", "Table"),
    "rows": ("行数", "Rows"),
    "deleted": ("已删除", "Deleted"),
    "newest": ("最新更新时间", "Newest update"),
    "freshness": ("数据新鲜度", "Freshness"),
    "data_as_of": ("数据截至", "Data as of"),
    "lag": ("延迟", "Lag"),
    "last_run": ("最近抽取", "Last run"),
    "status": ("状态", "Status"),
    "rejected": ("拒收行数", "Rejected rows"),
    "stale": ("数据滞后", "Stale"),
    "fresh": ("正常", "Fresh"),
    "unavailable": ("数据暂不可用", "Data unavailable"),
    "no_snapshot": ("尚无已发布的数据快照，请确认后台进程(worker)正在运行。",
                    "No snapshot published yet: is the worker running?"),
    "no_scope": ("您没有任何单位的查看权限。", "You are not granted any unit."),
    "no_data": ("无数据", "No data"),
    "value": ("值", "Value"),
    "unit": ("单位", "Unit"),
    "trend": ("趋势", "Trend"),
    "children": ("下级单位", "Child units"),
    "kpi_name": ("指标", "KPI"),
    "warning": ("预警", "Warning"),
    "critical": ("严重", "Critical"),
    "ok": ("正常", "OK"),
    "insufficient_sample": ("样本不足", "Small sample"),
    "theme": ("主题", "Theme"),
    "export": ("导出 CSV", "Export CSV"),
    "export_matrix": ("导出矩阵 CSV", "Export matrix CSV"),
    "export_detail": ("导出明细 CSV", "Export records CSV"),
    "open_tasks": ("在途抢修任务", "Open repair tasks"),
    "elapsed": ("已用时(分钟)", "Elapsed (min)"),
    "limit": ("时限(分钟)", "Limit (min)"),
    "overdue": ("超时", "Overdue"),
    "orders_by_hour": ("今日抢修工单(按小时)", "Repair orders today by hour"),
    "task_map": ("抢修任务分布(经纬度)", "Repair tasks by location"),
    "hour": ("小时", "Hour"),
    "tasks": ("任务数", "Tasks"),
    "definition": ("定义", "Definition"),
    "formula": ("公式", "Formula"),
    "thresholds": ("阈值", "Thresholds"),
    "records": ("明细记录", "Source records"),
    "records_window": ("此指标的明细记录（计量采集日数据）只保留 {day} 及以后的日期，请选择其中一天。",
                       "Source records of this KPI (daily metering data) are kept from {day} on; "
                       "choose a day from then."),
    "page": ("页", "Page"),
    "prev": ("上一页", "Previous"),
    "next": ("下一页", "Next"),
    "stale_reason": ("依赖的数据源滞后", "depends on a late source"),
    "period_label": ("周期", "Period"),
    "warning_count": ("预警数", "Warnings"),
    "critical_count": ("严重数", "Criticals"),
    "all_kpis": ("全部指标", "All KPIs"),
    "published": ("快照版本", "Snapshot"),
    "mis": ("营销业务应用系统", "Marketing MIS"),
    "cs": ("95598客户服务系统", "95598 customer service"),
    "dist": ("配网抢修指挥系统", "Distribution repair (OMS)"),
    "meter": ("用电信息采集系统", "Metering data collection"),
    "on_time_urban": ("城区到达及时率", "On-time arrival, urban"),
    "area": ("区域", "Area"),
}


def t(key: str, lang: str = "zh") -> str:
    """The text for `key` in `lang`; an unknown key shows itself so a gap is visible, not hidden."""
    pair = TEXT.get(key)
    if pair is None:
        return key
    return pair[1] if lang == "en" else pair[0]


def both(key: str) -> str:
    """'中文 / English' for bilingual places (CSV headers, titles shared by both languages)."""
    zh, en = TEXT.get(key, (key, key))
    return f"{zh} / {en}"


def norm_lang(lang: str | None) -> str:
    return "en" if lang == "en" else "zh"
