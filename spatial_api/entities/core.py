"""Geographic entities: codes, their links to representations and their life (tables of
migration 0018). Every change runs in one transaction, serialised by an advisory lock, and is
an ``entity_changesets`` row with a valid time; nothing is deleted — retiring an entity or
moving a representation closes a range.

Codes are ``<district><type letters><sequence>``: ``440307`` + ``JZ`` + ``0000001234``. The
sequence is per type and only grows (``entity_sequences``), so a code is never issued twice."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Iterator

import numpy as np
import psycopg
import shapely
from psycopg import sql
from psycopg.rows import dict_row

from spatial_api import db, store
from spatial_api.api import time as timepolicy
from spatial_api.config import Settings, author_default, get_settings
from spatial_api.entities.match import DISTANCE_M, match_geometries

#: The district's administrative division code (龙岗区), the first six digits of every code.
DISTRICT_CODE = "440307"

#: type → (code letters, Chinese title, English title)
TYPES: dict[str, tuple[str, str, str]] = {
    "building": ("JZ", "建筑物", "building"),
    "parcel": ("DK", "宗地", "parcel"),
    "road": ("DL", "道路", "road"),
    "manhole": ("JG", "检查井", "manhole"),
    "pipe_segment": ("GX", "管线段", "pipe segment"),
    "device": ("SB", "感知设备", "device"),
    "underground_structure": ("DX", "地下构筑物", "underground structure"),
    "water_body": ("SJ", "水体", "water body"),
}
_ALIASES = {**{v[0]: k for k, v in TYPES.items()}, **{v[1]: k for k, v in TYPES.items()},
            "房屋": "building", "建筑": "building", "地块": "parcel", "窨井": "manhole", "井": "manhole",
            "管线": "pipe_segment", "设备": "device", "地下空间": "underground_structure"}
CODE_RE = re.compile(r"^[0-9]{6}[A-Z]{2}[0-9]{10}$")
MATCHES = ("new", "key", "geometry")
LINK_KINDS = ("feature", "bim_model", "bim_element", "sta_thing")


class EntityError(ValueError):
    """A request about entities that cannot be done; nothing was written. ``parameter`` names
    what was wrong (``layer``, ``type``, ``code`` …); the message starts with it."""

    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter}: {message}")
        self.parameter, self.detail = parameter, message


def check_type(value: str | None, parameter: str = "type") -> str:
    """An entity type by name, Chinese title or code letters (``building``, ``建筑物``, ``JZ``)."""
    text = (value or "").strip()
    found = text if text in TYPES else _ALIASES.get(text) or _ALIASES.get(text.upper())
    if not found:
        raise EntityError(parameter, f"unknown entity type {value!r}; choose one of "
                                     + ", ".join(f"{k} ({v[1]}, {v[0]})" for k, v in TYPES.items()))
    return found


def check_code(value: str | None, parameter: str = "code") -> str:
    text = (value or "").strip().upper()
    if not CODE_RE.match(text):
        raise EntityError(parameter, f"{value!r} is not an entity code: 6-digit district, 2 type letters, "
                                     f"10-digit sequence, e.g. {DISTRICT_CODE}JZ0000001234")
    return text


def type_of_code(code: str) -> str | None:
    return _ALIASES.get(code[6:8]) if CODE_RE.match(code) else None


def _instant(value, parameter: str, settings: Settings, day: str = "start") -> datetime | None:
    if value is None or value == "":
        return None
    try:
        return timepolicy.to_instant(value, parameter, day=day, tz=settings.timezone)
    except timepolicy.TimeError as exc:
        raise EntityError(parameter, f"{value!r} is not a date: write YYYY-MM-DD or an ISO date-time "
                                     f"({exc.message})") from None


# -- transactions, changesets, codes ----------------------------------------------------------

@contextmanager
def _session(conn: psycopg.Connection | None, settings: Settings | None, dry_run: bool = False
             ) -> Iterator[psycopg.Connection]:
    """The caller's transaction (a savepoint inside it) or a new one; a dry run is rolled back.
    Entity writes are serialised by a transaction-scoped advisory lock per schema."""
    if conn is None:
        with db.transaction(settings or get_settings()) as own:
            with _session(own, settings, dry_run) as c:
                yield c
        return
    with conn.transaction() as tx:
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.entities'))")
        yield conn
        if dry_run:
            raise psycopg.Rollback(tx)


def _changeset(conn, action: str, valid_from: datetime, author: str | None, *, layer: str | None = None,
               counts: dict | None = None, message: str | None = None) -> int:
    return conn.execute(
        "INSERT INTO entity_changesets (action, layer, author, valid_from, counts, message) "
        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (action, layer, author or author_default(), valid_from, psycopg.types.json.Jsonb(counts or {}), message),
    ).fetchone()[0]


def _new_codes(conn, entity_type: str, n: int) -> list[str]:
    """``n`` fresh codes of a type (one statement; the counter row is locked until commit)."""
    if n <= 0:
        return []
    letters = TYPES[entity_type][0]
    last = conn.execute(
        "INSERT INTO entity_sequences AS s (type, last) VALUES (%s, %s) "
        "ON CONFLICT (type) DO UPDATE SET last = s.last + EXCLUDED.last RETURNING last",
        (entity_type, n)).fetchone()[0]
    return [f"{DISTRICT_CODE}{letters}{i:010d}" for i in range(last - n + 1, last + 1)]


def _insert_entities(conn, rows: list[tuple]) -> None:
    """rows: (code, type, name, valid_from, changeset)."""
    if rows:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO entities (code, type, name, valid_from, created_by) "
                            "VALUES (%s, %s, %s, %s, %s)", rows)


def _insert_links(conn, rows: list[tuple]) -> None:
    """rows: (code, kind, source, key, is_primary, valid_from, changeset)."""
    if rows:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO entity_links (code, kind, source, key, is_primary, valid_from, created_by) "
                            "VALUES (%s, %s, %s, %s, %s, %s, %s)", rows)


def _close_links(conn, ids: list[int], valid_to: datetime, changeset: int) -> None:
    if ids:
        conn.execute("UPDATE entity_links SET valid_to = greatest(valid_from, %s), closed_by = %s "
                     "WHERE id = ANY(%s) AND valid_to IS NULL", (valid_to, changeset, ids))


def _layer(conn, name: str | None, parameter: str = "layer") -> store.Layer:
    layer = store.get_layer(conn, name) if name and store.LAYER_NAME_RE.match(name) else None
    if layer is None:
        names = ", ".join(r[0] for r in conn.execute("SELECT name FROM layers ORDER BY name")) or "none yet"
        raise EntityError(parameter, f"no layer named {name!r}. Layers: {names}")
    return layer


def _entity_row(conn, code: str, parameter: str = "code") -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM entities WHERE code = %s", (code,)).fetchone()
    if row is None:
        raise EntityError(parameter, f"no entity {code!r}; list them with `geotwin entities list` or GET /entities")
    return row


# -- assign -----------------------------------------------------------------------------------

@dataclass
class AssignReport:
    """What an assign did (or, in a dry run, would do). ``matched``: features linked to an existing
    entity; ``new``: features that got a new entity; ``ambiguous``: features left unassigned
    because two candidates were too close to call; ``unresolved``: key matching found no entity;
    ``already``: features already linked (re-running is a no-op)."""

    layer: str
    type: str
    match: str
    dry_run: bool = False
    changeset_id: int | None = None
    matched: list[dict] = field(default_factory=list)
    new: list[dict] = field(default_factory=list)
    ambiguous: list[dict] = field(default_factory=list)
    unresolved: list[dict] = field(default_factory=list)
    relinked: list[dict] = field(default_factory=list)
    already: int = 0

    def counts(self) -> dict[str, int]:
        return {"matched": len(self.matched), "new": len(self.new), "ambiguous": len(self.ambiguous),
                "unresolved": len(self.unresolved), "relinked": len(self.relinked), "already": self.already}

    def to_dict(self) -> dict:
        return {**asdict(self), "counts": self.counts()}


def _layer_features(conn, layer: store.Layer, key: str | None, name_field: str | None, with_geometry: bool) -> dict:
    """Current features of a layer: fid, key value, name, first valid date, geometry (WKB)."""
    part = sql.Identifier(store.partition_name(layer.name))
    query = sql.SQL(
        """
        WITH first AS (SELECT h.fid, min(h.valid_from) AS since FROM {part} h
                       WHERE h.layer = %(layer)s AND h.superseded_at IS NULL GROUP BY h.fid)
        SELECT f.fid, f.properties ->> %(key)s, f.properties ->> %(name)s, first.since, {geom}
        FROM {part} f JOIN first ON first.fid = f.fid
        WHERE f.layer = %(layer)s AND f.valid_to IS NULL ORDER BY f.fid
        """
    ).format(part=part, geom=sql.SQL("ST_AsBinary(f.geom)" if with_geometry else "NULL"))
    rows = conn.execute(query, {"layer": layer.name, "key": key or "", "name": name_field or ""}).fetchall()
    cols = list(zip(*rows)) if rows else [()] * 5
    return {"fids": list(cols[0]), "keys": list(cols[1]), "names": list(cols[2]), "since": list(cols[3]),
            "wkb": list(cols[4])}


def _open_links(conn, source: str, kind: str = "feature") -> dict[str, tuple[int, str]]:
    """key → (link id, code) of the open links of a source."""
    return {k: (i, c) for i, k, c in conn.execute(
        "SELECT id, key, code FROM entity_links WHERE kind = %s AND source = %s AND valid_to IS NULL",
        (kind, source))}


def assign(layer: str, *, entity_type: str, key: str | None = None, ref_layer: str | None = None,
           match: str = "new", valid_from: date | datetime | str | None = None, author: str | None = None,
           settings: Settings | None = None, dry_run: bool = False, conn: psycopg.Connection | None = None,
           tolerance_m: float = DISTANCE_M, name_field: str | None = None, message: str | None = None) -> AssignReport:
    """Give the current features of ``layer`` their entities (see the module docstring and
    docs/architecture.md "Geographic entities"):

    - ``match="new"``: every feature without an entity gets a new one (its primary representation);
    - ``match="key"``: column ``key`` holds an entity code — or, with ``ref_layer``, the key of a
      feature of ``ref_layer`` whose entity is taken (addresses.building_id → buildings): the
      features become further representations of those entities;
    - ``match="geometry"``: each feature is matched to a current entity of the type by the geometry
      of its primary representation — polygons by IoU ≥ 0.5 (a second candidate within 0.1 of the
      best: ambiguous), points and lines by distance ≤ ``tolerance_m`` (Hausdorff for lines; a
      second candidate within a tenth of the tolerance of the best: ambiguous); unmatched features
      get new entities. Two features claiming one entity: the clearly better one wins, else both
      are ambiguous. Ambiguous features are reported, not assigned.

    Features already linked are left alone (``already``), so re-running changes nothing; with key
    matching a feature whose key now points at another entity is moved (``relinked``). A link is
    valid from ``valid_from``, by default from the feature's first version. With ``conn`` it runs
    in the caller's transaction (a savepoint); ``dry_run`` rolls it back and reports."""
    settings = settings or get_settings()
    entity_type = check_type(entity_type, "entity_type")
    if match not in MATCHES:
        raise EntityError("match", f"{match!r}: choose one of {', '.join(MATCHES)}")
    if match == "key" and not key:
        raise EntityError("key", "key matching needs the column holding entity codes (or, with ref_layer, "
                                 "the keys of the ref_layer's features)")
    if ref_layer and match != "key":
        raise EntityError("ref_layer", "a ref_layer is used with key matching only (give key=COLUMN)")
    if not (tolerance_m > 0):
        raise EntityError("tolerance_m", f"{tolerance_m!r}: give a distance in metres above 0")
    vf = _instant(valid_from, "valid_from", settings)
    report = AssignReport(layer=layer, type=entity_type, match=match, dry_run=dry_run)
    with _session(conn, settings, dry_run) as c:
        lay = _layer(c, layer)
        if key and key not in lay.schema and key != lay.key_field:
            raise EntityError("key", f"layer {layer!r} has no field {key!r}; its fields: {', '.join(lay.schema)}")
        if ref_layer:
            _layer(c, ref_layer, "ref_layer")
        if name_field is None and "name" in lay.schema:
            name_field = "name"
        feats = _layer_features(c, lay, key, name_field, match == "geometry")
        linked = _open_links(c, layer)
        todo = [i for i, fid in enumerate(feats["fids"]) if fid not in linked]
        plan_new: list[int] = []
        plan_link: list[tuple[int, str]] = []  # (feature index, code)
        relink: list[tuple[int, int, str]] = []  # (feature index, old link id, new code)
        if match == "new":
            report.already = len(feats["fids"]) - len(todo)
            plan_new = todo
        elif match == "key":
            targets = _key_targets(c, feats["keys"], entity_type, ref_layer)
            for i, fid in enumerate(feats["fids"]):
                code, reason = targets[i]
                if fid in linked:
                    link_id, current = linked[fid]
                    if code is None or code == current:
                        report.already += 1
                    else:
                        relink.append((i, link_id, code))
                elif code is None:
                    report.unresolved.append({"fid": fid, "key": feats["keys"][i], "reason": reason})
                else:
                    plan_link.append((i, code))
        else:
            report.already = len(feats["fids"]) - len(todo)
            cands = _candidates(c, entity_type, layer)
            outcome = match_geometries(
                shapely.from_wkb(np.array([feats["wkb"][i] for i in todo], dtype=object)) if todo else np.array([], object),
                cands["geoms"], lay.geometry_family, tolerance_m)
            for j, i in enumerate(todo):
                kind, best, score, others = outcome[j]
                if kind == "matched":
                    plan_link.append((i, cands["codes"][best]))
                    report.matched.append({"fid": feats["fids"][i], "code": cands["codes"][best], "score": score})
                elif kind == "new":
                    plan_new.append(i)
                else:
                    report.ambiguous.append({"fid": feats["fids"][i], "reason": kind, "candidates": [
                        {"code": cands["codes"][k], "score": s} for k, s in others]})
        since = [vf or s for s in feats["since"]]
        if plan_new or plan_link or relink:
            involved = plan_new + [i for i, _ in plan_link] + [i for i, _, _ in relink]
            cs = _changeset(c, "assign", vf or min(since[i] for i in involved), author, layer=layer, message=message)
            report.changeset_id = cs
            codes = _new_codes(c, entity_type, len(plan_new))
            _insert_entities(c, [(code, entity_type, feats["names"][i], since[i], cs) for code, i in zip(codes, plan_new)])
            links = [(code, "feature", layer, feats["fids"][i], True, since[i], cs) for code, i in zip(codes, plan_new)]
            report.new = [{"fid": feats["fids"][i], "code": code} for code, i in zip(codes, plan_new)]
            starts = _entity_starts(c, [code for _, code in plan_link] + [code for *_, code in relink])
            primary = match == "geometry"
            links += [(code, "feature", layer, feats["fids"][i], primary and not _has_primary(c, code),
                       max(since[i], starts[code]), cs) for i, code in plan_link]
            if match == "key":
                report.matched = [{"fid": feats["fids"][i], "code": code} for i, code in plan_link]
            for i, link_id, code in relink:
                when = max(vf or datetime.now(since[i].tzinfo), starts[code])
                _close_links(c, [link_id], when, cs)
                links.append((code, "feature", layer, feats["fids"][i], False, when, cs))
                report.relinked.append({"fid": feats["fids"][i], "from": linked[feats["fids"][i]][1], "to": code})
            _insert_links(c, links)
            c.execute("UPDATE entity_changesets SET counts = %s WHERE id = %s",
                      (psycopg.types.json.Jsonb(report.counts()), cs))
    if dry_run:
        report.changeset_id = None  # rolled back: nothing was recorded
    return report


def _entity_starts(conn, codes: list[str]) -> dict[str, datetime]:
    if not codes:
        return {}
    return dict(conn.execute("SELECT code, valid_from FROM entities WHERE code = ANY(%s)", (list(set(codes)),)))


def _has_primary(conn, code: str) -> bool:
    return conn.execute("SELECT 1 FROM entity_links WHERE code = %s AND is_primary AND valid_to IS NULL LIMIT 1",
                        (code,)).fetchone() is not None


def _key_targets(conn, keys: list, entity_type: str, ref_layer: str | None) -> list[tuple[str | None, str | None]]:
    """(code, reason it has none) for each key value."""
    out: list[tuple[str | None, str | None]] = []
    if ref_layer:
        via = _open_links(conn, ref_layer)
        types = dict(conn.execute("SELECT code, type FROM entities WHERE code = ANY(%s)",
                                  ([c for _, c in via.values()],)))
        for k in keys:
            if k is None or k == "":
                out.append((None, "empty key"))
            elif k not in via:
                out.append((None, f"no feature {k!r} with an entity in layer {ref_layer!r}"))
            elif types.get(via[k][1]) != entity_type:
                out.append((None, f"the entity of {ref_layer}/{k} is a {types.get(via[k][1])}, not a {entity_type}"))
            else:
                out.append((via[k][1], None))
        return out
    wanted = [str(k).strip().upper() for k in keys if k]
    found = {code: (t, vt) for code, t, vt in conn.execute(
        "SELECT code, type, valid_to FROM entities WHERE code = ANY(%s)", (wanted,))}
    for k in keys:
        code = str(k).strip().upper() if k else ""
        if not code:
            out.append((None, "empty key"))
        elif code not in found:
            out.append((None, f"no entity {code!r}"))
        elif found[code][0] != entity_type:
            out.append((None, f"entity {code} is a {found[code][0]}, not a {entity_type}"))
        elif found[code][1] is not None:
            out.append((None, f"entity {code} was retired"))
        else:
            out.append((code, None))
    return out


def _candidates(conn, entity_type: str, layer: str) -> dict:
    """Current entities of the type with a current primary feature, not yet represented in
    ``layer``: their codes and geometries (EPSG:4490, shapely)."""
    rows = conn.execute(
        """
        SELECT l.code, ST_AsBinary(f.geom)
        FROM entity_links l
        JOIN entities e ON e.code = l.code AND e.valid_to IS NULL AND e.type = %s
        JOIN features f ON f.layer = l.source AND f.fid = l.key AND f.valid_to IS NULL
        WHERE l.kind = 'feature' AND l.is_primary AND l.valid_to IS NULL
          AND NOT EXISTS (SELECT 1 FROM entity_links o WHERE o.code = l.code AND o.kind = 'feature'
                          AND o.source = %s AND o.valid_to IS NULL)
        ORDER BY l.code
        """, (entity_type, layer)).fetchall()
    return {"codes": [r[0] for r in rows],
            "geoms": shapely.from_wkb(np.array([bytes(r[1]) for r in rows], dtype=object)) if rows else np.array([], object)}


# -- life: split, merge, retire, link ----------------------------------------------------------

def _alive(conn, code: str, vf: datetime, parameter: str = "code") -> dict:
    row = _entity_row(conn, check_code(code, parameter), parameter)
    if row["valid_to"] is not None:
        raise EntityError(parameter, f"entity {row['code']} was retired on {row['valid_to'].date()}; "
                                     "only a current entity can change")
    if vf <= row["valid_from"]:
        raise EntityError("valid_from", f"{vf.isoformat()} is not after entity {row['code']}'s start "
                                        f"({row['valid_from'].isoformat()}); changes come in valid-time order")
    return row


def _feature_for(conn, layer: str, fid: str, vf: datetime, parameter: str) -> None:
    _layer(conn, layer, parameter)
    cond, params = store.temporal_filter(vf, None)
    q = sql.SQL("SELECT 1 FROM {} f WHERE f.layer = %s AND f.fid = %s AND ({} OR f.valid_to IS NULL)").format(
        sql.Identifier(store.partition_name(layer)), cond)
    if conn.execute(q, [layer, fid, *params]).fetchone() is None:
        raise EntityError(parameter, f"layer {layer!r} has no feature {fid!r} valid at {vf.date()}")


def _retire(conn, row: dict, vf: datetime, cs: int) -> None:
    conn.execute("UPDATE entities SET valid_to = %s, retired_by = %s WHERE code = %s", (vf, cs, row["code"]))
    ids = [r[0] for r in conn.execute("SELECT id FROM entity_links WHERE code = %s AND valid_to IS NULL", (row["code"],))]
    _close_links(conn, ids, vf, cs)


def _take_features(conn, into: list[tuple[str, str]], allowed: set[str], vf: datetime, cs: int, parameter: str) -> None:
    """Check that each (layer, fid) is free or held by one of ``allowed`` (then released at vf)."""
    for layer, fid in into:
        _feature_for(conn, layer, fid, vf, parameter)
        row = conn.execute("SELECT id, code FROM entity_links WHERE kind = 'feature' AND source = %s AND key = %s "
                           "AND valid_to IS NULL", (layer, fid)).fetchone()
        if row and row[1] not in allowed:
            raise EntityError(parameter, f"{layer}/{fid} already represents entity {row[1]}; retire or split that first")
        if row:
            _close_links(conn, [row[0]], vf, cs)


def split(code: str, *, into: list[tuple[str, str]], valid_from, author: str | None = None,
          settings: Settings | None = None, conn: psycopg.Connection | None = None, names: list[str] | None = None,
          message: str | None = None) -> dict:
    """Entity ``code`` becomes several: it is retired at ``valid_from`` (its representations
    closed there) and each (layer, fid) of ``into`` becomes the primary representation of a new
    entity of the same type, with lineage parent → child ('split')."""
    settings = settings or get_settings()
    vf = _instant(valid_from, "valid_from", settings)
    if vf is None:
        raise EntityError("valid_from", "a split needs the date it happened")
    if len(into) < 2:
        raise EntityError("into", "a split makes at least two entities: give two or more LAYER/FID")
    with _session(conn, settings) as c:
        parent = _alive(c, code, vf)
        cs = _changeset(c, "split", vf, author, counts={"parents": 1, "children": len(into)}, message=message)
        _take_features(c, into, {parent["code"]}, vf, cs, "into")
        _retire(c, parent, vf, cs)
        children = _new_codes(c, parent["type"], len(into))
        _insert_entities(c, [(ch, parent["type"], (names or [None] * len(into))[i], vf, cs) for i, ch in enumerate(children)])
        _insert_links(c, [(ch, "feature", layer, fid, True, vf, cs) for ch, (layer, fid) in zip(children, into)])
        with c.cursor() as cur:
            cur.executemany("INSERT INTO entity_lineage (parent, child, relation, valid_from, changeset_id) "
                            "VALUES (%s, %s, 'split', %s, %s)", [(parent["code"], ch, vf, cs) for ch in children])
    return {"parent": parent["code"], "children": children, "changeset_id": cs, "valid_from": vf}


def merge(codes: list[str], *, into: tuple[str, str], valid_from, author: str | None = None,
          settings: Settings | None = None, conn: psycopg.Connection | None = None, name: str | None = None,
          message: str | None = None) -> dict:
    """Several entities of one type become one: each is retired at ``valid_from`` and the feature
    ``into`` (layer, fid) is the primary representation of a new entity, lineage parent → child ('merge')."""
    settings = settings or get_settings()
    vf = _instant(valid_from, "valid_from", settings)
    if vf is None:
        raise EntityError("valid_from", "a merge needs the date it happened")
    if len(set(codes)) < 2:
        raise EntityError("codes", "a merge takes at least two different entities")
    with _session(conn, settings) as c:
        parents = [_alive(c, code, vf, "codes") for code in dict.fromkeys(codes)]
        types = {p["type"] for p in parents}
        if len(types) > 1:
            raise EntityError("codes", f"entities of different types cannot merge ({', '.join(sorted(types))})")
        cs = _changeset(c, "merge", vf, author, counts={"parents": len(parents), "children": 1}, message=message)
        _take_features(c, [into], {p["code"] for p in parents}, vf, cs, "into")
        for p in parents:
            _retire(c, p, vf, cs)
        child = _new_codes(c, parents[0]["type"], 1)[0]
        _insert_entities(c, [(child, parents[0]["type"], name, vf, cs)])
        _insert_links(c, [(child, "feature", into[0], into[1], True, vf, cs)])
        with c.cursor() as cur:
            cur.executemany("INSERT INTO entity_lineage (parent, child, relation, valid_from, changeset_id) "
                            "VALUES (%s, %s, 'merge', %s, %s)", [(p["code"], child, vf, cs) for p in parents])
    return {"parents": [p["code"] for p in parents], "child": child, "changeset_id": cs, "valid_from": vf}


def retire(code: str, *, valid_from, author: str | None = None, settings: Settings | None = None,
           conn: psycopg.Connection | None = None, message: str | None = None) -> dict:
    """The entity ceases to exist at ``valid_from`` (demolished, filled in …); its code stays."""
    settings = settings or get_settings()
    vf = _instant(valid_from, "valid_from", settings)
    if vf is None:
        raise EntityError("valid_from", "retiring needs the date")
    with _session(conn, settings) as c:
        row = _alive(c, code, vf)
        cs = _changeset(c, "retire", vf, author, counts={"retired": 1}, message=message)
        _retire(c, row, vf, cs)
    return {"code": row["code"], "changeset_id": cs, "valid_from": vf}


def link(code: str, *, kind: str, source: str, key: str, valid_from=None, author: str | None = None,
         settings: Settings | None = None, conn: psycopg.Connection | None = None) -> dict:
    """Link one representation by hand: a BIM model (``kind="bim_model"``, source = key = model
    id), an element (``bim_element``: model id, GlobalId), a Thing (``sta_thing``: 'sta', id) or a
    feature (layer, fid). A representation held by another entity is moved (closed there)."""
    settings = settings or get_settings()
    if kind not in LINK_KINDS:
        raise EntityError("kind", f"{kind!r}: choose one of {', '.join(LINK_KINDS)}")
    with _session(conn, settings) as c:
        row = _entity_row(c, check_code(code))
        if row["valid_to"] is not None:
            raise EntityError("code", f"entity {row['code']} was retired; link to its successor")
        vf = _instant(valid_from, "valid_from", settings) or max(row["valid_from"], datetime.now(row["valid_from"].tzinfo))
        if kind == "feature":
            _feature_for(c, source, key, vf, "source")
        elif kind in ("bim_model", "bim_element"):
            if not c.execute("SELECT 1 FROM cim_models WHERE id = %s", (source,)).fetchone():
                raise EntityError("source", f"no registered BIM model {source!r} (geotwin cim models)")
        old = c.execute("SELECT id, code FROM entity_links WHERE kind = %s AND source = %s AND key = %s "
                        "AND valid_to IS NULL", (kind, source, key)).fetchone()
        if old and old[1] == row["code"]:
            return {"code": row["code"], "changeset_id": None, "already": True}  # nothing to record
        cs = _changeset(c, "link", vf, author, counts={"links": 1})
        if old:
            _close_links(c, [old[0]], vf, cs)
        _insert_links(c, [(row["code"], kind, source, key, False, vf, cs)])
    return {"code": row["code"], "changeset_id": cs, "already": False}


# -- reading ----------------------------------------------------------------------------------

def _valid_at(alias: str, at: datetime | None) -> tuple[str, list]:
    if at is None:
        return f"{alias}.valid_to IS NULL", []
    return f"({alias}.valid_from <= %s AND ({alias}.valid_to IS NULL OR {alias}.valid_to > %s))", [at, at]


def entity_for_feature(conn: psycopg.Connection, layer: str, fid: str, at: datetime | None = None) -> str | None:
    """The code of the entity that feature ``layer``/``fid`` represents (now, or at ``at``)."""
    cond, params = _valid_at("l", at)
    row = conn.execute(f"SELECT l.code FROM entity_links l WHERE l.kind = 'feature' AND l.source = %s AND l.key = %s "
                       f"AND {cond} ORDER BY l.valid_from DESC LIMIT 1", [layer, fid, *params]).fetchone()
    return row[0] if row else None


def links_of(conn, code: str) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM entity_links WHERE code = %s ORDER BY valid_from, id", (code,)).fetchall()


def lineage_of(conn, code: str) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        parents = cur.execute("SELECT parent AS code, relation, valid_from, changeset_id FROM entity_lineage "
                              "WHERE child = %s ORDER BY parent", (code,)).fetchall()
        children = cur.execute("SELECT child AS code, relation, valid_from, changeset_id FROM entity_lineage "
                               "WHERE parent = %s ORDER BY child", (code,)).fetchall()
    return {"parents": parents, "children": children}


def changeset(conn, cs_id: int | None) -> dict | None:
    if cs_id is None:
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT id, action, layer, author, recorded_at, valid_from, counts FROM entity_changesets "
                           "WHERE id = %s", (cs_id,)).fetchone()


__all__ = ["AssignReport", "CODE_RE", "DISTRICT_CODE", "EntityError", "LINK_KINDS", "MATCHES", "TYPES", "assign",
           "changeset", "check_code", "check_type", "entity_for_feature", "lineage_of", "link", "links_of", "merge",
           "retire", "split", "type_of_code"]
