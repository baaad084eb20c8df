"""The layer registry: what a layer is (names, titles, geometry family, property schema, key,
access level). Each layer's feature versions live in their own partition of ``features``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from spatial_api.events import CHANNEL
from spatial_api.store.types import ACCESS_LEVELS, GEOMETRY_FAMILIES, PROPERTY_TYPES, StoreError

LAYER_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


@dataclass
class Layer:
    name: str
    geometry_family: str
    properties: list[dict] = field(default_factory=list)  # [{"name":..., "type":...}] in order
    key_field: str | None = None
    title_zh: str | None = None
    title_en: str | None = None
    access_level: str = "public"
    description: str | None = None
    editable: bool = False  # may be edited through the API (create / replace / update / delete)
    #: vector tiles: {"minzoom": int, "maxzoom": int, "max_features": {"<zoom>": n}, "priority": prop}
    tile_options: dict = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def schema(self) -> dict[str, str]:
        return {p["name"]: p["type"] for p in self.properties}

    @classmethod
    def from_row(cls, row: dict) -> "Layer":
        return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})


def check_layer_name(name: str) -> str:
    if not LAYER_NAME_RE.match(name or ""):
        raise StoreError.about("layer name", name, "a layer name is lower-case ASCII letters, digits and '_', "
                               "starting with a letter, at most 48 characters (e.g. land_use, basic_farmland).")
    return name


def partition_name(layer: str) -> str:
    return f"features_{check_layer_name(layer)}"


def get_layer(conn: psycopg.Connection, name: str) -> Layer | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM layers WHERE name = %s", (name,)).fetchone()
    return Layer.from_row(row) if row else None


def list_layers(conn: psycopg.Connection) -> list[dict]:
    """Every layer with its current feature count and latest changeset."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """
            SELECT l.*,
                   coalesce((SELECT (c.counts ->> 'current')::bigint FROM changesets c
                             WHERE c.layer = l.name ORDER BY c.id DESC LIMIT 1), 0) AS current_features,
                   (SELECT count(*) FROM changesets c WHERE c.layer = l.name) AS changesets,
                   (SELECT max(c.valid_from) FROM changesets c WHERE c.layer = l.name) AS latest_valid_from,
                   (SELECT max(c.recorded_at) FROM changesets c WHERE c.layer = l.name) AS latest_recorded_at
            FROM layers l ORDER BY l.name
            """
        ).fetchall()


def create_layer(conn: psycopg.Connection, layer: Layer, *, with_partition: bool = True) -> Layer:
    """Register a layer (and, unless its first load creates it, its partition).

    Runs in the caller's transaction: a failed first load leaves no trace of the layer."""
    check_layer_name(layer.name)
    if layer.geometry_family not in GEOMETRY_FAMILIES:
        raise StoreError(f"geometry family {layer.geometry_family!r} is not one of {GEOMETRY_FAMILIES}")
    if layer.access_level not in ACCESS_LEVELS:
        raise StoreError.about("access level", layer.access_level, f"choose one of {', '.join(ACCESS_LEVELS)}")
    for prop in layer.properties:
        if prop["type"] not in PROPERTY_TYPES:
            raise StoreError(f"property {prop['name']!r}: unknown type {prop['type']!r}")
    conn.execute(
        """
        INSERT INTO layers (name, title_zh, title_en, geometry_family, properties, key_field,
                            access_level, description)
        VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s)
        """,
        (layer.name, layer.title_zh, layer.title_en, layer.geometry_family,
         json.dumps(layer.properties, ensure_ascii=False), layer.key_field, layer.access_level,
         layer.description),
    )
    if with_partition:
        conn.execute(
            sql.SQL("CREATE TABLE {} PARTITION OF features FOR VALUES IN ({})").format(
                sql.Identifier(partition_name(layer.name)), sql.Literal(layer.name)
            )
        )
    return get_layer(conn, layer.name)  # type: ignore[return-value]


def update_layer(conn: psycopg.Connection, name: str, **changes) -> None:
    """Change registry metadata (titles, access level, added properties). Never touches features."""
    allowed = {"title_zh", "title_en", "access_level", "description", "properties", "key_field", "editable",
               "tile_options"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"cannot change {unknown}")
    if not changes:
        return
    if "access_level" in changes and changes["access_level"] not in ACCESS_LEVELS:
        raise StoreError.about("access level", changes["access_level"], f"choose one of {', '.join(ACCESS_LEVELS)}")
    if "properties" in changes:
        changes["properties"] = json.dumps(changes["properties"], ensure_ascii=False)
    if "tile_options" in changes:
        changes["tile_options"] = json.dumps(check_tile_options(changes["tile_options"]))
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = %s").format(sql.Identifier(k)) for k in changes
    )
    conn.execute(
        sql.SQL("UPDATE layers SET {}, updated_at = now() WHERE name = %s").format(assignments),
        [*changes.values(), name],
    )
    # Caches in every process drop what they hold of this layer (delivered on commit).
    notify(conn, name, None)


def notify(conn: psycopg.Connection, layer: str, changeset_id: int | None) -> None:
    """NOTIFY the other processes (see spatial_api.events) — delivered when the transaction commits."""
    schema = conn.execute("SELECT current_schema()").fetchone()[0]
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps(
        {"schema": schema, "layer": layer, "changeset": changeset_id})))


def check_tile_options(opts: dict) -> dict:
    """Validate vector-tile options: ``minzoom`` / ``maxzoom`` (0–24), ``max_features`` per zoom
    (``{"10": 500}``: at zoom 10 and below until the next entry … see tiling.vector), ``priority``
    (a property kept first when a limit cuts, larger values first; default: larger geometries)."""
    out: dict = {}
    for k in ("minzoom", "maxzoom"):
        if opts.get(k) is not None:
            v = opts[k]
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 24:
                raise StoreError(f"tile option {k}={v!r}: give a whole zoom level 0–24")
            out[k] = v
    if "minzoom" in out and "maxzoom" in out and out["minzoom"] > out["maxzoom"]:
        raise StoreError(f"tile options: minzoom {out['minzoom']} is above maxzoom {out['maxzoom']}")
    limits = opts.get("max_features") or {}
    checked = {}
    for z, n in limits.items():
        try:
            zi = int(z)
        except (TypeError, ValueError):
            raise StoreError(f"tile option max_features: zoom {z!r} is not a whole number") from None
        if not 0 <= zi <= 24 or not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise StoreError(f"tile option max_features {z}:{n!r}: give ZOOM:N with zoom 0–24 and N ≥ 1")
        checked[str(zi)] = n
    if checked:
        out["max_features"] = checked
    if opts.get("priority"):
        out["priority"] = str(opts["priority"])
    return out
