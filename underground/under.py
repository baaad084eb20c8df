"""What is under an area: the pipes (by type, with the length inside), manholes, basements and BIM
models with storeys below ground, as of a valid time — for ``GET /underground/under`` and the
/map popup. Reads the store by SQL (no cim_builder import); only layers the caller may see are
read: an invisible layer contributes nothing and is named in ``hidden``."""

from __future__ import annotations

from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from spatial_api import security, store
from underground.catalogue import BY_CODE, TYPES

PIPES, POINTS, BASEMENTS, INDOOR = "pipe_segments", "pipe_points", "basements", "indoor_spaces"


class NotFound(LookupError):
    pass


def _visible(conn, name: str) -> store.Layer | None:
    layer = store.get_layer(conn, name)
    if layer is None or not security.current().sees(layer.access_level):
        return None
    if layer.access_level == "restricted":
        security.note_restricted(f"layer:{name}")
    return layer


def area_of_feature(conn, layer: str, fid: str, at: datetime | None) -> tuple[bytes, dict]:
    """The geometry (WKB, EPSG:4490) and properties of a visible layer's feature as of ``at``."""
    lyr = _visible(conn, layer) if store.LAYER_NAME_RE.match(layer or "") else None
    if lyr is None:
        raise NotFound(f"collection {layer!r} does not exist; see /collections")
    cond, params = store.temporal_filter(at, None)
    row = conn.execute(sql.SQL("SELECT ST_AsBinary(f.geom), f.properties FROM {} f WHERE f.layer = %s AND f.fid = %s "
                               "AND {}").format(sql.Identifier(store.partition_name(layer)), cond),
                       [layer, fid, *params]).fetchone()
    if row is None:
        raise NotFound(f"feature {fid!r} of {layer!r} does not exist" + (f" at {at.isoformat()}" if at else ""))
    if lyr.geometry_family != "Polygon":
        raise ValueError(f"layer {layer!r} holds {lyr.geometry_family}s: give a polygon layer (parcels …) or a bbox")
    return bytes(row[0]), row[1]


def _size(p: dict) -> str | None:
    w, h, d = p.get("width_mm"), p.get("height_mm"), p.get("diameter_mm")
    if d is not None:
        return f"DN{d:g}"
    if w is not None and h is not None:
        return f"{w:g}×{h:g}"
    return None


def _range(*values) -> list[float] | None:
    vals = [v for v in values if v is not None]
    return [min(vals), max(vals)] if vals else None


def under(conn: psycopg.Connection, area_wkb: bytes, at: datetime | None) -> dict:
    """Everything under the area (a polygon in EPSG:4490, as WKB)."""
    out: dict = {"pipes": [], "manholes": [], "basements": [], "models": [], "totals": {}, "hidden": []}
    area = sql.SQL("ST_GeomFromWKB(%s, 4490)")

    def rows(layer: str, select: str, extra: str = "") -> list[dict] | None:
        if store.get_layer(conn, layer) is None:
            return []
        if _visible(conn, layer) is None:
            out["hidden"].append(layer)
            return None
        cond, params = store.temporal_filter(at, None)
        q = sql.SQL("WITH a AS (SELECT {area} AS g) SELECT f.fid, f.properties, " + select + " FROM {part} f, a "
                    "WHERE f.layer = %s AND {cond} AND f.geom && a.g AND ST_Intersects(f.geom, a.g) " + extra
                    + " ORDER BY f.fid").format(area=area, part=sql.Identifier(store.partition_name(layer)), cond=cond)
        with conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(q, [area_wkb, layer, *params]).fetchall()

    pipes = rows(PIPES, "ST_Length(ST_Transform(ST_Intersection(f.geom, a.g), 4547)) AS inside_m")
    for r in pipes or []:
        p = r["properties"]
        out["pipes"].append({
            "id": r["fid"], "segment_id": p.get("segment_id"), "type": p.get("type"), "type_code": p.get("type_code"),
            "size": _size(p), "diameter_mm": p.get("diameter_mm"), "width_mm": p.get("width_mm"),
            "height_mm": p.get("height_mm"), "material": p.get("material"), "depth_ref": p.get("depth_ref"),
            "depth_m": _range(p.get("start_depth"), p.get("end_depth")),
            "axis_z": _range(p.get("start_axis_z"), p.get("end_axis_z")),
            "length_m": p.get("length_m"), "inside_m": round(float(r["inside_m"]), 2),
            "entity": f"/entities/by-feature/{PIPES}/{r['fid']}"})
    manholes = rows(POINTS, "NULL AS nothing", "AND (f.properties->>'is_manhole')::boolean")
    for r in manholes or []:
        p = r["properties"]
        out["manholes"].append({"id": r["fid"], "point_id": p.get("point_id"), "type": p.get("type"),
                                "type_code": p.get("type_code"), "appurtenance": p.get("appurtenance"),
                                "ground_z": p.get("ground_z"), "bottom_z": p.get("bottom_z"),
                                "entity": f"/entities/by-feature/{POINTS}/{r['fid']}"})
    basements = rows(BASEMENTS, "ST_Area(ST_Transform(ST_Intersection(f.geom, a.g), 4547)) AS inside_m2")
    for r in basements or []:
        p = r["properties"]
        out["basements"].append({"id": r["fid"], "basement_id": p.get("basement_id", r["fid"]),
                                 "building_id": p.get("building_id"), "name": p.get("name"), "use": p.get("use"),
                                 "levels": p.get("levels"), "depth_m": p.get("depth_m"),
                                 "inside_m2": round(float(r["inside_m2"]), 1),
                                 "entity": f"/entities/by-feature/{BASEMENTS}/{r['fid']}"})
    out["models"] = _models(conn, area_wkb, at, out["hidden"])

    totals: dict[str, dict] = {}
    for p in out["pipes"]:
        t = totals.setdefault(p["type_code"] or "?", {
            "type": p["type"], "type_code": p["type_code"], "colour": BY_CODE[p["type_code"]].colour
            if p["type_code"] in BY_CODE else None, "segments": 0, "inside_m": 0.0})
        t["segments"] += 1
        t["inside_m"] = round(t["inside_m"] + p["inside_m"], 2)
    order = {t.code: i for i, t in enumerate(TYPES)}
    out["totals"] = {"by_type": sorted(totals.values(), key=lambda t: order.get(t["type_code"], 99)),
                     "pipes": len(out["pipes"]), "manholes": len(out["manholes"]),
                     "basements": len(out["basements"]), "models": len(out["models"])}
    return out


def _models(conn, area_wkb: bytes, at: datetime | None, hidden: list[str]) -> list[dict]:
    """Registered BIM models under the area with their storeys below ground (from the indoor
    layer, whose access level the models' interiors carry)."""
    if conn.execute("SELECT to_regclass('cim_models')").fetchone()[0] is None:
        return []
    if store.get_layer(conn, INDOOR) is None:
        return []
    if _visible(conn, INDOOR) is None:
        hidden.append(INDOOR)
        return []
    cond, params = store.temporal_filter(at, None, alias="s")
    q = sql.SQL(
        "SELECT m.id, m.name, m.georef->'z_range' AS z_range, b.storeys FROM cim_models m "
        "CROSS JOIN LATERAL (SELECT array_agg(DISTINCT s.properties->>'storey') AS storeys FROM {part} s "
        "  WHERE s.layer = %s AND {cond} AND s.properties->>'model_id' = m.id "
        "  AND (s.properties->>'below_ground')::boolean) b "
        "WHERE m.active AND ST_Intersects(m.footprint, ST_GeomFromWKB(%s, 4490)) AND b.storeys IS NOT NULL "
        "ORDER BY m.id").format(part=sql.Identifier(store.partition_name(INDOOR)), cond=cond)
    with conn.cursor(row_factory=dict_row) as cur:
        found = cur.execute(q, [INDOOR, *params, area_wkb]).fetchall()
    return [{"id": r["id"], "name": r["name"], "z_range": r["z_range"], "below_ground_storeys": sorted(r["storeys"])}
            for r in found]


__all__ = ["NotFound", "area_of_feature", "under"]
