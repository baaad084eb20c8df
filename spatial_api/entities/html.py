"""The entity page (``/entities/{code}?f=html``) and the listing page: self-contained HTML in
Chinese (no external assets), the page /map and /twin open when a building is clicked."""

from __future__ import annotations

import html
import json
from datetime import datetime

e = html.escape

_STYLE = ("body{font-family:'Noto Sans CJK SC','Microsoft YaHei',sans-serif;margin:1.5em;max-width:72em;color:#222}"
          "h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.4em;border-bottom:1px solid #ddd}"
          "table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;"
          "vertical-align:top;font-size:.92em}th{background:#f4f4f4}.dead{color:#a33}.ok{color:#286}"
          "code{background:#f6f6f6;padding:0 .2em}details{margin:.2em 0}form{margin:.6em 0}")

_KIND = {"feature": "要素", "bim_model": "BIM 模型", "bim_element": "BIM 构件", "sta_thing": "感知设备 (Thing)",
         "lod1_prism": "LOD1 白模", "sensor": "感知设备"}
_RELATION = {"split": "拆分", "merge": "合并"}


def _date(v) -> str:
    return "—" if not v else str(v)[:10]


def _head(title: str) -> str:
    return (f"<!doctype html><html lang='zh'><head><meta charset='utf-8'><title>{e(title)}</title>"
            f"<style>{_STYLE}</style></head><body>")


def _props(props: dict | None) -> str:
    if not props:
        return ""
    return "<table>" + "".join(f"<tr><th>{e(str(k))}</th><td>{e('' if v is None else str(v))}</td></tr>"
                               for k, v in props.items()) + "</table>"


def _rep_row(rep: dict) -> str:
    kind = _KIND.get(rep.get("kind"), rep.get("kind") or "")
    if rep.get("kind") == "feature":
        where = f"<a href='{e(rep['href'])}?f=html'>{e(rep['layer'])} / {e(rep['fid'])}</a>"
        v = rep.get("version")
        detail = (f"版本 {v['vid']}（{_date(v['validFrom'])} 起）" + _props(v.get("properties"))) if v else "该时点无有效版本"
        versions = "".join(f"<li>版本 {x['vid']}：{_date(x['validFrom'])} – {_date(x['validTo'])}，变更集 {x['changeset']}"
                           + (f"（{_date(x['supersededAt'])} 被更正）" if x.get("supersededAt") else "") + "</li>"
                           for x in rep.get("versions", []))
        detail += f"<details><summary>全部 {len(rep.get('versions', []))} 个版本</summary><ul>{versions}</ul></details>"
    else:
        shown = {k: v for k, v in rep.items() if k not in ("kind", "room", "validFrom", "validTo", "changeset",
                                                           "closedBy", "primary", "source", "key")}
        where = e(str(rep.get("title") or rep.get("model") or rep.get("tileset") or rep.get("thing") or rep.get("key") or ""))
        href = rep.get("href") or rep.get("content")
        if href:
            where = f"<a href='{e(str(href))}'>{where or e(str(href))}</a>"
        detail = "<code>" + e(json.dumps(shown, ensure_ascii=False, default=str)[:600]) + "</code>"
    primary = "（主表达）" if rep.get("primary") else ""
    return f"<tr><td>{e(kind)}{primary}</td><td>{where}</td><td>{detail}</td></tr>"


def entity_page(doc: dict) -> str:
    code = doc["code"]
    title = f"地理实体 {code}"
    life = doc["life"]
    state = ("<span class='ok'>存续</span>" if doc["alive"] else "<span class='dead'>该时点不存在</span>")
    parts = [_head(title), f"<h1>{e(title)}</h1>",
             f"<p>类型：{e(doc['typeTitle']['zh'])}（{e(doc['type'])}）" + (f"　名称：{e(doc['name'])}" if doc.get("name") else "")
             + f"　{state}</p>",
             f"<p>生命周期：{_date(life['validFrom'])} 起" + (f"，{_date(life['validTo'])} 注销" if life.get("validTo") else "，至今")
             + "</p>",
             "<form method='get'><input type='hidden' name='f' value='html'>查看时点："
             f"<input type='date' name='datetime' value='{e(_date(doc.get('datetime')) if doc.get('datetime') else '')}'>"
             "<button>查看</button></form>"]
    for side, label in (("parents", "来源实体（由其拆分 / 合并而来）"), ("children", "后继实体（拆分 / 合并为）")):
        rows = doc["lineage"][side]
        if rows:
            parts.append(f"<h2>{label}</h2><ul>" + "".join(
                f"<li><a href='{e(r['href'])}?f=html'>{e(r['code'])}</a>：{_RELATION.get(r['relation'], r['relation'])}，"
                f"{_date(r['validFrom'])}</li>" for r in rows) + "</ul>")
    reps = doc["representations"]
    parts.append(f"<h2>表达（{len(reps)}）" + (f"，时点 {_date(doc['datetime'])}" if doc.get("datetime") else "") + "</h2>")
    if reps:
        parts.append("<table><tr><th>类别</th><th>来源</th><th>内容</th></tr>" + "".join(_rep_row(r) for r in reps) + "</table>")
    else:
        parts.append("<p>该时点没有可见的表达。</p>")
    hist = doc.get("history", [])
    parts.append("<h2>表达变更记录</h2><table><tr><th>类别</th><th>来源</th><th>标识</th><th>有效期</th><th>变更集</th></tr>"
                 + "".join(f"<tr><td>{e(_KIND.get(h['kind'], h['kind']))}</td><td>{e(h['source'])}</td><td>{e(h['key'])}</td>"
                           f"<td>{_date(h['validFrom'])} – {_date(h['validTo'])}</td><td>{h['changeset']}</td></tr>" for h in hist)
                 + "</table>")
    parts.append("<p>" + " · ".join(f"<a href='{e(ln['href'])}'>{e(ln.get('title') or ln['rel'])}</a>"
                                    for ln in doc.get("links", []) if ln["type"] != "text/html") + "</p></body></html>")
    return "".join(parts)


def listing_page(doc: dict, at: datetime | None) -> str:
    title = "地理实体" + (f"（{_date(at.isoformat())}）" if at else "")
    rows = "".join(
        f"<tr><td><a href='{e(f['properties']['href'])}?f=html'>{e(f['id'])}</a></td><td>{e(f['properties']['type'])}</td>"
        f"<td>{e(f['properties']['name'] or '')}</td><td>{e(f['properties']['layer'] or '')} / {e(f['properties']['fid'] or '')}</td>"
        f"<td>{_date(f['properties']['validFrom'])}</td></tr>" for f in doc["features"])
    nav = " · ".join(f"<a href='{e(ln['href'])}&f=html'>{'下一页' if ln['rel'] == 'next' else '上一页'}</a>"
                     for ln in doc["links"] if ln["rel"] in ("next", "prev"))
    return (_head(title) + f"<h1>{e(title)}</h1><table><tr><th>编码</th><th>类型</th><th>名称</th><th>主表达</th>"
            f"<th>起始</th></tr>{rows}</table><p>{nav}</p></body></html>")


__all__ = ["entity_page", "listing_page"]
