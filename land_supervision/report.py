"""A printable HTML report of a run: summary, statistics by rule / street / land-use class, an
overview map and one map thumbnail per finding (inline SVG drawn by PostGIS ``ST_AsSVG`` in
EPSG:4547: the parcel in grey, the evidence in red). Self-contained: no script, font or tile
from the network (the platform runs on an intranet)."""

from __future__ import annotations

import psycopg
from jinja2 import Environment
from psycopg import sql
from psycopg.rows import dict_row

from land_supervision import runs
from land_supervision.catalogue import RULES
from spatial_api import store

SEVERITY_ZH = {"low": "提示", "medium": "一般", "high": "严重", "critical": "特别严重"}
STATUS_ZH = {"new": "新增", "persisting": "持续"}


def _thumbnails(conn: psycopg.Connection, run_id: int, parcels_layer: str | None, limit: int) -> dict[int, dict]:
    """finding id → {svg path of the parcel, of the evidence, viewBox} in EPSG:4547 metres."""
    if parcels_layer and store.get_layer(conn, parcels_layer):
        parcel = sql.SQL("(SELECT ST_Transform(p.geom, 4547) FROM {} p WHERE p.layer = {} "
                         "AND p.vid = (f.sources ->> 'parcels')::bigint)").format(
            sql.Identifier(store.partition_name(parcels_layer)), sql.Literal(parcels_layer))
    else:
        parcel = sql.SQL("NULL::geometry")
    q = sql.SQL(
        """
        WITH x AS (
            SELECT f.id, ST_Transform(f.geom, 4547) AS e, {parcel} AS p
            FROM sup_findings f WHERE f.run_id = %s ORDER BY f.rule, f.subject_id LIMIT %s
        ), b AS (
            SELECT x.*, ST_Expand(ST_Envelope(ST_Collect(coalesce(x.p, x.e), x.e)), 20) AS box FROM x
        )
        SELECT id, ST_AsSVG(p, 0, 1) AS parcel, ST_AsSVG(e, 0, 1) AS evidence,
               ST_XMin(box) AS x0, ST_YMax(box) AS y1, ST_XMax(box) - ST_XMin(box) AS w, ST_YMax(box) - ST_YMin(box) AS h
        FROM b WHERE box IS NOT NULL
        """).format(parcel=parcel)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(q, (run_id, limit)).fetchall()
    out = {}
    for r in rows:
        out[r["id"]] = {**r, "viewbox": f"{r['x0']:.1f} {-r['y1']:.1f} {r['w']:.1f} {r['h']:.1f}",
                        "stroke": max(r["w"], r["h"]) / 150}
    return out


def _overview(conn: psycopg.Connection, run_id: int, streets_layer: str | None) -> dict | None:
    """Every finding as a dot over the streets (as they are now), EPSG:4547."""
    outline = []
    with conn.cursor(row_factory=dict_row) as cur:
        pts = cur.execute(
            "SELECT f.rule, f.severity, ST_X(c) AS x, ST_Y(c) AS y FROM sup_findings f, "
            "LATERAL ST_Transform(ST_PointOnSurface(f.geom), 4547) c WHERE f.run_id = %s AND f.geom IS NOT NULL "
            "AND NOT ST_IsEmpty(f.geom)", (run_id,)).fetchall()
        box_of = sql.SQL("SELECT ST_XMin(b) x0, ST_YMax(b) y1, ST_XMax(b) - ST_XMin(b) w, ST_YMax(b) - ST_YMin(b) h "
                         "FROM (SELECT ST_Expand(ST_Extent(ST_Transform(f.geom, 4547))::geometry, 200) b FROM {}) q")
        if streets_layer and store.get_layer(conn, streets_layer):
            src = sql.SQL("{} f WHERE f.layer = {} AND f.valid_to IS NULL").format(
                sql.Identifier(store.partition_name(streets_layer)), sql.Literal(streets_layer))
            outline = cur.execute(sql.SQL("SELECT ST_AsSVG(ST_Transform(f.geom, 4547), 0, 0) AS svg, "
                                          "f.properties ->> 'name' AS name FROM {}").format(src)).fetchall()
            box = cur.execute(box_of.format(src)).fetchone()
        else:
            box = cur.execute(box_of.format(sql.SQL("sup_findings f WHERE f.run_id = {}").format(
                sql.Literal(run_id)))).fetchone()
    if not box or box["w"] is None:
        return None
    return {"points": pts, "outline": outline, "r": max(box["w"], box["h"]) / 250,
            "viewbox": f"{box['x0']:.0f} {-box['y1']:.0f} {box['w']:.0f} {box['h']:.0f}"}


TEMPLATE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<title>土地批后监管报告 · 运行 {{ run.id }} · {{ run.as_of }}</title>
<style>
 body { font-family: "Noto Sans CJK SC", "Source Han Sans SC", "Microsoft YaHei", sans-serif; margin: 2em; color: #222; }
 h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 2px solid #b22; padding-bottom: .2em; margin-top: 1.6em; }
 table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
 th, td { border: 1px solid #999; padding: .25em .5em; text-align: left; vertical-align: top; }
 th { background: #eee; } td.n { text-align: right; }
 .finding { display: flex; gap: 1em; border: 1px solid #ccc; padding: .5em; margin: .5em 0; page-break-inside: avoid; }
 .finding svg { width: 180px; height: 180px; border: 1px solid #ddd; background: #fafafa; flex: none; }
 .sev-critical { color: #a00; font-weight: bold; } .sev-high { color: #c40; } .sev-medium { color: #960; }
 .small { font-size: .8em; color: #555; } code { font-size: .85em; }
 @media print { body { margin: 1cm; } h2 { page-break-after: avoid; } }
</style></head><body>
<h1>土地批后监管报告</h1>
<table>
 <tr><th>运行编号</th><td>{{ run.id }}</td><th>监管基准日</th><td>{{ run.as_of }}</td></tr>
 <tr><th>执行人</th><td>{{ run.author }}</td><th>执行时间</th><td>{{ run.started_at.strftime('%Y-%m-%d %H:%M') }}（{{ run.seconds }} 秒）</td></tr>
 <tr><th>规则</th><td colspan="3">{{ run.rules | join('、') }}</td></tr>
 <tr><th>发现</th><td>{{ run.counts.total }}</td><th>对比上次运行{% if run.previous_run_id %}（{{ run.previous_run_id }}）{% endif %}</th>
     <td>新增 {{ run.counts.new }} · 持续 {{ run.counts.persisting }} · 已消除 {{ run.counts.resolved }}</td></tr>
 <tr><th>图层版本</th><td colspan="3" class="small">{% for role, l in run.layers.items() %}{{ l.layer }}（变更集 {{ l.changeset_id }}，{{ l.features if l.features is not none else '—' }} 要素）{% if not loop.last %}；{% endif %}{% endfor %}</td></tr>
 {% for n in run.notes %}<tr><th>说明</th><td colspan="3" class="small">{{ n }}</td></tr>{% endfor %}
</table>

<h2>统计</h2>
<h3>按规则</h3>
<table><tr><th>规则</th><th>名称</th><th>发现</th><th>新增</th><th>面积（平方米）</th><th>公顷</th><th>亩</th></tr>
{% for r in stats.by_rule %}<tr><td>{{ r.key }}</td><td>{{ r.title }}</td><td class="n">{{ r.findings }}</td><td class="n">{{ r.new }}</td>
<td class="n">{{ '%.2f' % r.area_m2 }}</td><td class="n">{{ '%.4f' % r.area_ha }}</td><td class="n">{{ '%.3f' % r.area_mu }}</td></tr>{% endfor %}
</table>
<h3>按街道</h3>
<table><tr><th>街道</th><th>发现</th><th>新增</th><th>面积（平方米）</th><th>公顷</th><th>亩</th></tr>
{% for r in stats.by_street %}<tr><td>{{ r.key or '（未定位）' }}</td><td class="n">{{ r.findings }}</td><td class="n">{{ r.new }}</td>
<td class="n">{{ '%.2f' % r.area_m2 }}</td><td class="n">{{ '%.4f' % r.area_ha }}</td><td class="n">{{ '%.3f' % r.area_mu }}</td></tr>{% endfor %}
</table>
<h3>按用地类型（GB/T 21010 一级类）</h3>
<table><tr><th>代码</th><th>类型</th><th>发现</th><th>面积（平方米）</th><th>亩</th></tr>
{% for r in stats.by_land_use_class %}<tr><td>{{ r.key or '—' }}</td><td>{{ r.title or '（批而未供等）' }}</td><td class="n">{{ r.findings }}</td>
<td class="n">{{ '%.2f' % r.area_m2 }}</td><td class="n">{{ '%.3f' % r.area_mu }}</td></tr>{% endfor %}
</table>

{% if overview %}<h2>分布图</h2>
<svg viewBox="{{ overview.viewbox }}" style="width: 100%; max-width: 900px; border: 1px solid #ccc" xmlns="http://www.w3.org/2000/svg">
 {% for o in overview.outline %}<path d="{{ o.svg }}" fill="#f4f1ea" stroke="#888" stroke-width="{{ overview.r / 3 }}"><title>{{ o.name }}</title></path>{% endfor %}
 {% for p in overview.points %}<circle cx="{{ p.x }}" cy="{{ -p.y }}" r="{{ overview.r }}" fill="{{ {'critical': '#a00', 'high': '#e60', 'medium': '#d9a400'}.get(p.severity, '#36c') }}" stroke="#fff" stroke-width="{{ overview.r / 4 }}"><title>{{ p.rule }}</title></circle>{% endfor %}
</svg>{% endif %}

<h2>发现清单（{{ findings | length }}）</h2>
{% for f in findings %}<div class="finding">
 {% set t = thumbs.get(f.id) %}{% if t %}<svg viewBox="{{ t.viewbox }}" xmlns="http://www.w3.org/2000/svg">
  {% if t.parcel %}<path d="{{ t.parcel }}" fill="#ddd" stroke="#555" stroke-width="{{ t.stroke }}"/>{% endif %}
  {% if t.evidence %}<path d="{{ t.evidence }}" fill="rgba(200,0,0,.45)" stroke="#c00" stroke-width="{{ t.stroke }}"/>{% endif %}
 </svg>{% endif %}
 <div><b>{{ f.rule }} {{ f.rule_title }}</b> · <span class="sev-{{ f.severity }}">{{ severity_zh[f.severity] }}</span> · {{ status_zh[f.status] }}<br>
  {{ '宗地' if f.parcel_id else '批次' }} <code>{{ f.subject_id }}</code>{% if f.street_name %} · {{ f.street_name }}{% endif %}{% if f.land_use_code %} · 用途 {{ f.land_use_code }}{% endif %}<br>
  {{ f.message }}<br>
  <span class="small">{% for k, v in f.measures.items() %}{{ k }} = {{ v | tojson }}{% if not loop.last %}；{% endif %}{% endfor %}</span></div>
</div>{% endfor %}
{% if resolved %}<h2>已消除（较上次运行）</h2>
<table><tr><th>规则</th><th>对象</th><th>原发现</th></tr>
{% for f in resolved %}<tr><td>{{ f.rule }}</td><td>{{ f.subject_id }}</td><td>{{ f.message }}</td></tr>{% endfor %}</table>{% endif %}
<p class="small">geotwin 土地批后监管 · 依据：{% for r in basis %}{{ r }}{% if not loop.last %}；{% endif %}{% endfor %}</p>
</body></html>
"""


def html_report(conn: psycopg.Connection, run_id: int, *, thumbnails: int = 300) -> str:
    run = runs.get_run(conn, run_id)
    layers = {k: v.get("layer") for k, v in (run["layers"] or {}).items()}
    env = Environment(autoescape=True)
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "sort_keys": False, "default": runs.json_default}
    return env.from_string(TEMPLATE).render(
        run=run, stats=runs.statistics(conn, run_id), findings=runs.findings(conn, run_id),
        resolved=runs.resolved(conn, run_id),
        thumbs=_thumbnails(conn, run_id, layers.get("parcels"), thumbnails),
        overview=_overview(conn, run_id, layers.get("streets")),
        severity_zh=SEVERITY_ZH, status_zh=STATUS_ZH,
        basis=sorted({RULES[r]["basis"].split("；")[0] for r in run["rules"] if r in RULES}))
