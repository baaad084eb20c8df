"""The imagery catalogue: collections (ortho, satellite, DEM …) and their dated items.

An item is one Cloud-Optimized GeoTIFF in the managed folder — or in an S3 bucket (``s3://…``,
read back as a ``spatial_api.objectstore.ObjectPath``) — with its footprint (EPSG:4490),
acquisition datetime, resolution, bands and checksums. ``spatial_api.ingest.imagery`` is the
only writer (through :func:`register_item`); the tile server (``tiling.imagery``) reads items
through :func:`items_covering` and opens nothing but their ``cog_path``.

Public API::

    from spatial_api import store
    store.imagery.create_collection(conn, "ortho", kind="ortho", title_zh="正射影像")
    store.imagery.register_item(conn, item)            # replaces the item of the same datetime
    store.imagery.list_collections(conn); store.imagery.get_collection(conn, "ortho")
    store.imagery.list_items(conn, "ortho"); store.imagery.get_item(conn, "ortho", "E2023")
    store.imagery.items_covering(conn, "ortho", (lon0, lat0, lon1, lat1), at=datetime(...))
    store.imagery.latest_path(conn, "dem")             # Path of the newest DEM (or None)
    store.imagery.register_grid_copies(conn, "ortho", "E2023", {"WebMercatorQuad": GridCopy(...)})
    store.imagery.tile_sources(conn, "ortho", "WebMercatorQuad", bbox, at)  # + each item's copy
    store.imagery.catalogue_state(conn, "ortho")       # (access level, version): tile cache hits

Grid copies (``imagery_item_grids``, migration 0012): per item and served tile grid, a
web-optimised copy of the item's COG (written by the ingest, aligned with the grid's tiles) and the
zoom levels it holds. ``imagery_collections.version`` is bumped by triggers on any change of a
collection, its items or their copies (see :func:`catalogue_state`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from spatial_api.api import time as timepolicy
from spatial_api.objectstore import location
from spatial_api.store.types import StoreError
from spatial_api.config import get_settings

COLLECTION_ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
ITEM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
KINDS = ("ortho", "satellite", "aerial", "dem", "dsm", "other")
ACCESS_LEVELS = ("public", "internal", "restricted")
FORMATS = ("png", "jpg", "webp")
#: Photographic kinds: their tiles default to JPEG (a fraction of a PNG's size and encoding time).
PHOTO_KINDS = ("ortho", "satellite", "aerial")


def default_format_for(kind: str) -> str:
    """The default tile format of a new collection of ``kind``: JPEG for photographs, PNG for
    the rest (DEMs are drawn as hillshades or Terrain-RGB, which need exact or transparent pixels)."""
    return "jpg" if kind in PHOTO_KINDS else "png"


@dataclass
class Collection:
    id: str
    kind: str
    title_zh: str | None = None
    title_en: str | None = None
    description: str | None = None
    access_level: str = "public"
    default_format: str = "png"
    created_at: datetime | None = None
    updated_at: datetime | None = None
    version: int = 0  # bumped on any change of the collection, its items or their grid copies
    # summary over the items (filled by get_collection / list_collections)
    items: int = 0
    bbox: list[float] | None = None  # lon/lat (EPSG:4490) of the union of the footprints
    datetimes: list[datetime] = field(default_factory=list)  # oldest first
    zooms: dict[str, list[int]] = field(default_factory=dict)  # {tms: [min, max]} over the items
    bands: int | None = None
    dtype: str | None = None

    @property
    def title(self) -> str:
        return self.title_zh or self.title_en or self.id


@dataclass
class Item:
    collection: str
    item_id: str
    datetime: datetime
    footprint_wkt: str  # Polygon in EPSG:4490 (lon/lat)
    resolution_m: float
    width: int
    height: int
    bands: int
    dtype: str
    crs: str
    cog_path: Path
    file_size: int
    sha256: str
    author: str
    nodata: float | None = None
    zooms: dict[str, list[int]] = field(default_factory=dict)
    source_path: str | None = None
    source_sha256: str | None = None
    converted: bool = False
    created_at: datetime | None = None
    bbox: list[float] | None = None  # lon/lat of the footprint (read back)

    @classmethod
    def from_row(cls, row: dict) -> "Item":
        values = {k: row[k] for k in cls.__dataclass_fields__ if k in row}
        values["cog_path"] = location(row["cog_path"])
        values["datetime"] = _local(row["datetime"])
        return cls(**values)


@dataclass(frozen=True)
class GridCopy:
    """A web-optimised copy of an item's COG on one tile grid: its tiles and overviews are aligned
    with the grid's tiles at zooms ``minzoom`` … ``maxzoom``."""

    tms: str
    cog_path: Path
    minzoom: int
    maxzoom: int
    file_size: int = 0

    def serves(self, z: int, level: int | None = None) -> bool:
        """Does the copy hold zoom ``z``, read at the resolution of zoom ``level`` (default ``z``;
        a 512-px tile of zoom z has the pixels of zoom z + 1)?"""
        return self.minzoom <= z and (z if level is None else level) <= self.maxzoom


@dataclass(frozen=True)
class TileSource:
    """What a tile of one item is read from: the item's COG and its copy on the tile's grid (if any)."""

    item_id: str
    cog_path: Path
    copy: GridCopy | None = None


def _local(value: datetime) -> datetime:
    """An instant in the district's time zone, so that ``.date()`` is the acquisition date as meant."""
    return timepolicy.local(value, get_settings().timezone)


def check_collection_id(cid: str, param: str = "collection id") -> str:
    if not isinstance(cid, str) or not COLLECTION_ID_RE.match(cid):
        raise StoreError(subject=param, value=cid, message=f"{param} {cid!r}: a collection id is lower-case ASCII letters, digits and '_', "
                          "starting with a letter, at most 48 characters (e.g. ortho, dem, gf2_2024).")
    return cid


def check_item_id(item_id: str, param: str = "item id") -> str:
    if not isinstance(item_id, str) or not ITEM_ID_RE.match(item_id):
        raise StoreError(subject=param, value=item_id, message=f"{param} {item_id!r}: an item id is ASCII letters, digits, '_', '-' and '.', "
                          "starting with a letter or digit, at most 128 characters (e.g. E2023, 2023-11-15).")
    return item_id


_COLLECTION_SQL = """
SELECT c.*, s.items, s.bbox, s.datetimes, s.bands, s.dtype, s.zooms
FROM imagery_collections c
LEFT JOIN LATERAL (
    SELECT count(*) AS items,
           CASE WHEN count(*) > 0 THEN
               ARRAY[ST_XMin(ST_Extent(i.footprint)), ST_YMin(ST_Extent(i.footprint)),
                     ST_XMax(ST_Extent(i.footprint)), ST_YMax(ST_Extent(i.footprint))] END AS bbox,
           coalesce(array_agg(i.datetime ORDER BY i.datetime) FILTER (WHERE i.item_id IS NOT NULL),
                    '{}') AS datetimes,
           max(i.bands) AS bands, max(i.dtype) AS dtype,
           (SELECT jsonb_object_agg(z.key, jsonb_build_array(z.lo, z.hi)) FROM (
                SELECT e.key, min((e.value ->> 0)::int) AS lo, max((e.value ->> 1)::int) AS hi
                FROM imagery_items j, jsonb_each(j.zooms) e WHERE j.collection = c.id GROUP BY e.key) z) AS zooms
    FROM imagery_items i WHERE i.collection = c.id
) s ON true
"""


def _collection(row: dict) -> Collection:
    values = {k: row[k] for k in Collection.__dataclass_fields__ if k in row and row[k] is not None}
    values["bbox"] = [float(v) for v in row["bbox"]] if row.get("bbox") else None
    values["datetimes"] = [_local(d) for d in row.get("datetimes") or []]
    values["zooms"] = row.get("zooms") or {}
    return Collection(**values)


def _access_clause(access: tuple[str, ...] | None) -> tuple[str, list]:
    if access is None:
        return "", []
    return " AND c.access_level = ANY(%s)", [list(access)]


def get_collection(conn: psycopg.Connection, cid: str, *, access: tuple[str, ...] | None = None) -> Collection | None:
    """A collection with its summary, or None. ``access``: only collections of these levels."""
    if not isinstance(cid, str) or not COLLECTION_ID_RE.match(cid):
        return None
    clause, params = _access_clause(access)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(_COLLECTION_SQL + " WHERE c.id = %s" + clause, [cid, *params]).fetchone()
    return _collection(row) if row else None


def collection_entry(conn: psycopg.Connection, cid: str, *, access: tuple[str, ...] | None = None) -> Collection | None:
    """The collection's registry row only (no summary over its items): one prepared primary-key
    lookup, for the tile path."""
    if not isinstance(cid, str) or not COLLECTION_ID_RE.match(cid):
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT id, kind, title_zh, title_en, description, access_level, default_format, version "
                          "FROM imagery_collections WHERE id = %s AND (%s::text[] IS NULL OR access_level = ANY(%s))",
                          (cid, list(access) if access else None, list(access) if access else None),
                          prepare=True).fetchone()
    return Collection(**row) if row else None


def list_collections(conn: psycopg.Connection, *, access: tuple[str, ...] | None = None) -> list[Collection]:
    clause, params = _access_clause(access)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_COLLECTION_SQL + " WHERE true" + clause + " ORDER BY c.id", params).fetchall()
    return [_collection(r) for r in rows]


def create_collection(conn: psycopg.Connection, cid: str, *, kind: str, title_zh: str | None = None,
                      title_en: str | None = None, description: str | None = None,
                      access_level: str = "public", default_format: str | None = None,
                      exist_ok: bool = False) -> Collection:
    """Register a collection. With ``exist_ok``, an existing one of the same kind is returned
    (with any titles / description given here updated); a different kind is an error."""
    check_collection_id(cid)
    if kind not in KINDS:
        raise StoreError.about("kind", kind, f"choose one of {', '.join(KINDS)}")
    if access_level not in ACCESS_LEVELS:
        raise StoreError.about("access level", access_level, f"choose one of {', '.join(ACCESS_LEVELS)}")
    fmt = default_format or default_format_for(kind)
    if fmt not in FORMATS:
        raise StoreError(f"default format {fmt!r}: choose one of {', '.join(FORMATS)}")
    existing = get_collection(conn, cid)
    if existing is not None:
        if not exist_ok:
            raise StoreError(f"imagery collection {cid!r} already exists")
        if existing.kind != kind:
            raise StoreError(subject="kind", value=kind, message=f"kind {kind!r}: collection {cid!r} holds {existing.kind!r} imagery; "
                              f"give kind {existing.kind} or choose another collection")
        changes = {k: v for k, v in (("title_zh", title_zh), ("title_en", title_en),
                                     ("description", description)) if v is not None and getattr(existing, k) != v}
        if changes:
            conn.execute(
                "UPDATE imagery_collections SET title_zh = coalesce(%s, title_zh), "
                "title_en = coalesce(%s, title_en), description = coalesce(%s, description), "
                "updated_at = now() WHERE id = %s",
                (changes.get("title_zh"), changes.get("title_en"), changes.get("description"), cid))
            return get_collection(conn, cid)
        return existing
    conn.execute(
        "INSERT INTO imagery_collections (id, kind, title_zh, title_en, description, access_level, default_format) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (cid, kind, title_zh, title_en, description, access_level, fmt))
    return get_collection(conn, cid)


def lock_collection(conn: psycopg.Connection, cid: str) -> None:
    """Serialise writers of one collection until the caller's transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"geotwin:imagery:{cid}",))


_ITEM_COLUMNS = """
    i.collection, i.item_id, i.datetime, ST_AsText(i.footprint) AS footprint_wkt, i.resolution_m,
    i.width, i.height, i.bands, i.dtype, i.nodata, i.crs, i.zooms, i.cog_path, i.file_size, i.sha256,
    i.source_path, i.source_sha256, i.converted, i.created_at, i.author,
    ARRAY[ST_XMin(i.footprint), ST_YMin(i.footprint), ST_XMax(i.footprint), ST_YMax(i.footprint)] AS bbox
"""


def get_item(conn: psycopg.Connection, cid: str, item_id: str) -> Item | None:
    if not isinstance(item_id, str) or not ITEM_ID_RE.match(item_id) or not COLLECTION_ID_RE.match(cid or ""):
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_ITEM_COLUMNS} FROM imagery_items i WHERE i.collection = %s AND i.item_id = %s",
                          (cid, item_id)).fetchone()
    return Item.from_row(row) if row else None


def item_path(conn: psycopg.Connection, cid: str, item_id: str, *,
              access: tuple[str, ...] | None = None) -> Path | None:
    """The COG of one item of a collection (of the given access levels): one prepared lookup."""
    if not isinstance(item_id, str) or not ITEM_ID_RE.match(item_id) or not COLLECTION_ID_RE.match(cid or ""):
        return None
    row = conn.execute(
        "SELECT i.cog_path FROM imagery_items i JOIN imagery_collections c ON c.id = i.collection "
        "WHERE i.collection = %s AND i.item_id = %s AND (%s::text[] IS NULL OR c.access_level = ANY(%s))",
        (cid, item_id, list(access) if access else None, list(access) if access else None), prepare=True).fetchone()
    return location(row[0]) if row else None


def item_at(conn: psycopg.Connection, cid: str, when: datetime) -> Item | None:
    """The item of ``cid`` acquired exactly at ``when`` (items are unique per datetime)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_ITEM_COLUMNS} FROM imagery_items i WHERE i.collection = %s AND i.datetime = %s",
                          (cid, when)).fetchone()
    return Item.from_row(row) if row else None


def list_items(conn: psycopg.Connection, cid: str, *, at: datetime | None = None) -> list[Item]:
    """The items of a collection, newest first (only those at or before ``at`` if given)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {_ITEM_COLUMNS} FROM imagery_items i WHERE i.collection = %s "
            "AND (%s::timestamptz IS NULL OR i.datetime <= %s) ORDER BY i.datetime DESC",
            (cid, at, at)).fetchall()
    return [Item.from_row(r) for r in rows]


_COVERING_SQL = """
SELECT i.item_id, i.cog_path FROM imagery_items i
WHERE i.collection = %s
  AND i.footprint && ST_MakeEnvelope(%s, %s, %s, %s, 4490)
  AND ST_Intersects(i.footprint, ST_MakeEnvelope(%s, %s, %s, %s, 4490))
  AND (%s::timestamptz IS NULL OR i.datetime <= %s)
ORDER BY i.datetime DESC
"""


def items_covering(conn: psycopg.Connection, cid: str, bbox: tuple[float, float, float, float],
                   at: datetime | None = None) -> list[tuple[str, Path]]:
    """(item_id, cog_path) of the items of ``cid`` whose footprint meets ``bbox`` (lon/lat,
    EPSG:4490) acquired at or before ``at`` (None: any), newest first. Prepared per connection."""
    x0, y0, x1, y1 = (float(v) for v in bbox)
    rows = conn.execute(_COVERING_SQL, (cid, x0, y0, x1, y1, x0, y0, x1, y1, at, at), prepare=True).fetchall()
    return [(r[0], location(r[1])) for r in rows]


_TILE_SOURCES_SQL = """
SELECT c.id, c.kind, c.title_zh, c.title_en, c.description, c.access_level, c.default_format, c.version,
       i.item_id, i.cog_path, g.cog_path, g.minzoom, g.maxzoom
FROM imagery_collections c
LEFT JOIN LATERAL (
    SELECT j.item_id, j.cog_path, j.datetime FROM imagery_items j
    WHERE j.collection = c.id
      AND j.footprint && ST_MakeEnvelope(%s, %s, %s, %s, 4490)
      AND ST_Intersects(j.footprint, ST_MakeEnvelope(%s, %s, %s, %s, 4490))
      AND (%s::timestamptz IS NULL OR j.datetime <= %s)
) i ON true
LEFT JOIN imagery_item_grids g ON g.collection = c.id AND g.item_id = i.item_id AND g.tms = %s
WHERE c.id = %s AND (%s::text[] IS NULL OR c.access_level = ANY(%s))
ORDER BY i.datetime DESC
"""

_ENTRY_KEYS = ("id", "kind", "title_zh", "title_en", "description", "access_level", "default_format", "version")


def _source(row, at: int, tms: str | None) -> TileSource:
    item_id, path, copy_path, lo, hi = row[at:at + 5]
    copy = GridCopy(tms=tms, cog_path=location(copy_path), minzoom=lo, maxzoom=hi) if copy_path else None
    return TileSource(item_id, location(path), copy)


def tile_sources(conn: psycopg.Connection, cid: str, tms: str, bbox: tuple[float, float, float, float],
                 at: datetime | None = None, *, access: tuple[str, ...] | None = None
                 ) -> tuple[Collection | None, list[TileSource]]:
    """:func:`collection_entry` and :func:`items_covering`, with each item's copy on grid ``tms`` (one prepared
    statement, the collection tile path's only query): the collection (with its ``version``) and
    the items covering ``bbox``, newest first; (None, []) when there is no such visible collection."""
    if not isinstance(cid, str) or not COLLECTION_ID_RE.match(cid):
        return None, []
    x0, y0, x1, y1 = (float(v) for v in bbox)
    levels = list(access) if access else None
    rows = conn.execute(_TILE_SOURCES_SQL, (x0, y0, x1, y1, x0, y0, x1, y1, at, at, tms, cid, levels, levels),
                        prepare=True).fetchall()
    if not rows:
        return None, []
    col = Collection(**dict(zip(_ENTRY_KEYS, rows[0][:8])))
    return col, [_source(r, 8, tms) for r in rows if r[8] is not None]


_ITEM_SOURCE_SQL = """
SELECT c.id, c.kind, c.title_zh, c.title_en, c.description, c.access_level, c.default_format, c.version,
       i.item_id, i.cog_path, g.cog_path, g.minzoom, g.maxzoom
FROM imagery_collections c
LEFT JOIN imagery_items i ON i.collection = c.id AND i.item_id = %s
LEFT JOIN imagery_item_grids g ON g.collection = c.id AND g.item_id = i.item_id AND g.tms = %s
WHERE c.id = %s AND (%s::text[] IS NULL OR c.access_level = ANY(%s))
"""


def item_source(conn: psycopg.Connection, cid: str, item_id: str, tms: str | None = None, *,
                access: tuple[str, ...] | None = None) -> tuple[Collection | None, TileSource | None]:
    """The collection (with its ``version``) and one item's COG with its copy on grid ``tms`` (if
    any) in one prepared statement: (None, None) when there is no such visible collection,
    (collection, None) when it has no such item."""
    if not isinstance(cid, str) or not COLLECTION_ID_RE.match(cid):
        return None, None
    if not isinstance(item_id, str) or not ITEM_ID_RE.match(item_id):
        item_id = None  # matches no item; the collection is still looked up (404 names what is missing)
    levels = list(access) if access else None
    row = conn.execute(_ITEM_SOURCE_SQL, (item_id, tms, cid, levels, levels), prepare=True).fetchone()
    if row is None:
        return None, None
    col = Collection(**dict(zip(_ENTRY_KEYS, row[:8])))
    return col, (_source(row, 8, tms) if row[8] is not None else None)


def catalogue_state(conn: psycopg.Connection, cid: str) -> tuple[str, int] | None:
    """(access level, version) of a collection, or None: one prepared primary-key lookup, what a
    tile cache hit checks (a cached tile is served only at the version it was rendered at)."""
    if not isinstance(cid, str) or not COLLECTION_ID_RE.match(cid):
        return None
    row = conn.execute("SELECT access_level, version FROM imagery_collections WHERE id = %s", (cid,),
                       prepare=True).fetchone()
    return (row[0], int(row[1])) if row else None


def grid_copies(conn: psycopg.Connection, cid: str, item_id: str) -> dict[str, GridCopy]:
    """The grid copies of an item, by tile matrix set id."""
    rows = conn.execute("SELECT tms, cog_path, minzoom, maxzoom, file_size FROM imagery_item_grids "
                        "WHERE collection = %s AND item_id = %s ORDER BY tms", (cid, item_id)).fetchall()
    return {r[0]: GridCopy(r[0], location(r[1]), r[2], r[3], r[4]) for r in rows}


def register_grid_copies(conn: psycopg.Connection, cid: str, item_id: str, copies: dict[str, GridCopy]) -> None:
    """Record (or replace) the grid copies of an item registered in the same transaction or before.
    The caller holds the collection's lock and commits."""
    for tms, copy in copies.items():
        conn.execute(
            "INSERT INTO imagery_item_grids (collection, item_id, tms, cog_path, minzoom, maxzoom, file_size) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (collection, item_id, tms) DO UPDATE SET "
            "cog_path = EXCLUDED.cog_path, minzoom = EXCLUDED.minzoom, maxzoom = EXCLUDED.maxzoom, "
            "file_size = EXCLUDED.file_size, created_at = now()",
            (cid, item_id, tms, str(copy.cog_path), int(copy.minzoom), int(copy.maxzoom), int(copy.file_size)))


def grid_path_in_use(conn: psycopg.Connection, path: Path) -> bool:
    """Does any item's grid copy (of any collection) use this file?"""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM imagery_item_grids WHERE cog_path = %s)",
                        (str(path),)).fetchone()[0]


def latest_path(conn: psycopg.Connection, collection: str, at: datetime | None = None) -> Path | None:
    """The COG of the newest item of ``collection`` acquired at or before ``at`` (None: the newest
    of all), or None when there is none (or no such collection)."""
    row = conn.execute(
        "SELECT cog_path FROM imagery_items WHERE collection = %s "
        "AND (%s::timestamptz IS NULL OR datetime <= %s) ORDER BY datetime DESC LIMIT 1",
        (collection, at, at)).fetchone()
    return location(row[0]) if row else None


def register_item(conn: psycopg.Connection, item: Item) -> Item | None:
    """Insert ``item``; the collection's item of the same datetime (if any) is replaced. Returns the
    replaced item (its COG file is the caller's to remove after commit) or None. The caller holds
    the collection's lock (:func:`lock_collection`) and commits."""
    check_collection_id(item.collection)
    check_item_id(item.item_id)
    replaced = item_at(conn, item.collection, item.datetime)
    other = get_item(conn, item.collection, item.item_id)
    if other is not None and (replaced is None or other.item_id != replaced.item_id):
        raise StoreError(
            f"item id {item.item_id!r}: collection {item.collection!r} already has this item, acquired "
            f"{other.datetime.isoformat()}; choose another item id (or give the datetime of that item to replace it)",
            subject="item id", value=item.item_id)
    if replaced is not None:
        conn.execute("DELETE FROM imagery_items WHERE collection = %s AND item_id = %s",
                     (item.collection, replaced.item_id))
    conn.execute(
        """
        INSERT INTO imagery_items (collection, item_id, datetime, footprint, resolution_m, width, height, bands,
                                   dtype, nodata, crs, zooms, cog_path, file_size, sha256, source_path,
                                   source_sha256, converted, author)
        VALUES (%s, %s, %s, ST_GeomFromText(%s, 4490), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        """,
        (item.collection, item.item_id, item.datetime, item.footprint_wkt, item.resolution_m, item.width,
         item.height, item.bands, item.dtype, item.nodata, item.crs, json.dumps(item.zooms), str(item.cog_path),
         item.file_size, item.sha256, item.source_path, item.source_sha256, item.converted, item.author))
    conn.execute("UPDATE imagery_collections SET updated_at = now() WHERE id = %s", (item.collection,))
    return replaced


def path_in_use(conn: psycopg.Connection, path: Path) -> bool:
    """Does any item (of any collection) serve this file?"""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM imagery_items WHERE cog_path = %s)",
                        (str(path),)).fetchone()[0]


__all__ = [
    "ACCESS_LEVELS",
    "COLLECTION_ID_RE",
    "FORMATS",
    "ITEM_ID_RE",
    "KINDS",
    "PHOTO_KINDS",
    "Collection",
    "GridCopy",
    "Item",
    "TileSource",
    "catalogue_state",
    "check_collection_id",
    "check_item_id",
    "collection_entry",
    "create_collection",
    "default_format_for",
    "get_collection",
    "get_item",
    "grid_copies",
    "grid_path_in_use",
    "item_at",
    "item_path",
    "item_source",
    "items_covering",
    "latest_path",
    "list_collections",
    "list_items",
    "lock_collection",
    "path_in_use",
    "register_grid_copies",
    "register_item",
    "tile_sources",
]
