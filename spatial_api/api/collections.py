"""Collection metadata shared by every room that serves layers (features, tiles, WMTS, styles):
which layers a caller sees, their extents (cached per changeset) and their collection document."""

from __future__ import annotations

import re

from psycopg import sql

from spatial_api import security, store
from spatial_api.api.errors import not_found
from spatial_api.api.params import CRS84, CRS_AXES, STORAGE_CRS
from spatial_api.api.responses import GEOJSON, link
from spatial_api.config import Settings


class Collections:
    """Layers visible through the API, with per-changeset cached extents."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._extent_cache: dict[tuple[str, int], dict] = {}

    def visible(self, conn) -> list[dict]:
        caller = security.current()
        return [r for r in store.list_layers(conn) if caller.sees(r["access_level"])]

    def get(self, conn, name: str) -> store.Layer:
        """The layer behind a visible collection (one registry row; no counting)."""
        layer = store.get_layer(conn, name) if store.LAYER_NAME_RE.match(name) else None
        if layer is None or not security.current().sees(layer.access_level):
            # A layer the caller may not see does not exist for them.
            raise not_found(f"collection {name!r} does not exist; see /collections")
        if layer.access_level == "restricted":
            security.note_restricted(f"layer:{name}")
        return layer

    def extent(self, conn, layer: dict) -> dict:
        latest = conn.execute("SELECT coalesce(max(id), 0) FROM changesets WHERE layer = %s",
                              (layer["name"],)).fetchone()[0]
        key = (layer["name"], latest)
        if key not in self._extent_cache:
            part = sql.Identifier(store.partition_name(layer["name"]))
            box, first, last_to, open_ = conn.execute(sql.SQL(
                "SELECT ST_Extent(geom) FILTER (WHERE valid_to IS NULL), min(valid_from), max(valid_to), "
                "bool_or(valid_to IS NULL) FROM {}").format(part)).fetchone()
            bbox = None
            if box:
                nums = [float(v) for v in re.findall(r"-?[\d.]+(?:e-?\d+)?", box)]
                bbox = [nums[0], nums[1], nums[2], nums[3]]
            self._extent_cache[key] = {
                "spatial": {"bbox": [bbox] if bbox else [], "crs": CRS84},
                "temporal": {"interval": [[first.isoformat() if first else None,
                                           None if open_ else (last_to.isoformat() if last_to else None)]],
                             "trs": "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian"},
            }
        return self._extent_cache[key]

    def document(self, conn, layer: dict, base: str) -> dict:
        name = layer["name"]
        url = f"{base}/collections/{name}"
        return {
            "id": name,
            "title": layer["title_zh"] or layer["title_en"] or name,
            "description": " / ".join(t for t in (layer["title_zh"], layer["title_en"]) if t) or name,
            "itemType": "feature",
            "extent": self.extent(conn, layer),
            "crs": list(CRS_AXES),
            "storageCrs": STORAGE_CRS,
            "links": [
                link(url, "self", "application/json", "this collection"),
                link(f"{url}?f=html", "alternate", "text/html", "this collection as HTML"),
                link(f"{url}/items", "items", GEOJSON, "the features"),
                link(f"{url}/items?f=html", "items", "text/html", "the features as HTML"),
                link(f"{url}/queryables", "http://www.opengis.net/def/rel/ogc/1.0/queryables",
                      "application/schema+json", "queryable properties"),
                link(f"{url}/changes", "changes", GEOJSON, "changes between two times (?from=&to=)"),
                link(f"{url}/tiles", "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector", "application/json",
                      "vector tilesets (Mapbox Vector Tiles)"),
            ],
            "geotwin:geometryType": layer["geometry_family"],
            "geotwin:features": layer["current_features"],
        }


__all__ = ["Collections"]
