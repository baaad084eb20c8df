"""File readers of the ingestion command line: any supported vector file → :class:`PreparedBatch`.

Supported: GeoJSON, GeoPackage, Shapefile (.prj / .cpg, GBK detection without .cpg), zipped
Shapefile (GDAL /vsizip/), CSV with a WKT column or lon/lat columns, FileGDB (.gdb folder,
OpenFileGDB) and KML — all through pyogrio. The hot path is vectorised: WKB → shapely in one call,
reprojection on the whole coordinate array, validity / repair on arrays.

Conventions of the returned batch (see :mod:`spatial_api.ingest.types`):

* ``geometry`` is 2D, in EPSG:4490, one of the layer's family (multi-part kept as it is);
* ``rows`` are 1-based positions of the features in the source (data rows for a CSV, header
  not counted);
* property values are pandas columns, nulls as NaN / None / NaT: ``integer`` columns are int64,
  or object holding Python ints and None when there are nulls; ``boolean`` likewise (bool or
  object with None); ``number`` float64; ``date`` datetime64 at midnight; ``datetime``
  datetime64 (tz-aware when the source carries an offset); ``string`` str.
"""

from __future__ import annotations

import json
import mmap
import re
import struct
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import pandas as pd
import pyogrio
import pyogrio.errors
import shapely
from pyogrio.raw import read as _raw_read
from pyproj import CRS
from pyproj.exceptions import CRSError

from . import crs as crsmod
from .encoding import DBF_SAMPLE_RECORDS, UTF8, canonical_encoding, detect_csv_encoding, detect_dbf_encoding, normalise_codepage
from .gcj02 import gcj02_to_wgs84
from .types import GEOMETRY_FAMILIES, IngestError, PreparedBatch, Rejected

try:  # Arrow makes GeoPackage / FileGDB / GeoJSON reading ~2x faster; optional.
    import pyarrow  # noqa: F401
    from pyogrio.raw import read_arrow as _raw_read_arrow

    HAVE_ARROW = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_ARROW = False

__all__ = ["read_vector", "GeoJSONBatch", "SUPPORTED_FORMATS", "WKT_COLUMN_NAMES", "LON_COLUMN_NAMES", "LAT_COLUMN_NAMES"]

SUPPORTED_FORMATS = (
    "GeoJSON (.geojson/.json, GeoJSONSeq .geojsonl/.geojsons), GeoPackage (.gpkg), Shapefile (.shp), zipped Shapefile (.zip), "
    "CSV with a WKT or lon/lat columns (.csv), FileGDB (.gdb folder), KML (.kml)"
)

WKT_COLUMN_NAMES = ("wkt", "geometry", "geom", "the_geom", "shape", "wkt_geom", "geometry_wkt")
LON_COLUMN_NAMES = ("lon", "lng", "long", "longitude", "x", "经度", "东经")
LAT_COLUMN_NAMES = ("lat", "latitude", "y", "纬度", "北纬")

# shapely type ids → family
_TYPE_FAMILY = {0: "Point", 4: "Point", 1: "LineString", 2: "LineString", 5: "LineString", 3: "Polygon", 6: "Polygon"}
_SINGLE_TYPE = {"Point": 0, "LineString": 1, "Polygon": 3}
_MULTI_MAKER: dict[str, Callable] = {
    "Point": shapely.multipoints,
    "LineString": shapely.multilinestrings,
    "Polygon": shapely.multipolygons,
}
_FAMILY_CODE = {f: i for i, f in enumerate(GEOMETRY_FAMILIES)}

# Columns LIBKML adds to every KML layer; dropped when they carry nothing.
_KML_BOILERPLATE = {
    "id": (None,),
    "timestamp": (None,),
    "begin": (None,),
    "end": (None,),
    "altitudeMode": (None,),
    "tessellate": (None, -1, 0, 1),
    "extrude": (None, 0),
    "visibility": (None, -1, 1),
    "drawOrder": (None,),
    "icon": (None,),
    "snippet": (None,),
}

_GDAL_ERRORS = (
    pyogrio.errors.DataSourceError,
    pyogrio.errors.DataLayerError,
    pyogrio.errors.FieldError,
    pyogrio.errors.FeatureError,
    pyogrio.errors.GeometryError,
    pyogrio.errors.CRSError,
)


# --------------------------------------------------------------------------------------------
# opening: which GDAL path, which layer, which encoding


@dataclass
class _Source:
    display: str  # the path as the user gave it, for messages
    gdal_path: str  # what GDAL opens
    kind: str  # shapefile | csv | kml | gpkg | geojson | geojsonseq | filegdb | other
    sidecar: Callable[..., bytes | None]  # sidecar(ext, limit=None): bytes of "<stem><ext>" beside the main file
    head: Callable[[int], bytes]  # first n bytes of the main file (CSV encoding detection); -1: all of it
    local: Path | None = None  # the main file on disk (not inside a zip): mapped rather than read


_EXT_KIND = {
    ".shp": "shapefile",
    ".csv": "csv",
    ".tsv": "csv",
    ".kml": "kml",
    ".gpkg": "gpkg",
    ".geojson": "geojson",
    ".json": "geojson",
    ".geojsonl": "geojsonseq",
    ".geojsons": "geojsonseq",
    ".gdb": "filegdb",
}


def _file_source(display: str, p: Path) -> _Source:
    suffix = p.suffix.lower()
    kind = _EXT_KIND.get(suffix, "other")
    gdal_path = str(p)
    if kind == "csv" and suffix != ".csv":
        gdal_path = "CSV:" + gdal_path

    def sidecar(ext: str, limit: int | None = None) -> bytes | None:
        for cand in (p.with_suffix(ext), p.with_suffix(ext.upper())):
            if cand.is_file():
                with open(cand, "rb") as fh:
                    return fh.read() if limit is None else fh.read(limit)
        return None

    def head(n: int) -> bytes:
        with open(p, "rb") as fh:
            return fh.read(n)

    return _Source(display, gdal_path, kind, sidecar, head, local=p)


#: Guards on a zip archive, checked from its directory before anything is decompressed: how much
#: it may expand to in all, how much one member may expand beyond ZIP_RATIO_FROM bytes (deflate
#: reaches ~1000:1 on zeros; real shapefiles stay well under 100:1), and how many members it holds.
ZIP_MAX_EXPANDED = 20 << 30
ZIP_MAX_RATIO, ZIP_RATIO_FROM = 100, 100 << 20
ZIP_MAX_MEMBERS = 10_000


def _unsafe_member_name(name: str) -> bool:
    """A member name that would escape the archive's folder: absolute, a drive letter, or ``..``."""
    norm = name.replace("\\", "/")
    return (norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) is not None
            or ".." in norm.split("/") or "\0" in norm)


def _check_zip(display: str, zf: zipfile.ZipFile) -> None:
    """Refuse zip bombs and path traversal from the central directory (nothing is expanded)."""
    infos = zf.infolist()
    if len(infos) > ZIP_MAX_MEMBERS:
        raise IngestError(f"{display}: the zip archive holds {len(infos):,} members (at most "
                          f"{ZIP_MAX_MEMBERS:,} are read). Zip only the dataset to ingest.")
    bad_names = [i.filename for i in infos if _unsafe_member_name(i.filename)]
    if bad_names:
        raise IngestError(f"{display}: refused: member {bad_names[0]!r} has an absolute path or '..' in its "
                          "name (it would point outside the archive). Re-create the archive with relative "
                          "names, e.g. `cd folder && zip -r data.zip parcels/`.")
    links = [i.filename for i in infos if (i.external_attr >> 16) & 0o170000 == 0o120000]
    if links:
        raise IngestError(f"{display}: refused: member {links[0]!r} is a symbolic link. Zip the files "
                          "themselves (zip without -y).")
    total = sum(i.file_size for i in infos)
    if total > ZIP_MAX_EXPANDED:
        raise IngestError(f"{display}: refused: the archive would expand to {total / (1 << 30):,.1f} GiB (at most "
                          f"{ZIP_MAX_EXPANDED >> 30} GiB are read from a zip). If the data really is that large, "
                          "unzip it yourself and pass the .shp / .gpkg.")
    for i in infos:
        if i.file_size > ZIP_RATIO_FROM and i.file_size > ZIP_MAX_RATIO * max(i.compress_size, 1):
            raise IngestError(
                f"{display}: refused: member {i.filename!r} would expand from {i.compress_size:,} to "
                f"{i.file_size:,} bytes (over {ZIP_MAX_RATIO}:1, which looks like a zip bomb). If it is genuine, "
                "unzip the archive yourself and pass the extracted file.")


def _zip_source(display: str, p: Path, source_layer: str | None) -> tuple[_Source, str | None]:
    """The dataset inside a .zip. Returns the source and the layer chosen by picking a member."""
    try:
        zf = zipfile.ZipFile(p)
        names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise IngestError(
            f"{display}: cannot open the zip archive ({exc}). Check that the download / copy is "
            "complete and that the file is a .zip (not .rar or .7z)."
        ) from None
    _check_zip(display, zf)
    root = f"/vsizip/{p.resolve()}"
    lower = {n.lower(): n for n in names}

    def member_reader(member: str):
        stem = member[: -len(PurePosixPath(member).suffix)] if PurePosixPath(member).suffix else member

        def sidecar(ext: str, limit: int | None = None) -> bytes | None:
            real = lower.get((stem + ext).lower())
            if not real:
                return None
            with zf.open(real) as fh:
                return fh.read() if limit is None else fh.read(limit)

        def head(n: int) -> bytes:
            with zf.open(member) as fh:
                return fh.read(n)

        return sidecar, head

    shps = [n for n in names if n.lower().endswith(".shp") and not n.startswith("__MACOSX/")]
    if shps:
        chosen_layer = None
        if len(shps) == 1:
            member = shps[0]
        else:
            stems = [PurePosixPath(s).stem for s in shps]
            if source_layer is None:
                raise IngestError(
                    f"{display} holds {len(shps)} shapefiles: {', '.join(stems)}. Pass the one to "
                    f"ingest with --source-layer, e.g. --source-layer {stems[0]}."
                )
            if source_layer not in stems:
                raise IngestError(
                    f"{display} has no shapefile named {source_layer!r}; it holds: {', '.join(stems)}. "
                    "Pass one of them with --source-layer."
                )
            member = shps[stems.index(source_layer)]
            chosen_layer = source_layer
        sidecar, head = member_reader(member)
        return _Source(display, f"{root}/{member}", "shapefile", sidecar, head), chosen_layer

    gdbs = sorted({n[: n.lower().index(".gdb/") + 4] for n in names if ".gdb/" in n.lower()})
    if len(gdbs) == 1:
        sidecar, head = member_reader(gdbs[0])
        return _Source(display, f"{root}/{gdbs[0]}", "filegdb", sidecar, head), None
    others = [
        n
        for n in names
        if PurePosixPath(n).suffix.lower() in _EXT_KIND and not n.endswith("/") and not n.startswith("__MACOSX/")
    ]
    if len(others) == 1 and not gdbs:
        member = others[0]
        kind = _EXT_KIND[PurePosixPath(member).suffix.lower()]
        sidecar, head = member_reader(member)
        path = f"{root}/{member}"
        if kind == "csv" and not member.lower().endswith(".csv"):
            path = "CSV:" + path
        return _Source(display, path, kind, sidecar, head), None
    raise IngestError(
        f"{display}: the zip archive holds no single dataset to read (found: "
        f"{', '.join(names[:10]) or 'nothing'}{' ...' if len(names) > 10 else ''}). Zip one shapefile "
        "(.shp with its .shx, .dbf, .prj, .cpg), one .gdb folder or one data file, or unzip it and "
        "pass the file itself."
    )


def _gdal_error(src: _Source, exc: BaseException) -> IngestError:
    msg = str(exc).strip() or type(exc).__name__
    hint = {
        "shapefile": "that the .shp, .shx and .dbf files are complete and side by side",
        "filegdb": "that the .gdb folder was copied whole (all its a0000000*.gdbtable/.gdbtablx files)",
        "csv": "that it is a comma / semicolon / tab separated text file with a header line",
    }.get(src.kind, "that the file is complete (not truncated by a download or copy) and is one of the supported formats")
    return IngestError(
        f"{src.display}: cannot be read: {msg}. Check {hint}. Supported formats: {SUPPORTED_FORMATS}."
    )


def _list_layers(src: _Source) -> list[tuple[str, str | None]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            layers = pyogrio.list_layers(src.gdal_path)
    except _GDAL_ERRORS as exc:
        raise _gdal_error(src, exc) from None
    return [(str(name), None if gt is None else str(gt)) for name, gt in layers]


def _choose_layer(src: _Source, source_layer: str | None) -> str:
    layers = _list_layers(src)
    names = [n for n, _ in layers]
    spatial = names if src.kind == "csv" else ([n for n, gt in layers if gt is not None] or names)
    if source_layer is not None:
        if source_layer not in names:
            raise IngestError(
                f"{src.display} has no layer {source_layer!r}; its layers are: "
                f"{', '.join(names) or '(none)'}. Pass one of them with --source-layer."
            )
        return source_layer
    if not spatial:
        raise IngestError(f"{src.display} holds no layer to read.")
    if len(spatial) > 1:
        raise IngestError(
            f"{src.display} holds {len(spatial)} layers: {', '.join(spatial)}. Pass the one to ingest "
            f"with --source-layer, e.g. --source-layer {spatial[0]}."
        )
    return spatial[0]


def _choose_encoding(src: _Source, encoding: str | None) -> str | None:
    """The Python codec to decode text with, or None to let GDAL decide (UTF-8 formats)."""
    if encoding:
        canonical = canonical_encoding(encoding)
        if canonical is None:
            raise IngestError(
                f"--encoding {encoding!r} is not a known text encoding; use e.g. --encoding GB18030 "
                "(Chinese Windows files, superset of GBK) or --encoding UTF-8."
            )
        return canonical
    if src.kind == "shapefile":
        cpg = src.sidecar(".cpg")
        if cpg is not None:
            return normalise_codepage(cpg.decode("ascii", errors="ignore"))
        head = src.sidecar(".dbf", 32)
        if head is None or len(head) < 12:
            return None  # no / broken .dbf: GDAL reports it
        _n, header_len, record_len = struct.unpack("<IHH", head[4:12])
        dbf = src.sidecar(".dbf", header_len + record_len * DBF_SAMPLE_RECORDS)
        try:
            return detect_dbf_encoding(dbf)
        except ValueError:
            return None  # let GDAL report the broken .dbf
    if src.kind == "csv":
        try:
            return detect_csv_encoding(src.head(8 * 1024 * 1024))
        except ValueError:
            raise IngestError(
                f"{src.display} is UTF-16 text (as Excel's 'Unicode Text' saves it); GDAL reads CSV "
                "as UTF-8 or a single/double-byte code page. Save it as 'CSV UTF-8' and retry."
            ) from None
        except OSError as exc:
            raise IngestError(f"{src.display}: cannot be read: {exc}.") from None
    return None


# --------------------------------------------------------------------------------------------
# reading attributes + WKB


def _read(src: _Source, layer: str, encoding: str | None, *, read_geometry: bool, **open_options):
    """(meta, wkb array or None, DataFrame of the fields in file order)."""
    # Arrow: the fast path for UTF-8 formats; pyogrio decodes other encodings only without it.
    use_arrow = HAVE_ARROW and encoding is None and src.kind not in ("shapefile", "csv")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            if use_arrow:
                meta, table = _raw_read_arrow(src.gdal_path, layer=layer, read_geometry=read_geometry, **open_options)
                fields = [str(f) for f in meta["fields"]]
                extra = [c for c in table.column_names if c not in set(fields)]
                wkb = None
                if read_geometry and extra:
                    wkb = table.column(extra[-1]).to_numpy(zero_copy_only=False)
                frame = table.select(fields).to_pandas(integer_object_nulls=True) if fields else pd.DataFrame(index=range(table.num_rows))
                n = table.num_rows
            else:
                meta, _fids, wkb, field_data = _raw_read(
                    src.gdal_path,
                    layer=layer,
                    encoding=encoding,
                    read_geometry=read_geometry,
                    datetime_as_string=True,
                    **open_options,
                )
                fields = [str(f) for f in meta["fields"]]
                n = len(field_data[0]) if field_data else (len(wkb) if wkb is not None else 0)
                frame = pd.DataFrame({f: arr for f, arr in zip(fields, field_data)}, index=range(n))
    except _GDAL_ERRORS as exc:
        raise _gdal_error(src, exc) from None
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"{src.display}: text is not valid {encoding or 'UTF-8'} ({exc.reason} at byte {exc.start}). "
            "Pass the right encoding, e.g. --encoding GB18030 for Chinese Windows files or "
            "--encoding UTF-8."
        ) from None
    if wkb is not None and len(wkb) != n:  # pragma: no cover - defensive
        raise IngestError(f"{src.display}: GDAL returned {len(wkb)} geometries for {n} rows.")
    return meta, wkb, frame


def _geoms_from_wkb(src: _Source, wkb: np.ndarray | None, n: int) -> np.ndarray:
    if wkb is None:
        return np.full(n, None, dtype=object)
    try:
        return shapely.from_wkb(np.asarray(wkb, dtype=object))
    except shapely.errors.GEOSException as exc:
        raise IngestError(
            f"{src.display}: a geometry could not be decoded ({exc}). Check the file with "
            "`ogrinfo -al -so` or re-export it; curved geometries should be exported as lines."
        ) from None


# --------------------------------------------------------------------------------------------
# property columns


def _nullable_object(values: pd.Series, mask: np.ndarray, cast) -> pd.Series:
    out = np.full(len(values), None, dtype=object)
    keep = ~mask
    out[keep] = [cast(v) for v in values.to_numpy()[keep]]
    return pd.Series(out, index=values.index, name=values.name, dtype=object)


def _as_integer(s: pd.Series) -> pd.Series:
    mask = s.isna().to_numpy()
    if not mask.any():
        return s.astype("int64")
    return _nullable_object(s, mask, int)


def _as_boolean(s: pd.Series) -> pd.Series:
    mask = s.isna().to_numpy()
    if not mask.any():
        return s.astype(bool)
    return _nullable_object(s, mask, bool)


def _as_datetime(s: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        return s
    try:
        return pd.to_datetime(s, format="ISO8601")
    except (ValueError, TypeError):
        return pd.to_datetime(s, format="ISO8601", utc=True)


def _as_date(s: pd.Series) -> pd.Series:
    out = _as_datetime(s)
    if getattr(out.dt, "tz", None) is not None:
        out = out.dt.tz_localize(None)
    return out.dt.normalize()


def _normalise_typed(s: pd.Series, ogr_type: str, subtype: str) -> tuple[pd.Series, str]:
    if ogr_type in ("OFTInteger", "OFTInteger64"):
        if subtype == "OFSTBoolean":
            return _as_boolean(s), "boolean"
        return _as_integer(s), "integer"
    if ogr_type == "OFTReal":
        return s.astype("float64"), "number"
    if ogr_type == "OFTDate":
        return _as_date(s), "date"
    if ogr_type == "OFTDateTime":
        return _as_datetime(s), "datetime"
    if ogr_type == "OFTString":
        return s, "string"
    # OFTTime, list and binary types: keep as text
    mask = s.isna().to_numpy()
    return _nullable_object(s, mask, str), "string"


_INT_RE = r"[+-]?(?:0|[1-9]\d*)"
_FLOAT_RE = r"[+-]?(?:(?:0|[1-9]\d*)(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DATE_RE = r"\d{4}-\d{1,2}-\d{1,2}|\d{4}/\d{1,2}/\d{1,2}"
_DATETIME_RE = r"\d{4}[-/]\d{1,2}[-/]\d{1,2}[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:Z|[+-]\d{2}:?\d{2})?"
_INT64_MAX = 2**63 - 1


def _infer_text_column(s: pd.Series) -> tuple[pd.Series, str]:
    """Type of a CSV column read as text: integer, number, boolean, date, datetime or string.

    Integers with leading zeros ("001") stay strings: they are codes, not numbers.
    """
    text = s.astype(object).where(s.notna(), None)
    stripped = pd.Series(text, dtype=object).map(lambda v: v.strip() if isinstance(v, str) else v)
    present = stripped.notna() & (stripped != "")
    vals = stripped[present].astype(str)
    if vals.empty:
        return pd.Series(np.full(len(s), None, dtype=object), index=s.index, name=s.name), "string"
    if vals.str.fullmatch(_INT_RE).all():
        nums = [int(v) for v in vals]
        if max(abs(v) for v in nums) <= _INT64_MAX:
            out = pd.Series(np.full(len(s), None, dtype=object), index=s.index, name=s.name)
            out[present.to_numpy()] = nums
            return (out.astype("int64") if present.all() else out), "integer"
    if vals.str.fullmatch(_FLOAT_RE).all():
        return pd.to_numeric(stripped.where(present, None)).astype("float64"), "number"
    low = vals.str.lower()
    if low.isin(["true", "false"]).all():
        out = pd.Series(np.full(len(s), None, dtype=object), index=s.index, name=s.name)
        out[present.to_numpy()] = (low == "true").to_list()
        return (out.astype(bool) if present.all() else out), "boolean"
    if vals.str.fullmatch(_DATE_RE).all():
        parsed = pd.to_datetime(stripped.where(present, None).str.replace("/", "-"), format="%Y-%m-%d", errors="coerce")
        if parsed[present].notna().all():
            return parsed, "date"
    if vals.str.fullmatch(_DATETIME_RE).all():
        try:
            return _as_datetime(stripped.where(present, None).str.replace("/", "-")), "datetime"
        except (ValueError, TypeError):
            pass
    return s, "string"


def _build_properties(frame: pd.DataFrame, meta: dict, *, infer_text: bool) -> tuple[pd.DataFrame, dict[str, str]]:
    ogr_types = list(meta.get("ogr_types") or [])
    subtypes = list(meta.get("ogr_subtypes") or [])
    columns: dict[str, pd.Series] = {}
    schema: dict[str, str] = {}
    for i, name in enumerate(frame.columns):
        s = frame[name]
        ogr_type = ogr_types[i] if i < len(ogr_types) else "OFTString"
        subtype = subtypes[i] if i < len(subtypes) else "OFSTNone"
        if infer_text and ogr_type == "OFTString" and subtype == "OFSTNone":
            s, ptype = _infer_text_column(s)
        else:
            s, ptype = _normalise_typed(s, ogr_type, subtype)
        columns[name] = s
        schema[name] = ptype
    props = pd.DataFrame(columns, index=frame.index) if columns else pd.DataFrame(index=frame.index)
    return props, schema


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def _row_dict(props: pd.DataFrame, pos: int) -> dict:
    """One row's properties as plain Python values (None for nulls)."""
    return {c: _plain(props[c].iloc[pos]) for c in props.columns}


def _drop_kml_boilerplate(props: pd.DataFrame, schema: dict[str, str]) -> None:
    for col, harmless in _KML_BOILERPLATE.items():
        if col not in props.columns:
            continue
        vals = props[col]
        nonnull = vals[vals.notna()]
        if nonnull.empty or nonnull.isin([h for h in harmless if h is not None]).all():
            del props[col]
            schema.pop(col, None)


# --------------------------------------------------------------------------------------------
# CSV geometry columns


def _find_column(fields: list[str], candidates: tuple[str, ...]) -> str | None:
    norm = {f.strip().lower().lstrip("\ufeff"): f for f in reversed(fields)}
    for c in candidates:
        if c in norm:
            return norm[c]
    return None


_SRID_RE = re.compile(r"^\s*SRID=(\d+)\s*;\s*", re.IGNORECASE)


def _csv_geometries(src: _Source, frame: pd.DataFrame) -> tuple[np.ndarray, list[str], CRS | None]:
    """Geometries from the WKT or lon/lat columns of a CSV, the columns used, and an EWKT SRID."""
    fields = list(frame.columns)
    wkt_col = _find_column(fields, WKT_COLUMN_NAMES)
    if wkt_col is not None:
        text = frame[wkt_col].astype(object).where(frame[wkt_col].notna(), None)
        text = pd.Series(text, dtype=object).map(lambda v: v.strip() if isinstance(v, str) else v)
        present = (text.notna() & (text != "")).to_numpy()
        srids = text[present].str.extract(_SRID_RE, expand=False)
        srid_crs = None
        if srids.notna().any():
            text = text.str.replace(_SRID_RE, "", regex=True)
            codes = set(srids.dropna())
            if len(codes) == 1 and srids.notna().all():
                srid_crs = CRS.from_epsg(int(codes.pop()))
        arr = text.where(pd.Series(present, index=text.index), None).to_numpy(dtype=object)
        geoms = shapely.from_wkt(arr, on_invalid="ignore")
        bad = present & shapely.is_missing(geoms)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            value = str(arr[i])
            try:
                shapely.from_wkt(value)
                why = "not valid WKT"
            except shapely.errors.GEOSException as exc:
                why = str(exc).replace("ParseException: ", "")
            preview = value if len(value) <= 80 else value[:77] + "..."
            raise IngestError(
                f"{src.display}: row {i + 1} (not counting the header line): column {wkt_col!r} does not "
                f"hold a geometry in WKT: {why}: {preview!r}. Fix or delete that row; an empty cell is "
                "accepted and the row is reported as having no geometry."
            )
        return geoms, [wkt_col], srid_crs
    lon_col = _find_column(fields, LON_COLUMN_NAMES)
    lat_col = _find_column(fields, LAT_COLUMN_NAMES)
    if lon_col is None or lat_col is None:
        raise IngestError(
            f"{src.display}: no geometry column found among {', '.join(fields) or '(no columns)'}. Name the "
            "WKT column one of wkt / geometry / geom / the_geom / shape, or the coordinate columns "
            "lon / lng / longitude / x / 经度 and lat / latitude / y / 纬度."
        )
    coords = []
    for col in (lon_col, lat_col):
        raw = frame[col].astype(object).where(frame[col].notna(), None)
        raw = pd.Series(raw, dtype=object).map(lambda v: v.strip() if isinstance(v, str) else v)
        present = (raw.notna() & (raw != "")).to_numpy()
        nums = pd.to_numeric(raw.where(pd.Series(present, index=raw.index), None), errors="coerce").to_numpy(dtype=float)
        bad = present & ~np.isfinite(nums)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise IngestError(
                f"{src.display}: row {i + 1} (not counting the header line): column {col!r} holds "
                f"{raw.iloc[i]!r}, which is not a number. Fix or delete that row (use a dot as the "
                "decimal separator, degrees as decimals such as 114.2514)."
            )
        coords.append(np.where(present, nums, np.nan))
    lon, lat = coords
    ok = np.isfinite(lon) & np.isfinite(lat)
    geoms = np.full(len(frame), None, dtype=object)
    if ok.any():
        geoms[ok] = shapely.points(lon[ok], lat[ok])
    return geoms, [lon_col, lat_col], None


# --------------------------------------------------------------------------------------------
# geometry: families, CRS, validity


def _family_codes(geoms: np.ndarray) -> np.ndarray:
    """Index into GEOMETRY_FAMILIES per geometry; -1 for missing, -2 for collections / others."""
    tid = shapely.get_type_id(geoms)
    codes = np.full(len(geoms), -2, dtype=np.int8)
    codes[tid < 0] = -1
    for t, fam in _TYPE_FAMILY.items():
        codes[tid == t] = _FAMILY_CODE[fam]
    return codes


def _flatten(geom) -> np.ndarray:
    """Non-empty single-part members of a geometry, recursively."""
    parts = np.asarray([geom], dtype=object)
    while True:
        tid = shapely.get_type_id(parts)
        if not np.isin(tid, (4, 5, 6, 7)).any():
            break
        parts = shapely.get_parts(parts)
    return parts[~shapely.is_empty(parts)]


def _collapse_collection(geom) -> tuple[object, set[str]]:
    """A GeometryCollection as a geometry of one family, or (None, families) if it mixes them."""
    parts = _flatten(geom)
    fams = {_TYPE_FAMILY[int(t)] for t in shapely.get_type_id(parts)}
    if len(fams) != 1:
        return None, fams
    fam = fams.pop()
    if len(parts) == 1:
        return parts[0], {fam}
    return _MULTI_MAKER[fam](parts), {fam}


def _keep_family(fixed: np.ndarray, family: str) -> np.ndarray:
    """From make_valid results keep the parts of ``family`` (None where nothing is left)."""
    out = fixed.copy()
    codes = _family_codes(fixed)
    fam = _FAMILY_CODE[family]
    out[(codes != fam) & (codes != -2)] = None  # another family entirely (collapsed)
    out[shapely.is_empty(fixed)] = None
    coll = np.flatnonzero(codes == -2)
    if len(coll):
        parts, idx = shapely.get_parts(fixed[coll], return_index=True)
        while len(parts) and np.isin(shapely.get_type_id(parts), (4, 5, 6, 7)).any():
            parts, sub = shapely.get_parts(parts, return_index=True)
            idx = idx[sub]
        keep = (shapely.get_type_id(parts) == _SINGLE_TYPE[family]) & ~shapely.is_empty(parts)
        if family == "LineString":
            keep |= shapely.get_type_id(parts) == 2
        parts, idx = parts[keep], idx[keep]
        rebuilt = np.full(len(coll), None, dtype=object)
        if len(parts):
            counts = np.bincount(idx, minlength=len(coll))
            multi = np.full(len(coll), None, dtype=object)
            _MULTI_MAKER[family](parts, indices=idx, out=multi)
            single = counts == 1
            rebuilt[counts > 1] = multi[counts > 1]
            if single.any():
                first = {int(i): p for p, i in zip(parts, idx)}
                rebuilt[single] = [first[int(i)] for i in np.flatnonzero(single)]
        out[coll] = rebuilt
    return out


def _fmt_xy(x: float, y: float) -> str:
    return "(" + ", ".join(f"{v:.2f}" if abs(v) >= 1000 else f"{v:.7g}" for v in (x, y)) + ")"


def _coords_in_lonlat_range(xy: np.ndarray) -> np.ndarray:
    return (np.abs(xy[:, 0]) <= 180.0) & (np.abs(xy[:, 1]) <= 90.0)


@dataclass
class _GeomResult:
    geometry: np.ndarray
    family: str
    source_crs: str
    repaired: list[int]
    rejected: list[Rejected]
    keep: np.ndarray  # indices of accepted rows


def _prepare_geometries(
    src: _Source,
    geoms: np.ndarray,
    *,
    declared_type: str | None,
    src_crs: CRS | None,
    crs_label: str | None,
    assume_lonlat: bool,
    from_gcj02: bool,
) -> _GeomResult:
    n = len(geoms)
    geoms = np.asarray(geoms, dtype=object)

    # 1. geometry collections of one family → that family (rare: a small loop)
    codes = _family_codes(geoms)
    for i in np.flatnonzero(codes == -2):
        collapsed, fams = _collapse_collection(geoms[i])
        if collapsed is None and len(fams) > 1:
            raise IngestError(
                f"{src.display}: row {i + 1} is a GeometryCollection mixing {' and '.join(sorted(fams))}; "
                "a layer holds one geometry family. Split the collection into separate files."
            )
        geoms[i] = collapsed
    if (codes == -2).any():
        codes = _family_codes(geoms)

    missing = (codes == -1) | shapely.is_empty(geoms)
    present = ~missing

    # 2. one family per layer
    if present.any():
        first = int(np.flatnonzero(present)[0])
        family = GEOMETRY_FAMILIES[codes[first]]
        odd = present & (codes != codes[first])
        if odd.any():
            j = int(np.flatnonzero(odd)[0])
            raise IngestError(
                f"{src.display}: row {j + 1} is a {geoms[j].geom_type} but "
                f"row {first + 1} is a {geoms[first].geom_type}; a layer holds one geometry family "
                f"(points, lines or polygons). Split the file by geometry type (e.g. ogr2ogr -where "
                f"\"OGR_GEOMETRY='{geoms[j].geom_type.upper()}'\") and ingest each part as its own layer."
            )
    else:
        family = _declared_family(declared_type)
        if family is None:
            if n == 0:
                raise IngestError(f"{src.display}: the layer holds no features.")
            raise IngestError(f"{src.display}: none of the {n} features has a geometry.")

    # 3. coordinates: 2D, source CRS, GCJ-02, reprojection — on one flat array
    if shapely.has_z(geoms).any():
        geoms = shapely.force_2d(geoms)
    coords, owner = shapely.get_coordinates(geoms, return_index=True)

    if src_crs is None:
        if len(coords) and (assume_lonlat or from_gcj02) and _coords_in_lonlat_range(coords).all():
            src_crs, crs_label = crsmod.TARGET, crsmod.TARGET_LABEL
        elif not len(coords):
            src_crs, crs_label = crsmod.TARGET, crsmod.TARGET_LABEL
        else:
            outside = ~_coords_in_lonlat_range(coords)
            sample = coords[int(np.flatnonzero(outside)[0])] if outside.any() else coords[0]
            if not outside.any():
                looks = "it has no .prj / CRS metadata"
            elif max(abs(sample[0]), abs(sample[1])) > 1000:
                looks = f"coordinates such as {_fmt_xy(sample[0], sample[1])} look like projected metres"
            elif abs(sample[0]) <= 90 and abs(sample[1]) <= 180:
                looks = (
                    f"coordinates such as {_fmt_xy(sample[0], sample[1])} are not lon/lat; if longitude "
                    "and latitude are swapped, fix the columns"
                )
            else:
                looks = f"coordinates such as {_fmt_xy(sample[0], sample[1])} are not lon/lat"
            raise IngestError(
                f"{src.display} has no coordinate reference system ({looks}). Pass the CRS the "
                f"coordinates are in with --crs, {crsmod.CRS_EXAMPLE}."
            )

    fn = None
    if from_gcj02:
        if not src_crs.is_geographic:
            raise IngestError(
                f"{src.display}: --from-gcj02 applies to GCJ-02 longitude/latitude, but the file is in "
                f"{crs_label}, a projected CRS. GCJ-02 data is always lon/lat: drop --from-gcj02, or "
                "give the lon/lat CRS with --crs EPSG:4326."
            )
        _check_lonlat(src, coords, owner, "GCJ-02 (--from-gcj02)")
        fn = gcj02_to_wgs84
        crs_label = "GCJ-02"
    else:
        if src_crs.is_geographic:
            _check_lonlat(src, coords, owner, crs_label)
        tr = crsmod.transformer_to_target(src_crs)
        if tr is not None:
            fn = crsmod.proj_fn(tr)
    if fn is not None and len(coords):
        geoms, k = crsmod.apply_xy(geoms, coords, fn)
        if k >= 0:
            raise IngestError(
                f"{src.display}: row {owner[k] + 1}: coordinates {_fmt_xy(coords[k, 0], coords[k, 1])} "
                f"cannot be transformed from {crs_label} to CGCS2000 (EPSG:4490). Check that the "
                f"file really is in {crs_label}, or pass the right one with --crs."
            )

    del coords, owner

    # 4. validity: repair with make_valid, keep the layer's family
    repaired: list[int] = []
    rejected: list[Rejected] = [Rejected(int(i) + 1, "empty geometry") for i in np.flatnonzero(missing)]
    idx_present = np.flatnonzero(present)
    valid = crsmod.parallel_map(shapely.is_valid, geoms[idx_present])
    usable = present.copy()
    bad_idx = idx_present[~valid]
    if len(bad_idx):
        reasons = shapely.is_valid_reason(geoms[bad_idx])
        fixed = _keep_family(shapely.make_valid(geoms[bad_idx]), family)
        ok = ~shapely.is_missing(fixed)
        if ok.any():
            ok[ok] = shapely.is_valid(fixed[ok]) & ~shapely.is_empty(fixed[ok])
        geoms[bad_idx[ok]] = fixed[ok]
        repaired = [int(i) + 1 for i in bad_idx[ok]]
        for i, reason in zip(bad_idx[~ok], reasons[~ok]):
            usable[i] = False
            rejected.append(Rejected(int(i) + 1, f"invalid geometry that cannot be repaired as a {family}: {reason}"))
        rejected.sort(key=lambda r: r.row)

    keep = np.flatnonzero(usable)
    return _GeomResult(geoms[keep], family, crs_label or "", repaired, rejected, keep)


def _declared_family(declared: str | None) -> str | None:
    if not declared:
        return None
    base = declared.replace(" Z", "").replace(" M", "").replace("Multi", "").strip()
    return base if base in GEOMETRY_FAMILIES else None


def _check_lonlat(src: _Source, coords: np.ndarray, owner: np.ndarray, label: str | None) -> None:
    inside = _coords_in_lonlat_range(coords)
    if inside.all():
        return
    k = int(np.flatnonzero(~inside)[0])
    raise IngestError(
        f"{src.display}: row {owner[k] + 1}: coordinates {_fmt_xy(coords[k, 0], coords[k, 1])} are not "
        f"longitude/latitude, but the file is read as {label} (lon/lat). If they are projected metres "
        f"pass their CRS, {crsmod.CRS_EXAMPLE}; if longitude and latitude are swapped, fix the columns."
    )


# --------------------------------------------------------------------------------------------
# GeoJSON feature "id" members
#
# RFC 7946 §3.2: a feature's identifier is the member "id" of the Feature object, beside
# "properties" — not a property. GDAL blurs the two: an integer member becomes the FID (duplicates
# renumbered, missing ones invented, and an integer property "id" can take its place), a string
# member becomes a field "id" — the same field as a property named "id", which then wins. So the
# reader finds the members in the file's text itself: one vectorised pass over the bytes (numpy,
# in chunks, on the memory-mapped file) tracks the JSON nesting outside strings, and only the
# few "id" keys at feature level (and at the top of "properties") are decoded. Files without the
# text "id" anywhere cost one memchr-speed search.


@dataclass
class GeoJSONBatch(PreparedBatch):
    """A batch read from GeoJSON / GeoJSONSeq whose features carry an RFC 7946 "id" member.

    The member is not in ``properties`` / ``schema`` (a property named "id" inside the features'
    ``properties`` is, as any property). The ingestion decides its role: the key with ``--key id``,
    else a field "id"."""

    #: the member of every source feature, indexed by the 1-based source row (rejected rows
    #: included); None where a feature has none
    id_member: pd.Series | None = None
    #: its property type: integer, number, boolean or string (mixed kinds are text)
    id_member_type: str | None = None


_FEATURES_KEY_RE = re.compile(rb'"features"\s*:\s*\[')
#: after the opening quote of a string "id": a colon (so it is a key) and the value's JSON token
_ID_VALUE_RE = re.compile(
    rb'id"\s*:\s*("(?:[^"\\]|\\.)*"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null|[\[{])')
_PROPERTIES_BEFORE_RE = re.compile(rb'"properties"\s*:\s*\Z')
_SCAN_CHUNK = 1 << 24
_SCAN_MAX_DEPTH = 4  # features are at nesting depth 3 in a FeatureCollection, their properties at 4
_MISSING = object()


@dataclass
class _IdScan:
    member: list  # per feature: the value of its "id" member, or _MISSING
    prop: list  # per feature: the value of its properties' "id", or _MISSING

    @property
    def has_member(self) -> bool:
        return any(v is not _MISSING for v in self.member)

    @property
    def has_prop(self) -> bool:
        return any(v is not _MISSING for v in self.prop)


@contextmanager
def _source_bytes(src: _Source):
    """The main file's bytes: memory-mapped when it is on disk, read whole from a zip."""
    if src.local is None:
        yield src.head(-1)
        return
    with open(src.local, "rb") as fh:
        if fh.seek(0, 2) == 0:
            yield b""
            return
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield mm
        finally:
            try:
                mm.close()
            except BufferError:  # a numpy view still held by an exception's traceback: the GC closes it
                pass


def _escaped(buf: np.ndarray, quotes: np.ndarray) -> np.ndarray:
    """Which of these '"' are escaped (preceded by an odd run of backslashes)."""
    out = np.zeros(len(quotes), dtype=bool)
    prev = quotes - 1
    for k in np.flatnonzero((prev >= 0) & (buf[np.maximum(prev, 0)] == 0x5C)):
        p, run = int(quotes[k]) - 1, 0
        while p >= 0 and buf[p] == 0x5C:
            run, p = run + 1, p - 1
        out[k] = run % 2 == 1
    return out


@dataclass
class _Structure:
    probe_depth: np.ndarray  # nesting depth at each probe position
    probe_opening: np.ndarray  # is the probe the opening quote of a string
    id_pos: np.ndarray  # opening quotes of the strings "id" (keys or values)
    id_depth: np.ndarray  # their nesting depth
    bpos: np.ndarray  # brackets outside strings that leave the depth ≤ _SCAN_MAX_DEPTH
    bafter: np.ndarray  # the depth after each
    bdelta: np.ndarray  # +1 opens, -1 closes


def _depth_at(pos: np.ndarray, bs: np.ndarray, after: np.ndarray, depth: int) -> np.ndarray:
    if not len(bs):
        return np.full(len(pos), depth, dtype=np.int64)
    i = np.searchsorted(bs, pos)
    return np.where(i > 0, after[np.maximum(i - 1, 0)], depth)


def _json_structure(data, probes: np.ndarray) -> _Structure:
    """One vectorised pass over JSON text, in chunks: the nesting outside strings, the strings
    "id", and for each (sorted) probe position its depth and whether a string opens there."""
    buf = np.frombuffer(data, dtype=np.uint8)
    n = len(buf)
    has_backslash = data.find(b"\\") >= 0
    probe_depth = np.zeros(len(probes), dtype=np.int64)
    probe_opening = np.zeros(len(probes), dtype=bool)
    ids: list[tuple[np.ndarray, np.ndarray]] = []
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    quotes_before = depth = 0
    for start in range(0, n, _SCAN_CHUNK):
        chunk = buf[start:start + _SCAN_CHUNK]
        qs = np.flatnonzero(chunk == 0x22) + start
        if has_backslash and len(qs):
            qs = qs[~_escaped(buf, qs)]
        folded = chunk | 0x20  # '[' → '{', ']' → '}'
        bs = np.flatnonzero((folded == 0x7B) | (folded == 0x7D))
        delta = np.where(folded[bs] == 0x7B, 1, -1).astype(np.int8)
        bs += start
        del chunk, folded
        if len(bs) and len(qs):
            outside = (np.searchsorted(qs, bs) + quotes_before) % 2 == 0
            bs, delta = bs[outside], delta[outside]
        after = depth + np.cumsum(delta, dtype=np.int64)
        # strings "id": an opening quote followed by id"
        opens = qs[(np.arange(len(qs)) + quotes_before) % 2 == 0]
        opens = opens[opens + 3 < n]
        hit = opens[(buf[opens + 1] == 0x69) & (buf[opens + 2] == 0x64) & (buf[opens + 3] == 0x22)]
        if len(hit):
            ids.append((hit, _depth_at(hit, bs, after, depth)))
        lo, hi = np.searchsorted(probes, [start, start + _SCAN_CHUNK])
        if hi > lo:
            p = probes[lo:hi]
            probe_depth[lo:hi] = _depth_at(p, bs, after, depth)
            if len(qs):
                j = np.searchsorted(qs, p)
                probe_opening[lo:hi] = ((j < len(qs)) & (qs[np.minimum(j, len(qs) - 1)] == p)
                                        & ((j + quotes_before) % 2 == 0))
        keep = after <= _SCAN_MAX_DEPTH
        kept.append((bs[keep], after[keep], delta[keep]))
        if len(after):
            depth = int(after[-1])
        quotes_before += len(qs)
    del buf

    def cat(parts, i):
        return np.concatenate([part[i] for part in parts]) if parts else np.zeros(0, dtype=np.int64)

    return _Structure(probe_depth, probe_opening, cat(ids, 0), cat(ids, 1), cat(kept, 0), cat(kept, 1), cat(kept, 2))


def _json_values(data, tokens: list[bytes]) -> list:
    """JSON scalar tokens decoded in one call."""
    if not tokens:
        return []
    text = b"[" + b",".join(tokens) + b"]"
    try:
        return json.loads(text, strict=False)
    except (UnicodeDecodeError, ValueError):
        return json.loads(text.decode("utf-8", errors="replace"), strict=False)


def _json_composite_at(data, start: int) -> str:
    """The object or array starting at ``start`` as JSON text (not an RFC 7946 id, but valid JSON)."""
    size = 4096
    while True:
        text = bytes(data[start:start + size]).decode("utf-8", errors="replace")
        try:
            value, _ = json.JSONDecoder().raw_decode(text)
            return json.dumps(value, ensure_ascii=False)
        except ValueError:
            if start + size >= len(data):
                return text.strip()
            size *= 4


def _scan_geojson_ids(data, n_features: int) -> _IdScan | None:
    """The "id" member and the properties' "id" of every feature of a GeoJSON FeatureCollection,
    a single Feature or GeoJSONSeq text. None when the text has no string "id" at all, or when
    its features cannot be matched one to one with GDAL's rows (then GDAL's reading stands)."""
    if data.find(b'"id"') < 0 or data.find(b'"Feature"') < 0:  # (no ids, or not GeoJSON: ESRIJSON, TopoJSON)
        return None
    feature_keys = [(m.start(), m.end()) for m in _FEATURES_KEY_RE.finditer(data)]
    probes = np.asarray([s for s, _ in feature_keys], dtype=np.int64)
    st = _json_structure(data, probes)

    # a FeatureCollection: the features are the objects of the top-level "features" array
    top = np.flatnonzero(st.probe_opening & (st.probe_depth == 1))
    if len(top):
        array_open = feature_keys[int(top[0])][1] - 1
        closes = st.bpos[(st.bdelta < 0) & (st.bafter == 1) & (st.bpos > array_open)]
        lo, hi, level = array_open, (int(closes[0]) if len(closes) else len(data)), 3
    else:  # a single Feature, or GeoJSONSeq: the top-level objects are the features
        lo, hi, level = -1, len(data), 1
    inside = (st.bpos > lo) & (st.bpos < hi)
    feature_open = st.bpos[inside & (st.bdelta > 0) & (st.bafter == level)]
    if len(feature_open) != n_features or any(data[p:p + 1] != b"{" for p in feature_open.tolist()):
        return None
    member_open = st.bpos[inside & (st.bdelta > 0) & (st.bafter == level + 1)]

    in_range = (st.id_pos > lo) & (st.id_pos < hi)
    feature = np.searchsorted(feature_open, st.id_pos) - 1
    is_member = in_range & (st.id_depth == level) & (feature >= 0)
    is_prop = in_range & (st.id_depth == level + 1) & (feature >= 0)
    if is_prop.any():
        # a key at depth level+1 belongs to its feature's "properties" if that is the object it is in
        c = np.searchsorted(member_open, st.id_pos) - 1
        cpos = member_open[np.maximum(c, 0)] if len(member_open) else np.zeros(len(c), dtype=np.int64)
        is_prop &= (c >= 0) & (cpos >= feature_open[np.maximum(feature, 0)])
        in_properties: dict[int, bool] = {}
        for k in np.flatnonzero(is_prop):
            brace = int(cpos[k])
            if brace not in in_properties:
                in_properties[brace] = data[brace:brace + 1] == b"{" and bool(
                    _PROPERTIES_BEFORE_RE.search(data[max(0, brace - 256):brace]))
            is_prop[k] = in_properties[brace]

    member: list = [_MISSING] * n_features
    prop: list = [_MISSING] * n_features
    for target, chosen in ((member, is_member), (prop, is_prop)):
        where, tokens, composite = [], [], []
        for k in np.flatnonzero(chosen):
            m = _ID_VALUE_RE.match(data, int(st.id_pos[k]) + 1)
            if m is None:  # a string "id" that is a value, not a key
                continue
            tok = m.group(1)
            if tok in (b"[", b"{"):
                composite.append((int(feature[k]), _json_composite_at(data, m.start(1))))
            else:
                where.append(int(feature[k]))
                tokens.append(tok)
        for f, v in zip(where, _json_values(data, tokens)):
            target[f] = v  # a feature naming "id" twice: the last one, as JSON parsers do
        for f, v in composite:
            target[f] = v
    return _IdScan(member, prop)


def _json_column(values: list, index) -> tuple[pd.Series, str]:
    """JSON values (_MISSING / None as null) as a property column and its type."""
    vals = [None if v is _MISSING else v for v in values]
    present = [v for v in vals if v is not None]
    nulls = len(present) < len(vals)
    if present and all(isinstance(v, bool) for v in present):
        kind, dtype = "boolean", (object if nulls else bool)
    elif present and all(isinstance(v, int) and not isinstance(v, bool) for v in present) \
            and all(abs(v) <= _INT64_MAX for v in present):
        kind, dtype = "integer", (object if nulls else np.int64)
    elif present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        kind, dtype = "number", np.float64
        vals = [np.nan if v is None else float(v) for v in vals]
    else:
        kind, dtype = "string", object
        vals = [v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in vals]
    return pd.Series(vals, index=index, name="id", dtype=dtype), kind


def _geojson_id_members(src: _Source, props: pd.DataFrame, schema: dict[str, str]) -> tuple[pd.Series | None, str | None]:
    """The features' "id" members (indexed by source row), taken out of ``props`` / ``schema``
    where GDAL put them; a property named "id" keeps the values the features' ``properties`` give."""
    with _source_bytes(src) as data:
        scan = _scan_geojson_ids(data, len(props))
    if scan is None or not scan.has_member:
        return None, None
    rows = pd.RangeIndex(1, len(props) + 1)
    ids, id_type = _json_column(scan.member, rows)
    if scan.has_prop:
        column, ptype = _json_column(scan.prop, props.index)
        if "id" not in props.columns:
            props.insert(0, "id", column)
            schema_items = [("id", ptype), *schema.items()]
            schema.clear()
            schema.update(schema_items)
        else:
            props["id"] = column
            schema["id"] = ptype
    elif "id" in props.columns:
        del props["id"]
        schema.pop("id", None)
    return ids, id_type


# --------------------------------------------------------------------------------------------
# the entry point


def read_vector(
    path: str | Path,
    *,
    crs: str | None = None,
    from_gcj02: bool = False,
    encoding: str | None = None,
    source_layer: str | None = None,
) -> PreparedBatch:
    """Read a vector file into a :class:`PreparedBatch` in EPSG:4490.

    ``crs`` assigns / overrides the source CRS (EPSG code, PROJ string or WKT); ``from_gcj02``
    says the lon/lat are GCJ-02 and converts them; ``encoding`` overrides the text encoding
    (shapefiles without .cpg are otherwise detected as UTF-8 or GB18030); ``source_layer``
    picks a layer of a multi-layer file (GeoPackage, FileGDB, KML, zip of shapefiles).

    Raises :class:`IngestError` for anything the user can fix: missing or corrupt file, several
    layers and no ``source_layer``, bad ``crs``, no CRS, a CSV row that does not parse, mixed
    geometry families.
    """
    display = str(path)
    p = Path(path)
    if not p.exists():
        raise IngestError(f"{display}: no such file or folder. Check the path (and the current folder).")
    src_crs_opt = crsmod.parse_crs_option(crs) if crs is not None else None

    picked_layer = None
    if p.suffix.lower() == ".zip" and p.is_file():
        src, picked_layer = _zip_source(display, p, source_layer)
    elif p.is_dir() and p.suffix.lower() != ".gdb":
        raise IngestError(
            f"{display} is a folder. Pass a file, or a FileGDB folder whose name ends in .gdb."
        )
    else:
        src = _file_source(display, p)

    # a zip of several shapefiles: the member was picked by name; its dataset has one layer
    layer = _list_layers(src)[0][0] if picked_layer is not None else _choose_layer(src, source_layer)
    enc = _choose_encoding(src, encoding)

    is_csv = src.kind == "csv"
    open_options = {"EMPTY_STRING_AS_NULL": "YES", "AUTODETECT_TYPE": "NO", "KEEP_GEOM_COLUMNS": "YES"} if is_csv else {}
    read_enc = enc if (src.kind == "shapefile" or encoding or (is_csv and enc != UTF8)) else None
    meta, wkb, frame = _read(src, layer, read_enc, read_geometry=not is_csv, **open_options)
    n = len(frame)

    file_crs_text = meta.get("crs")
    srid_crs = None
    drop_cols: list[str] = []
    if is_csv:
        geoms, drop_cols, srid_crs = _csv_geometries(src, frame)
        if not file_crs_text:
            prj = src.sidecar(".prj")
            if prj:
                file_crs_text = prj.decode("utf-8", errors="replace")
    else:
        geoms = _geoms_from_wkb(src, wkb, n)
    del wkb  # the WKB copy of a big layer is no longer needed

    # source CRS: --crs, else the file's, else (CSV EWKT) the SRID
    src_crs = src_crs_opt
    label = None
    if src_crs is not None:
        label = crsmod.crs_label(src_crs, str(crs))
    elif file_crs_text:
        try:
            src_crs = CRS.from_user_input(file_crs_text)
        except CRSError as exc:
            raise IngestError(
                f"{display}: its CRS definition is not understood by PROJ ({exc}). Pass the CRS with "
                f"--crs, {crsmod.CRS_EXAMPLE}."
            ) from None
        label = crsmod.crs_label(src_crs)
    elif srid_crs is not None:
        src_crs, label = srid_crs, crsmod.crs_label(srid_crs)

    frame = frame.drop(columns=drop_cols)
    kept_meta = dict(meta)
    if drop_cols:
        idx = [i for i, f in enumerate(meta["fields"]) if str(f) not in set(drop_cols)]
        kept_meta["ogr_types"] = [meta["ogr_types"][i] for i in idx]
        kept_meta["ogr_subtypes"] = [meta["ogr_subtypes"][i] for i in idx]

    result = _prepare_geometries(
        src,
        geoms,
        declared_type=meta.get("geometry_type"),
        src_crs=src_crs,
        crs_label=label,
        assume_lonlat=src.kind in ("csv", "kml"),
        from_gcj02=from_gcj02,
    )

    props, schema = _build_properties(frame, kept_meta, infer_text=is_csv)
    if src.kind == "kml":
        _drop_kml_boilerplate(props, schema)
    id_member = id_member_type = None
    if src.kind in ("geojson", "geojsonseq"):
        id_member, id_member_type = _geojson_id_members(src, props, schema)
    for r in result.rejected:
        r.properties = _row_dict(props, r.row - 1)
    props = props.iloc[result.keep].reset_index(drop=True)

    multi_layer = src.kind in ("gpkg", "filegdb", "kml") or picked_layer is not None or source_layer is not None
    extra = {} if id_member is None else {"id_member": id_member, "id_member_type": id_member_type}
    return (PreparedBatch if id_member is None else GeoJSONBatch)(
        source=display,
        source_layer=layer if multi_layer else None,
        source_crs=result.source_crs,
        geometry_family=result.family,
        schema=schema,
        properties=props,
        geometry=result.geometry,
        rows=(result.keep + 1).astype(np.int64),
        repaired=result.repaired,
        rejected=result.rejected,
        encoding=enc or meta.get("encoding"),
        **extra,
    )
