"""Operator settings kept in the store: table ``settings`` (migration 0009), one JSON value per
name, with who set it and when. ``geotwin config set|get|unset|list`` (spatial_api.config_cli)
writes them; the server reads them where they are used, so a change needs no restart.

- :func:`get`, :func:`entry`, :func:`set`, :func:`unset`, :func:`list_all`: the store itself;
- :data:`KNOWN`: the settings geotwin understands, each with a parser from the command-line text
  to the stored value (bad input raises :class:`SettingError` naming the setting and the forms it
  takes). A name not in KNOWN is refused, so a typo does not silently store nothing useful.

The one setting so far, ``home``: the map's first view (the centre and zoom of every style).

- ``LON,LAT,ZOOM`` — a centre in degrees (CGCS2000 / WGS 84) and a zoom (MapLibre's, 0–22);
- ``MINLON,MINLAT,MAXLON,MAXLAT`` — a box the first view shows whole;
- ``layer:NAME`` — the extent of a layer (as it is when a map opens, see :func:`layer_extent`).

Unset, the home is the extent of the ``buildings`` layer or, without one, of the layer with the
most current features (:func:`default_home`) — never the union of every layer's extent, which a
single layer loaded far away (a test plot, a file in the wrong CRS) moved off the district.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class SettingError(ValueError):
    """A setting name or value geotwin cannot use; the message says what to give instead."""


@dataclass(frozen=True)
class Entry:
    name: str
    value: Any
    updated_at: datetime
    updated_by: str


# -- the store --------------------------------------------------------------------------------


def lookup(name: str) -> Known:
    """The registry entry of setting ``name``; SettingError (listing the settings) when there is none."""
    known = KNOWN.get(name)
    if known is None:
        raise SettingError(f"{name!r} is not a setting geotwin knows; the settings are: "
                           + "; ".join(f"{k} — {v.summary}" for k, v in KNOWN.items()))
    return known


def entry(conn, name: str) -> Entry | None:
    """The stored entry of ``name`` (None when unset)."""
    row = conn.execute("SELECT name, value, updated_at, updated_by FROM settings WHERE name = %s",
                       (name,)).fetchone()
    return Entry(*row) if row else None


def get(conn, name: str, default: Any = None) -> Any:
    """The stored value of ``name``, or ``default`` when it is unset."""
    row = conn.execute("SELECT value FROM settings WHERE name = %s", (name,)).fetchone()
    return row[0] if row else default


def set(conn, name: str, value: Any, *, by: str) -> Entry:
    """Store ``value`` (JSON, already parsed: see :func:`parse`) as ``name``, in the caller's transaction."""
    from psycopg.types.json import Jsonb

    lookup(name).check(value)
    row = conn.execute(
        "INSERT INTO settings (name, value, updated_at, updated_by) VALUES (%s, %s, now(), %s) "
        "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now(), updated_by = EXCLUDED.updated_by "
        "RETURNING name, value, updated_at, updated_by", (name, Jsonb(value), by)).fetchone()
    return Entry(*row)


def unset(conn, name: str) -> bool:
    """Remove ``name`` (back to its default). False when it was not set."""
    lookup(name)
    return conn.execute("DELETE FROM settings WHERE name = %s", (name,)).rowcount > 0


def list_all(conn) -> list[Entry]:
    """Every stored setting, by name."""
    rows = conn.execute("SELECT name, value, updated_at, updated_by FROM settings ORDER BY name").fetchall()
    return [Entry(*r) for r in rows]


def parse(conn, name: str, text: str) -> Any:
    """The value ``text`` (as typed on the command line) stands for, checked; SettingError if bad."""
    return lookup(name).parse(text, conn)


def describe(name: str, value: Any) -> str:
    """A stored value written back in the form ``geotwin config set`` takes."""
    known = KNOWN.get(name)
    return known.describe(value) if known else str(value)


# -- home -------------------------------------------------------------------------------------

#: Deepest zoom of a home view (MapLibre's zoom scale: a 512-pixel world at zoom 0).
MAX_ZOOM = 22
#: Web Mercator's latitude limit: a home box is clipped to it.
MAX_LAT = 85.0511287798
#: The viewport a home box is fitted into (CSS pixels; a laptop browser window, less the map's
#: side panel) and the margin kept around the box.
VIEWPORT = (1024, 768)
PADDING = 24
#: The layer whose extent is the default home, when it holds features.
DEFAULT_HOME_LAYER = "buildings"
#: Quantiles of the features' west / south (east / north) edges that bound a layer's extent: the
#: 1 % most outlying features on each side (a stray feature far away) do not stretch the view.
EXTENT_QUANTILES = (0.01, 0.99)

HOME_FORMS = ("LON,LAT,ZOOM (a centre in degrees and a zoom 0-22, e.g. 114.25,22.72,13), "
              "MINLON,MINLAT,MAXLON,MAXLAT (a box to show whole, e.g. 114.05,22.55,114.40,22.82) "
              "or layer:NAME (the extent of a layer, e.g. layer:buildings)")


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SettingError(f"home: {what} {text!r} is not a number; give {HOME_FORMS}") from None
    if not math.isfinite(value):
        raise SettingError(f"home: {what} {text!r} is not a finite number; give {HOME_FORMS}")
    return value


def _check_lonlat(lon: float, lat: float, given: str, swapped: str) -> None:
    """``swapped``: ``given`` with each longitude and latitude exchanged (the likely intent)."""
    if -180 <= lon <= 180 and -90 <= lat <= 90:
        return
    if abs(lon) > 1000 or abs(lat) > 1000:
        raise SettingError(f"home: {given!r} looks like projected coordinates (metres, e.g. EPSG:4547); "
                           "give longitude and latitude in degrees (CGCS2000 / WGS 84), e.g. 114.25,22.72,13")
    if abs(lat) > 90 and abs(lon) <= 90 and abs(lat) <= 180:
        raise SettingError(f"home: latitude {lat:g} is beyond ±90 in {given!r}: longitude comes first — "
                           f"did you mean {swapped}?")
    raise SettingError(f"home: {lon:g},{lat:g} in {given!r} is not a longitude (−180…180) and a latitude "
                       "(−90…90) in degrees")


def parse_home(text: str, conn=None) -> dict:
    """``geotwin config set home TEXT`` → the stored value: {"center": [lon, lat], "zoom": z},
    {"bbox": [w, s, e, n]} or {"layer": name} (a layer that exists, when ``conn`` is given)."""
    given = (text or "").strip()
    if given.lower().startswith("layer:"):
        name = given.split(":", 1)[1].strip()
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,47}", name):
            raise SettingError(f"home: {name!r} is not a layer name (lower case letters, digits, _); "
                               "see `geotwin layers list`")
        if conn is not None:
            names = [r[0] for r in conn.execute("SELECT name FROM layers ORDER BY name").fetchall()]
            if name not in names:
                raise SettingError(f"home: there is no layer {name!r}; the layers are: "
                                   f"{', '.join(names) or '(none loaded yet)'}")
        return {"layer": name}
    parts = [p for p in re.split(r"[,\s]+", given) if p]
    if len(parts) == 3:
        lon, lat, zoom = (_number(p, w) for p, w in zip(parts, ("longitude", "latitude", "zoom")))
        _check_lonlat(lon, lat, given, f"{lat:g},{lon:g},{zoom:g}")
        if not 0 <= zoom <= MAX_ZOOM:
            raise SettingError(f"home: zoom {zoom:g} is outside 0–{MAX_ZOOM} (13 shows a district, 16 a few streets)")
        return {"center": [lon, lat], "zoom": zoom}
    if len(parts) == 4:
        w, s, e, n = (_number(p, w) for p, w in zip(parts, ("MINLON", "MINLAT", "MAXLON", "MAXLAT")))
        swapped = f"{s:g},{w:g},{n:g},{e:g}"
        _check_lonlat(w, s, given, swapped)
        _check_lonlat(e, n, given, swapped)
        if not (w < e and s < n):
            raise SettingError(f"home: the box {given!r} is empty or inverted: give MINLON,MINLAT,MAXLON,MAXLAT "
                               f"with MINLON < MAXLON and MINLAT < MAXLAT (e.g. {min(w, e):g},{min(s, n):g},"
                               f"{max(w, e):g},{max(s, n):g})")
        return {"bbox": [w, s, e, n]}
    raise SettingError(f"home: {given!r} has {len(parts)} value{'s' if len(parts) != 1 else ''}; give {HOME_FORMS}")


def _check_home(value: Any) -> None:
    if not isinstance(value, dict) or len(value) not in (1, 2):
        raise SettingError(f"home: {value!r} is not a home value; give {HOME_FORMS}")
    if "layer" in value:
        parse_home(f"layer:{value['layer']}")
    elif "bbox" in value:
        parse_home(",".join(str(v) for v in value["bbox"]))
    elif "center" in value and "zoom" in value:
        parse_home(",".join(str(v) for v in [*value["center"], value["zoom"]]))
    else:
        raise SettingError(f"home: {value!r} is not a home value; give {HOME_FORMS}")


def _describe_home(value: dict) -> str:
    if "layer" in value:
        return f"layer:{value['layer']}"
    if "bbox" in value:
        return ",".join(f"{v:g}" for v in value["bbox"])
    return ",".join(f"{v:g}" for v in [*value["center"], value["zoom"]])


def _mercator_y(lat: float) -> float:
    """Latitude → Web Mercator y as a fraction of the world (0 at the top, 1 at the bottom)."""
    lat = max(-MAX_LAT, min(MAX_LAT, lat))
    return (1 - math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)) / math.pi) / 2


def fit(bbox: list[float], viewport: tuple[int, int] = VIEWPORT, padding: int = PADDING) -> tuple[list[float], float]:
    """(centre, zoom) that shows ``bbox`` (lon/lat) whole in ``viewport`` pixels, as MapLibre's
    ``fitBounds`` would: Web Mercator, a 512-pixel world at zoom 0."""
    w, s, e, n = bbox
    x0, x1 = (w + 180) / 360, (e + 180) / 360
    y0, y1 = _mercator_y(n), _mercator_y(s)
    ym = (y0 + y1) / 2
    centre_lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * ym))))
    centre = [round((w + e) / 2, 6), round(centre_lat, 6)]
    dx, dy = max(x1 - x0, 1e-12), max(y1 - y0, 1e-12)
    width, height = viewport[0] - 2 * padding, viewport[1] - 2 * padding
    zoom = math.log2(min(width / (512 * dx), height / (512 * dy)))
    zoom = max(0.0, min(18.0, zoom))  # a point or a tiny box: a street-level view, not zoom 30
    return centre, math.floor(zoom * 100) / 100  # rounded down: the box stays whole


#: extents and default views per (database, schema, latest changeset id, what): recomputed after a
#: change to the store only (a race computes twice, harmlessly)
_CACHE: dict[tuple, Any] = {}


def _store_version(conn) -> tuple:
    """(database, schema, latest changeset id): every write to the store makes a new one."""
    schema, latest = conn.execute("SELECT current_schema(), coalesce(max(id), 0) FROM changesets").fetchone()
    return conn.info.host, conn.info.port, conn.info.dbname, schema, int(latest)


def _cached(key: tuple, compute: Callable[[], Any]) -> Any:
    try:
        return _CACHE[key]
    except KeyError:
        pass
    value = compute()
    if len(_CACHE) > 256:
        _CACHE.clear()
    _CACHE[key] = value
    return value


def layer_extent(conn, layer: str) -> list[float] | None:
    """The extent of ``layer``'s current features in lon/lat, each side at EXTENT_QUANTILES of the
    features' edges (a stray feature far away does not stretch it). None when it holds no features.
    Cached until the next changeset."""
    return _cached((*_store_version(conn), "extent", layer), lambda: _layer_extent(conn, layer))


def _layer_extent(conn, layer: str) -> list[float] | None:
    lo, hi = EXTENT_QUANTILES
    row = conn.execute(
        "SELECT percentile_cont(%s) WITHIN GROUP (ORDER BY ST_XMin(geom)), "
        "       percentile_cont(%s) WITHIN GROUP (ORDER BY ST_YMin(geom)), "
        "       percentile_cont(%s) WITHIN GROUP (ORDER BY ST_XMax(geom)), "
        "       percentile_cont(%s) WITHIN GROUP (ORDER BY ST_YMax(geom)) "
        "FROM features f WHERE f.layer = %s AND f.valid_to IS NULL",
        (lo, lo, hi, hi, layer)).fetchone()
    if row is None or row[0] is None:
        return None
    w, s, e, n = (float(v) for v in row)
    return [min(w, e), min(s, n), max(w, e), max(s, n)]


def _view(bbox: list[float], source: str) -> dict:
    centre, zoom = fit(bbox)
    return {"center": centre, "zoom": zoom, "bbox": [round(v, 6) for v in bbox], "source": source}


def default_home(conn) -> dict | None:
    """The home view when ``home`` is not set: the extent of the buildings layer; without one (or
    with no building in it), of the *densest* layer — here, the layer holding the most current
    features (from its latest changeset's count): the district's thematic layers hold thousands,
    a test plot or a stray file a handful. Either extent is trimmed at EXTENT_QUANTILES. None for
    an empty store. Cached until the next changeset."""
    return _cached((*_store_version(conn), "default home"), lambda: _default_home(conn))


def _default_home(conn) -> dict | None:
    counts = dict(conn.execute(
        "SELECT DISTINCT ON (layer) layer, coalesce((counts ->> 'current')::bigint, 0) FROM changesets "
        "ORDER BY layer, id DESC").fetchall())
    view = None
    if counts.get(DEFAULT_HOME_LAYER, 0) > 0:
        bbox = layer_extent(conn, DEFAULT_HOME_LAYER)
        view = _view(bbox, f"default: extent of layer {DEFAULT_HOME_LAYER}") if bbox else None
    if view is None:
        for layer in sorted((name for name, n in counts.items() if n > 0), key=lambda name: (-counts[name], name)):
            bbox = layer_extent(conn, layer)
            if bbox:
                view = _view(bbox, f"default: extent of layer {layer} (most features; no {DEFAULT_HOME_LAYER} layer)")
                break
    return view


def home_view(conn) -> dict | None:
    """The map's first view: {"center": [lon, lat], "zoom": z, "bbox": [w, s, e, n] | None,
    "source": how it was chosen} — the ``home`` setting, else :func:`default_home`."""
    value = get(conn, "home")
    if isinstance(value, dict):
        if "center" in value:
            return {"center": [float(v) for v in value["center"]], "zoom": float(value["zoom"]), "bbox": None,
                    "source": "setting home (centre and zoom)"}
        if "bbox" in value:
            return _view([float(v) for v in value["bbox"]], "setting home (box)")
        if "layer" in value:
            bbox = layer_extent(conn, value["layer"])
            if bbox:
                return _view(bbox, f"setting home (extent of layer {value['layer']})")
            # the layer is empty or gone: the default rather than no view at all
    return default_home(conn)


# -- the registry of settings ------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    name: str
    summary: str  # one line
    forms: str  # what values it takes
    parse: Callable[[str, Any], Any]  # (text, connection or None) → value
    check: Callable[[Any], None]  # a stored value → raises SettingError when unusable
    describe: Callable[[Any], str]  # value → text in the form `config set` takes


KNOWN: dict[str, Known] = {k.name: k for k in [
    Known("home", "the map's first view (unset: the extent of the buildings layer)", HOME_FORMS,
          parse_home, _check_home, _describe_home),
]}


__all__ = [
    "DEFAULT_HOME_LAYER",
    "KNOWN",
    "Entry",
    "SettingError",
    "default_home",
    "describe",
    "entry",
    "fit",
    "get",
    "home_view",
    "layer_extent",
    "list_all",
    "lookup",
    "parse",
    "parse_home",
    "set",
    "unset",
]
