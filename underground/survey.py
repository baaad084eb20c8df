"""Reading a CJJ 61 pipe survey: the points file and the segments file, their columns mapped from
the survey results tables' Chinese headers (or English aliases), numbers parsed, sections parsed,
and the stored properties derived (contract §1, §2 of issue 17).

Files: anything pyogrio reads — GeoPackage / Shapefile points, CSV (X / Y columns in ``--crs``,
default EPSG:4547, CGCS2000 3-degree Gauss–Krüger CM 114°E) or a spreadsheet; the segments file
may be lines or a plain table: a segment's geometry is always the straight line between its
surveyed points (CJJ 61 segments are straight between points), so the plan and the 3D axis agree.
CSV and shapefile text encodings are detected as in ``geotwin ingest vector`` (UTF-8 or GB18030,
the superset of GBK). Surveyors' X is the northing and Y the easting: a CSV whose X column holds
northings (≥ 1,000,000 m) and Y eastings (< 1,000,000 m, Gauss–Krüger without zone prefix) is
read that way, and the report says so.

Heights (orthometric metres, 1985 national datum): the axis of a pipe at each end is
``ground − depth − H/2`` for depths to the top (pressure pipes, cables) and ``ground − depth + H/2``
for depths to the invert (gravity drains), H the pipe's height (its diameter, or a box section's
H); wall thickness is ignored (nominal sizes).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyproj
import shapely

from spatial_api.ingest.encoding import (
    detect_csv_encoding,
    detect_dbf_encoding,
    normalise_codepage,
)
from spatial_api.ingest.types import IngestError
from underground.catalogue import PipeType
from underground.checks import Problem

#: Metric CRS of all checks and lengths; storage CRS of every layer.
METRIC_CRS = "EPSG:4547"
STORAGE_CRS = "EPSG:4490"
#: A manhole without a surveyed well depth bottoms out this far below its lowest invert (sump).
SUMP_M = 0.3

#: canonical column → accepted headers (compared after :func:`_norm`).
POINT_COLUMNS = {
    "point_id": ("物探点号", "点号", "管线点号", "point_id", "pointid"),
    "ground_z": ("地面高程", "地面高", "ground_z", "ground"),
    "depth": ("埋深", "depth"),
    "feature": ("特征", "特征点", "feature"),
    "appurtenance": ("附属物", "appurtenance"),
    "well_depth": ("井深", "well_depth"),
    "x": ("x", "x坐标", "纵坐标"),
    "y": ("y", "y坐标", "横坐标"),
}
SEGMENT_COLUMNS = {
    "start_id": ("起点点号", "起点", "start_id", "from_id"),
    "end_id": ("终点点号", "终点", "连接点号", "end_id", "to_id"),
    "start_depth": ("起点埋深", "start_depth"),
    "end_depth": ("终点埋深", "end_depth"),
    "diameter": ("管径", "diameter", "diameter_mm"),
    "section": ("断面尺寸", "断面", "section"),
    "material": ("材质", "material"),
    "buried": ("埋设方式", "buried"),
    "owner": ("权属单位", "owner"),
    "built": ("埋设日期", "建设年代", "built"),
    "pressure": ("压力", "电压", "pressure"),
    "segment_id": ("管线段编号", "管段编号", "segment_id"),
}
REQUIRED_POINTS = ("point_id",)
REQUIRED_SEGMENTS = ("start_id", "end_id")
POINT_NUMBERS = ("ground_z", "depth", "well_depth", "x", "y")
SEGMENT_NUMBERS = ("start_depth", "end_depth")
TEXT = ("feature", "appurtenance", "material", "buried", "owner", "built", "pressure")

_SIZE = re.compile(r"^\s*(?:DN|Φ|φ|D|d|De|DE)?\s*(\d+(?:\.\d+)?)\s*(?:mm)?\s*(?:[×xX*＊]\s*(\d+(?:\.\d+)?)\s*(?:mm)?)?\s*$")


def _norm(name: str) -> str:
    """A header compared without case, spaces and a unit in brackets: 地面高程(m) → 地面高程."""
    text = re.sub(r"[（(\[].*?[)）\]]", "", str(name))
    return re.sub(r"\s+", "", text).lower()


@dataclass
class Table:
    """One survey file as read: its rows (original values), geometries (or None), CRS, notes."""

    path: str
    frame: pd.DataFrame          # canonical columns only, plus "row"
    geometry: np.ndarray | None  # shapely geometries in the file's CRS
    crs: str
    encoding: str | None = None
    notes: list[str] = field(default_factory=list)


def _encoding(path: Path) -> str | None:
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv", ".txt"):
            with open(path, "rb") as fh:
                return detect_csv_encoding(fh.read(8 << 20))
        if suffix == ".shp":
            for cpg in (path.with_suffix(".cpg"), path.with_suffix(".CPG")):
                if cpg.is_file():
                    return normalise_codepage(cpg.read_bytes().decode("ascii", errors="ignore"))
            dbf = path.with_suffix(".dbf")
            if dbf.is_file():
                return detect_dbf_encoding(dbf.read_bytes()[: 8 << 20])
    except ValueError:
        raise IngestError(f"{path}: is UTF-16 text (Excel's 'Unicode Text'); save it as 'CSV UTF-8' and retry.") from None
    return None


def read_table(path: str | Path, *, columns: dict[str, tuple[str, ...]], required: tuple[str, ...],
               what: str, crs: str | None = None) -> Table:
    """Read a survey file and map its headers onto the canonical columns. A missing required
    column, an unreadable file or a header matching two canonical names is an :class:`IngestError`
    naming the file."""
    import pyogrio

    p = Path(path)
    if not p.exists():
        raise IngestError(f"{path}: no such file. Check the {what} file's path.")
    enc = _encoding(p)
    csv = p.suffix.lower() in (".csv", ".tsv", ".txt")
    opts = {"AUTODETECT_TYPE": "NO", "EMPTY_STRING_AS_NULL": "YES"} if csv else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            df = pyogrio.read_dataframe(p, encoding=enc if (csv or p.suffix.lower() == ".shp") else None,
                                        read_geometry=not csv, **opts)
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: text is not valid {enc or 'UTF-8'} ({exc.reason} at byte {exc.start}); "
                          "save it as UTF-8 or GB18030.") from None
    except Exception as exc:  # GDAL's DataSourceError and friends: say which file
        raise IngestError(f"{path}: cannot be read as a {what} file ({exc}). Give a GeoPackage, Shapefile, "
                          "CSV (with a header line) or spreadsheet.") from None
    geometry = None
    file_crs = None
    if "geometry" in getattr(df, "columns", []) and hasattr(df, "crs"):
        geometry = np.asarray(df.geometry.values, dtype=object)
        file_crs = df.crs.to_string() if df.crs is not None else None
        df = pd.DataFrame(df.drop(columns="geometry"))
    lookup: dict[str, str] = {}
    for canonical, names in columns.items():
        for name in names:
            lookup.setdefault(_norm(name), canonical)
    mapped: dict[str, str] = {}
    for col in df.columns:
        canonical = lookup.get(_norm(col))
        if canonical is None:
            continue
        if canonical in mapped.values():
            other = next(k for k, v in mapped.items() if v == canonical)
            raise IngestError(f"{path}: columns {other!r} and {col!r} both mean {canonical}; keep one.")
        mapped[col] = canonical
    frame = df[list(mapped)].rename(columns=mapped).reset_index(drop=True)
    for canonical in required:
        if canonical not in frame.columns:
            names = " | ".join(columns[canonical])
            raise IngestError(f"{path}: the {what} file has no column {names}; its columns are "
                              f"{', '.join(map(str, df.columns)) or '(none)'}.")
    for canonical in columns:
        if canonical not in frame.columns:
            frame[canonical] = None
    frame["row"] = np.arange(1, len(frame) + 1)
    return Table(str(path), frame, geometry, crs or file_crs or METRIC_CRS, enc)


def _clean(v) -> str | None:
    """A cell as text: None for empty, 12.0 → '12' (ids and sizes read from number columns)."""
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip() or None


def _text(s: pd.Series) -> pd.Series:
    """A column as object-dtype text with None for empty cells (whatever pandas read it as)."""
    return pd.Series([_clean(v) for v in s.tolist()], index=s.index, dtype=object)


_ids = _text


def _numbers(frame: pd.DataFrame, cols: tuple[str, ...], id_col: str, layer: str, labels: dict[str, str]) -> list[Problem]:
    """Convert columns to float in place; values that are present but not numbers are problems."""
    out = []
    for col in cols:
        if pd.api.types.is_numeric_dtype(frame[col]) and not pd.api.types.is_bool_dtype(frame[col]):
            frame[col] = frame[col].astype(float)  # a typed column (GeoPackage, Shapefile): nothing to parse
            continue
        text = _text(frame[col])
        num = pd.to_numeric(text.map(lambda v: None if v is None else v.replace(",", "")), errors="coerce")
        bad = text.notna() & num.isna()
        for i in np.flatnonzero(bad.to_numpy()):
            out.append(Problem("bad_value", "error", str(frame[id_col].iat[i]),
                               f"{labels.get(col, col)} {text.iat[i]!r} is not a number", layer, int(frame["row"].iat[i])))
        frame[col] = num.astype(float)
    return out


def parse_sizes(diameter: pd.Series, section: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(width mm, height mm, diameter mm or NaN, matched) from 管径 and 断面尺寸: a section "W×H"
    (also WxH, W*H) is a box; a single number a round pipe. The section wins when both are given;
    ``matched`` is False where a value was given but did not parse."""
    sec, dia = _text(section), _text(diameter)
    given = [s if s is not None else d for s, d in zip(sec, dia)]
    found = [(_SIZE.match(g) if g is not None else None) for g in given]
    a = np.array([float(m.group(1)) if m else np.nan for m in found], dtype=float)
    b = np.array([float(m.group(2)) if m and m.group(2) else np.nan for m in found], dtype=float)
    box = ~np.isnan(b)
    width = a
    height = np.where(box, b, a)
    diam = np.where(box, np.nan, a)
    matched = np.array([g is None for g in given], dtype=bool) | ~np.isnan(a)
    return width, height, diam, matched


def _swap_if_northing_first(xy: np.ndarray, crs: pyproj.CRS) -> tuple[np.ndarray, bool]:
    """Surveyors write X = northing, Y = easting. In a Gauss–Krüger CRS without zone prefix the
    easting stays below 1,000,000 m and China's northings are above it: X above and Y below tell."""
    if not crs.is_projected or not len(xy) or not np.isfinite(xy).any():
        return xy, False
    mx, my = np.nanmedian(xy[:, 0]), np.nanmedian(xy[:, 1])
    if mx >= 1_000_000 and 0 < my < 1_000_000:
        return xy[:, ::-1].copy(), True
    return xy, False


@dataclass
class Survey:
    """A survey read and derived: points and segments with every stored property, metric
    coordinates (x, y in EPSG:4547), storage geometries (EPSG:4490) and the readers' problems."""

    ptype: PipeType
    points: pd.DataFrame
    segments: pd.DataFrame
    point_geoms: np.ndarray
    segment_geoms: np.ndarray
    problems: list[Problem]
    notes: list[str]
    crs: str
    encodings: tuple[str | None, str | None]


def read_survey(points_path: str | Path, segments_path: str | Path, ptype: PipeType, *,
                crs: str | None = None) -> Survey:
    """Read both files and derive the stored properties (see the module doc)."""
    pts = read_table(points_path, columns=POINT_COLUMNS, required=REQUIRED_POINTS, what="points", crs=crs)
    seg = read_table(segments_path, columns=SEGMENT_COLUMNS, required=REQUIRED_SEGMENTS, what="segments", crs=crs)
    return derive(pts, seg, ptype)


def _crs(text: str, path: str) -> pyproj.CRS:
    try:
        return pyproj.CRS.from_user_input(text)
    except pyproj.exceptions.CRSError as exc:
        raise IngestError(f"--crs {text!r} (for {path}): not a CRS pyproj knows ({exc}); give e.g. EPSG:4547.") from None


def derive(pts: Table, seg: Table, ptype: PipeType) -> Survey:
    problems: list[Problem] = []
    notes: list[str] = []
    p = pts.frame.copy()
    s = seg.frame.copy()
    p["point_id"] = _ids(p["point_id"])
    for i in np.flatnonzero(p["point_id"].isna().to_numpy()):
        problems.append(Problem("missing_point_id", "error", f"row {int(p['row'].iat[i])}",
                                "物探点号 (point id) is empty", "points", int(p["row"].iat[i])))
    p = p[p["point_id"].notna()].reset_index(drop=True)
    for col in ("start_id", "end_id", "segment_id"):
        s[col] = _ids(s[col])
    s["segment_id"] = s["segment_id"].where(s["segment_id"].notna(), s["start_id"].fillna("?") + "-" + s["end_id"].fillna("?"))
    for col, label in (("start_id", "起点点号 (start point id)"), ("end_id", "终点点号 (end point id)")):
        for i in np.flatnonzero(s[col].isna().to_numpy()):
            problems.append(Problem(f"missing_{col}", "error", str(s["segment_id"].iat[i]), f"{label} is empty",
                                    "segments", int(s["row"].iat[i])))

    problems += _numbers(p, POINT_NUMBERS, "point_id", "points",
                         {"ground_z": "地面高程", "depth": "埋深", "well_depth": "井深", "x": "X", "y": "Y"})
    problems += _numbers(s, SEGMENT_NUMBERS, "segment_id", "segments", {"start_depth": "起点埋深", "end_depth": "终点埋深"})
    for i in np.flatnonzero((p["depth"] < 0).to_numpy()):
        problems.append(Problem("negative_depth", "error", str(p["point_id"].iat[i]),
                                f"埋深 {p['depth'].iat[i]:g} m is negative", "points", int(p["row"].iat[i])))
    for i in np.flatnonzero((p["well_depth"] < 0).to_numpy()):
        problems.append(Problem("negative_depth", "error", str(p["point_id"].iat[i]),
                                f"井深 {p['well_depth'].iat[i]:g} m is negative", "points", int(p["row"].iat[i])))

    # Coordinates: metric (EPSG:4547) for the checks and lengths, EPSG:4490 for storage.
    src_crs = _crs(pts.crs, pts.path)
    if pts.geometry is not None:
        keep = pts.frame["point_id"].pipe(_ids).notna().to_numpy()
        geoms = pts.geometry[keep]
        kinds = shapely.get_type_id(geoms)
        for i in np.flatnonzero((kinds != 0) & ~shapely.is_missing(geoms)):
            problems.append(Problem("not_a_point", "error", str(p["point_id"].iat[i]),
                                    f"geometry is a {shapely.get_type_id(geoms[i])} type, not a point", "points",
                                    int(p["row"].iat[i])))
        pt = np.where(kinds == 0, geoms, None)
        xy = np.column_stack([shapely.get_x(pt), shapely.get_y(pt)]).astype(float)
    else:
        xy = p[["x", "y"]].to_numpy(dtype=float)
        xy, swapped = _swap_if_northing_first(xy, src_crs)
        if swapped:
            notes.append(f"{pts.path}: X holds northings and Y eastings (the surveyors' convention): read as such")
    to_metric = pyproj.Transformer.from_crs(src_crs, METRIC_CRS, always_xy=True)
    to_store = pyproj.Transformer.from_crs(src_crs, STORAGE_CRS, always_xy=True)
    mx, my = to_metric.transform(xy[:, 0], xy[:, 1])
    lon, lat = to_store.transform(xy[:, 0], xy[:, 1])
    p["x"], p["y"] = np.asarray(mx, dtype=float), np.asarray(my, dtype=float)
    p["lon"], p["lat"] = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    p.loc[~np.isfinite(xy).all(axis=1), ["x", "y", "lon", "lat"]] = np.nan
    for col in ("feature", "appurtenance"):
        p[col] = _text(p[col])
    p["is_manhole"] = np.array([bool(v) and "井" in v for v in p["appurtenance"]], dtype=bool)

    # Segment ends from their points (the first of duplicated ids; duplicates are errors anyway).
    lookup = p.drop_duplicates("point_id").set_index("point_id")
    for end in ("start", "end"):
        at = lookup.reindex(s[f"{end}_id"])
        s[f"{end}_known"] = s[f"{end}_id"].isin(lookup.index).to_numpy()
        s[f"{end}_ground_z"] = at["ground_z"].to_numpy(dtype=float)
        override = s[f"{end}_depth"].to_numpy(dtype=float)
        s[f"{end}_depth"] = np.where(np.isnan(override), at["depth"].to_numpy(dtype=float), override)
        k = "0" if end == "start" else "1"
        s["x" + k], s["y" + k] = at["x"].to_numpy(dtype=float), at["y"].to_numpy(dtype=float)
        s[f"{end}_lonlat"] = list(zip(at["lon"].to_numpy(dtype=float), at["lat"].to_numpy(dtype=float)))

    width, height, diam, matched = parse_sizes(s["diameter"], s["section"])
    s["width_mm"], s["height_mm"], s["diameter_mm"] = width, height, diam
    given = [a if a is not None else b for a, b in zip(_text(s["section"]), _text(s["diameter"]))]
    s["size_text"] = ~matched
    for i in np.flatnonzero(~matched):
        problems.append(Problem("bad_section", "error", str(s["segment_id"].iat[i]),
                                f"size {given[i]!r} is neither a diameter (mm) nor a section W×H (mm)",
                                "segments", int(s["row"].iat[i])))
    for col in TEXT:
        if col in s.columns:
            s[col] = _text(s[col])

    # Axis elevations and 3D lengths.
    h = s["height_mm"].to_numpy(dtype=float) / 1000.0
    sign = 1.0 if ptype.gravity else -1.0  # invert: + H/2; top: − H/2
    for end in ("start", "end"):
        s[f"{end}_axis_z"] = s[f"{end}_ground_z"] - s[f"{end}_depth"] + sign * h / 2
    dx, dy = s["x1"] - s["x0"], s["y1"] - s["y0"]
    dz = s["end_axis_z"] - s["start_axis_z"]
    s["length_m"] = np.sqrt(dx ** 2 + dy ** 2 + dz ** 2)

    # Manhole bottoms: ground − well depth, else the lowest invert of its segments − the sump.
    inverts = pd.concat([
        pd.Series((s["start_axis_z"] - h / 2).to_numpy(), index=s["start_id"].to_numpy()),
        pd.Series((s["end_axis_z"] - h / 2).to_numpy(), index=s["end_id"].to_numpy())])
    lowest = inverts.groupby(level=0).min()
    from_segments = lowest.reindex(p["point_id"]).to_numpy(dtype=float) - SUMP_M
    bottom = np.where(p["well_depth"].notna(), p["ground_z"] - p["well_depth"], from_segments)
    p["bottom_z"] = np.where(p["is_manhole"].to_numpy(), bottom, np.nan)  # shafts only

    # Storage geometries.
    point_geoms = shapely.points(p[["lon", "lat"]].to_numpy(dtype=float))
    a = np.array([list(v) for v in s["start_lonlat"]], dtype=float).reshape(-1, 2)
    b = np.array([list(v) for v in s["end_lonlat"]], dtype=float).reshape(-1, 2)
    with warnings.catch_warnings():  # ends of missing points are NaN: such a load is refused anyway
        warnings.simplefilter("ignore", RuntimeWarning)
        segment_geoms = shapely.linestrings(np.stack([a, b], axis=1)) if len(s) else np.empty(0, dtype=object)
    s = s.drop(columns=["start_lonlat", "end_lonlat", "diameter", "section"])
    return Survey(ptype, p, s, np.asarray(point_geoms, dtype=object), np.asarray(segment_geoms, dtype=object),
                  problems, notes + pts.notes + seg.notes, src_crs.to_string(), (pts.encoding, seg.encoding))


__all__ = ["METRIC_CRS", "POINT_COLUMNS", "SEGMENT_COLUMNS", "STORAGE_CRS", "SUMP_M", "Survey", "Table", "derive",
           "parse_sizes", "read_survey", "read_table"]
