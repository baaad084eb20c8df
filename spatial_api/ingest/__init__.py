"""Ingestion: file → read, reproject, validate (readers) → check against the layer → store.

``ingest_vector`` is what ``geotwin ingest vector`` and the demo builder call. It is
all-or-nothing: any error leaves the layer exactly as it was and raises :class:`IngestError`
with a message naming the file, the row and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from spatial_api import db, events, store
from spatial_api.api import time as timepolicy
from spatial_api.config import Settings, author_default, get_settings
from spatial_api.ingest.readers import read_vector
from spatial_api.ingest.types import IngestError, PreparedBatch, Rejected, in_cli_words  # noqa: F401 (Rejected: re-exported)

__all__ = ["IngestError", "IngestSummary", "ingest_vector", "parse_valid_time", "prepare_properties"]

Progress = Callable[[str, int, int], None]


@dataclass
class IngestSummary:
    layer: str
    source: str
    mode: str
    valid_from: str
    changeset_id: int | None = None
    new_layer: bool = False
    skipped: bool = False  # nothing to write: the layer already holds this state (no changeset)
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    closed: int = 0
    repaired: int = 0
    rejected: int = 0
    current_total: int = 0
    seconds: float = 0.0
    source_crs: str | None = None
    encoding: str | None = None
    rejected_rows: list[dict] = field(default_factory=list)
    repaired_rows: list[int] = field(default_factory=list)
    samples: dict[str, list[str]] = field(default_factory=dict)
    correction: bool = False  # valid from before the layer's latest change: history re-derived from there
    within_tolerance: int = 0  # differed from the stored version only by round-off: left unchanged
    tolerance_deg: float | None = None  # the change-detection tolerance used, in degrees of CGCS2000
    tolerance_note: str | None = None  # how it was chosen
    entities: dict | None = None  # the entity assignment's report (--entity-type), see spatial_api.entities

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_valid_time(value: date | datetime | str | None, tz: str, *, param: str = "--valid-from") -> datetime:
    """The house's time policy (spatial_api.api.time): a date means 00:00 in the district's time
    zone, a naive date-time is district time too, an offset is honoured; None is now."""
    if value is None:
        return datetime.now(timepolicy.zone(tz))
    try:
        return timepolicy.to_instant(value, param, day="start", tz=tz)
    except timepolicy.TimeError as exc:
        raise IngestError(f"{param} {str(value).strip()!r} is not a date: write it as YYYY-MM-DD (e.g. 2023-12-31) "
                          f"or an ISO date-time (2023-12-31T08:00:00+08:00). ({exc.message})") from None


def source_digest(path: Path) -> str:
    """sha256 over the file, its shapefile companions, or every file of a folder (FileGDB)."""
    h = hashlib.sha256()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    elif path.suffix.lower() == ".shp":
        files = sorted(p for p in path.parent.glob(path.stem + ".*") if p.is_file())
    else:
        files = [path]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# -- properties ------------------------------------------------------------------------------

_TRUE = {"true", "t", "yes", "y", "1", "是"}
_FALSE = {"false", "f", "no", "n", "0", "否"}


def _coerce(series: pd.Series, target: str) -> tuple[pd.Series, pd.Series]:
    """Convert a column to ``target``; returns (converted, mask of values that did not convert)."""
    present = series.notna()
    if target == "string":
        if pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty"):
            return series.astype(object).where(present, None), pd.Series(False, index=series.index)
        out = series.astype(object).where(present, None)
        out = out.map(lambda v: v if v is None else (v.isoformat() if hasattr(v, "isoformat") else str(v)))
        return out, pd.Series(False, index=series.index)
    if target in ("integer", "number"):
        num = pd.to_numeric(series, errors="coerce")
        bad = present & num.isna()
        if target == "integer":
            frac = num.notna() & (num != np.floor(num.fillna(0)))
            bad |= frac
            num = num.where(~bad).round().astype("Int64")
        else:
            num = num.astype("float64")
        return num, bad
    if target == "boolean":
        def to_bool(v):
            if v is None or (isinstance(v, float) and np.isnan(v)):
                return None
            if isinstance(v, (bool, np.bool_)):
                return bool(v)
            s = str(v).strip().lower()
            return True if s in _TRUE else False if s in _FALSE else "bad"
        out = series.astype(object).map(to_bool)
        bad = out.map(lambda v: v == "bad")
        return out.where(~bad, None), bad
    if target in ("date", "datetime"):
        ts = pd.to_datetime(series, errors="coerce", format="mixed") if series.dtype == object or pd.api.types.is_string_dtype(series) else pd.to_datetime(series, errors="coerce")
        bad = present & ts.isna()
        if target == "date":
            out = ts.dt.strftime("%Y-%m-%d")
        else:
            out = ts.map(lambda t: None if pd.isna(t) else t.isoformat())
        return out.astype(object).where(ts.notna(), None), bad
    raise ValueError(target)


def prepare_properties(batch: PreparedBatch, schema: dict[str, str]) -> pd.DataFrame:
    """The batch's properties converted to the layer's types (columns in schema order); the
    first value that does not convert is an error naming its row and field."""
    frame = batch.properties
    out = pd.DataFrame(index=frame.index)
    for name, target in schema.items():
        if name not in frame.columns:
            out[name] = None
            continue
        converted, bad = _coerce(frame[name], target)
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise IngestError(
                f"{batch.source}: row {int(batch.rows[pos])}: field {name!r} must be "
                f"{'an' if target == 'integer' else 'a'} {target} (layer schema), got "
                f"{frame[name].iloc[pos]!r}. Fix the value, or load into a new layer."
            )
        out[name] = converted
    return out


def _reconcile_schema(batch: PreparedBatch, layer, evolve: bool,
                      id_member: bool = False) -> tuple[dict[str, str], list[dict] | None]:
    """The schema to write with, and the layer's new property list if it grew. ``id_member``: the
    batch's field "id" is the features' GeoJSON "id" member (see _id_member_view)."""
    if layer is None:
        return dict(batch.schema), None
    current = layer.schema
    extra = [c for c in batch.schema if c not in current]
    if extra and not evolve:
        member = id_member and "id" in extra
        if member and layer.key_field and layer.key_field != "id":
            advice = (f"layer {layer.name!r} is keyed by {layer.key_field!r}; to keep the ids as a property "
                      '"id", pass --evolve-schema')
        else:
            advice = 'to match features by it, pass --key id (or --evolve-schema to keep it as a property "id")'
        if member and extra == ["id"]:
            raise IngestError(f"{batch.source}: the features' GeoJSON \"id\" member is not a field of layer "
                              f"{layer.name!r}; {advice}.")
        others = [c for c in extra if not (member and c == "id")]
        raise IngestError(
            f"{batch.source}: field(s) {', '.join(map(repr, others))} are not in layer "
            f"{layer.name!r}'s schema ({', '.join(current) or 'no fields'}). Rename them to match, "
            "or pass --evolve-schema to add them to the layer."
            + (f" Nor is the features' GeoJSON \"id\" member: {advice}." if member else "")
        )
    if extra:
        props = list(layer.properties) + [{"name": c, "type": batch.schema[c]} for c in extra]
        return {p["name"]: p["type"] for p in props}, props
    return current, None


def _keys_of(values: list) -> list[str]:
    """Key values as text; 12.0 read from a float column is the key "12"."""
    return [str(int(v)) if isinstance(v, (float, np.floating)) and float(v).is_integer() else str(v)
            for v in values]


def _id_member_view(batch: PreparedBatch, existing, key: str | None) -> tuple[PreparedBatch, pd.Series | None, bool]:
    """The part the features' GeoJSON "id" member (RFC 7946; ``id_member`` of a
    readers.GeoJSONBatch) plays in this load: (batch to check and store, the member when it is
    the key, whether the batch's field "id" is the member).

    With --key id (or a layer keyed by "id") the member is the key, stored as the property "id"
    only where the layer already has one (layers loaded before member and property were told
    apart); a property "id" inside the features' ``properties`` stays that property. Without it,
    the member is the field "id", unless the properties have their own."""
    ids = getattr(batch, "id_member", None)
    if ids is None:
        return batch, None, False
    own = "id" in batch.schema
    if key == "id" and (own or existing is None or "id" not in existing.schema):
        return batch, ids, False
    if own:
        return batch, None, False
    column = pd.Series(ids.loc[batch.rows].to_numpy(), index=batch.properties.index, name="id")
    props = batch.properties.copy(deep=False)
    props.insert(0, "id", column)
    view = dataclasses.replace(batch, properties=props, schema={"id": batch.id_member_type, **batch.schema})
    return view, (ids if key == "id" else None), True


def _keys(batch: PreparedBatch, key: str, member: pd.Series | None = None) -> np.ndarray:
    """Key values as text, one per feature; ``member``: the features' GeoJSON "id" members are the key."""
    if member is not None:
        col = pd.Series(member.loc[batch.rows].to_numpy(), index=batch.properties.index)
    elif key not in batch.properties.columns:
        raise IngestError(
            f"--key {key!r}: {batch.source} has no field {key!r}. Its fields are: "
            f"{', '.join(batch.properties.columns) or '(none)'}."
        )
    else:
        col = batch.properties[key]
    null = col.isna().to_numpy()
    if null.any():
        pos = int(np.flatnonzero(null)[0])
        if member is not None:
            raise IngestError(
                f"{batch.source}: row {int(batch.rows[pos])}: the feature has no GeoJSON \"id\" member, "
                "which is the key (--key id). Every feature needs one; add it or choose another --key."
            )
        raise IngestError(
            f"{batch.source}: row {int(batch.rows[pos])}: key field {key!r} is empty. "
            "Every feature needs a key value; fill it in or choose another --key."
        )
    if pd.api.types.infer_dtype(col, skipna=True) == "string":
        values = col.astype(object)
    else:
        values = pd.Series(_keys_of(col.tolist()), index=col.index)
    dup = values.duplicated(keep=False).to_numpy()
    if dup.any():
        first = values[dup].iloc[0]
        rows = batch.rows[np.flatnonzero((values == first).to_numpy())]
        raise IngestError(
            f"{batch.source}: key {key}={first!r} appears in rows {', '.join(map(str, rows[:5]))}. "
            "A key must identify one feature: fix the duplicates or choose another --key."
        )
    return values.to_numpy(dtype=object)


#: Files whose coordinates are decimal text: the precision they were written with is all they can say.
TEXT_COORDINATE_SUFFIXES = (".geojson", ".json", ".geojsonl", ".geojsons", ".geojsonseq")
_PAIR = re.compile(rb"\[\s*-?\d+(?:\.(\d*))?(?:[eE][-+]?\d+)?\s*,\s*-?\d+(?:\.(\d*))?")
METRES_PER_DEGREE = 111_320.0  # of latitude: converts a projected tolerance conservatively


def written_decimals(path: Path, sample_bytes: int = 4 << 20) -> int | None:
    """The most decimals any coordinate pair of a GeoJSON-like text file is written with (from its
    first ``sample_bytes``), or None when it cannot tell (not text, no pairs, exponents)."""
    if path.suffix.lower() not in TEXT_COORDINATE_SUFFIXES or not path.is_file():
        return None
    with path.open("rb") as fh:
        head = fh.read(sample_bytes)
    most = None
    for m in _PAIR.finditer(head):
        if b"e" in m.group(0).lower():
            return None
        for frac in m.groups():
            n = len(frac or b"")
            most = n if most is None else max(most, n)
    return most


def change_tolerance(path: Path, source_crs: str | None, tolerance: float | None) -> tuple[float, str]:
    """The tolerance (degrees of CGCS2000) below which a geometry difference is round-off.

    ``tolerance`` is given in the file's units (degrees for a geographic CRS, metres for a
    projected one). Default: 1e-9° (~0.1 mm); a text file written with fewer decimals (GeoJSON
    with 7 decimals: 1e-7°, ~1 cm — RFC 7946 recommends 6) cannot express more, so its own
    precision is used instead."""
    geographic = True
    try:
        import pyproj

        if source_crs and source_crs.upper().startswith(("EPSG:", "ESRI:")):
            geographic = pyproj.CRS.from_user_input(source_crs).is_geographic
    except Exception:  # a CRS pyproj cannot name (GCJ-02, a local grid): treated as degrees
        geographic = True
    if tolerance is not None:
        if not (tolerance >= 0 and math.isfinite(tolerance)):
            raise IngestError(f"--tolerance {tolerance!r}: give a distance of 0 or more, in the file's units "
                              "(degrees for longitude/latitude, metres for projected coordinates)")
        deg = tolerance if geographic else tolerance / METRES_PER_DEGREE
        return deg, f"--tolerance {tolerance:g} {'°' if geographic else 'm'}"
    decimals = written_decimals(Path(path))
    if decimals is not None and geographic and decimals < 9:
        return 10.0 ** -decimals, f"coordinates written with {decimals} decimals"
    return store.DEFAULT_TOLERANCE_DEG, "default (1e-9°, about 0.1 mm)"


@in_cli_words
def ingest_vector(
    path: str | Path,
    *,
    layer: str,
    key: str | None = None,
    mode: str = "replace",
    valid_from: date | datetime | str | None = None,
    crs: str | None = None,
    from_gcj02: bool = False,
    encoding: str | None = None,
    source_layer: str | None = None,
    title_zh: str | None = None,
    title_en: str | None = None,
    access_level: str | None = None,
    author: str | None = None,
    evolve_schema: bool = False,
    strict: bool = False,
    message: str | None = None,
    settings: Settings | None = None,
    progress: Progress | None = None,
    tolerance: float | None = None,
    strip_strings: bool = False,
    entity_type: str | None = None,
    entity_key: str | None = None,
    entity_ref: str | None = None,
    entity_match: str | None = None,
) -> IngestSummary:

    started = time.perf_counter()
    settings = settings or get_settings()
    store.check_layer_name(layer)
    if mode not in store.MODES:
        raise IngestError(f"--mode {mode!r}: choose one of {', '.join(store.MODES)}")
    if access_level is not None and access_level not in store.ACCESS_LEVELS:
        raise IngestError(f"--access {access_level!r}: choose one of {', '.join(store.ACCESS_LEVELS)}")
    vf = parse_valid_time(valid_from, settings.timezone)
    entity_spec = _entity_spec(entity_type, entity_key, entity_ref, entity_match)
    src = Path(path)
    if not src.exists():
        raise IngestError(f"{path}: no such file or folder. Check the path.")
    summary = IngestSummary(layer=layer, source=str(path), mode=mode, valid_from=vf.isoformat())

    # Was this very file already loaded as the latest change? Then there is nothing to do.
    # (The file's sha256 is computed in a thread — hashlib releases the GIL — while the
    # database is asked; the file is read only if it is needed.)
    pool = ThreadPoolExecutor(1)
    hashing = pool.submit(source_digest, src)
    pool.shutdown(wait=False)
    with db.connect(settings) as conn:
        last = conn.execute(
            "SELECT id, source_hash, valid_from, mode, counts FROM changesets WHERE layer = %s "
            "ORDER BY id DESC LIMIT 1", (layer,)
        ).fetchone()
        same_date = bool(last) and last[2] == vf and last[3] == mode
        digest = hashing.result() if same_date else None
        if same_date and last[1] == digest:
            summary.skipped = True
            summary.changeset_id = last[0]
            summary.unchanged = int((last[4] or {}).get("added", 0)) + int((last[4] or {}).get("changed", 0)) + int((last[4] or {}).get("unchanged", 0))
            summary.current_total = store.count(conn, layer)
            _assign_entities(conn, summary, entity_spec, settings)
            summary.seconds = round(time.perf_counter() - started, 3)
            return summary

    if progress:
        progress("read", 0, 1)
    batch = read_vector(src, crs=crs, from_gcj02=from_gcj02, encoding=encoding, source_layer=source_layer)
    summary.source_crs = batch.source_crs
    summary.encoding = batch.encoding
    summary.tolerance_deg, summary.tolerance_note = change_tolerance(src, batch.source_crs, tolerance)
    summary.repaired = len(batch.repaired)
    summary.repaired_rows = list(map(int, batch.repaired))
    summary.rejected = len(batch.rejected)
    summary.rejected_rows = [{"row": r.row, "reason": r.reason, "key": r.key} for r in batch.rejected]
    if strict and batch.rejected:
        r = batch.rejected[0]
        raise IngestError(f"{path}: row {r.row}: {r.reason} (--strict rejects the whole file). "
                          f"{len(batch.rejected)} row(s) rejected in all.")
    if progress:
        progress("read", 1, 1)
    digest = digest or hashing.result()

    try:
        return _write(batch, summary, started, settings, path=path, layer=layer, key=key, mode=mode,
                      vf=vf, digest=digest, title_zh=title_zh, title_en=title_en,
                      access_level=access_level, author=author, evolve_schema=evolve_schema,
                      message=message, progress=progress, strip_strings=strip_strings, entity_spec=entity_spec)
    except BaseException:
        # A failed first load may leave its side-built partition behind: remove it now.
        try:
            store.drop_orphan_partition(layer, settings=settings)
        except Exception:  # the original error matters more; the next load cleans up too
            pass
        raise


_ENTITY_FLAGS = {"entity_type": "--entity-type", "key": "--entity-key", "ref_layer": "--entity-ref",
                 "match": "--entity-match"}


def _entity_spec(entity_type: str | None, key: str | None, ref: str | None, match: str | None) -> dict | None:
    """The entity options of a load, checked before anything is read."""
    if entity_type is None:
        if key or ref or match:
            raise IngestError("--entity-key / --entity-ref / --entity-match need --entity-type (e.g. --entity-type building)")
        return None
    from spatial_api import entities

    try:
        kind = entities.check_type(entity_type, "entity_type")
    except entities.EntityError as exc:
        raise IngestError(f"--entity-type {exc.detail}") from None
    if ref and not key:
        raise IngestError("--entity-ref needs --entity-key: the column holding the keys of that layer's features")
    how = match or ("key" if key else "new")
    if how not in entities.MATCHES:
        raise IngestError(f"--entity-match {how!r}: choose one of {', '.join(entities.MATCHES)}")
    return {"entity_type": kind, "key": key, "ref_layer": ref, "match": how}


def _assign_entities(conn, summary: IngestSummary, spec: dict | None, settings: Settings) -> None:
    """Assign the layer's entities in the load's transaction (the report goes in the summary)."""
    if not spec:
        return
    from spatial_api import entities

    try:
        report = entities.assign(summary.layer, **spec, settings=settings, conn=conn)
    except entities.EntityError as exc:
        raise IngestError(f"{_ENTITY_FLAGS.get(exc.parameter, exc.parameter)} {exc.detail}") from None
    summary.entities = report.to_dict()


def _create_or_explain(conn, layer, *, with_partition: bool) -> None:
    """Register a new layer; another load registering the same name meanwhile is a clear error."""
    import psycopg


    try:
        store.create_layer(conn, layer, with_partition=with_partition)
    except psycopg.errors.UniqueViolation:
        raise IngestError(f"layer {layer.name!r} was created by another load meanwhile: run the command "
                          "again to load this file as its next version.") from None


def _write(batch: PreparedBatch, summary: IngestSummary, started: float, settings: Settings, *,
           path, layer: str, key: str | None, mode: str, vf: datetime, digest: str,
           title_zh: str | None, title_en: str | None, access_level: str | None,
           author: str | None, evolve_schema: bool, message: str | None,
           progress: Progress | None, strip_strings: bool = False, entity_spec: dict | None = None) -> IngestSummary:
    with db.transaction(settings) as conn:
        existing = store.get_layer(conn, layer)
        if existing is not None:
            if key and existing.key_field and key != existing.key_field:
                raise IngestError(
                    f"--key {key!r}: layer {layer!r} is keyed by {existing.key_field!r}. "
                    f"Pass --key {existing.key_field} (or leave --key out)."
                )
            key = key or existing.key_field
            if existing.geometry_family != batch.geometry_family:
                raise IngestError(
                    f"{path}: holds {batch.geometry_family} geometries but layer {layer!r} holds "
                    f"{existing.geometry_family}s. Load it into another layer."
                )
        batch, key_member, id_is_member = _id_member_view(batch, existing, key)
        schema, grown = _reconcile_schema(batch, existing, evolve_schema, id_member=id_is_member)
        fids = _keys(batch, key, key_member) if key else None
        keep: set[str] = set()
        if key:
            # Name rejected rows by their key where the row's attributes could be read.
            for r in batch.rejected:
                if r.key is None and key_member is not None:
                    value = key_member.get(r.row)
                    r.key = None if value is None or pd.isna(value) else _keys_of([value])[0]
                elif r.key is None and r.properties and r.properties.get(key) is not None:
                    r.key = _keys_of([r.properties[key]])[0]
            summary.rejected_rows = [{"row": r.row, "reason": r.reason, "key": r.key} for r in batch.rejected]
        if fids is not None and mode == "replace":
            # A rejected row says nothing reliable about its feature: do not close it.
            keep = {r.key for r in batch.rejected if r.key is not None}
        if mode == "replace" and fids is not None and any(r.key is None for r in batch.rejected):
            raise IngestError(
                f"{path}: {len(batch.rejected)} row(s) rejected (first: row {batch.rejected[0].row}, "
                f"{batch.rejected[0].reason}) and their keys are unknown, so replace cannot tell "
                "which stored features they stand for. Fix those rows or use --mode upsert."
            )
        props = prepare_properties(batch, schema)
        rows = store.FeatureRows(rows=np.asarray(batch.rows), fids=fids, geometry=batch.geometry,
                                 properties=props)

        new_layer = existing is None
        if not new_layer:
            latest = store.latest_valid_from(conn, layer)
            if latest is not None and vf < latest and store.matches_state(conn, existing, rows, vf, mode):
                # This state was loaded already (e.g. a load script re-run): nothing to do.
                summary.skipped = True
                summary.unchanged = len(rows)
                summary.current_total = store.count(conn, layer)
                _assign_entities(conn, summary, entity_spec, settings)
                summary.seconds = round(time.perf_counter() - started, 3)
                return summary
        if new_layer:
            _create_or_explain(conn, store.Layer(
                name=layer, geometry_family=batch.geometry_family,
                properties=[{"name": n, "type": t} for n, t in schema.items()], key_field=key,
                title_zh=title_zh, title_en=title_en, access_level=access_level or "public",
            ), with_partition=False)
        else:
            changes = {k: v for k, v in {"title_zh": title_zh, "title_en": title_en,
                                         "access_level": access_level}.items() if v is not None}
            if grown:
                changes["properties"] = grown
            if key and not existing.key_field:
                changes["key_field"] = key
            store.update_layer(conn, layer, **changes)
        result = store.write_changeset(
            conn, store.get_layer(conn, layer), rows, mode=mode, valid_from=vf,
            author=author or author_default(), source=str(path), source_hash=digest,
            new_layer=new_layer, keep_keys=keep, message=message, progress=progress,
            tolerance=summary.tolerance_deg, strip_strings=strip_strings,
        )
        summary.new_layer = new_layer
        if not new_layer and not (result.added or result.changed or result.closed):
            # The layer already is what the file says: record nothing (no empty changesets
            # from re-run load scripts).
            conn.rollback()
            summary.skipped = True
            summary.unchanged = result.unchanged
            summary.within_tolerance = result.within_tolerance
            summary.current_total = result.current_total
            _assign_entities(conn, summary, entity_spec, settings)
            summary.seconds = round(time.perf_counter() - started, 3)
            return summary
        summary.changeset_id = result.changeset_id
        summary.added, summary.changed = result.added, result.changed
        summary.unchanged, summary.closed = result.unchanged, result.closed
        summary.current_total = result.current_total
        summary.samples = result.samples
        summary.correction = result.correction
        summary.within_tolerance = result.within_tolerance
        summary.seconds = round(time.perf_counter() - started, 3)
        store.finish_changeset(conn, result.changeset_id, {
            "added": summary.added, "changed": summary.changed, "unchanged": summary.unchanged,
            "closed": summary.closed, "repaired": summary.repaired, "rejected": summary.rejected,
            "seconds": summary.seconds, "source_crs": summary.source_crs,
            "current": summary.current_total, **({"correction": True} if result.correction else {}),
            "within_tolerance": summary.within_tolerance, "tolerance_deg": summary.tolerance_deg,
        })
        # in the load's transaction: a failed assignment leaves nothing, not even the load
        _assign_entities(conn, summary, entity_spec, settings)
    # Committed: this process's caches drop what the changeset touched (others hear the NOTIFY).

    events.committed(settings.db_schema, layer, summary.changeset_id)
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary
