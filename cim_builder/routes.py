"""Serving the twin: ``/twin/tilesets`` (the registry), ``/twin/tilesets/{id}/tileset.json`` and
its content (glb ``model/gltf-binary``, ``.subtree``, json), with CORS (CesiumJS on another
origin), ETag / If-None-Match, and gzip where it pays (tileset.json always shrinks a lot; a glb
is sent compressed only when gzip saves at least 10%). Content file names carry their content
hash, so they are served as immutable; tileset.json must be revalidated.

A tileset built to object storage (``geotwin cim build --store s3``: its ``out_dir`` is an
``s3://`` prefix) is served from the bucket (:func:`_object_content`): the object's bytes streamed
through with the object's ETag (an MD5 of the content), the same CORS, media types, caching and gzip;
with GEOTWIN_TILESET_REDIRECT=presigned, content (not tileset.json) answers 307 to a presigned
URL of the object instead (the client fetches it from the store; the store's CORS applies).
"""

from __future__ import annotations

import gzip
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from spatial_api import db, objectstore, security

MEDIA_TYPES = {".glb": "model/gltf-binary", ".json": "application/json", ".subtree": "application/octet-stream",
               ".b3dm": "application/octet-stream", ".gltf": "model/gltf+json"}
CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "ETag, Content-Encoding, Content-Length",
        "Access-Control-Allow-Headers": "*", "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS"}
_GZIP_MIN = 1024
_CACHE_BYTES = 64 * 1024 * 1024
#: How long a presigned content URL stays valid (GEOTWIN_TILESET_REDIRECT=presigned).
_PRESIGN_SECONDS = 900


class _GzipCache:
    """Compressed bodies by (path, size, mtime); bounded by total bytes (LRU)."""

    def __init__(self, limit: int = _CACHE_BYTES) -> None:
        self.limit, self.size = limit, 0
        self.items: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        return None

    def put(self, key, value: bytes | None) -> None:
        n = len(value) if value else 16
        with self.lock:
            self.items[key] = value
            self.size += n
            while self.size > self.limit and self.items:
                _, old = self.items.popitem(last=False)
                self.size -= len(old) if old else 16


def _problem(status: int, description: str) -> JSONResponse:
    return JSONResponse({"code": {404: "NotFound", 400: "InvalidParameterValue"}.get(status, "Error"),
                         "description": description}, status_code=status, headers=CORS)


def _object_content(gz: _GzipCache, base, tileset_id: str, path: str, suffix: str, request: Request) -> Response:
    """tileset.json or content of a tileset in a bucket: as from a folder (CORS, media type,
    caching, ETag / 304, gzip), the ETag being the object's; or a 307 to a presigned URL."""
    try:
        target = base / path
    except objectstore.ObjectStoreError:
        return _problem(404, f"{path}: not in the tileset")
    immutable = path != "tileset.json"
    headers = {**CORS, "Vary": "Accept-Encoding",
               "Cache-Control": "public, max-age=31536000, immutable" if immutable else "public, no-cache"}
    try:
        if immutable and os.environ.get("GEOTWIN_TILESET_REDIRECT", "").lower() == "presigned":
            return Response(status_code=307, headers={**CORS, "Location": objectstore.presign(target, _PRESIGN_SECONDS),
                                                      "Cache-Control": "private, max-age=60"})
        wanted = [t.strip() for t in request.headers.get("if-none-match", "").split(",") if t.strip()]
        if wanted:
            meta = objectstore.head(target)
            if meta is None:
                return _problem(404, f"{path}: no such content in tileset {tileset_id!r}")
            if meta.get("e_tag") in wanted:
                return Response(status_code=304, headers={**headers, "ETag": meta["e_tag"]})
        raw, meta = objectstore.get_with_meta(target)
    except FileNotFoundError:
        return _problem(404, f"{path}: no such content in tileset {tileset_id!r}")
    except objectstore.ObjectStoreError as exc:
        return JSONResponse({"code": "BadGateway", "description": f"tileset {tileset_id!r}: {exc}"},
                            status_code=502, headers=CORS)
    etag = meta.get("e_tag") or f'"{len(raw):x}"'
    headers["ETag"] = etag
    media = MEDIA_TYPES[suffix]
    accepts_gzip = "gzip" in request.headers.get("accept-encoding", "").lower()
    if accepts_gzip and len(raw) >= _GZIP_MIN and suffix in (".json", ".glb", ".subtree", ".gltf"):
        key = (str(target), len(raw), etag)
        packed = gz.get(key)
        if packed is None and key not in gz.items:
            c = gzip.compress(raw, compresslevel=6)
            packed = c if len(c) <= 0.9 * len(raw) else None
            gz.put(key, packed)
        if packed is not None:
            return Response(packed, media_type=media, headers={**headers, "Content-Encoding": "gzip"})
    return Response(raw, media_type=media, headers=headers)


def router(settings) -> APIRouter:
    api = APIRouter(tags=["twin"])
    gz = _GzipCache()
    folders: dict[str, tuple[float, Path | None]] = {}

    # A tileset is as visible as the layer it was built from (its building metadata is that
    # layer's): for a caller who may not see the layer, the tileset does not exist.
    CHANGED_SINCE = ("(SELECT array_agg(c.id ORDER BY c.id) FROM changesets c WHERE c.layer = t.params->>'layer' "
                     "AND c.recorded_at > t.built_at AND (t.as_of IS NULL OR c.valid_from <= t.as_of))")
    LEVEL = "coalesce((SELECT l.access_level FROM layers l WHERE l.name = t.params->>'layer'), 'restricted')"

    def folder(tileset_id: str) -> Path | None:
        now = time.monotonic()
        hit = folders.get(tileset_id)
        if not (hit and now - hit[0] < 5.0):
            with db.pool(settings).connection() as conn:
                row = conn.execute(f"SELECT t.out_dir, {LEVEL} FROM cim_tilesets t WHERE t.id = %s",
                                   (tileset_id,)).fetchone()
            hit = (now, (objectstore.location(row[0]), row[1]) if row else None)
            folders[tileset_id] = hit
        if hit[1] is None or not security.current().sees(hit[1][1]):
            return None
        if hit[1][1] == "restricted":
            security.note_restricted(f"twin:{tileset_id}")
        return hit[1][0]

    @api.get("/twin/tilesets", summary="The twin's 3D Tiles tilesets")
    def list_tilesets(request: Request) -> JSONResponse:
        with db.pool(settings).connection() as conn:
            rows = [r[:7] for r in conn.execute(
                f"SELECT t.id, t.title, t.built_at, t.as_of, t.stats, {CHANGED_SINCE}, t.params->>'kind', {LEVEL} "
                "FROM cim_tilesets t ORDER BY t.id").fetchall() if security.current().sees(r[7])]
        base = str(request.base_url).rstrip("/")
        out = []
        for tid, title, built_at, as_of, stats, changed, kind in rows:
            out.append({
                "id": tid, "title": title or tid, "kind": kind or "buildings", "built_at": built_at.isoformat(),
                "as_of": as_of.isoformat() if as_of else None,
                # changesets of its buildings recorded since the build that change its date (a later
                # edit, a late record, a correction in the past): `geotwin cim build` rebuilds the
                # tiles they touch, and only those
                "inputs_changed_since": changed or [],
                "buildings": stats.get("buildings"), "bim_models": stats.get("models"), "tiles": stats.get("tiles"),
                "bytes": stats.get("bytes_total"), "geoid_separation_m": stats.get("geoid_separation"),
                "links": [{"rel": "tileset", "type": "application/json", "title": "3D Tiles 1.1 tileset",
                           "href": f"{base}/twin/tilesets/{tid}/tileset.json"}],
            })
        return JSONResponse({"tilesets": out, "links": [
            {"rel": "self", "type": "application/json", "href": f"{base}/twin/tilesets"}]}, headers=CORS)

    @api.options("/twin/tilesets/{tileset_id}/{path:path}", include_in_schema=False)
    def preflight(tileset_id: str, path: str) -> Response:
        return Response(status_code=204, headers={**CORS, "Access-Control-Max-Age": "86400"})

    @api.get("/twin/tilesets/{tileset_id}/{path:path}", summary="tileset.json and its content")
    def content(tileset_id: str, path: str, request: Request) -> Response:
        base = folder(tileset_id)
        if base is None:
            return _problem(404, f"no tileset {tileset_id!r} (see /twin/tilesets)")
        suffix = Path(path).suffix.lower()
        if suffix not in MEDIA_TYPES:
            return _problem(404, f"{path}: not tileset content")
        if objectstore.is_remote(base):
            return _object_content(gz, base, tileset_id, path, suffix, request)
        target = (base / path).resolve()
        try:
            target.relative_to(base.resolve())
        except ValueError:
            return _problem(404, f"{path}: not in the tileset")
        try:
            st = target.stat()
        except OSError:
            return _problem(404, f"{path}: no such content in tileset {tileset_id!r}")
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        immutable = path != "tileset.json"
        headers = {**CORS, "ETag": etag, "Vary": "Accept-Encoding",
                   # the security middleware makes these private when the tileset's layer is not public
                   "Cache-Control": "public, max-age=31536000, immutable" if immutable else "public, no-cache"}
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        media = MEDIA_TYPES[suffix]
        accepts_gzip = "gzip" in request.headers.get("accept-encoding", "").lower()
        if accepts_gzip and st.st_size >= _GZIP_MIN and suffix in (".json", ".glb", ".subtree", ".gltf"):
            key = (str(target), st.st_size, st.st_mtime_ns)
            packed = gz.get(key)
            if packed is None and key not in gz.items:
                raw = target.read_bytes()
                c = gzip.compress(raw, compresslevel=6)
                packed = c if len(c) <= 0.9 * len(raw) else None
                gz.put(key, packed)
            if packed is not None:
                return Response(packed, media_type=media, headers={**headers, "Content-Encoding": "gzip"})
        return Response(target.read_bytes(), media_type=media, headers=headers)

    return api
