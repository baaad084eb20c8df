"""Indoor rooms and storeys of the registered BIM models (issue 17): every IfcSpace becomes a
feature of the store layer ``indoor_spaces`` (the indoor map), every IfcBuildingStorey a row of
the model's storey list (``cim_models.georef -> 'storeys'``), with the basement storeys' outline
and bottom — the IFC basement or underground garage.

**Read with the mesh** (:func:`storey_levels`, :func:`space_attributes`, :func:`finish_spaces`,
called by :func:`cim_builder.ifc.read_elements`, so the tessellation is done once and cached):

- storeys ordered by elevation (``Elevation``, else the storey placement's height; ties by name):
  ``storey_index`` 0 = the lowest;
- a room's name (Name), long name (LongName), use (ObjectType, else Pset_SpaceCommon.Category,
  else Pset_SpaceOccupancyRequirements.OccupancyType, else an IFC4 PredefinedType that says
  something (PARKING, …), else LongName) and area (Qto_SpaceBaseQuantities / IFC2X3
  BaseQuantities NetFloorArea, else GrossFloorArea, in the file's area unit → m²);
- its footprint: the union of its mesh triangles' horizontal projections in model metres, snapped
  to a 1 mm grid (vertical faces project to nothing; floor and ceiling to the same plan — a union
  of every triangle is robust for sloped or stepped rooms where an outline polygonize is not).

**Placed** (:func:`extract`): the footprint's vertices go through the model's georeferencing at
the room's floor height — the same mapping as its mesh — to EPSG:4490; heights are orthometric
(the mesh's ellipsoidal heights minus the geoid separation). Area without a Qto: the footprint's
in EPSG:4547. Below ground: the room's storey is below the model's zero (elevation < −0.05 m) or
its whole mesh is (as :mod:`cim_builder.ifc` decides for every element). ``building_id``: the one
building of the footprint layer that covers ≥ 30 % of the model's footprint, or ≥ 30 % of which
the model covers (the build's replace rule); none or several: null.

**Written** (:func:`write_model`) in the caller's transaction (``ifc.register``: the same one as
the model's row): one changeset of ``indoor_spaces`` (created on first use, access level as the
footprint layer's) replacing this model's rooms only — other models' rooms are kept; nothing
changed, no changeset. ``remove-model`` closes the model's rooms (:func:`close_model`), history
kept. A room's key is its GlobalId; a GlobalId another active model's room already holds (the same
file registered twice) gets ``<model id>/`` in front, with a warning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
import psycopg
import shapely
from psycopg import sql

from cim_builder.geo import (
    DEFAULT_GEOID_SEPARATION,
    METRIC_CRS,
    CimError,
    ecef_to_lonlat,
    transformer,
)
from spatial_api import store
from spatial_api.config import author_default

LAYER = "indoor_spaces"
TITLE_ZH, TITLE_EN = "室内空间", "Indoor spaces"
PROPERTIES = [
    {"name": "space_id", "type": "string"}, {"name": "model_id", "type": "string"},
    {"name": "building_id", "type": "string"}, {"name": "storey", "type": "string"},
    {"name": "storey_index", "type": "integer"}, {"name": "storey_elevation", "type": "number"},
    {"name": "name", "type": "string"}, {"name": "long_name", "type": "string"}, {"name": "use", "type": "string"},
    {"name": "area_m2", "type": "number"}, {"name": "height_m", "type": "number"},
    {"name": "below_ground", "type": "boolean"},
]
BELOW_GROUND_M = -0.05  # as cim_builder.ifc: a storey (or a mesh top) below this model height is underground
BUILDING_SHARE = 0.30
FOOTPRINT_GRID_M = 0.001  # rooms: snapped to 1 mm
STOREY_GRID_M = 0.01  # basement outlines: 1 cm
_USELESS_TYPES = {None, "", "NOTDEFINED", "USERDEFINED", "SPACE", "INTERNAL", "EXTERNAL"}


# ------------------------------------------------------------------------------------------
# read with the mesh (cim_builder.ifc.read_elements)


def _model_elevation(st, u_p: float) -> float | None:
    """A storey's height in model metres: its Elevation, else its placement's height."""
    if st.Elevation is not None:
        return float(st.Elevation) * u_p
    try:
        import ifcopenshell.util.placement

        if st.ObjectPlacement is not None:
            return float(ifcopenshell.util.placement.get_local_placement(st.ObjectPlacement)[2, 3]) * u_p
    except Exception:  # an unreadable placement: the storey is listed without an elevation (last)
        return None
    return None


def storey_levels(f, u_p: float) -> list[dict]:
    """Every IfcBuildingStorey of the file, lowest first: entity id, GlobalId, name, elevation in
    model metres (None when it has none) and ``index`` (0 = lowest)."""
    rows = [{"entity": st.id(), "global_id": st.GlobalId, "name": st.Name or "",
             "elevation_m": _model_elevation(st, u_p)} for st in f.by_type("IfcBuildingStorey")]
    rows.sort(key=lambda r: (r["elevation_m"] is None, r["elevation_m"] or 0.0, r["name"], r["global_id"]))
    for i, r in enumerate(rows):
        r["index"] = i
    return rows


def _qto_area(el, area_unit: float) -> float | None:
    import ifcopenshell.util.element

    try:
        qtos = ifcopenshell.util.element.get_psets(el, qtos_only=True)
    except Exception:  # a broken quantity set: the footprint's area is used
        return None
    names = ["Qto_SpaceBaseQuantities", "BaseQuantities"] + sorted(qtos)
    for key in ("NetFloorArea", "GrossFloorArea"):
        for n in names:
            v = (qtos.get(n) or {}).get(key)
            if isinstance(v, (int, float)) and math.isfinite(v) and v > 0:
                return float(v) * area_unit
    return None


def space_attributes(el, area_unit: float) -> tuple[str, str, float | None]:
    """(long name, use, Qto floor area in m² or None) of an IfcSpace."""
    import ifcopenshell.util.element

    long_name = getattr(el, "LongName", None) or ""
    try:
        psets = ifcopenshell.util.element.get_psets(el, psets_only=True)
    except Exception:  # unreadable property sets: use from the attributes alone
        psets = {}
    predefined = getattr(el, "PredefinedType", None)
    candidates = [getattr(el, "ObjectType", None), (psets.get("Pset_SpaceCommon") or {}).get("Category"),
                  (psets.get("Pset_SpaceOccupancyRequirements") or {}).get("OccupancyType"),
                  None if predefined in _USELESS_TYPES else predefined, long_name]
    use = next((str(c).strip() for c in candidates if isinstance(c, str) and c.strip()), "")
    return long_name, use, _qto_area(el, area_unit)


def plan_outline(triangles: np.ndarray, grid: float) -> object:
    """The union of triangles' horizontal projections ((T, 3, ≥2) metres), snapped to ``grid``."""
    if not len(triangles):
        return shapely.Polygon()
    xy = triangles[:, :, :2]
    polys = shapely.polygons(np.concatenate([xy, xy[:, :1]], axis=1))
    polys = polys[shapely.area(polys) > grid * grid]
    if not len(polys):
        return shapely.Polygon()
    return shapely.union_all(polys, grid_size=grid)


def _by_element(positions: np.ndarray, element: np.ndarray, wanted: np.ndarray) -> dict[int, np.ndarray]:
    """Triangles (T, 3, 3) of each wanted element, grouped with one sort."""
    tri = positions.reshape(-1, 3, 3)
    tri_el = element[::3]
    keep = np.isin(tri_el, wanted)
    tri, tri_el = tri[keep], tri_el[keep]
    order = np.argsort(tri_el, kind="stable")
    tri, tri_el = tri[order], tri_el[order]
    ids, starts = np.unique(tri_el, return_index=True)
    return {int(i): part for i, part in zip(ids, np.split(tri, starts[1:]))}


def finish_spaces(meta: dict, positions: np.ndarray, element: np.ndarray, qto: dict[int, float | None]) -> dict:
    """Each room's footprint (model metres) and height; fills the ``area_m2`` (Qto, else the
    footprint's) and ``height_m`` columns of the rooms. Returns {element index: {footprint, zmin,
    zmax, qto_area}}."""
    spaces = np.flatnonzero(np.asarray(meta["is_space"], bool))
    out = {}
    for i, tri in _by_element(positions, element, spaces).items():
        outline = plan_outline(tri, FOOTPRINT_GRID_M)
        zmin, zmax = float(tri[:, :, 2].min()), float(tri[:, :, 2].max())
        out[i] = {"footprint": outline, "zmin": zmin, "zmax": zmax, "qto_area": qto.get(i)}
        meta["area_m2"][i] = qto.get(i) or float(outline.area)
        meta["height_m"][i] = zmax - zmin
    return out


# ------------------------------------------------------------------------------------------
# placed


@dataclass
class Extracted:
    model_id: str
    features: store.FeatureRows
    storeys: list[dict]
    building_id: str | None
    warnings: list[str] = field(default_factory=list)

    @property
    def rooms(self) -> int:
        return len(self.features)


def _orthometric(georef, xyz: np.ndarray, sep: float) -> np.ndarray:
    """Model world metres → (lon, lat, orthometric h), through the model's georeferencing."""
    llh = ecef_to_lonlat(georef.to_ecef(np.asarray(xyz, float).reshape(-1, 3), sep))
    llh[:, 2] -= sep
    return llh


def _place_plan(georef, geom, z: float, sep: float):
    """A plan in model metres at model height z → EPSG:4490, vertex by vertex like the mesh."""
    if geom.is_empty:
        return geom

    def fn(c: np.ndarray) -> np.ndarray:
        return _orthometric(georef, np.column_stack([c, np.full(len(c), z)]), sep)[:, :2]

    placed = shapely.transform(geom, fn)
    return placed if placed.is_valid else shapely.make_valid(placed)


def _metric_area(geoms) -> np.ndarray:
    t = transformer("EPSG:4490", METRIC_CRS)
    return shapely.area(shapely.transform(geoms, lambda c: np.column_stack(t.transform(c[:, 0], c[:, 1]))))


def building_under(conn, footprint, layer: str) -> str | None:
    """The one building of ``layer`` covering ≥ 30 % of the model's footprint (or ≥ 30 % of which
    the footprint covers); None when there is none, several, or no such layer."""
    if conn is None or store.get_layer(conn, layer) is None:
        return None
    wkb = shapely.to_wkb(footprint)
    rows = conn.execute(sql.SQL(
        "SELECT f.fid, ST_AsBinary(f.geom) FROM {} f WHERE f.layer = %s AND f.valid_to IS NULL "
        "AND f.geom && ST_GeomFromWKB(%s, 4490) AND ST_Intersects(f.geom, ST_GeomFromWKB(%s, 4490))").format(
        sql.Identifier(store.partition_name(layer))), (layer, wkb, wkb)).fetchall()
    if not rows:
        return None
    geoms = shapely.from_wkb([bytes(r[1]) for r in rows])
    both = np.append(geoms, [footprint])
    t = transformer("EPSG:4490", METRIC_CRS)
    metric = shapely.transform(both, lambda c: np.column_stack(t.transform(c[:, 0], c[:, 1])))
    fp = metric[-1]
    overlap = shapely.area(shapely.intersection(metric[:-1], fp))
    share = np.maximum(overlap / max(fp.area, 1e-9), overlap / np.maximum(shapely.area(metric[:-1]), 1e-9))
    hit = [str(r[0]) for r, s in zip(rows, share) if s >= BUILDING_SHARE]
    return hit[0] if len(hit) == 1 else None


def extract(pm, model_id: str, sep: float = DEFAULT_GEOID_SEPARATION, *, conn=None,
            buildings_layer: str = "buildings") -> Extracted:
    """The rooms and storeys of a placed model (``ifc.PlacedModel``)."""
    els, georef = pm.elements, pm.georef
    meta = els.meta
    warnings: list[str] = []
    llh = ecef_to_lonlat(pm.ecef)
    z_ortho = llh[:, 2] - sep
    centre = els.positions[:, :2].mean(axis=0)
    levels = els.storeys
    elev = np.array([lv["elevation_m"] if lv["elevation_m"] is not None else np.nan for lv in levels], float)
    if len(levels):
        pts = np.column_stack([np.repeat(centre[None, :], len(levels), axis=0), np.nan_to_num(elev)])
        ortho = _orthometric(georef, pts, sep)[:, 2]
    else:
        ortho = np.zeros(0)
    storey_ortho = {lv["index"]: (None if np.isnan(e) else round(float(h), 3)) for lv, e, h in zip(levels, elev, ortho)}
    storey_index = np.asarray(meta["storey_index"], np.int64)
    is_space = np.asarray(meta["is_space"], bool)
    below = np.asarray(meta["below_ground"], bool)
    vert_storey = storey_index[els.element]

    # storeys: counts, and for those below ground the outline and bottom of their elements
    storeys = []
    below_levels = []
    for lv, e in zip(levels, elev):
        i = lv["index"]
        mine = storey_index == i
        underground = bool((not np.isnan(e) and e < BELOW_GROUND_M) or (mine.any() and below[mine].all()))
        row = {"index": i, "name": lv["name"], "global_id": lv["global_id"], "elevation": storey_ortho[i],
               "elevation_model_m": None if np.isnan(e) else round(float(e), 3), "below_ground": underground,
               "elements": int((mine & ~is_space).sum()), "rooms": int((mine & is_space).sum()),
               "bottom_z": None, "footprint": None, "footprint_area_m2": None}
        if underground and mine.any():
            below_levels.append(i)
            row["bottom_z"] = round(float(z_ortho[vert_storey == i].min()), 3)
        storeys.append(row)
    if below_levels:
        groups = _by_element(els.positions, vert_storey, np.asarray(below_levels))
        for row in storeys:
            tri = groups.get(row["index"])
            if tri is None:
                continue
            plan = plan_outline(tri, STOREY_GRID_M)
            placed = _place_plan(georef, plan, float(tri[:, :, 2].min()), sep)
            if not placed.is_empty:
                row["footprint"] = json.loads(shapely.to_geojson(shapely.set_precision(placed, 1e-9)))
                row["footprint_area_m2"] = round(float(_metric_area(np.array([placed]))[0]), 2)

    # rooms
    idx = [i for i in np.flatnonzero(is_space) if i in els.spaces and not els.spaces[i]["footprint"].is_empty]
    unmeshed = [meta["global_id"][i] for i in np.flatnonzero(is_space) if i not in idx]
    if unmeshed:
        warnings.append(f"model {model_id}: {len(unmeshed)} IfcSpace(s) have no footprint (no horizontal extent in "
                        f"their mesh) and are not in {LAYER}: {', '.join(unmeshed[:5])}")
    geoms = np.array([_place_plan(georef, els.spaces[i]["footprint"], els.spaces[i]["zmin"], sep) for i in idx],
                     dtype=object)
    metric_area = _metric_area(geoms) if len(geoms) else np.zeros(0)
    building_id = building_under(conn, pm.footprint, buildings_layer)
    ztop, zbottom = np.full(els.count, -np.inf), np.full(els.count, np.inf)
    np.maximum.at(ztop, els.element, z_ortho)
    np.minimum.at(zbottom, els.element, z_ortho)
    rows = []
    for k, i in enumerate(idx):
        sp = els.spaces[i]
        si = int(storey_index[i])
        rows.append({
            "space_id": meta["global_id"][i], "model_id": model_id, "building_id": building_id,
            "storey": meta["storey"][i] or None, "storey_index": si if si >= 0 else None,
            "storey_elevation": storey_ortho.get(si), "name": meta["name"][i] or None,
            "long_name": meta["long_name"][i] or None, "use": meta["use"][i] or None,
            "area_m2": round(float(sp["qto_area"] or metric_area[k]), 3),
            "height_m": round(float(ztop[i] - zbottom[i]), 3), "below_ground": bool(below[i]),
        })
    props = pd.DataFrame(rows, columns=[p["name"] for p in PROPERTIES])
    props["storey_index"] = props["storey_index"].astype("Int64")
    fids = np.array([r["space_id"] for r in rows], dtype=object)
    features = store.FeatureRows(rows=np.arange(1, len(rows) + 1), fids=fids, geometry=geoms, properties=props)
    return Extracted(model_id, features, storeys, building_id, warnings)


# ------------------------------------------------------------------------------------------
# the store


def _lock(conn) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"geotwin.layer.{LAYER}",))


def ensure_layer(conn, access_level: str | None = None) -> store.Layer:
    """``indoor_spaces``, created on first use in the caller's transaction."""
    _lock(conn)
    layer = store.get_layer(conn, LAYER)
    if layer is None:
        layer = store.create_layer(conn, store.Layer(
            name=LAYER, geometry_family="Polygon", properties=PROPERTIES, key_field="space_id",
            title_zh=TITLE_ZH, title_en=TITLE_EN, access_level=access_level or "public",
            description="IfcSpace rooms of the registered BIM models (geotwin cim indoor): footprint, storey, "
                        "area, use; heights orthometric metres"))
    return layer


def _now(conn) -> datetime:
    return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def write_model(conn, extracted: Extracted, *, access_level: str | None = None, author: str | None = None,
                source: str | None = None) -> dict:
    """Replace one model's rooms in ``indoor_spaces`` (other models' kept) and record its storeys,
    in the caller's transaction. Returns counts and the changeset id (None: nothing changed)."""
    model_id = extracted.model_id
    conn.execute("UPDATE cim_models SET georef = georef || jsonb_build_object('storeys', %s::jsonb) WHERE id = %s",
                 (json.dumps(extracted.storeys, ensure_ascii=False), model_id))
    message = (f"{extracted.rooms} room(s) (IfcSpace) on {len(extracted.storeys)} storey(s) → {LAYER}"
               if extracted.rooms else f"no rooms: the model has no IfcSpace with a body "
                                       f"({len(extracted.storeys)} storey(s) recorded)")
    out = {"rooms": extracted.rooms, "storeys": len(extracted.storeys), "changeset_id": None, "added": 0,
           "changed": 0, "closed": 0, "unchanged": 0, "building_id": extracted.building_id,
           "message": message, "warnings": list(extracted.warnings)}
    if not extracted.rooms and store.get_layer(conn, LAYER) is None:
        return out
    layer = ensure_layer(conn, access_level)
    part = sql.Identifier(store.partition_name(LAYER))
    others = dict(conn.execute(sql.SQL(
        "SELECT fid, properties->>'model_id' FROM {} WHERE valid_to IS NULL AND properties->>'model_id' <> %s"
    ).format(part), (model_id,)).fetchall())
    feats = extracted.features
    if len(feats):
        taken = np.array([str(f) in others for f in feats.fids])
        if taken.any():
            fids = np.array([f"{model_id}/{f}" if t else f for f, t in zip(feats.fids, taken)], dtype=object)
            props = feats.properties.copy()
            props["space_id"] = fids
            out["warnings"].append(
                f"model {model_id}: {int(taken.sum())} room GlobalId(s) are rooms of another model already "
                f"({', '.join(sorted({others[str(f)] for f in feats.fids[taken]}))}; the same file registered twice?): "
                f"keyed '{model_id}/<GlobalId>' here")
            feats = store.FeatureRows(rows=feats.rows, fids=fids, geometry=feats.geometry, properties=props)
    with conn.transaction() as tx:  # a savepoint: a write that changes nothing leaves no changeset
        result = store.write_changeset(
            conn, layer, feats, mode="replace", valid_from=_now(conn), author=author or author_default(),
            source=source or f"cim model {model_id}", keep_keys=set(others),
            message=f"IfcSpace rooms of BIM model {model_id}")
        out.update(added=result.added, changed=result.changed, closed=result.closed, unchanged=result.unchanged)
        if not (result.added or result.changed or result.closed):
            raise psycopg.Rollback(tx)
        store.finish_changeset(conn, result.changeset_id, {
            "added": result.added, "changed": result.changed, "unchanged": result.unchanged,
            "closed": result.closed, "current": result.current_total, "model": model_id})
        out["changeset_id"] = result.changeset_id
    return out


def close_model(conn, model_id: str, *, author: str | None = None) -> int:
    """Close a model's current rooms (``remove-model``): one changeset, history kept."""
    layer = store.get_layer(conn, LAYER)
    if layer is None:
        return 0
    _lock(conn)
    fids = [r[0] for r in conn.execute(sql.SQL(
        "SELECT fid FROM {} WHERE valid_to IS NULL AND properties->>'model_id' = %s").format(
        sql.Identifier(store.partition_name(LAYER))), (model_id,)).fetchall()]
    if not fids:
        return 0
    result = store.close_features(conn, layer, fids, valid_from=_now(conn), author=author or author_default(),
                                  source=f"cim model {model_id}", message=f"BIM model {model_id} removed")
    return result.closed


def footprint_access_level(conn, layer: str) -> str | None:
    row = conn.execute("SELECT access_level FROM layers WHERE name = %s", (layer,)).fetchone()
    return row[0] if row else None


# ------------------------------------------------------------------------------------------
# reading (the CLI and /twin/models/{id}/storeys)


def access_level(conn) -> str:
    """Who may see the storeys and rooms: the layer's level (else the buildings')."""
    row = conn.execute("SELECT coalesce((SELECT access_level FROM layers WHERE name = %s), "
                       "(SELECT access_level FROM layers WHERE name = 'buildings'), 'restricted')",
                       (LAYER,)).fetchone()
    return row[0]


def model_storeys(conn, model_id: str) -> list[dict] | None:
    """The storeys recorded for an active model, lowest first (None: no such model)."""
    row = conn.execute("SELECT georef->'storeys' FROM cim_models WHERE id = %s AND active", (model_id,)).fetchone()
    if row is None:
        return None
    if row[0] is None:
        raise CimError(f"model {model_id!r} was registered before rooms and storeys were extracted: run "
                       f"`geotwin cim indoor extract {model_id}`")
    return list(row[0])


def find_storey(storeys: list[dict], which: str) -> dict | None:
    """A storey by name, else by index."""
    for s in storeys:
        if s["name"] == which:
            return s
    if which.lstrip("-").isdigit():
        return next((s for s in storeys if s["index"] == int(which)), None)
    return None


def rooms(conn, model_id: str, *, storey: dict | None = None, at: datetime | None = None) -> list[dict]:
    """A model's rooms (GeoJSON features, EPSG:4490) as of ``at`` (None: now), ordered by storey
    and name; one storey's with ``storey``."""
    if store.get_layer(conn, LAYER) is None:
        return []
    cond, params = store.temporal_filter(at, None)
    where = [cond, sql.SQL("f.properties->>'model_id' = %s")]
    params = [*params, model_id]
    if storey is not None:
        where.append(sql.SQL("(f.properties->>'storey_index')::int = %s"))
        params.append(storey["index"])
    rows = conn.execute(sql.SQL(
        "SELECT f.fid, f.properties, ST_AsGeoJSON(f.geom, 9) FROM {} f WHERE {} "
        "ORDER BY (f.properties->>'storey_index')::int NULLS LAST, f.properties->>'name', f.fid").format(
        sql.Identifier(store.partition_name(LAYER)), sql.SQL(" AND ").join(where)), params).fetchall()
    return [{"type": "Feature", "id": r[0], "geometry": json.loads(r[2]), "properties": r[1]} for r in rows]
