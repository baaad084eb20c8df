"""BIM models (IFC2X3, IFC4, IFC4X3 through IfcOpenShell): georeferencing, meshes with
per-element metadata, and the model registry (table ``cim_models``).

Georeferencing, in this order:

1. the command line (``--at LON,LAT[,H] [--rotation DEG]``): the model's origin (world 0,0,0)
   goes to that CGCS2000 position, H orthometric; its +X axis turned DEG counter-clockwise
   from east (east-north-up frame at that point);
2. ``IfcMapConversion`` (IFC4 / IFC4X3) or IFC2X3's ``ePSet_MapConversion`` /
   ``ePSet_ProjectedCRS`` property sets on the project: ``E = Eastings + s·(x·cosθ − y·sinθ)``,
   ``N = Northings + s·(x·sinθ + y·cosθ)``, ``H = OrthogonalHeight + s_z·z`` with
   θ = atan2(XAxisOrdinate, XAxisAbscissa), ``s = Scale`` (from project units to map units) —
   in the CRS named by ``IfcProjectedCRS.Name`` (``--crs`` overrides it; it must be projected),
   Eastings / Northings / OrthogonalHeight in ``MapUnit`` (none: the CRS's own unit), handed to
   the CRS in its own unit (metre, US survey foot, …). Faults found in real files are repaired
   with a warning that says what was assumed:
     * no IfcProjectedCRS (or a name PROJ does not know): ``--crs`` or EPSG:4547;
     * Eastings / Northings outside the CRS's area of use (pyproj ``CRS.area_of_use``) when
       read in the declared MapUnit: the other plausible readings (the CRS's unit, metre,
       millimetre) are tried, and the one that lands inside is taken, naming it: e.g. a Dutch
       IFC4 export with millimetres under a MapUnit named METER whose factor is 0.3048. None
       inside, or several, is an error;
     * a MapUnit that cannot be converted to metres (an IfcContextDependentUnit, an unknown
       ePSet_ProjectedCRS name): said, and the readings as metre / millimetre tried;
     * a Scale that would make the model more than twice too large or small (a unit mix-up,
       e.g. Scale 1 with a millimetre project): the unit conversion alone is used;
3. ``IfcSite`` RefLatitude / RefLongitude / RefElevation at the site's origin, turned by the
   model context's TrueNorth. A site placement that cannot be read (a grid placement, a
   placement relative to itself, degenerate axes) or a TrueNorth without a direction is said,
   naming the entity (#id and class), with what was assumed.

Nothing georeferenced → an error that says to pass ``--at``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from psycopg import sql
from psycopg.types.json import Jsonb

from cim_builder.geo import (DEFAULT_GEOID_SEPARATION, METRIC_CRS, CimError, Frame, ecef_to_lonlat, enu_rotation,
                             lonlat_to_ecef, models_dir, to_ecef, transformer)
from cim_builder.glb import GlbWriter, Primitive, PropertyTable
from spatial_api import db, store
from spatial_api.config import author_default

SUPPORTED_SCHEMAS = ("IFC2X3", "IFC4", "IFC4X3")
SKIP_CLASSES = ("IfcSite", "IfcOpeningElement", "IfcAnnotation", "IfcGrid", "IfcVirtualElement")
#: IfcMapConversion Scale, once units are converted, is a grid scale factor (0.9996 for UTM, at most
#: ~1.001 for a local grid): outside this range it is a unit mix-up (a foot read as a metre: 0.3048).
SCALE_RANGE = (0.5, 2.0)
PARALLEL_PRODUCTS = 2000  # mesh on several threads from this many IfcProducts on
MODEL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
SPACE_COLOUR = (0.55, 0.75, 0.95, 0.25)
ELEMENT_COLOUR = (0.8, 0.8, 0.8)
#: the bim_element property table's version in a model tile's hash: a new column rewrites the models' glbs
#: ("": the first table; ":rooms": storey_index, long_name, use, area_m2, height_m of issue 17)
BIM_METADATA = ":rooms"


def file_schema(path: Path) -> str | None:
    """The schema named in the STEP header (read as text, before IfcOpenShell tries)."""
    with open(path, "rb") as fh:
        head = fh.read(8192).decode("latin-1", "replace")
    m = re.search(r"FILE_SCHEMA\s*\(\s*\(\s*'([^']+)'", head, re.I)
    return m.group(1).upper() if m else None


def open_ifc(path: str | Path):
    import ifcopenshell

    path = Path(path)
    if not path.is_file():
        raise CimError(f"{path}: no such file")
    schema = file_schema(path)
    supported = ", ".join(SUPPORTED_SCHEMAS)
    if schema is None:
        raise CimError(f"{path}: not an IFC-SPF file (no FILE_SCHEMA in its header); "
                       f"supported schemas: {supported}")
    try:
        return ifcopenshell.open(str(path))
    except ifcopenshell.SchemaError:
        raise CimError(f"{path}: IFC schema {schema} is not supported (IfcOpenShell {ifcopenshell.version} "
                       f"reads {supported}); export the model as IFC4 or IFC4X3 and register that file") from None
    except Exception as exc:
        raise CimError(f"{path} ({schema}) cannot be read: {exc}") from None


def _unit_scale(f) -> float:
    import ifcopenshell.util.unit

    return float(ifcopenshell.util.unit.calculate_unit_scale(f))


#: Length units an IFC2X3 ``ePSet_ProjectedCRS`` MapUnit may name besides the (prefixed) metre.
_LENGTH_WORDS = {"FOOT": 0.3048, "FEET": 0.3048, "FT": 0.3048, "INTERNATIONAL FOOT": 0.3048,
                 "US SURVEY FOOT": 1200 / 3937, "US_SURVEY_FOOT": 1200 / 3937, "INCH": 0.0254}


def _unit_label(name: str | None, metres: float) -> str:
    if math.isclose(metres, 1.0):
        return "metre"
    if math.isclose(metres, 0.001):
        return "millimetre"
    return f"{name} ({metres:g} m)" if name else f"{metres:g} m"


def _map_unit_entity(unit, where: str) -> tuple[tuple[str, float] | None, str | None]:
    """An IFC4 / IFC4X3 ``IfcProjectedCRS.MapUnit``: ((label, metres per unit), None), or
    (None, why not) when it cannot be converted to metres (said by the caller, never read as 1)."""
    import ifcopenshell.util.unit

    what = f"{where} MapUnit #{unit.id()} {unit.is_a()} {getattr(unit, 'Name', None)!r}"
    utype = getattr(unit, "UnitType", None)
    if utype != "LENGTHUNIT":
        return None, f"{what} is not a length unit (UnitType {utype})"
    base, seen = unit, set()
    while base is not None and base.is_a("IfcConversionBasedUnit") and base.id() not in seen:
        seen.add(base.id())
        base = getattr(base.ConversionFactor, "UnitComponent", None)
    if base is None or not base.is_a("IfcSIUnit") or (base.Name or "").replace("METER", "METRE") != "METRE":
        if base is unit:
            return None, f"{what} cannot be converted to metres (an {unit.is_a()} has no factor to the SI metre)"
        found = "nothing" if base is None else f"#{base.id()} {base.is_a()} {getattr(base, 'Name', None)!r}"
        return None, f"{what} cannot be converted to metres (it comes down to {found}, not the SI metre)"
    try:
        metres = float(ifcopenshell.util.unit.get_named_unit_scale(unit))
    except Exception as exc:  # a broken ConversionFactor: said by the caller
        return None, f"{what} cannot be converted to metres ({type(exc).__name__}: {exc})"
    if not (math.isfinite(metres) and metres > 0):
        return None, f"{what} converts to {metres} m, not a length"
    return (f"#{unit.id()} {unit.is_a()} {unit.Name!r} ({metres:g} m)", metres), None


def _map_unit_word(value, where: str) -> tuple[tuple[str, float] | None, str | None]:
    """An IFC2X3 ``ePSet_ProjectedCRS`` MapUnit (a unit name such as METRE or MILLIMETRE)."""
    import ifcopenshell.util.unit

    what = f"{where} MapUnit {value!r}"
    if not isinstance(value, str):
        return None, f"{what} is not a unit name"
    word = " ".join(value.upper().replace("METER", "METRE").split())
    if word.endswith("METRE"):
        prefix = word[: -len("METRE")].strip()
        if not prefix:
            return (f"{value!r} (metre)", 1.0), None
        if prefix in ifcopenshell.util.unit.prefixes:
            metres = float(ifcopenshell.util.unit.prefixes[prefix])
            return (f"{value!r} ({metres:g} m)", metres), None
    if word in _LENGTH_WORDS:
        return (f"{value!r} ({_LENGTH_WORDS[word]:g} m)", _LENGTH_WORDS[word]), None
    return None, f"{what} is not a unit name geotwin reads (METRE with an SI prefix, FOOT, US SURVEY FOOT)"


def _crs_known(name: str | None) -> str | None:
    from pyproj import CRS

    if not name:
        return None
    try:
        return CRS.from_user_input(name).to_string() and name
    except Exception:  # the caller says so (an unknown name is a repaired fault, --crs an error)
        return None


def _crs_unit(crs: str, where: str) -> tuple[str, float]:
    """The unit of a projected CRS's eastings and northings: (name, metres per unit)."""
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    h = c.sub_crs_list[0] if c.is_compound and c.sub_crs_list else c
    if not h.is_projected:
        unit = h.axis_info[0].unit_name if h.axis_info else "?"
        raise CimError(f"{where}: {crs} is not a projected CRS (its axes are in {unit}): a map conversion needs "
                       "eastings and northings; pass --crs with a projected CRS, or --at LON,LAT[,H]")
    ax = h.axis_info[0]
    return ax.unit_name, float(ax.unit_conversion_factor)


def _area_text(crs: str) -> str:
    from pyproj import CRS

    a = CRS.from_user_input(crs).area_of_use
    if a is None:
        return "the world"
    return f"{a.name.rstrip('.')}: lon {a.west:g}..{a.east:g}, lat {a.south:g}..{a.north:g}"


def _in_area(crs: str, e: float, n: float) -> bool:
    """Is (e, n), in the CRS's own unit, inside its area of use (pyproj ``area_of_use``, ±1°)?"""
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    aou = c.area_of_use
    try:
        lon, lat = transformer(crs, "EPSG:4490").transform(e, n)
    except Exception:  # PROJ cannot take the point: it is not inside
        return False
    if not (np.isfinite(lon) and np.isfinite(lat)):
        return False
    if aou is None:
        return -180 <= lon <= 180 and -90 <= lat <= 90
    return aou.west - 1 <= lon <= aou.east + 1 and aou.south - 1 <= lat <= aou.north + 1


@dataclass
class Georef:
    method: str  # "command line", "IfcMapConversion", "ePSet_MapConversion", "IfcSite"
    crs: str | None = None  # map mode
    eastings: float = 0.0  # metres
    northings: float = 0.0
    height: float = 0.0  # orthometric metres of the model origin
    rotation_deg: float = 0.0  # model +X from east / grid east, counter-clockwise
    scale: float = 1.0  # model metres → map metres (horizontal)
    scale_z: float = 1.0
    crs_unit: float = 1.0  # metres per unit of the CRS's eastings / northings (0.3048006… for US feet)
    lon: float | None = None  # ENU mode origin
    lat: float | None = None
    origin_offset: tuple = (0.0, 0.0, 0.0)  # subtracted from world coords first (IfcSite origin)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["origin_offset"] = list(self.origin_offset)
        if d["crs_unit"] == 1.0:  # metre CRSs: the record (and so every tile hash) as before
            del d["crs_unit"]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Georef":
        d = dict(d)
        d["origin_offset"] = tuple(d.get("origin_offset", (0, 0, 0)))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_ecef(self, xyz: np.ndarray, geoid_separation: float) -> np.ndarray:
        """Model world coordinates (metres, IfcOpenShell output) → ECEF."""
        p = np.asarray(xyz, float) - np.asarray(self.origin_offset, float)
        t = math.radians(self.rotation_deg)
        c, s = math.cos(t), math.sin(t)
        x = p[:, 0] * c - p[:, 1] * s
        y = p[:, 0] * s + p[:, 1] * c
        if self.crs is not None:
            e = (self.eastings + self.scale * x) / self.crs_unit
            n = (self.northings + self.scale * y) / self.crs_unit
            h = self.height + self.scale_z * p[:, 2] + geoid_separation  # to_3d: ellipsoidal metres
            X, Y, Z = to_ecef(self.crs).transform(e, n, h)
            return np.column_stack([X, Y, Z])
        origin = lonlat_to_ecef(self.lon, self.lat, self.height + geoid_separation)
        rot = enu_rotation(self.lon, self.lat)
        enu = np.column_stack([x, y, p[:, 2]])
        return origin + enu @ rot


def _compound_angle(v) -> float | None:
    if not v:
        return None
    parts = list(v) + [0] * (4 - len(v))
    sign = -1 if any(x < 0 for x in parts[:4] if x) else 1
    d, m, s, ms = (abs(x) for x in parts[:4])
    return sign * (d + m / 60 + (s + ms / 1e6) / 3600)


def _pset_map_conversion(f) -> tuple[dict, dict] | None:
    """IFC2X3 georeferencing through ePSet_MapConversion / ePSet_ProjectedCRS on the project."""
    import ifcopenshell.util.element

    for project in f.by_type("IfcProject"):
        psets = ifcopenshell.util.element.get_psets(project)
        mc = psets.get("ePSet_MapConversion")
        if mc:
            return mc, psets.get("ePSet_ProjectedCRS") or {}
    return None


def _plural(label: str) -> str:
    return {"metre": "metres", "millimetre": "millimetres"}.get(label, label)


def _map_reading(path: Path, method: str, crs: str, values: dict, declared: tuple[str, float] | None,
                 warnings: list[str]) -> float:
    """The unit (metres per unit) in which to read Eastings / Northings / OrthogonalHeight.

    The declared MapUnit is taken when it puts the model inside the CRS's area of use. Otherwise
    the plausible readings (the CRS's own unit, metre, millimetre) are tried: exactly one inside
    is taken, with a warning naming it; none, or several, is an error that says what was tried."""
    unit_name, crs_unit = _crs_unit(crs, f"{path}: {method}")
    e_raw = float(values.get("Eastings") or 0.0)
    n_raw = float(values.get("Northings") or 0.0)
    readings: list[tuple[str, float]] = [declared] if declared else []
    for r in ((unit_name if math.isclose(crs_unit, 1.0) else f"{unit_name} (the CRS's unit)", crs_unit),
              ("metre", 1.0), ("millimetre", 0.001)):
        if not any(math.isclose(r[1], u, rel_tol=1e-9) for _, u in readings):
            readings.append((_unit_label(None, r[1]) if r[1] in (1.0, 0.001) else r[0], r[1]))
    inside = [r for r in readings if _in_area(crs, e_raw * r[1] / crs_unit, n_raw * r[1] / crs_unit)]
    if declared is not None and declared in inside:
        return declared[1]
    en = f"{method} Eastings/Northings ({e_raw:.10g}, {n_raw:.10g})"
    area = f"{crs}'s area of use ({_area_text(crs)})"
    others = [label for label, u in readings if declared is None or u != declared[1]]
    if len(inside) == 1:
        label, u = inside[0]
        h = float(values.get("OrthogonalHeight") or 0.0) * u
        if declared is not None:
            why = f"read in the MapUnit {declared[0]} lie outside {area}; read as {label} they lie inside it"
        else:
            rest = " or as ".join(x for x in others if x != label)
            why = (f"have no MapUnit geotwin can read; read as {label} they lie inside {area}"
                   + (f", read as {rest} outside it" if rest else ""))
        warnings.append(f"{path.name}: {en} {why}: assumed {_plural(label)} for Eastings, Northings and "
                        f"OrthogonalHeight (height {h:.3f} m); fix the file's MapUnit, or pass --at LON,LAT[,H] "
                        "to place the model yourself")
        return u
    said = f"read in the MapUnit {declared[0]}" if declared else "with no MapUnit geotwin can read"
    if not inside:
        first = declared or readings[0]
        e, n = e_raw * first[1] / crs_unit, n_raw * first[1] / crs_unit
        raise CimError(f"{path}: {method} places the model at ({e:.1f}, {n:.1f}) in {crs} ({said}), outside "
                       f"that CRS's area of use ({_area_text(crs)}); read as {' or as '.join(others)} it is "
                       "outside too: fix the file or pass --at LON,LAT[,H]")
    raise CimError(f"{path}: {en} {said} lie outside {area}, but read as "
                   f"{' and as '.join(label for label, _ in inside)} they all lie inside it, and nothing in the "
                   "file says which is meant: fix the file's MapUnit (or its Eastings/Northings), or pass "
                   "--at LON,LAT[,H]")


def _placement_chain(placement) -> tuple[list, str | None]:
    """The placement and those it is relative to; a reason when the chain cannot be followed."""
    chain, seen = [], set()
    p = placement
    while p is not None:
        if p.id() in seen:
            loop = " → ".join(f"#{q.id()}" for q in chain + [p])
            return chain, f"is placed relative to itself ({loop})"
        seen.add(p.id())
        chain.append(p)
        if not p.is_a("IfcLocalPlacement"):
            return chain, f"goes through #{p.id()} {p.is_a()}, a placement geotwin does not read"
        p = getattr(p, "PlacementRelTo", None)
    return chain, None


def _site_origin(site, u_p: float, path: Path) -> tuple[tuple, str | None]:
    """The IfcSite's origin in model world metres (RefLatitude / RefLongitude refer to it), and
    a warning when its placement cannot be read (the origin is then assumed, and said)."""
    import ifcopenshell.util.placement

    pl = site.ObjectPlacement
    if pl is None:  # no placement: the site is at the model's origin
        return (0.0, 0.0, 0.0), None
    what = f"{path.name}: #{site.id()} IfcSite {site.Name!r}: its ObjectPlacement #{pl.id()} {pl.is_a()}"
    fallback = ("assumed the site's origin is the model's origin (0, 0, 0), so the model is misplaced by the "
                "site's offset if it has one; fix the placement or pass --at LON,LAT[,H] to place the model")
    _, broken = _placement_chain(pl)
    if broken:
        return (0.0, 0.0, 0.0), f"{what} {broken}: {fallback}"
    try:
        with np.errstate(all="ignore"):  # degenerate axes give NaN, checked below
            m = np.asarray(ifcopenshell.util.placement.get_local_placement(pl), float)
    except Exception as exc:  # e.g. a location IfcOpenShell cannot evaluate: said, never dropped
        return (0.0, 0.0, 0.0), f"{what} cannot be read ({type(exc).__name__}: {exc}): {fallback}"
    t = m[:3, 3]
    if not np.isfinite(t).all():
        return (0.0, 0.0, 0.0), (f"{what} gives no location (its axes, or those of a placement it is relative "
                                 f"to, are degenerate: Axis parallel to RefDirection, or zero): {fallback}")
    offset = tuple(float(v) * u_p for v in t)
    if not np.isfinite(m[:3, :3]).all():
        return offset, (f"{what} has degenerate axes (Axis parallel to RefDirection, or zero): assumed its "
                        f"location ({offset[0]:.3f}, {offset[1]:.3f}, {offset[2]:.3f}) m is the site's origin; "
                        "fix the placement or pass --at LON,LAT[,H] to place the model")
    return offset, None


def _true_north_rotation(f, path: Path, warnings: list[str]) -> float:
    """Model +X from east (degrees, counter-clockwise) from the model context's TrueNorth."""
    for ctx in f.by_type("IfcGeometricRepresentationContext"):
        if ctx.is_a("IfcGeometricRepresentationSubContext"):
            continue
        tn = getattr(ctx, "TrueNorth", None)
        if tn is None:
            continue
        ratios = [float(v) for v in tn.DirectionRatios or ()]
        nx, ny = (ratios + [0.0, 0.0])[:2]
        if not (math.isfinite(nx) and math.isfinite(ny)) or math.hypot(nx, ny) == 0:
            warnings.append(f"{path.name}: #{ctx.id()} {ctx.is_a()} TrueNorth #{tn.id()} {tuple(ratios)} has no "
                            "horizontal direction: assumed true north is the model's +Y (rotation 0); "
                            "pass --rotation DEG to turn it")
            return 0.0
        return 90.0 - math.degrees(math.atan2(ny, nx))
    return 0.0


def read_georef(f, path: Path, *, at: tuple | None = None, rotation: float | None = None,
                crs: str | None = None) -> Georef:
    u_p = _unit_scale(f)
    if crs is not None and not _crs_known(crs):
        raise CimError(f"--crs {crs!r}: PROJ does not know this CRS (give EPSG:4547, a PROJ string or WKT)")
    if at is not None:
        lon, lat = float(at[0]), float(at[1])
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise CimError(f"--at {at}: give LON,LAT[,H] in degrees (e.g. 114.2514,22.7215,35)")
        g = Georef("command line", lon=lon, lat=lat, height=float(at[2]) if len(at) > 2 else 0.0,
                   rotation_deg=float(rotation or 0.0))
        if f.schema != "IFC2X3" and f.by_type("IfcMapConversion"):
            g.warnings.append(f"{path.name}: its IfcMapConversion is ignored: --at places the model")
        return g
    mc = None
    warnings: list[str] = []
    declared: tuple[str, float] | None = None  # the MapUnit: (label, metres per unit)
    unit_given = False
    if f.schema != "IFC2X3":
        mcs = [m for m in f.by_type("IfcMapConversion")]
        mc = mcs[0] if mcs else None
    if mc is not None:
        target = mc.TargetCRS
        projected = target is not None and target.is_a("IfcProjectedCRS")
        name = getattr(target, "Name", None) if projected else None
        unit = getattr(target, "MapUnit", None) if projected else None
        if unit is not None:
            unit_given = True
            declared, why = _map_unit_entity(unit, f"{path.name}: #{target.id()} IfcProjectedCRS")
            if why:
                warnings.append(f"{why}: the readings as metre and millimetre are tried")
        values = {"Eastings": mc.Eastings, "Northings": mc.Northings, "OrthogonalHeight": mc.OrthogonalHeight,
                  "XAxisAbscissa": mc.XAxisAbscissa, "XAxisOrdinate": mc.XAxisOrdinate, "Scale": mc.Scale,
                  "ScaleY": getattr(mc, "ScaleY", None), "ScaleZ": getattr(mc, "ScaleZ", None)}
        method = "IfcMapConversion"
    else:
        found = _pset_map_conversion(f)
        if found is not None:
            pmc, pcrs = found
            name = pcrs.get("Name")
            mu = pcrs.get("MapUnit")
            if mu is not None and mu != "":
                unit_given = True
                declared, why = _map_unit_word(mu, f"{path.name}: ePSet_ProjectedCRS")
                if why:
                    warnings.append(f"{why}: the readings as metre and millimetre are tried")
            values = {k: pmc.get(k) for k in ("Eastings", "Northings", "OrthogonalHeight", "XAxisAbscissa",
                                               "XAxisOrdinate", "Scale")}
            method = "ePSet_MapConversion"
        else:
            values = None
    if values is not None:
        target_crs = crs or _crs_known(name)
        if crs and name and crs != name:
            warnings.append(f"{path.name}: IfcProjectedCRS {name} overridden by --crs {crs}")
        if target_crs is None:
            target_crs = METRIC_CRS
            what = f"IfcProjectedCRS {name!r} is not a CRS PROJ knows" if name else "no IfcProjectedCRS"
            warnings.append(f"{path.name}: {what}: assumed {METRIC_CRS} (CGCS2000 / 3-degree GK CM 114E); "
                            "pass --crs to choose another")
        unit_name, crs_unit = _crs_unit(target_crs, f"{path}: {method}")
        if not unit_given:  # no MapUnit: the CRS's own unit
            declared = (f"of the CRS ({unit_name}; the file gives none)", crs_unit)
        u_map = _map_reading(path, method, target_crs, values, declared, warnings)
        e = float(values.get("Eastings") or 0.0) * u_map
        n = float(values.get("Northings") or 0.0) * u_map
        h = float(values.get("OrthogonalHeight") or 0.0) * u_map
        xa = float(values.get("XAxisAbscissa") if values.get("XAxisAbscissa") is not None else 1.0)
        xo = float(values.get("XAxisOrdinate") or 0.0)
        scale = float(values.get("Scale") or 1.0)
        scale_z = float(values.get("ScaleZ") or scale)
        # geometry comes out of IfcOpenShell in metres: s converts project units → map units
        k = scale * u_map / u_p
        kz = scale_z * u_map / u_p
        if not SCALE_RANGE[0] <= k <= SCALE_RANGE[1]:
            warnings.append(f"{path.name}: {method} Scale {scale} with a project unit of {u_p} m and a map unit of "
                            f"{u_map} m would make the model {k:g} times its size: assumed the Scale only "
                            "converts units (grid scale 1)")
            k, kz = 1.0, 1.0
        rot = math.degrees(math.atan2(xo, xa))
        if rotation is not None:
            warnings.append(f"{path.name}: --rotation {rotation} replaces the file's rotation {rot:.4f}°")
            rot = float(rotation)
        return Georef(method, crs=target_crs, eastings=e, northings=n, height=h, rotation_deg=rot,
                      scale=k, scale_z=kz, crs_unit=crs_unit, warnings=warnings)
    # IfcSite
    for site in f.by_type("IfcSite"):
        lat, lon = _compound_angle(site.RefLatitude), _compound_angle(site.RefLongitude)
        if lat is None or lon is None:
            continue
        warnings = [f"{path.name}: no IfcMapConversion: placed by IfcSite RefLatitude/RefLongitude "
                    f"({lat:.6f}, {lon:.6f}), usually only approximate; pass --at LON,LAT[,H] to place it"]
        offset, why = _site_origin(site, u_p, path)
        if why:
            warnings.append(why)
        rot = _true_north_rotation(f, path, warnings)
        if rotation is not None:
            rot = float(rotation)
        return Georef("IfcSite", lon=lon, lat=lat, height=float(site.RefElevation or 0.0) * u_p,
                      rotation_deg=rot, origin_offset=offset, warnings=warnings)
    raise CimError(f"{path}: no georeferencing (no IfcMapConversion, no IfcSite latitude/longitude): "
                   "pass --at LON,LAT[,H] [--rotation DEG]")


# ------------------------------------------------------------------------------------------
# elements


@dataclass
class Elements:
    """Every meshed element, flattened: unwelded triangles (3 vertices each) in model world
    metres, with per-vertex normals, colours and element index, plus the metadata columns."""

    positions: np.ndarray  # (3T, 3)
    normals: np.ndarray  # (3T, 3)
    colors: np.ndarray  # (3T, 4) uint8
    element: np.ndarray  # (3T,)
    meta: dict  # column → list, one entry per element
    warnings: list = field(default_factory=list)
    #: rooms: element index → {footprint (model metres, shapely), zmin, zmax, qto_area} (cim_builder.indoor)
    spaces: dict = field(default_factory=dict)
    storeys: list = field(default_factory=list)  # indoor.storey_levels: every storey, lowest first

    @property
    def count(self) -> int:
        return len(self.meta["global_id"])


def _material_name(el) -> str:
    import ifcopenshell.util.element

    try:
        m = ifcopenshell.util.element.get_material(el, should_skip_usage=True)
    except Exception:
        return ""
    if m is None:
        return ""
    names: list[str] = []
    if m.is_a("IfcMaterial"):
        names = [m.Name]
    elif m.is_a("IfcMaterialLayerSet"):
        names = [ly.Material.Name for ly in m.MaterialLayers if ly.Material]
    elif m.is_a("IfcMaterialList"):
        names = [x.Name for x in m.Materials]
    elif m.is_a("IfcMaterialConstituentSet"):
        names = [c.Material.Name for c in (m.MaterialConstituents or []) if c.Material]
    elif m.is_a("IfcMaterialProfileSet"):
        names = [p.Material.Name for p in (m.MaterialProfiles or []) if p.Material]
    else:
        names = [getattr(m, "Name", None) or m.is_a()]
    seen = []
    for n in names:
        if n and n not in seen:
            seen.append(n)
    return ", ".join(seen)


def _storey(el):
    import ifcopenshell.util.element

    c = ifcopenshell.util.element.get_container(el)
    if c is None:
        c = ifcopenshell.util.element.get_aggregate(el)
    while c is not None and not c.is_a("IfcBuildingStorey"):
        if c.is_a("IfcBuilding") or c.is_a("IfcSite") or c.is_a("IfcProject"):
            return None
        nxt = ifcopenshell.util.element.get_aggregate(c) or ifcopenshell.util.element.get_container(c)
        c = nxt
    return c


def read_elements(f, model_id: str) -> Elements:
    import ifcopenshell.geom
    import ifcopenshell.util.unit

    from cim_builder import indoor

    u_p = _unit_scale(f)
    s = ifcopenshell.geom.settings()
    s.set("use-world-coords", True)
    exclude = [c for c in SKIP_CLASSES if _has_class(f, c)]
    # The iterator meshes on C++ threads; for a house-sized model (the duplex: 236 elements) a
    # second thread cost more CPU (1.5 s vs 0.9 s) and no wall time on 2 cores: threads only where
    # there is enough work to share.
    products = len(f.by_type("IfcProduct"))
    threads = max(1, os.cpu_count() or 1) if products >= PARALLEL_PRODUCTS else 1
    try:  # CGAL's fast kernel, OpenCASCADE where it fails (what IfcOpenShell recommends)
        it = ifcopenshell.geom.iterator(s, f, threads, exclude=exclude,
                                        geometry_library="hybrid-cgal-simple-opencascade")
    except Exception:
        it = ifcopenshell.geom.iterator(s, f, threads, exclude=exclude)
    pos, nor, col, ele = [], [], [], []
    meta = {k: [] for k in ("global_id", "ifc_class", "name", "storey", "storey_elevation_m", "material",
                            "below_ground", "is_space", "model_id", "storey_index", "long_name", "use", "area_m2",
                            "height_m")}
    # rooms and storeys (cim_builder.indoor): storeys ordered by elevation, each room's attributes
    levels = indoor.storey_levels(f, u_p)
    level_of = {lv["entity"]: lv["index"] for lv in levels}
    area_unit = float(ifcopenshell.util.unit.calculate_unit_scale(f, "AREAUNIT"))
    qto: dict[int, float | None] = {}
    if not it.initialize():
        raise CimError(f"model {model_id}: IfcOpenShell found no element geometry to mesh")
    i = 0
    while True:
        sh = it.get()
        g = sh.geometry
        verts = np.frombuffer(g.verts_buffer, np.float64).reshape(-1, 3)
        faces = np.frombuffer(g.faces_buffer, np.int32).reshape(-1, 3)
        if len(faces):
            normals = np.frombuffer(g.normals_buffer, np.float64).reshape(-1, 3) if len(g.normals) else None
            if normals is None or len(normals) != len(verts):
                a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
                fn = np.cross(b - a, c - a)
                fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-12)
                vn = np.repeat(fn, 3, axis=0)
            else:
                vn = normals[faces.reshape(-1)]
            mids = np.frombuffer(g.material_ids_buffer, np.int32) if len(g.material_ids) else np.full(len(faces), -1)
            palette = []
            for m in g.materials:
                d = m.diffuse
                rgb = d.components if hasattr(d, "components") else d
                tr = m.transparency if m.transparency == m.transparency else 0.0
                palette.append([*(float(c) for c in rgb[:3]), 1.0 - float(tr or 0.0)])
            palette.append([*ELEMENT_COLOUR, 1.0])
            pal = (np.clip(np.asarray(palette), 0, 1) * 255).round().astype(np.uint8)
            fc = pal[np.where(mids >= 0, mids, len(palette) - 1)[: len(faces)]]
            pos.append(verts[faces.reshape(-1)])
            nor.append(vn)
            col.append(np.repeat(fc, 3, axis=0))
            ele.append(np.full(len(faces) * 3, i, np.int64))
            el = f.by_id(sh.id)
            st = _storey(el)
            elev = float(st.Elevation) * u_p if st is not None and st.Elevation is not None else None
            is_space = el.is_a("IfcSpace")
            zmax = float(verts[:, 2].max())
            below = (elev is not None and elev < -0.05) or zmax < -0.05
            meta["global_id"].append(el.GlobalId)
            meta["ifc_class"].append(el.is_a())
            meta["name"].append(el.Name or "")
            meta["storey"].append(st.Name or "" if st is not None else "")
            meta["storey_elevation_m"].append(elev if elev is not None else -9999.0)
            meta["material"].append(_material_name(el))
            meta["below_ground"].append(bool(below))
            meta["is_space"].append(bool(is_space))
            meta["model_id"].append(model_id)
            meta["storey_index"].append(level_of.get(st.id(), -1) if st is not None else -1)
            long_name, use, qto[i] = indoor.space_attributes(el, area_unit) if is_space else ("", "", None)
            meta["long_name"].append(long_name)
            meta["use"].append(use)
            meta["area_m2"].append(-1.0)  # rooms: filled by indoor.finish_spaces
            meta["height_m"].append(-1.0)
            i += 1
        if not it.next():
            break
    if not pos:
        raise CimError(f"model {model_id}: no element has a triangulable body")
    # elements with a body that IfcOpenShell could not mesh: said, not silently dropped
    meshed = set(meta["global_id"])
    missing = [p.GlobalId for p in f.by_type("IfcProduct")
               if p.Representation is not None and not any(p.is_a(c) for c in SKIP_CLASSES)
               and p.GlobalId not in meshed and not p.is_a("IfcSpatialStructureElement")]
    warnings = []
    if missing:
        warnings.append(f"model {model_id}: {len(missing)} element(s) with a representation could not be meshed "
                        f"(or have no body), e.g. {', '.join(missing[:5])}")
    positions, element = np.concatenate(pos), np.concatenate(ele)
    spaces = indoor.finish_spaces(meta, positions, element, qto)
    return Elements(positions, np.concatenate(nor), np.concatenate(col), element, meta, warnings, spaces, levels)


def _has_class(f, name: str) -> bool:
    try:
        f.by_type(name)
        return True
    except Exception:
        return False


# ------------------------------------------------------------------------------------------
# a placed model


@dataclass
class PlacedModel:
    georef: Georef
    elements: Elements
    ecef: np.ndarray  # (3T, 3)
    normals_ecef: np.ndarray
    footprint: object  # shapely Polygon, EPSG:4490
    z_range: tuple  # orthometric min, max
    schema: str


_ELEMENTS_CACHE: dict = {}


def _elements_cached(path: Path, model_id: str, f=None):
    """Tessellation is the slow part (seconds for a house): ``add-ifc`` then ``build`` in one
    process (tests, scripts) mesh a file once. Keyed by the file's content, two entries kept."""
    key = (hashlib.sha256(Path(path).read_bytes()).hexdigest(), model_id)
    if key not in _ELEMENTS_CACHE:
        f = f or open_ifc(path)
        while len(_ELEMENTS_CACHE) >= 2:
            _ELEMENTS_CACHE.pop(next(iter(_ELEMENTS_CACHE)))
        _ELEMENTS_CACHE[key] = (f.schema, read_elements(f, model_id))
    return _ELEMENTS_CACHE[key]


def place(path: Path, model_id: str, georef: Georef, geoid_separation: float, f=None) -> PlacedModel:
    schema, els = _elements_cached(path, model_id, f)
    ecef = georef.to_ecef(els.positions, geoid_separation)
    # normals through the same (locally linear) mapping
    tip = georef.to_ecef(els.positions + 0.01 * els.normals, geoid_separation)
    nrm = tip - ecef
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    llh = ecef_to_lonlat(ecef)
    solid = ~np.asarray(els.meta["is_space"])[els.element]
    pts = llh[solid] if solid.any() else llh
    hull = shapely.convex_hull(shapely.multipoints(pts[:, :2]))
    if hull.geom_type != "Polygon":
        hull = hull.buffer(1e-6)
    z = llh[:, 2] - geoid_separation
    return PlacedModel(georef, els, ecef, nrm, hull, (float(z.min()), float(z.max())), schema)


def model_mesh_glb(pm: PlacedModel, frame: Frame) -> bytes:
    els = pm.elements
    w = GlbWriter()
    solid_mat = w.material((1, 1, 1, 1), name="bim element")
    space_mat = w.material(SPACE_COLOUR, name="bim space", blend=True, double_sided=True)
    pos = frame.gltf(pm.ecef)
    nrm = frame.direction_gltf(pm.normals_ecef).astype(np.float32)
    is_space = np.asarray(els.meta["is_space"])[els.element]
    prims = []
    for mask, mat in ((~is_space, solid_mat), (is_space, space_mat)):
        if not mask.any():
            continue
        idx = np.flatnonzero(mask)
        p, n, c, e = pos[idx], nrm[idx], els.colors[idx], els.element[idx].astype(np.int32)
        # weld: vertices equal in position, normal, colour and element become one
        key = np.concatenate([p.view(np.uint8).reshape(-1, 12), n.view(np.uint8).reshape(-1, 12),
                              c.astype(np.uint8).reshape(-1, 4), e.view(np.uint8).reshape(-1, 4)], axis=1)
        _, first, inverse = np.unique(np.ascontiguousarray(key).view(np.dtype((np.void, 32))).ravel(),
                                      return_index=True, return_inverse=True)
        prims.append(Primitive(p[first], n[first], inverse.ravel(), e[first], els.count, 0, mat,
                               colors=c[first] if mat == solid_mat else None))
    table = PropertyTable("bim_element", els.count, dict(els.meta))
    return w.write(prims, [table])


# ------------------------------------------------------------------------------------------
# registry


@dataclass
class RegisteredModel:
    id: str
    name: str | None
    stored_path: str
    sha256: str
    schema: str
    georef: Georef
    footprint: object  # shapely, EPSG:4490
    element_count: int
    z_range: tuple
    replaces: list[str] = field(default_factory=list)


def registered_models(conn) -> list[RegisteredModel]:
    rows = conn.execute("SELECT id, name, stored_path, sha256, ifc_schema, georef, ST_AsBinary(footprint), "
                        "element_count FROM cim_models WHERE active ORDER BY id").fetchall()
    out = []
    for r in rows:
        g = dict(r[5])
        z = tuple(g.pop("z_range", (0.0, 0.0)))
        out.append(RegisteredModel(r[0], r[1], r[2], r[3], r[4], Georef.from_json(g), shapely.from_wkb(bytes(r[6])),
                                   r[7], z))
    return out


def model_tile_info(m: RegisteredModel, sep: float) -> dict:
    fp = shapely.transform(m.footprint, lambda c: np.column_stack(transformer("EPSG:4490", METRIC_CRS)
                                                                   .transform(c[:, 0], c[:, 1])))
    minx, miny, maxx, maxy = fp.bounds
    return {"x": (minx + maxx) / 2, "y": (miny + maxy) / 2,
            "sigma": max(math.hypot(maxx - minx, maxy - miny), m.z_range[1] - m.z_range[0]),
            "hash": f"{m.sha256}:{json.dumps(m.georef.to_json(), sort_keys=True)}:{sep}{BIM_METADATA}"}


def model_glb(m: RegisteredModel, sep: float) -> tuple[bytes, list[float], list[float], int]:
    pm = place(Path(m.stored_path), m.id, m.georef, sep)
    c = pm.footprint.centroid
    frame = Frame.at(c.x, c.y, 0.0)
    glb = model_mesh_glb(pm, frame)
    llh = ecef_to_lonlat(pm.ecef)
    lon, lat = np.radians(llh[:, 0]), np.radians(llh[:, 1])
    region = [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max()),
              float(llh[:, 2].min()), float(llh[:, 2].max())]
    return glb, region, frame.transform(), pm.elements.count


def record_replacements(conn, models: list[RegisteredModel]) -> None:
    """Remember which buildings each model replaced in the last build (shown by `cim models`)."""
    for m in models:
        conn.execute("UPDATE cim_models SET georef = georef || jsonb_build_object('replaces', %s::jsonb) "
                     "WHERE id = %s", (Jsonb(m.replaces), m.id))


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-")
    return (s or "model")[:63]


def register(settings, path: str | Path, *, model_id: str | None = None, at: tuple | None = None,
             rotation: float | None = None, crs: str | None = None, name: str | None = None,
             geoid_separation: float | None = None, store_dir: Path | None = None, layer: str = "buildings",
             max_distance_km: float = 50.0) -> dict:
    """Read, georeference and mesh an IFC file (so it fails now, not at the next build), copy it
    under ``<home>/models/`` (``$GEOTWIN_MODELS_DIR``) and record it in ``cim_models``. Returns what was registered."""
    from cim_builder import indoor
    from spatial_api import events

    path = Path(path)
    f = open_ifc(path)
    model_id = model_id or _slug(path.stem)
    if not MODEL_ID_RE.match(model_id):
        raise CimError(f"--id {model_id!r}: use lower-case letters, digits, '-' and '_'")
    georef = read_georef(f, path, at=at, rotation=rotation, crs=crs)
    sep = DEFAULT_GEOID_SEPARATION if geoid_separation is None else geoid_separation
    pm = place(path, model_id, georef, sep, f=f)
    c = pm.footprint.centroid
    wkb = shapely.to_wkb(pm.footprint)
    with db.connect(settings) as conn:
        overlaps: list[str] = []
        if store.get_layer(conn, layer) is not None:
            part = sql.Identifier(store.partition_name(layer))
            km = conn.execute(sql.SQL(
                "SELECT ST_Distance(ST_SetSRID(ST_Extent(f.geom), 4490)::geography, "
                "ST_SetSRID(ST_MakePoint(%s, %s), 4490)::geography) / 1000 FROM {} f "
                "WHERE f.layer = %s AND f.valid_to IS NULL").format(part), (c.x, c.y, layer)).fetchone()[0]
            if km is not None and km > max_distance_km:
                raise CimError(f"{path}: placed by {georef.method} at ({c.x:.5f}, {c.y:.5f}), {km:,.0f} km from the "
                               f"{layer!r} layer: pass --at LON,LAT[,H] (and --rotation) to place it in the district")
            overlaps = [r[0] for r in conn.execute(sql.SQL(
                "SELECT f.fid FROM {} f WHERE f.layer = %s AND f.valid_to IS NULL "
                "AND f.geom && ST_GeomFromWKB(%s, 4490) AND ST_Intersects(f.geom, ST_GeomFromWKB(%s, 4490)) "
                "ORDER BY 1").format(part), (layer, wkb, wkb)).fetchall()]
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        store_dir = Path(store_dir) if store_dir else models_dir(settings)
        store_dir.mkdir(parents=True, exist_ok=True)
        stored = store_dir / f"{sha[:16]}{path.suffix.lower() or '.ifc'}"
        if not stored.exists():
            tmp = stored.with_name(stored.name + ".tmp")
            shutil.copyfile(path, tmp)
            os.replace(tmp, stored)
        # the clash check's placed mesh beside the copy: `cim clash <id>` never tessellates it again
        from cim_builder import mesh_cache

        cache = mesh_cache.mesh_cache_path(stored, sha, georef, sep)
        if not cache.exists():
            mesh_cache.write_mesh_cache(cache, mesh_cache.placed_mesh(pm, sep))
        gj = georef.to_json()
        gj["z_range"] = list(pm.z_range)
        conn.execute(
            "INSERT INTO cim_models (id, name, source_path, stored_path, sha256, ifc_schema, georef, warnings, "
            "footprint, element_count, registered_by) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
            "ST_SetSRID(ST_GeomFromWKB(%s), 4490), %s, %s) ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, "
            "source_path = EXCLUDED.source_path, stored_path = EXCLUDED.stored_path, sha256 = EXCLUDED.sha256, "
            "ifc_schema = EXCLUDED.ifc_schema, georef = EXCLUDED.georef, warnings = EXCLUDED.warnings, "
            "footprint = EXCLUDED.footprint, element_count = EXCLUDED.element_count, "
            "registered_at = now(), registered_by = EXCLUDED.registered_by, active = true",
            (model_id, name or path.stem, str(path.resolve()), str(stored), sha, f.schema, Jsonb(gj),
             Jsonb(georef.warnings), wkb, pm.elements.count, author_default()))
        # its rooms (IfcSpace → indoor_spaces) and storeys, in the same transaction
        rooms = indoor.write_model(conn, indoor.extract(pm, model_id, sep, conn=conn, buildings_layer=layer),
                                   access_level=indoor.footprint_access_level(conn, layer),
                                   source=f"cim model {model_id} ({path.name})")
    if rooms["changeset_id"]:
        events.committed(settings.db_schema, indoor.LAYER, rooms["changeset_id"])
    c = pm.footprint.centroid
    return {"id": model_id, "schema": f.schema, "elements": pm.elements.count, "georef": georef.method,
            "crs": georef.crs, "centre": [round(c.x, 7), round(c.y, 7)], "z_range": pm.z_range,
            "warnings": georef.warnings + pm.elements.warnings + rooms.pop("warnings"),
            "overlapping_buildings": overlaps, "stored_path": str(stored), "indoor": rooms}


def convert(path: str | Path, out: str | Path, *, at: tuple | None = None, rotation: float | None = None,
            crs: str | None = None, geoid_separation: float | None = None, model_id: str | None = None) -> dict:
    """One IFC file → a stand-alone 3D Tiles 1.1 tileset (``out/tileset.json`` + one glb with
    per-element metadata), without the database: ``geotwin cim convert-ifc``."""
    path, out = Path(path), Path(out)
    f = open_ifc(path)
    model_id = model_id or _slug(path.stem)
    georef = read_georef(f, path, at=at, rotation=rotation, crs=crs)
    sep = DEFAULT_GEOID_SEPARATION if geoid_separation is None else geoid_separation
    pm = place(path, model_id, georef, sep, f=f)
    c = pm.footprint.centroid
    frame = Frame.at(c.x, c.y, 0.0)
    glb = model_mesh_glb(pm, frame)
    llh = ecef_to_lonlat(pm.ecef)
    lon, lat = np.radians(llh[:, 0]), np.radians(llh[:, 1])
    region = [float(lon.min()), float(lat.min()), float(lon.max()), float(lat.max()),
              float(llh[:, 2].min()), float(llh[:, 2].max())]
    out.mkdir(parents=True, exist_ok=True)
    uri = f"{model_id}.glb"
    tmp = out / (uri + ".tmp")
    tmp.write_bytes(glb)
    os.replace(tmp, out / uri)
    doc = {"asset": {"version": "1.1", "generator": "geotwin cim_builder"}, "geometricError": 0.0,
           "root": {"boundingVolume": {"region": region}, "geometricError": 0.0, "refine": "ADD",
                    "transform": frame.transform(), "content": {"uri": uri}},
           "extras": {"geotwin": {"model": model_id, "schema": f.schema, "georef": georef.to_json(),
                                  "geoid_separation_m": sep}}}
    tmp = out / "tileset.json.tmp"
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, out / "tileset.json")
    return {"id": model_id, "schema": f.schema, "elements": pm.elements.count, "georef": georef.method,
            "warnings": georef.warnings + pm.elements.warnings, "bytes": len(glb), "out": str(out)}


def reextract(settings, model_id: str, *, buildings_layer: str = "buildings",
              geoid_separation: float | None = None) -> dict:
    """``geotwin cim indoor extract``: the rooms and storeys of a registered model again (cim_builder.indoor)."""
    from cim_builder import indoor
    from spatial_api import events

    sep = DEFAULT_GEOID_SEPARATION if geoid_separation is None else geoid_separation
    with db.connect(settings) as conn:
        model = next((m for m in registered_models(conn) if m.id == model_id), None)
        if model is None:
            raise CimError(f"no active model {model_id!r} (see `geotwin cim models`)")
        if not Path(model.stored_path).is_file():
            raise CimError(f"model {model_id!r}: its stored copy {model.stored_path} is missing; register the file "
                           "again with `geotwin cim add-ifc`")
        pm = place(Path(model.stored_path), model.id, model.georef, sep)
        ex = indoor.extract(pm, model.id, sep, conn=conn, buildings_layer=buildings_layer)
        out = indoor.write_model(conn, ex, access_level=indoor.footprint_access_level(conn, buildings_layer),
                                 source=f"cim model {model_id} ({model.stored_path})")
    if out["changeset_id"]:
        events.committed(settings.db_schema, indoor.LAYER, out["changeset_id"])
    return {"id": model_id, **out}
