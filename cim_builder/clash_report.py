"""The clash report as a printable HTML page and as an XLSX workbook (openpyxl).

Self-contained HTML (no script, font or tile from the network: the platform runs on an intranet).
Every spreadsheet cell passes through :func:`xlsx_cell`: OWASP formula neutralising — a text
starting with ``=``, ``+``, ``-``, ``@`` (or a tab / carriage return / line feed) gets a leading
``'`` so that a pipe id or material typed into a survey cannot run as a formula in a planner's
spreadsheet; numbers stay numbers; characters XML cannot hold become U+FFFD (the same rule as
land_supervision/spreadsheet.py, copied rather than imported: the twin does not depend on the
supervision room).
"""

from __future__ import annotations

import io
import re

from jinja2 import Environment

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n")
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def xlsx_cell(value):
    if isinstance(value, str):
        if value.startswith(FORMULA_TRIGGERS):
            value = "'" + value
        value = _XML_ILLEGAL.sub("\ufffd", value)
    return value


def _nearest_text(n: dict | None) -> str:
    if not n:
        return ""
    if n.get("kind") == "bim_element":
        parts = [n.get("global_id"), n.get("ifc_class"), n.get("storey"), n.get("name")]
        if n.get("model_id"):
            parts.insert(0, n["model_id"])
        return " / ".join(str(p) for p in parts if p)
    if n.get("kind") == "basement":
        return " / ".join(str(p) for p in ("地下室", n.get("basement_id"), n.get("building_id"), n.get("use")) if p)
    if n.get("kind") == "planned":
        return f"拟建地下室 (底标高 {n.get('bottom_z')} m)"
    return str(n.get("id") or "")


def _subject_text(s: dict) -> str:
    if s.get("kind") == "model":
        return f"BIM 模型 {s.get('id')}（{s.get('file')}，{s.get('elements')} 个构件，定位：{s.get('georef')}）"
    return (f"拟建地下室：地面高程 {s.get('ground_z')} m（{'给定' if s.get('ground_from') == 'given' else 'DEM'}），"
            f"深 {s.get('depth_m')} m，底标高 {s.get('bottom_z')} m")


PIPE_COLUMNS = [("id", "管线段 id"), ("type", "类型"), ("size", "规格 (mm)"), ("material", "材质"),
                ("clearance_m", "净距 (m)"), ("required_m", "要求净距 (m)"), ("verdict", "结论"),
                ("nearest", "最近构件 / 结构"), ("start_axis_z", "起点轴线高程"), ("end_axis_z", "终点轴线高程")]
STRUCTURE_COLUMNS = [("kind", "类别"), ("id", "编号"), ("building_id", "建筑"), ("use", "用途"),
                     ("clearance_m", "净距 (m)"), ("verdict", "结论"), ("nearest", "最近构件")]


def _verdict(row: dict) -> str:
    if row.get("cuts") or row.get("overlaps"):
        return "冲突 (cuts)"
    if row.get("too_close"):
        return "净距不足 (too close)"
    return "满足 (clear)"


def pipe_rows(report: dict) -> list[list]:
    out = []
    for p in report["pipes"]:
        out.append([p["id"], p.get("type"), p.get("size"), p.get("material"), p["clearance_m"], p.get("required_m"),
                    _verdict(p), _nearest_text(p.get("nearest")), p.get("start_axis_z"), p.get("end_axis_z")])
    return out


def structure_rows(report: dict) -> list[list]:
    out = []
    for s in report["structures"]:
        kind = {"basement": "地下室", "bim_element": "BIM 地下构件"}.get(s.get("kind"), s.get("kind"))
        ident = s.get("basement_id") or s.get("global_id") or s.get("id")
        if s.get("kind") == "bim_element":
            ident = f"{s.get('model_id')} / {s.get('global_id')} / {s.get('ifc_class')}"
        out.append([kind, ident, s.get("building_id"), s.get("use"), s["clearance_m"], _verdict(s),
                    _nearest_text(s.get("nearest"))])
    return out


_HTML = Environment(autoescape=True).from_string("""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>管线碰撞检查报告 — {{ subject_text }}</title>
<style>
body{font-family:"Noto Sans CJK SC","Microsoft YaHei",sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #bbb;padding:3px 8px;text-align:left}
th{background:#eef}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.cut td{background:#fde2e2}tr.close td{background:#fff4d6}.muted{color:#777;font-size:12px}
</style></head><body>
<h1>管线碰撞检查报告 <span class="muted">Clash report</span></h1>
<p>{{ subject_text }}</p>
<p class="muted">现状日期 as of: {{ r.as_of or "当前 current" }} · 检索距离 search distance: {{ r.search_distance_m }} m ·
要求净距依据 required clearances: {{ r.required_basis }} · 用时 {{ r.summary.seconds.total }} s</p>
<h2>汇总 Summary</h2>
<p>检索范围内管线 <b>{{ r.summary.pipes }}</b> 条，其中冲突 <b>{{ r.summary.cuts }}</b> 条，净距不足
<b>{{ r.summary.too_close }}</b> 条；邻近地下结构 <b>{{ r.summary.structures }}</b> 处，其中重叠
<b>{{ r.summary.structures_overlapping }}</b> 处。</p>
<table><tr><th>类型</th><th>管线</th><th>冲突</th><th>净距不足</th><th>最小净距 (m)</th></tr>
{% for t, b in r.summary.by_type.items() %}<tr><td>{{ t }} ({{ b.type_code }})</td><td class="num">{{ b.pipes }}</td>
<td class="num">{{ b.cuts }}</td><td class="num">{{ b.too_close }}</td><td class="num">{{ "%.3f"|format(b.min_clearance_m) }}</td></tr>
{% endfor %}</table>
<h2>管线 Pipes</h2>
{% if pipes %}<table><tr>{% for _, h in pipe_columns %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row, p in pipes %}<tr class="{{ 'cut' if p.cuts else ('close' if p.too_close else '') }}">
{% for v in row %}<td{% if v is number %} class="num"{% endif %}>{% if v is number and loop.index0 == 4 %}{{ "%.3f"|format(v) }}{% elif v is none %}{% else %}{{ v }}{% endif %}</td>{% endfor %}</tr>
{% endfor %}</table>{% else %}<p>检索距离内没有管线。No pipe within the search distance.</p>{% endif %}
<h2>地下结构 Underground structures</h2>
{% if structures %}<table><tr>{% for _, h in structure_columns %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in structures %}<tr>{% for v in row %}<td{% if v is number %} class="num"{% endif %}>{% if v is none %}{% else %}{{ v }}{% endif %}</td>{% endfor %}</tr>
{% endfor %}</table>{% else %}<p>检索距离内没有其他地下结构。No other underground structure within the search distance.</p>{% endif %}
{% if r.warnings %}<h2>提示 Notes</h2><ul>{% for w in r.warnings %}<li>{{ w }}</li>{% endfor %}</ul>{% endif %}
<p class="muted">净距：管道外壁（圆管：轴线距离减半径；方管：外表面）到构件 / 结构表面的三维最短距离，≤ 0 为冲突；
管壁厚度忽略。Clearance: the shortest 3D distance from the pipe's outside to the solid; ≤ 0 is a clash.</p>
</body></html>""")


def html(report: dict) -> str:
    return _HTML.render(r=report, subject_text=_subject_text(report["subject"]),
                        pipes=list(zip(pipe_rows(report), report["pipes"])), pipe_columns=PIPE_COLUMNS,
                        structures=structure_rows(report), structure_columns=STRUCTURE_COLUMNS)


def xlsx(report: dict) -> bytes:
    from openpyxl import Workbook
    from openpyxl.styles import Font, PatternFill

    wb = Workbook()
    ws = wb.active
    ws.title = "管线 pipes"
    bold = Font(bold=True)
    ws.append([xlsx_cell(h) for _, h in PIPE_COLUMNS])
    for c in ws[1]:
        c.font = bold
    red, amber = PatternFill("solid", fgColor="FDE2E2"), PatternFill("solid", fgColor="FFF4D6")
    for row, p in zip(pipe_rows(report), report["pipes"]):
        ws.append([xlsx_cell(v) for v in row])
        if p["cuts"] or p["too_close"]:
            for c in ws[ws.max_row]:
                c.fill = red if p["cuts"] else amber
        ws.cell(ws.max_row, 5).number_format = "0.000"
    ws.freeze_panes = "A2"
    st = wb.create_sheet("地下结构 structures")
    st.append([xlsx_cell(h) for _, h in STRUCTURE_COLUMNS])
    for row in structure_rows(report):
        st.append([xlsx_cell(v) for v in row])
        st.cell(st.max_row, 5).number_format = "0.000"
    sm = wb.create_sheet("汇总 summary")
    sm.append([xlsx_cell(_subject_text(report["subject"]))])
    sm.append(["现状日期 as of", xlsx_cell(report.get("as_of") or "当前")])
    sm.append(["检索距离 (m)", report["search_distance_m"]])
    sm.append(["要求净距依据", xlsx_cell(report["required_basis"])])
    sm.append([])
    sm.append(["类型", "代码", "管线", "冲突", "净距不足", "最小净距 (m)"])
    for t, b in report["summary"]["by_type"].items():
        sm.append([xlsx_cell(t), xlsx_cell(b["type_code"]), b["pipes"], b["cuts"], b["too_close"], b["min_clearance_m"]])
    sm.append(["合计 total", "", report["summary"]["pipes"], report["summary"]["cuts"], report["summary"]["too_close"]])
    for w in report.get("warnings", []):
        sm.append([xlsx_cell(w)])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()
