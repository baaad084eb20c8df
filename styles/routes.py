"""HTTP routes of the styles: documents, glyphs and sprites.

- ``GET /styles``: the styles this server can draw (ids, titles zh/en, links);
- ``GET /styles/{id}[?datetime=]``: a MapLibre style (``application/json``), URLs absolute on
  this server, ``datetime`` passed into every tile URL;
- ``GET /styles/glyphs/{fontstack}/{start}-{end}.pbf``: SDF glyphs (one font, or a
  comma-separated stack merged per code point);
- ``GET /styles/sprites/{name}[@2x].{json,png}``: the sprite sheet and its index.

Every answer carries ``ETag`` and ``Cache-Control``; ``If-None-Match`` gets 304. Unknown
styles, fonts, ranges and sprites are 404 with the OGC exception JSON; a style whose layer is not
in the store is 404 too (the composite ``district`` leaves such layers out instead).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.routing import Match

from spatial_api import db, settings_store
from spatial_api.config import Settings
from spatial_api.api.collections import Collections
from spatial_api.api.errors import ApiError
from spatial_api.api.params import as_of_param
from spatial_api.api.responses import link
from styles import documents, glyphs, sprites
from styles.assets import assets_dir

STYLE_CACHE = "private, max-age=60"  # a style follows the layers the caller may see
ASSET_CACHE = "public, max-age=86400"  # glyphs and sprites change only with a rebuild of the assets
PBF = "application/x-protobuf"


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _answer(request: Request, body: bytes, media_type: str, cache: str) -> Response:
    tag = _etag(body)
    headers = {"ETag": tag, "Cache-Control": cache}
    inm = request.headers.get("if-none-match")
    if inm and (inm.strip() == "*" or tag in [t.strip().removeprefix("W/") for t in inm.split(",")]):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


@lru_cache(maxsize=4096)
def _read(path: str, mtime_ns: int, size: int) -> bytes:  # keyed on mtime: a rebuild is seen
    return Path(path).read_bytes()


def _file(path: Path) -> bytes | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return _read(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=512)
def _combined(parts: tuple[tuple[str, int, int], ...], name: str, range_text: str) -> bytes:
    return glyphs.combine([_read(*p) for p in parts], name, range_text)


def _routed(app, path: str) -> bool:
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "query_string": b"", "headers": []}
    return any(r.matches(scope)[0] == Match.FULL for r in app.router.routes)


def router(settings: Settings, assets: Path | None = None) -> APIRouter:
    api = APIRouter(tags=["Styles"])
    cols = Collections(settings)
    pool = db.pool(settings)
    root = Path(assets) if assets else assets_dir(settings)

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def has_imagery(request: Request) -> bool:
        """Whether this app routes the imagery tile URLs the styles use (the imagery API is mounted)."""
        app = request.app
        if not hasattr(app.state, "styles_have_imagery"):
            probes = ("/imagery/collections/ortho/tilejson.json",
                      "/imagery/collections/dem/tiles/WebMercatorQuad/0/0/0.png")
            app.state.styles_have_imagery = all(_routed(app, p) for p in probes)
        return app.state.styles_have_imagery

    def context(request: Request, datetime_: str | None, style: documents.StyleDef | None = None
                ) -> documents.Context:
        if datetime_:
            instant = as_of_param(datetime_)  # 400 naming the parameter when it is not a date
            datetime_ = documents.datetime_param(datetime_, instant) if instant else None
        with pool.connection() as conn:
            rows = {r["name"]: r for r in cols.visible(conn)}
            ctx = documents.Context(base(request), datetime_ or None, rows, has_imagery(request))
            if style is not None:  # the first view: `geotwin config set home`, else the buildings' extent
                ctx.home = settings_store.home_view(conn)
        return ctx

    def need_assets(part: str) -> Path:
        folder = root / part
        if not folder.is_dir():
            raise ApiError(503, "ServiceUnavailable",
                           f"the style assets ({part}) are not built in {root}: run `make assets` "
                           "(or `python -m styles.assets build`)")
        return folder

    @api.get("/styles", summary="Map styles (MapLibre) this server can draw")
    def list_styles(request: Request):
        ctx = context(request, None)
        b = base(request)
        out = []
        for s in documents.STYLES.values():
            groups = documents.available(s, ctx)
            if not groups:
                continue
            out.append({"id": s.id, "title": s.title_zh, "title_zh": s.title_zh, "title_en": s.title_en,
                        "groups": groups,
                        "links": [link(f"{b}/styles/{s.id}", "stylesheet", "application/json",
                                        f"{s.title_zh} (MapLibre style)")]})
        body = json.dumps({
            "styles": out,
            "localIdeographFontFamily": documents.LOCAL_IDEOGRAPH_FONT_FAMILY,
            "links": [link(f"{b}/styles", "self", "application/json", "this list"),
                      {**link(f"{b}/styles/glyphs/{{fontstack}}/{{range}}.pbf", "glyphs", PBF), "templated": True},
                      link(f"{b}/styles/sprites/{sprites.SPRITE_NAME}.json", "sprite", "application/json")],
        }, ensure_ascii=False).encode()
        return _answer(request, body, "application/json", STYLE_CACHE)

    @api.get("/styles/glyphs/{fontstack}/{range_text}.pbf", summary="SDF glyphs of a font stack (MapLibre glyphs PBF)")
    def glyph_range(request: Request, fontstack: str, range_text: str):
        try:
            glyphs.parse_range(range_text)
        except glyphs.RangeError as exc:
            raise ApiError(404, "NotFound", str(exc)) from None
        folder = need_assets("glyphs")
        fonts = [f.strip() for f in fontstack.split(",") if f.strip()]
        known = sorted(p.name for p in folder.iterdir() if p.is_dir())
        unknown = [f for f in fonts if f not in known]
        if not fonts or unknown:
            raise ApiError(404, "NotFound", f"font {', '.join(unknown) or fontstack!r} is not served here; "
                                            f"fonts: {', '.join(known)}")
        parts = []
        for f in fonts:
            path = folder / f / f"{range_text}.pbf"
            if _file(path) is None:
                raise ApiError(404, "NotFound", f"glyph range {range_text} of {f!r} is missing in {folder}: "
                                                "rebuild the assets (make assets)")
            st = path.stat()
            parts.append((str(path), st.st_mtime_ns, st.st_size))
        body = _read(*parts[0]) if len(parts) == 1 else _combined(tuple(parts), ",".join(fonts), range_text)
        return _answer(request, body, PBF, ASSET_CACHE)

    @api.get("/styles/sprites/{file_name}", summary="Sprite sheet (name.png, name@2x.png) and index (.json)")
    def sprite(request: Request, file_name: str):
        stem, dot, ext = file_name.rpartition(".")
        name = stem.removesuffix("@2x")
        if ext not in ("json", "png") or name != sprites.SPRITE_NAME:
            raise ApiError(404, "NotFound", f"sprite file {file_name!r} does not exist; use "
                                            f"{sprites.SPRITE_NAME}[@2x].json or {sprites.SPRITE_NAME}[@2x].png")
        body = _file(need_assets("sprites") / file_name)
        if body is None:
            raise ApiError(503, "ServiceUnavailable", f"{file_name} is not built in {root}: run `make assets`")
        return _answer(request, body, "application/json" if ext == "json" else "image/png", ASSET_CACHE)

    @api.get("/styles/{style_id}", summary="A MapLibre style document")
    def style(request: Request, style_id: str, datetime_: str | None = Query(
            None, alias="datetime", description="draw the district as of this date (RFC 3339 date or date-time)")):
        s = documents.STYLES.get(style_id)
        if s is None:
            raise ApiError(404, "NotFound", f"style {style_id!r} does not exist; see /styles")
        ctx = context(request, datetime_, s)
        try:
            doc = documents.build(s, ctx)
        except LookupError as exc:
            raise ApiError(404, "NotFound", f"{exc}; see /styles") from None
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        return _answer(request, body, "application/json", STYLE_CACHE)

    return api


__all__ = ["router"]
