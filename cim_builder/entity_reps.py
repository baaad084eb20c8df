"""The twin's representations of a geographic entity (``geotwin.representations`` entry ``twin``),
gathered by ``/entities/{code}``:

- ``lod1_prism``: for each feature of the entity in the layer a buildings tileset was built from
  (``cim_tilesets``, ``params.kind`` "buildings" or none), built as of a date ≤ the asked time: the
  tile whose glb holds its prism — derived at query time, no table: the building's centre (its
  footprint as of the build, in EPSG:4547) picks one cell per level of the stored layout, the
  tiles of those cells that exist (``cim_tiles``) are the candidates (a building lives on its
  centre's path, at its size's level or below), and the glb's ``building`` property table says
  which holds it, with its height and base (tables cached per file; file names carry the hash);
- ``bim_model``: models linked to the entity (entity links of kind ``bim_model``) or whose
  footprint covers ≥ 30 % of the building's footprint, or its centre — the rule ``cim build``
  replaces prisms by — registered by the asked time, with name, element count and their content
  in each tileset that merged them.

A tileset is as visible as its source layer (as /twin/tilesets): a caller who may not see that
layer gets nothing from it. Empty tables give no representations."""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
import shapely
from psycopg import sql

from cim_builder.build import REPLACE_SHARE
from cim_builder.geo import GEOGRAPHIC_CRS, METRIC_CRS, transformer
from cim_builder.glb import property_values, read_glb
from cim_builder.tileset import Layout, tile_key
from spatial_api import security, store

LEVEL = "coalesce((SELECT l.access_level FROM layers l WHERE l.name = t.params->>'layer'), 'restricted')"


@lru_cache(maxsize=256)
def _building_table(path: str, mtime: float) -> dict[str, dict]:
    """building_id → its property-table row, of one building tile's glb."""
    doc, binary = read_glb(Path(path).read_bytes())
    ext = doc.get("extensions", {}).get("EXT_structural_metadata", {})
    for i, table in enumerate(ext.get("propertyTables", [])):
        if table.get("class") == "building":
            values = property_values(doc, binary, i)
            ids = values.get("building_id", [])
            return {bid: {k: v[n] for k, v in values.items()} for n, bid in enumerate(ids)}
    return {}


def _centre(conn, layer: str, fid: str, when: datetime | None) -> tuple[float, float] | None:
    cond, params = store.temporal_filter(when, None)
    row = conn.execute(sql.SQL("SELECT ST_AsBinary(f.geom) FROM {} f WHERE f.layer = %s AND f.fid = %s AND {} LIMIT 1")
                       .format(sql.Identifier(store.partition_name(layer)), cond), [layer, fid, *params]).fetchone()
    if row is None:
        return None
    geom = shapely.from_wkb(bytes(row[0]))
    t = transformer(GEOGRAPHIC_CRS, METRIC_CRS)
    metric = shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
    west, south, east, north = metric.bounds
    return (west + east) / 2, (south + north) / 2


def _prisms(conn, tilesets: list[tuple], fids_by_layer: dict[str, list[str]]) -> list[dict]:
    out = []
    for tid, title, out_dir, as_of, built_at, layout_json, params in tilesets:
        layer = params.get("layer") or "buildings"
        fids = fids_by_layer.get(layer)
        if not fids:
            continue
        layout = Layout.from_json(layout_json)
        tiles = dict(conn.execute("SELECT tile_key, uri FROM cim_tiles WHERE tileset_id = %s AND tile_key !~ '^(block|bim)/'",
                                  (tid,)).fetchall())
        for fid in fids:
            centre = _centre(conn, layer, fid, as_of or built_at)
            if centre is None or not layout.contains(np.array([centre[0]]), np.array([centre[1]])):
                continue
            levels = np.arange(layout.max_level + 1)
            ix, iy = layout.index(np.full(len(levels), centre[0]), np.full(len(levels), centre[1]), levels)
            for level, x, y in zip(levels.tolist(), ix.tolist(), iy.tolist()):
                uri = tiles.get(tile_key(level, x, y))
                path = Path(out_dir) / uri if uri else None
                if path is None or not path.is_file():
                    continue
                row = _building_table(str(path), path.stat().st_mtime).get(fid)
                if row is None:
                    continue
                out.append({"kind": "lod1_prism", "tileset": tid, "title": title or tid, "layer": layer, "fid": fid,
                            "tile": tile_key(level, x, y), "content": f"/twin/tilesets/{tid}/{uri}",
                            "tilesetHref": f"/twin/tilesets/{tid}/tileset.json", "featureKey": {"building_id": fid},
                            "height_m": row.get("height_m"), "base_height_m": row.get("base_height_m"),
                            "floors": row.get("floors") if (row.get("floors") or -1) >= 0 else None,
                            "asOf": (as_of or built_at).isoformat()})
                break
    return out


def _models(conn, entity: dict, at: datetime | None, features: list[tuple[str, str]], tilesets: list[tuple]) -> list[dict]:
    linked = {r.get("model") or r.get("key") for r in entity["representations"] if r.get("kind") == "bim_model"}
    found: dict[str, dict] = {}
    when = at or datetime.now(timezone.utc)
    for layer, fid in features:
        cond, params = store.temporal_filter(at, None)
        rows = conn.execute(sql.SQL(
            """
            WITH b AS (SELECT ST_Transform(f.geom, 4547) AS g, f.geom AS g4490 FROM {} f
                       WHERE f.layer = %s AND f.fid = %s AND {} LIMIT 1)
            SELECT m.id, ST_Area(ST_Intersection(ST_Transform(m.footprint, 4547), b.g)) / nullif(ST_Area(b.g), 0),
                   ST_Contains(m.footprint, ST_Centroid(b.g4490))
            FROM cim_models m, b
            WHERE m.active AND m.registered_at <= %s AND m.footprint && b.g4490
            """).format(sql.Identifier(store.partition_name(layer)), cond), [layer, fid, *params, when]).fetchall()
        for model_id, share, centre in rows:
            if (share or 0) >= REPLACE_SHARE or centre:
                found.setdefault(model_id, {"share": round(float(share or 0), 3), "building": f"{layer}/{fid}"})
    ids = sorted(set(found) | {m for m in linked if m})
    if not ids:
        return []
    visible_tilesets = {t[0] for t in tilesets}
    out = []
    for model_id, name, elements, schema, registered in conn.execute(
            "SELECT id, name, element_count, ifc_schema, registered_at FROM cim_models WHERE id = ANY(%s) ORDER BY id",
            (ids,)).fetchall():
        tiles = [{"tileset": tid, "content": f"/twin/tilesets/{tid}/{uri}"} for tid, uri in conn.execute(
            "SELECT tileset_id, uri FROM cim_tiles WHERE tile_key = %s ORDER BY tileset_id", (f"bim/{model_id}",))
            if tid in visible_tilesets]
        out.append({"kind": "bim_model", "model": model_id, "name": name, "elements": elements, "ifcSchema": schema,
                    "registered": registered.isoformat(), "via": "link" if model_id in linked else "footprint",
                    **({"footprintShare": found[model_id]["share"], "building": found[model_id]["building"]}
                       if model_id in found else {}), "tiles": tiles})
    return out


def representations(conn, entity, at) -> list[dict]:
    """LOD1 prisms and BIM models of a building entity (see the module docstring)."""
    if entity.get("type") not in ("building", "underground_structure"):
        return []
    caller = security.current()
    when = at or datetime.now(timezone.utc)
    tilesets = [r[:7] for r in conn.execute(
        f"SELECT t.id, t.title, t.out_dir, t.as_of, t.built_at, t.layout, t.params, {LEVEL} FROM cim_tilesets t "
        "WHERE coalesce(t.params->>'kind', 'buildings') = 'buildings' AND coalesce(t.as_of, t.built_at) <= %s "
        "ORDER BY t.id", (when,)).fetchall() if caller.sees(r[7])]
    features = [(r["layer"], r["fid"]) for r in entity["representations"] if r.get("kind") == "feature"]
    by_layer: dict[str, list[str]] = {}
    for layer, fid in features:
        by_layer.setdefault(layer, []).append(fid)
    return _prisms(conn, tilesets, by_layer) + _models(conn, entity, at, features, tilesets)
