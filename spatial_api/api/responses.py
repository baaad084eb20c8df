"""Links, the base URL, JSON-or-HTML content negotiation (``f``), the HTML rendering of any
document: what every room's routes answer with."""

from __future__ import annotations

import html
import json

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from spatial_api import security
from spatial_api.api.errors import invalid_parameter

GEOJSON = "application/geo+json"

#: A page /map or /twin opens in a new tab (an entity page, what is under a parcel, a storey's
#: rooms) is requested without the caller's API key: a link cannot carry a header. The clients keep
#: the key in localStorage (same origin), so a page served to an anonymous caller asks once more with
#: it and shows that answer — the key never goes into a URL. A page served to a caller with a key has
#: no script; a refused key leaves the anonymous page as it is.
_ASK_WITH_KEY = ("<script>(function(){var k=null;try{k=localStorage.getItem('geotwin.apiKey')}catch(e){}"
                 "if(!k)return;fetch(location.href,{headers:{Authorization:'Bearer '+k,Accept:'text/html'}})"
                 ".then(function(r){return r.ok?r.text():null}).then(function(t){if(t){document.open();"
                 "document.write(t);document.close();}}).catch(function(){});})();</script>")


def keyed_html(page: str, status_code: int = 200, headers: dict | None = None) -> HTMLResponse:
    """An HTML page that a browser holding an API key shows as that key's caller (see _ASK_WITH_KEY)."""
    if not security.current().authenticated:
        at = page.rfind("</body>")
        page = page[:at] + _ASK_WITH_KEY + page[at:] if at >= 0 else page + _ASK_WITH_KEY
    return HTMLResponse(page, status_code=status_code, headers=headers)


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def wants_html(request: Request, f: str | None) -> bool:
    if f:
        if f not in ("json", "geojson", "html"):
            raise invalid_parameter("f", f"unknown format {f!r}; use json or html")
        return f == "html"
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "json" not in accept.split(",")[0]


def link(href: str, rel: str, type_: str, title: str | None = None) -> dict:
    """An OGC API link object."""
    out = {"href": href, "rel": rel, "type": type_}
    if title:
        out["title"] = title
    return out


def html_page(title: str, doc: dict) -> HTMLResponse:
    e = html.escape
    parts = [f"<!doctype html><html lang='zh'><head><meta charset='utf-8'><title>{e(title)}</title>"
             "<style>body{font-family:sans-serif;margin:1.5em;max-width:80em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}</style></head><body>",
             f"<h1>{e(title)}</h1>"]
    if doc.get("description"):
        parts.append(f"<p>{e(str(doc['description']))}</p>")
    links = [ln for ln in doc.get("links", []) if ln.get("type") != "text/html" or ln.get("rel") != "self"]
    if links:
        parts.append("<ul>" + "".join(
            f"<li><a href='{e(ln['href'])}'>{e(ln.get('title') or ln['rel'])}</a> ({e(ln['type'])})</li>"
            for ln in links) + "</ul>")
    if "collections" in doc:
        parts.append("<table><tr><th>id</th><th>title</th><th>features</th></tr>" + "".join(
            f"<tr><td><a href='{e(c['id'])}?f=html'>{e(c['id'])}</a></td><td>{e(c['title'])}</td>"
            f"<td>{c.get('geotwin:features', '')}</td></tr>" for c in doc["collections"]) + "</table>")
    if "conformsTo" in doc:
        parts.append("<ul>" + "".join(f"<li>{e(c)}</li>" for c in doc["conformsTo"]) + "</ul>")
    features = doc.get("features") or ([doc] if doc.get("type") == "Feature" else [])
    if features:
        keys: list[str] = []
        for feat in features:
            keys += [k for k in (feat.get("properties") or {}) if k not in keys]
        parts.append("<table><tr><th>id</th>" + "".join(f"<th>{e(k)}</th>" for k in keys) + "</tr>")
        for feat in features:
            props = feat.get("properties") or {}
            parts.append(f"<tr><td>{e(str(feat.get('id')))}</td>" + "".join(
                f"<td>{e('' if props.get(k) is None else str(props.get(k)))}</td>" for k in keys) + "</tr>")
        parts.append("</table>")
    if "extent" in doc:
        parts.append(f"<pre>{e(json.dumps(doc['extent'], ensure_ascii=False, indent=1))}</pre>")
    parts.append("</body></html>")
    return HTMLResponse("".join(parts))


def respond(request: Request, f: str | None, doc: dict, title: str, media: str = "application/json",
             headers: dict | None = None) -> Response:
    if wants_html(request, f):
        return html_page(title, doc)
    return Response(json.dumps(doc, ensure_ascii=False, default=str), media_type=media, headers=headers)


__all__ = ["GEOJSON", "base_url", "html_page", "link", "respond", "wants_html"]
