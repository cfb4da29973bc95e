"""Turn an outbox payload into Chinese text, HTML and markdown, the same facts in each."""
from __future__ import annotations

import html as html_lib
from dataclasses import dataclass, field
from typing import Any

KIND_ZH = {"firing": "告警", "severity_up": "告警升级为严重", "repeat": "持续告警",
           "resolved": "已恢复", "escalation": "无人确认·升级", "source_late": "数据源延迟",
           "source_back": "数据源恢复"}
SEVERITY_ZH = {"warning": "预警", "critical": "严重"}
GRAIN_ZH = {"hourly": "小时", "daily": "日", "monthly": "月", "near-real-time": "实时"}
SOURCE_ZH = {"mis": "营销业务系统", "cs": "95598客服系统", "dist": "配网抢修系统", "meter": "用电信息采集系统"}


@dataclass(frozen=True)
class Rendered:
    kind: str
    subject: str
    text: str
    html: str
    markdown: str
    items: list[dict[str, Any]] = field(default_factory=list)

    def markdown_within(self, limit_bytes: int) -> str:
        """Robots reject long markdown: cut at an item boundary and point to the alert centre."""
        if len(self.markdown.encode("utf-8")) <= limit_bytes:
            return self.markdown
        blocks, out = self.markdown.split("\n\n"), ""
        for i, block in enumerate(blocks):
            more = f"\n\n…另有 {len(blocks) - i} 段未显示，请到告警中心查看"
            if len((out + "\n\n" + block + more).encode("utf-8")) > limit_bytes:
                return out + more
            out = block if not out else out + "\n\n" + block
        return out


def fmt(value: Any, unit: str | None) -> str:
    """Display rounding of CONVENTIONS.md §8; comparisons use the unrounded value."""
    if value is None:
        return "无数据"
    v = float(value)
    if unit == "count" or unit == "个" or unit == "户" or unit == "次":
        return f"{v:,.0f}{'' if unit == 'count' else ' ' + unit}"
    if unit in ("min", "s", "分钟", "秒"):
        return f"{v:,.1f} {unit}"
    return f"{v:,.2f}{' ' + unit if unit and unit != '%' else unit or ''}"


def _lines(item: dict[str, Any], base_url: str) -> list[tuple[str, str]]:
    """(label, value) pairs for one item, in reading order."""
    if item["kind"] in ("source_late", "source_back"):
        src = item["source"]
        return [("数据源", f"{SOURCE_ZH.get(src, src)} ({src})"),
                ("最新数据时间", str(item.get("last_good_high") or "未知")),
                ("延迟", f"{item.get('late_minutes', '?')} 分钟" if item["kind"] == "source_late" else "已恢复"),
                ("受影响指标", f"{item.get('held_kpis', 0)} 项指标的告警暂停评估"
                 if item["kind"] == "source_late" else "恢复评估")]
    unit = item.get("unit")
    level = item.get("severity") or "warning"
    thr = f"{SEVERITY_ZH.get(level, level)}阈值 {item.get(level) or item.get('warning')}"
    if item["kind"] == "resolved":
        thr = f"恢复阈值 {item.get('clear') or item.get('warning')}"
    num, den = item.get("numerator"), item.get("denominator")
    parts = f"{fmt(num, 'count' if den is not None else unit)} / {fmt(den, 'count')}" if den is not None \
        else f"{fmt(num, unit)}（计数类指标，无分母）"
    data_time = "；".join(f"{s} {t}" for s, t in sorted((item.get("data_time") or {}).items())) or "未知"
    return [("指标", f"{item['name_zh']} ({item['kpi_id']})"),
            ("单位", f"{item.get('org_name') or item['org_no']} ({item['org_no']})"),
            ("周期", f"{item['period']}（{GRAIN_ZH.get(item.get('grain', ''), item.get('grain', ''))}）"),
            ("当前值", fmt(item.get("value"), unit)),
            ("阈值", thr),
            ("分子 / 分母", parts),
            ("数据时间", data_time),
            ("告警开始", str(item.get("alarm_since") or "")),
            ("详情", base_url.rstrip("/") + item["link_path"])]


def _title(item: dict[str, Any]) -> str:
    kind = KIND_ZH.get(item["kind"], item["kind"])
    if item["kind"] in ("source_late", "source_back"):
        return f"【{kind}】{SOURCE_ZH.get(item['source'], item['source'])}"
    sev = SEVERITY_ZH.get(item.get("severity") or "", "")
    tag = f"{kind}·{sev}" if sev and item["kind"] not in ("resolved",) else kind
    return f"【{tag}】{item['name_zh']} {item.get('org_name') or item['org_no']} {item['period']}：" \
           f"{fmt(item.get('value'), item.get('unit'))}"


def render(payload: dict[str, Any], base_url: str) -> Rendered:
    """Subject, plain text, HTML and markdown for one (grouped) notification."""
    items = [dict(i, link=(base_url.rstrip("/") + i["link_path"]) if "link_path" in i else None)
             for i in payload["items"]]
    if len(items) == 1:
        subject = _title(items[0])
    else:
        counts: dict[str, int] = {}
        for i in items:
            counts[KIND_ZH.get(i["kind"], i["kind"])] = counts.get(KIND_ZH.get(i["kind"], i["kind"]), 0) + 1
        subject = "【KPI告警汇总】" + "，".join(f"{k} {n} 项" for k, n in counts.items())
    text_parts, html_parts, md_parts = [], [], [f"### {subject}"]
    for item in items:
        lines = _lines(item, base_url)
        text_parts.append(_title(item) + "\n" + "\n".join(f"{k}：{v}" for k, v in lines))
        rows = "".join(
            f"<tr><th align='left'>{html_lib.escape(k)}</th><td>"
            + (f"<a href='{html_lib.escape(v)}'>{html_lib.escape(v)}</a>" if k == "详情" else html_lib.escape(v))
            + "</td></tr>" for k, v in lines)
        html_parts.append(f"<h3>{html_lib.escape(_title(item))}</h3><table>{rows}</table>")
        md_parts.append(f"**{_title(item)}**\n" + "\n".join(
            f"> {k}：[{v}]({v})" if k == "详情" else f"> {k}：{v}" for k, v in lines))
    footer = "——KPI 实时监控（电力营销与客户服务）"
    text = "\n\n".join(text_parts) + "\n\n" + footer + "\n"
    body = f"<html><body><h2>{html_lib.escape(subject)}</h2>{''.join(html_parts)}<p>{footer}</p></body></html>"
    return Rendered(payload.get("kind", "alert"), subject, text, body, "\n\n".join(md_parts), items)
