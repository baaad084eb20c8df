"""An entity as one document (``/entities/{code}``, ``geotwin entities show``) and entity listings
(``/entities``), as of a valid time, showing only what the caller may see."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Callable

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from spatial_api import store
from spatial_api.entities.core import TYPES, EntityError, _valid_at, changeset, check_code, lineage_of, links_of
from spatial_api.rooms import representation_providers

Visible = Callable[[str], bool]  # layer name → whether the caller may see it


def _iso(v):
    return v.isoformat() if isinstance(v, datetime) else v


def _alive(row: dict, at: datetime | None) -> bool:
    if at is None:
        return row["valid_to"] is None
    return row["valid_from"] <= at and (row["valid_to"] is None or row["valid_to"] > at)


def _feature_versions(conn, layer: str, fid: str, at: datetime | None) -> tuple[list[dict], dict | None]:
    """Every version of a feature (without geometry) and the one valid at ``at`` (with GeoJSON)."""
    versions = [{"vid": v["vid"], "validFrom": _iso(v["valid_from"]), "validTo": _iso(v["valid_to"]),
                 "recorded": _iso(v["tx_from"]), "changeset": v["changeset_id"], "closedBy": v["closed_by"],
                 "supersededAt": _iso(v["superseded_at"])}
                for v in store.feature_history(conn, layer, fid)]
    cond, params = store.temporal_filter(at, None)
    q = sql.SQL("SELECT f.vid, f.valid_from, f.valid_to, f.properties, ST_AsGeoJSON(f.geom, 9, 0) AS geometry "
                "FROM {} f WHERE f.layer = %s AND f.fid = %s AND {} LIMIT 1").format(
        sql.Identifier(store.partition_name(layer)), cond)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q, [layer, fid, *params]).fetchone()
    version = None
    if row:
        version = {"vid": row["vid"], "validFrom": _iso(row["valid_from"]), "validTo": _iso(row["valid_to"]),
                   "properties": row["properties"], "geometry": json.loads(row["geometry"])}
    return versions, version


def _link_doc(link: dict) -> dict:
    return {"kind": link["kind"], "source": link["source"], "key": link["key"], "primary": link["is_primary"],
            "validFrom": _iso(link["valid_from"]), "validTo": _iso(link["valid_to"]),
            "changeset": link["created_by"], "closedBy": link["closed_by"]}


_LINKABLE = ("bim_model", "bim_element", "sta_thing")


def _ident(rep: dict) -> tuple:
    thing = rep.get("thing")
    return rep.get("kind"), rep.get("model"), rep.get("globalId"), None if thing is None else str(thing)


def describe(conn: psycopg.Connection, code: str, at: datetime | None, *, visible: Visible,
             base: str = "", providers: bool = True) -> dict:
    """The entity ``code`` as of ``at`` (None: now): type, name, life, lineage both ways, and every
    representation valid then — features with their versions (and the version valid then), BIM
    models and elements, Things — plus what the rooms contribute (``geotwin.representations``).
    ``history`` lists the representation history (every link's valid range). Representations in
    layers ``visible`` refuses are left out, from both."""
    code = check_code(code)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM entities WHERE code = %s", (code,)).fetchone()
    if row is None:
        raise EntityError("code", f"no entity {code!r}")
    links = [ln for ln in links_of(conn, code) if ln["kind"] != "feature" or visible(ln["source"])]
    lineage = lineage_of(conn, code)
    alive = _alive(row, at)
    reps: list[dict] = []
    for ln in links:
        if not _alive(ln, at):
            continue
        rep = _link_doc(ln)
        if ln["kind"] == "feature":
            versions, version = _feature_versions(conn, ln["source"], ln["key"], at)
            rep.update({"layer": ln["source"], "fid": ln["key"], "version": version, "versions": versions,
                        "href": f"{base}/collections/{ln['source']}/items/{ln['key']}"})
        elif ln["kind"] == "bim_model":
            rep.update({"model": ln["key"]})
        elif ln["kind"] == "bim_element":
            rep.update({"model": ln["source"], "globalId": ln["key"]})
        elif ln["kind"] == "sta_thing":
            rep.update({"thing": ln["key"], "href": f"{base}/sta/v1.1/Things({ln['key']})"})
        reps.append(rep)
    letters, zh, en = TYPES.get(row["type"], ("", row["type"], row["type"]))
    doc = {
        "code": code, "type": row["type"], "typeTitle": {"zh": zh, "en": en}, "name": row["name"],
        "datetime": _iso(at), "alive": alive,
        "life": {"validFrom": _iso(row["valid_from"]), "validTo": _iso(row["valid_to"]),
                 "created": _cs(changeset(conn, row["created_by"])), "retired": _cs(changeset(conn, row["retired_by"]))},
        "lineage": {side: [{"code": r["code"], "relation": r["relation"], "validFrom": _iso(r["valid_from"]),
                            "changeset": r["changeset_id"], "href": f"{base}/entities/{r['code']}"} for r in rows]
                    for side, rows in lineage.items()},
        "representations": reps,
        "history": [_link_doc(ln) for ln in links],
    }
    if providers and alive:
        entity = {**doc, "representations": [r for r in reps]}
        for room, provider in representation_providers():
            for rep in provider(conn, entity, at) or []:
                same = next((r for r in reps if r["kind"] in _LINKABLE and _ident(r) == _ident(rep)), None)
                if same is not None:  # a linked model or Thing: the room says more about it
                    same.update({"room": room, **{k: v for k, v in rep.items() if k not in same}})
                else:
                    doc["representations"].append({"room": room, **rep})
    return doc


def _cs(row: dict | None) -> dict | None:
    if row is None:
        return None
    return {"id": row["id"], "action": row["action"], "layer": row["layer"], "author": row["author"],
            "recorded": _iso(row["recorded_at"]), "validFrom": _iso(row["valid_from"]), "counts": row["counts"]}


def listing(conn: psycopg.Connection, *, at: datetime | None, visible_layers: list[str],
            entity_type: str | None = None, bbox: tuple[float, float, float, float] | None = None,
            limit: int = 100, offset: int = 0) -> tuple[list[dict], bool]:
    """Entities valid at ``at`` (of a type, whose primary feature meets ``bbox`` in EPSG:4490),
    ordered by code, each with the geometry of its primary feature valid then (None when that
    feature is in a layer the caller may not see). Returns (rows, whether more follow)."""
    e_cond, e_params = _valid_at("e", at)
    l_cond, l_params = _valid_at("l", at)
    f_cond, f_params = store.temporal_filter(at, None, "f")
    where = [sql.SQL(e_cond)]
    if entity_type:
        where.append(sql.SQL("e.type = %s"))
    if bbox:
        where.append(sql.SQL("g.geom && ST_MakeEnvelope(%s, %s, %s, %s, 4490)"))
    query = sql.SQL(
        """
        SELECT e.code, e.type, e.name, e.valid_from, e.valid_to, g.layer, g.fid, ST_AsGeoJSON(g.geom, 9, 0) AS geometry
        FROM entities e
        LEFT JOIN LATERAL (
            SELECT l.source AS layer, l.key AS fid, f.geom
            FROM entity_links l JOIN features f ON f.layer = l.source AND f.fid = l.key AND {f_cond}
            WHERE l.code = e.code AND l.kind = 'feature' AND l.is_primary AND {l_cond} AND l.source = ANY(%s)
            ORDER BY l.valid_from DESC LIMIT 1) g ON true
        WHERE {where}
        ORDER BY e.code LIMIT %s OFFSET %s
        """
    ).format(f_cond=f_cond, l_cond=sql.SQL(l_cond), where=sql.SQL(" AND ").join(where))
    # parameter order: f_cond (inside the join), l_cond, the visible layers, then the WHERE
    params = [*f_params, *l_params, visible_layers, *e_params]
    if entity_type:
        params.append(entity_type)
    if bbox:
        params.extend(bbox)
    params += [limit + 1, offset]
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(query, params).fetchall()
    return rows[:limit], len(rows) > limit


__all__ = ["describe", "listing"]
