"""WMTS 1.0.0: GetCapabilities (RESTful ``/wmts/1.0.0/WMTSCapabilities.xml`` and KVP
``/wmts?SERVICE=WMTS&REQUEST=GetCapabilities``) and KVP GetTile, so that desktop GIS (QGIS, ArcGIS,
GDAL) and other platforms can subscribe to geotwin's tiles.

Layers:

- every visible vector layer, format ``application/vnd.mapbox-vector-tile``, its tiles at
  ``/collections/{id}/tiles/{TileMatrixSet}/{TileMatrix}/{TileRow}/{TileCol}``;
- every imagery collection of the catalogue (``tiling.imagery``), in its image formats, with a
  ``Time`` dimension listing the dates imaged (the tile is the mosaic as of that date); a DEM
  collection also as a hillshade layer (``{id}_hillshade``).

Tile matrix sets: WebMercatorQuad (the GoogleMapsCompatible well-known scale set, EPSG:3857) and
CGCS2000Quad (EPSG:4490, latitude first in ``TopLeftCorner`` as the CRS's axis order says), with
per-layer TileMatrixSetLimits from the layer's extent and zoom range. KVP GetTile answers with a
redirect (302) to the RESTful tile URL, so an imagery tile outside the data is what the imagery
routes answer: a transparent PNG / WebP (404 in JPEG), never an empty 204 that QGIS would report as
a flawed image.
"""

from __future__ import annotations

import logging
from xml.etree import ElementTree as ET

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from spatial_api import db
from spatial_api.config import Settings
from spatial_api.api.collections import Collections
from tiling.imagery import collections_for_capabilities
from tiling.vector import GRIDS, TMS, zoom_range

log = logging.getLogger(__name__)

NS = {
    "": "http://www.opengis.net/wmts/1.0",
    "ows": "http://www.opengis.net/ows/1.1",
    "xlink": "http://www.w3.org/1999/xlink",
    "gml": "http://www.opengis.net/gml",
}
for prefix, uri in NS.items():
    ET.register_namespace(prefix, uri)

W, OWS, XLINK = "{%s}" % NS[""], "{%s}" % NS["ows"], "{%s}" % NS["xlink"]
MVT = "application/vnd.mapbox-vector-tile"
#: Zooms advertised per grid (deeper levels exist but no desktop client needs them listed).
MAX_ZOOM = 22
_CRS_URN = {"WebMercatorQuad": "urn:ogc:def:crs:EPSG::3857", "CGCS2000Quad": "urn:ogc:def:crs:EPSG::4490"}
_WKSS = {"WebMercatorQuad": "urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible"}
_IMAGE_MEDIA = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.replace("__", ":"): v for k, v in attrib.items()})
    if text is not None:
        el.text = text
    return el


def _limits(tms_id: str, bbox: list[float] | None, lo: int, hi: int) -> list[tuple[int, int, int, int, int]]:
    """(zoom, min row, max row, min col, max col) of the bbox (lon/lat) for each zoom lo..hi."""
    if not bbox:
        return []
    w, s, e, n = bbox
    tms = TMS.get(tms_id)
    out = []
    for z in range(lo, hi + 1):
        nw, se = tms.tile(w, n, z), tms.tile(e, s, z)
        out.append((z, nw.y, se.y, nw.x, se.x))
    return out


def capabilities(base: str, vector: list[dict], imagery: list[dict]) -> bytes:
    """The GetCapabilities document. ``vector``: {id, title, abstract, bbox, minzoom, maxzoom};
    ``imagery``: what tiling.imagery.collections_for_capabilities gives."""
    root = ET.Element(W + "Capabilities", {"version": "1.0.0"})
    sid = _sub(root, OWS + "ServiceIdentification")
    _sub(sid, OWS + "Title", "geotwin — 龙岗区时空信息平台 tiles")
    _sub(sid, OWS + "ServiceType", "OGC WMTS")
    _sub(sid, OWS + "ServiceTypeVersion", "1.0.0")
    om = _sub(root, OWS + "OperationsMetadata")
    for op in ("GetCapabilities", "GetTile"):
        o = _sub(om, OWS + "Operation", name=op)
        get = _sub(_sub(_sub(o, OWS + "DCP"), OWS + "HTTP"), OWS + "Get", **{XLINK + "href": f"{base}/wmts?"})
        allowed = _sub(_sub(get, OWS + "Constraint", name="GetEncoding"), OWS + "AllowedValues")
        _sub(allowed, OWS + "Value", "KVP")
    contents = _sub(root, W + "Contents")
    used_ids: set[str] = set()

    def layer_el(identifier: str, title: str, abstract: str, bbox, formats: list[str]) -> ET.Element:
        el = _sub(contents, W + "Layer")
        _sub(el, OWS + "Title", title)
        if abstract:
            _sub(el, OWS + "Abstract", abstract)
        if bbox:
            wgs = _sub(el, OWS + "WGS84BoundingBox")
            _sub(wgs, OWS + "LowerCorner", f"{bbox[0]} {bbox[1]}")
            _sub(wgs, OWS + "UpperCorner", f"{bbox[2]} {bbox[3]}")
        _sub(el, OWS + "Identifier", identifier)
        style = _sub(el, W + "Style", isDefault="true")
        _sub(style, OWS + "Identifier", "default")
        for fmt in formats:
            _sub(el, W + "Format", fmt)
        used_ids.add(identifier)
        return el

    def links(el: ET.Element, bbox, lo: int, hi: int) -> None:
        for tms_id in GRIDS:
            link = _sub(el, W + "TileMatrixSetLink")
            _sub(link, W + "TileMatrixSet", tms_id)
            lims = _limits(tms_id, bbox, max(lo, TMS.get(tms_id).minzoom), min(hi, MAX_ZOOM, TMS.get(tms_id).maxzoom))
            if lims:
                tl = _sub(link, W + "TileMatrixSetLimits")
                for z, r0, r1, c0, c1 in lims:
                    m = _sub(tl, W + "TileMatrixLimits")
                    _sub(m, W + "TileMatrix", str(z))
                    _sub(m, W + "MinTileRow", str(r0))
                    _sub(m, W + "MaxTileRow", str(r1))
                    _sub(m, W + "MinTileCol", str(c0))
                    _sub(m, W + "MaxTileCol", str(c1))

    for coll in imagery:
        formats = [f for f in coll.get("formats", ["png"]) if f in _IMAGE_MEDIA]
        default = coll.get("default_format") if coll.get("default_format") in formats else (formats or ["png"])[0]
        variants = [(coll["id"], "", coll.get("title") or coll["id"])]
        if coll.get("kind") == "dem":
            variants = [(coll["id"] + "_hillshade", "algorithm=hillshade", f"{coll.get('title') or coll['id']} (hillshade)")]
            formats, default = ["png"], "png"
        for ident, query, title in variants:
            if ident in used_ids:
                ident = f"imagery_{ident}"
            el = layer_el(ident, title, f"imagery collection {coll['id']} ({coll.get('kind', '')})", coll.get("bbox"),
                          [_IMAGE_MEDIA[f] for f in dict.fromkeys([default, *formats])])
            dates = [str(d)[:10] for d in coll.get("datetimes") or []]
            if dates:
                dim = _sub(el, W + "Dimension")
                _sub(dim, OWS + "Identifier", "Time")
                _sub(dim, OWS + "UOM", "ISO8601")
                _sub(dim, W + "Default", dates[-1])
                _sub(dim, W + "Current", "true")
                for d in dates:
                    _sub(dim, W + "Value", d)
            links(el, coll.get("bbox"), int(coll.get("minzoom", 0)), int(coll.get("maxzoom", MAX_ZOOM)))
            for fmt in dict.fromkeys([default, *formats]):
                params = [p for p in (query, "datetime={Time}" if dates else "") if p]
                url = (f"{base}/imagery/collections/{coll['id']}/tiles/{{TileMatrixSet}}/{{TileMatrix}}/{{TileCol}}/"
                       f"{{TileRow}}.{fmt}" + ("?" + "&".join(params) if params else ""))
                _sub(el, W + "ResourceURL", format=_IMAGE_MEDIA[fmt], resourceType="tile", template=url)

    for v in vector:
        el = layer_el(v["id"], v["title"], v.get("abstract", ""), v.get("bbox"), [MVT])
        links(el, v.get("bbox"), v["minzoom"], v["maxzoom"])
        _sub(el, W + "ResourceURL", format=MVT, resourceType="tile",
             template=f"{base}/collections/{v['id']}/tiles/{{TileMatrixSet}}/{{TileMatrix}}/{{TileRow}}/{{TileCol}}")

    for tms_id in GRIDS:
        tms = TMS.get(tms_id)
        el = _sub(contents, W + "TileMatrixSet")
        _sub(el, OWS + "Identifier", tms_id)
        _sub(el, OWS + "SupportedCRS", _CRS_URN[tms_id])
        if tms_id in _WKSS:
            _sub(el, W + "WellKnownScaleSet", _WKSS[tms_id])
        for z in range(tms.minzoom, min(tms.maxzoom, MAX_ZOOM) + 1):
            m = tms.matrix(z)
            tm = _sub(el, W + "TileMatrix")
            _sub(tm, OWS + "Identifier", str(z))
            _sub(tm, W + "ScaleDenominator", repr(m.scaleDenominator))
            # pointOfOrigin is in the CRS's axis order (lat, lon for EPSG:4490), as WMTS wants.
            _sub(tm, W + "TopLeftCorner", f"{m.pointOfOrigin[0]!r} {m.pointOfOrigin[1]!r}")
            _sub(tm, W + "TileWidth", str(m.tileWidth))
            _sub(tm, W + "TileHeight", str(m.tileHeight))
            _sub(tm, W + "MatrixWidth", str(m.matrixWidth))
            _sub(tm, W + "MatrixHeight", str(m.matrixHeight))
    _sub(root, W + "ServiceMetadataURL", **{XLINK + "href": f"{base}/wmts/1.0.0/WMTSCapabilities.xml"})
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def _ows_exception(status: int, code: str, locator: str, text: str) -> Response:
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<ows:ExceptionReport xmlns:ows="http://www.opengis.net/ows/1.1" version="1.0.0">'
            f'<ows:Exception exceptionCode="{code}" locator="{locator}"><ows:ExceptionText>{_esc(text)}'
            '</ows:ExceptionText></ows:Exception></ows:ExceptionReport>')
    return Response(body, status_code=status, media_type="application/xml")


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def router(settings: Settings) -> APIRouter:
    api = APIRouter(tags=["WMTS"])
    cols = Collections(settings)
    pool = db.pool(settings)

    def document(request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        with pool.connection() as conn:
            vector = []
            for row in cols.visible(conn):
                layer = cols.get(conn, row["name"])
                boxes = cols.extent(conn, row)["spatial"]["bbox"]
                lo, hi = zoom_range(layer)
                vector.append({"id": row["name"], "title": row["title_zh"] or row["title_en"] or row["name"],
                               "abstract": row["title_en"] or "", "bbox": boxes[0] if boxes else None,
                               "minzoom": lo, "maxzoom": hi})
            imagery = collections_for_capabilities(conn)
        return Response(capabilities(base, vector, imagery), media_type="application/xml",
                        headers={"Cache-Control": "no-cache"})

    @api.get("/wmts/1.0.0/WMTSCapabilities.xml", summary="WMTS 1.0.0 capabilities (RESTful)")
    def rest_capabilities(request: Request):
        return document(request)

    @api.get("/wmts", summary="WMTS 1.0.0 KVP: GetCapabilities, GetTile")
    def kvp(request: Request):
        q = {k.upper(): v for k, v in request.query_params.items()}
        if q.get("SERVICE", "WMTS").upper() != "WMTS":
            return _ows_exception(400, "InvalidParameterValue", "SERVICE", "SERVICE must be WMTS")
        req = q.get("REQUEST")
        if not req:
            return _ows_exception(400, "MissingParameterValue", "REQUEST", "give REQUEST=GetCapabilities or GetTile")
        if req.lower() == "getcapabilities":
            return document(request)
        if req.lower() != "gettile":
            return _ows_exception(400, "OperationNotSupported", "REQUEST", f"{req}: use GetCapabilities or GetTile")
        for name in ("LAYER", "TILEMATRIXSET", "TILEMATRIX", "TILEROW", "TILECOL"):
            if not q.get(name):
                return _ows_exception(400, "MissingParameterValue", name, f"GetTile needs {name}")
        tms_id = q["TILEMATRIXSET"]
        if tms_id not in GRIDS:
            return _ows_exception(400, "InvalidParameterValue", "TILEMATRIXSET",
                                  f"{tms_id!r}: use {', '.join(GRIDS)}")
        try:
            z, row, col = int(q["TILEMATRIX"]), int(q["TILEROW"]), int(q["TILECOL"])
        except ValueError:
            return _ows_exception(400, "InvalidParameterValue", "TILEMATRIX",
                                  "TILEMATRIX, TILEROW and TILECOL are whole numbers")
        base = str(request.base_url).rstrip("/")
        layer = q["LAYER"]
        fmt = q.get("FORMAT", "")
        with pool.connection() as conn:
            visible = {r["name"] for r in cols.visible(conn)}
            imagery = {c["id"]: c for c in collections_for_capabilities(conn)}
        if layer in visible and fmt in ("", MVT):
            return RedirectResponse(f"{base}/collections/{layer}/tiles/{tms_id}/{z}/{row}/{col}", status_code=302)
        cid, query = layer, []
        for prefix in ("imagery_",):
            if cid not in imagery and cid.startswith(prefix):
                cid = cid[len(prefix):]
        if cid.endswith("_hillshade") and cid[: -len("_hillshade")] in imagery:
            cid, query = cid[: -len("_hillshade")], ["algorithm=hillshade"]
        if cid in imagery:
            ext = {v: k for k, v in _IMAGE_MEDIA.items() if k != "jpeg"}.get(fmt, imagery[cid].get("default_format", "png"))
            if q.get("TIME"):
                query.append(f"datetime={q['TIME']}")
            url = f"{base}/imagery/collections/{cid}/tiles/{tms_id}/{z}/{col}/{row}.{ext}"
            return RedirectResponse(url + ("?" + "&".join(query) if query else ""), status_code=302)
        return _ows_exception(400, "InvalidParameterValue", "LAYER",
                              f"no layer {layer!r} (in format {fmt or 'any'}); see GetCapabilities")

    return api


__all__ = ["capabilities", "router"]
