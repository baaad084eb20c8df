"""``geotwin ingest imagery``: a GeoTIFF → a Cloud-Optimized GeoTIFF in the managed folder → an item
of the imagery catalogue (``spatial_api.store.imagery``).

Steps: the file is opened with rasterio (readable, georeferenced, a CRS PROJ can transform to
CGCS2000), every block is read once (a truncated or corrupt file fails here, not in a tile request
later), ``rio_cogeo.cog_validate`` decides whether it already is a COG: a COG is copied as it is,
anything else is written as one by rio-cogeo (DEFLATE with a predictor, internal overviews). The
item records the footprint in EPSG:4490, the resolution in metres, bands / dtype / nodata, the CRS,
the zoom range per tile grid, the file's size and sha256, and who loaded it.

All-or-nothing: the COG is written under a temporary name, the catalogue row is inserted in one
transaction (serialised per collection), and a failure anywhere removes the new file and leaves
the catalogue as it was. Re-ingesting the same file for the same datetime writes nothing; a
different file for a datetime already in the collection replaces that item (its old COG is removed
after the commit).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
import uuid
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from spatial_api.config import Settings, author_default, get_settings
from spatial_api.ingest.types import IngestError, in_cli_words
from spatial_api.api.grids import TMS
from spatial_api import db
from spatial_api.ingest import parse_valid_time
from spatial_api.store import imagery as cat

__all__ = ["ImagerySummary", "ingest_imagery", "managed_dir"]

#: Tile grids whose zoom range is recorded per item (ids as in spatial_api.api.grids.TMS).
ZOOM_GRIDS = ("WebMercatorQuad", "CGCS2000Quad")


@dataclass
class ImagerySummary:
    collection: str
    item_id: str
    datetime: str
    source: str
    cog_path: str
    skipped: bool = False  # the catalogue already holds this file for this datetime: nothing written
    converted: bool = False  # the input was not a COG and was written as one
    replaced: str | None = None  # item id of the item of the same datetime that this one replaced
    new_collection: bool = False
    kind: str | None = None
    sha256: str | None = None
    file_size: int = 0
    resolution_m: float | None = None
    bands: int | None = None
    dtype: str | None = None
    crs: str | None = None
    bbox: list[float] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def managed_dir(settings: Settings, collection: str) -> Path:
    """Default home of a collection's COGs: ``<GEOTWIN_HOME>/imagery/<collection>`` for the default
    schema, ``<GEOTWIN_HOME>/imagery/<schema>/<collection>`` for any other (tests, benches), so
    that two catalogues never share — and never remove — each other's files."""
    if settings.db_schema == "geotwin":
        return settings.home / "imagery" / collection
    return settings.home / "imagery" / settings.db_schema / collection


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _title_fields(title: str | None, title_zh: str | None, title_en: str | None) -> tuple[str | None, str | None]:
    """``--title`` fills the Chinese title when it has CJK characters, else the English one."""
    if title:
        if any("\u3400" <= ch <= "\u9fff" for ch in title):
            title_zh = title_zh or title
        else:
            title_en = title_en or title
    return title_zh, title_en


# -- checks ------------------------------------------------------------------------------------


def inspect_raster(path: Path) -> dict:
    """Open ``path`` and check it can be served: readable, georeferenced, a known CRS, every
    block decodable. Returns its properties; raises IngestError naming the file and the fix."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
    from pyproj import CRS as ProjCRS, Transformer

    if not path.exists():
        raise IngestError(f"{path}: no such file. Give the path of a GeoTIFF.")
    if path.is_dir():
        raise IngestError(f"{path}: is a folder. Give the path of a GeoTIFF file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioIOError as exc:
        raise IngestError(
            f"{path}: not a readable raster ({_gdal_message(exc)}). Give a GeoTIFF (.tif); if the file was "
            "copied or downloaded, check that it is complete (compare its size / checksum with the original).") from None
    with src:
        if src.count < 1:
            raise IngestError(f"{path}: the raster has no bands. Give a GeoTIFF with image or elevation bands.")
        if src.crs is None:
            hint = (" It has ground control points only: warp it first "
                    "(`gdalwarp -t_srs EPSG:4547 IN.tif OUT.tif`) and ingest OUT.tif.") if src.gcps[0] else ""
            raise IngestError(
                f"{path}: the GeoTIFF has no coordinate reference system (CRS), so its position is unknown."
                f"{hint} Assign the CRS it was made in, e.g. `gdal_edit.py -a_srs EPSG:4547 {path}` "
                "(CGCS2000 / 3-degree Gauss-Kruger CM 114E, Longgang's projected CRS), and ingest it again.")
        if src.transform.is_identity:
            raise IngestError(
                f"{path}: the GeoTIFF has a CRS but no georeferencing (pixel-to-map transform). Add it with "
                f"`gdal_edit.py -a_ullr ULX ULY LRX LRY {path}` (corner coordinates in {src.crs.to_string()}) "
                "or warp the image, then ingest it again.")
        try:
            crs = ProjCRS.from_user_input(src.crs.to_wkt())
            to_4490 = Transformer.from_crs(crs, 4490, always_xy=True)
            cx = (src.bounds.left + src.bounds.right) / 2
            cy = (src.bounds.bottom + src.bounds.top) / 2
            lon, lat = to_4490.transform(cx, cy)
            if not (math.isfinite(lon) and math.isfinite(lat)):
                raise ValueError("not finite")
        except Exception:
            raise IngestError(
                f"{path}: its CRS ({src.crs.to_string()[:120]}) cannot be transformed to CGCS2000 (EPSG:4490). "
                "Assign a known CRS (`gdal_edit.py -a_srs EPSG:4547 FILE`) or warp the image to one.") from None
        # Read every block once: a truncated or corrupt file fails here, not in a tile request.
        try:
            for _, window in src.block_windows(1):
                src.read(window=window)
        except Exception as exc:  # GDAL's read errors (CPLE_*) come as RasterioIOError and kin
            raise IngestError(
                f"{path}: the image data cannot be read ({_gdal_message(exc)}): the file is truncated or "
                "corrupt. Copy it again from the original and check its size / checksum.") from None
        epsg = src.crs.to_epsg()
        if crs.is_projected:
            unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
            res_m = (abs(src.transform.a) + abs(src.transform.e)) / 2 * unit
        else:
            res_m = (abs(src.transform.a) * math.cos(math.radians(lat)) + abs(src.transform.e)) / 2 * 111_320.0
        return {
            "driver": src.driver, "width": src.width, "height": src.height, "bands": src.count,
            "dtype": src.dtypes[0], "nodata": src.nodata,
            "crs": f"EPSG:{epsg}" if epsg else src.crs.to_wkt(), "resolution_m": res_m,
        }


def _gdal_message(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def is_cog(path: Path) -> bool:
    from rio_cogeo.cogeo import cog_validate

    try:
        valid, errors, _warnings = cog_validate(str(path), quiet=True)
    except Exception:
        return False
    return bool(valid and not errors)


def write_cog(src: Path, dst: Path, dtype: str) -> None:
    """``src`` → a COG at ``dst``: DEFLATE (predictor 2 for integers, 3 for floats), 512-px blocks,
    internal overviews (nearest for 8-bit images, average otherwise)."""
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    profile = cog_profiles.get("deflate")
    profile.update(predictor=3 if dtype.startswith("float") else 2)
    cog_translate(str(src), str(dst), profile, overview_resampling="nearest" if dtype == "uint8" else "average",
                  in_memory=False, quiet=True, config={"GDAL_TIFF_INTERNAL_MASK": True})


def describe_cog(path: Path) -> dict:
    """Footprint (EPSG:4490 WKT, densified edges), bbox and zoom range per grid of a COG."""
    import rasterio
    import shapely
    from rasterio.warp import transform_geom
    from rio_tiler.io import Reader


    with rasterio.open(path) as src:
        b = src.bounds
        ring = shapely.segmentize(shapely.box(b.left, b.bottom, b.right, b.top), max(b.right - b.left, b.top - b.bottom) / 32)
        geom = transform_geom(src.crs, "EPSG:4490", shapely.geometry.mapping(ring))
    footprint = shapely.geometry.shape(geom)
    zooms = {}
    for grid in ZOOM_GRIDS:
        with Reader(str(path), tms=TMS.get(grid)) as r:
            zooms[grid] = [int(r.minzoom), int(r.maxzoom)]
    return {"footprint_wkt": footprint.wkt, "bbox": list(footprint.bounds), "zooms": zooms}


# -- the ingestion ---------------------------------------------------------------------------


@in_cli_words
def ingest_imagery(
    path: str | Path,
    *,
    collection: str,
    datetime_: datetime | str,
    kind: str | None = None,
    title: str | None = None,
    title_zh: str | None = None,
    title_en: str | None = None,
    description: str | None = None,
    access_level: str | None = None,
    item_id: str | None = None,
    cog_dir: str | Path | None = None,
    author: str | None = None,
    settings: Settings | None = None,
) -> ImagerySummary:
    """Register one GeoTIFF as the item of ``collection`` acquired at ``datetime_`` (a date means
    midnight in the district's time zone). See the module docstring; raises IngestError."""

    t0 = time.perf_counter()
    settings = settings or get_settings()
    cat.check_collection_id(collection)
    if kind is not None and kind not in cat.KINDS:
        raise IngestError(f"--kind {kind!r}: choose one of {', '.join(cat.KINDS)}")
    if access_level is not None and access_level not in cat.ACCESS_LEVELS:
        raise IngestError(f"--access {access_level!r}: choose one of {', '.join(cat.ACCESS_LEVELS)}")
    when = parse_valid_time(datetime_, settings.timezone, param="--datetime")
    if item_id is not None:
        cat.check_item_id(item_id)
    title_zh, title_en = _title_fields(title, title_zh, title_en)
    src = Path(path).expanduser()
    source = src.resolve() if src.exists() else src
    if not source.is_file():
        inspect_raster(source)  # raises the "no such file" / "is a folder" error
    source_sha = sha256_file(source)

    # Already there (same datetime, same file)? Then nothing to do. Wrong kind? Say so before any work.
    with db.connect(settings) as conn:
        existing_col = cat.get_collection(conn, collection)
        if existing_col is not None and kind is not None and existing_col.kind != kind:
            raise IngestError(f"--kind {kind!r}: collection {collection!r} holds {existing_col.kind!r} imagery; "
                              f"give --kind {existing_col.kind} or choose another --collection")
        current = cat.item_at(conn, collection, when)
    if item_id is None:  # the item of this datetime keeps its id; a new one is named by its date
        if current is not None:
            item_id = current.item_id
        else:
            from zoneinfo import ZoneInfo

            local = when.astimezone(ZoneInfo(settings.timezone))
            item_id = local.date().isoformat() if (local.hour, local.minute, local.second) == (0, 0, 0) \
                else local.strftime("%Y-%m-%dT%H%M%S")
    summary = ImagerySummary(collection=collection, item_id=item_id, datetime=when.isoformat(), source=str(path),
                             cog_path="")
    if current is not None and source_sha in (current.source_sha256, current.sha256) \
            and current.item_id == item_id and current.cog_path.exists():
        summary.skipped = True
        summary.cog_path = str(current.cog_path)
        summary.sha256, summary.file_size = current.sha256, current.file_size
        summary.kind = existing_col.kind if existing_col else kind
        summary.seconds = time.perf_counter() - t0
        return summary

    info = inspect_raster(source)
    out_dir = Path(cog_dir).expanduser() if cog_dir else managed_dir(settings, collection)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IngestError(f"--cog-dir {out_dir}: cannot create the folder ({exc.strerror}). "
                          "Give a writable folder.") from None
    out_dir = out_dir.resolve()
    tmp = out_dir / f".{item_id}.{uuid.uuid4().hex[:8]}.tmp.tif"
    final: Path | None = None
    preexisting = committed = False
    try:
        converted = not is_cog(source)
        if converted:
            try:
                write_cog(source, tmp, info["dtype"])
            except Exception as exc:
                raise IngestError(f"{path}: writing a Cloud-Optimized GeoTIFF failed ({_gdal_message(exc)}). "
                                  f"Check free space in {out_dir} and that the file is a complete GeoTIFF.") from None
            if not is_cog(tmp):  # a bug, not the user's doing
                raise RuntimeError(f"rio-cogeo wrote {tmp}, which is not a valid COG")
            sha = sha256_file(tmp)
        else:
            shutil.copyfile(source, tmp)
            sha = source_sha
        final = out_dir / f"{item_id}.{sha[:16]}.tif"
        described = describe_cog(tmp)
        size = tmp.stat().st_size
        preexisting = final.exists()  # same item id and content (name has the sha): another item's file
        os.replace(tmp, final)
        item = cat.Item(
            collection=collection, item_id=item_id, datetime=when, footprint_wkt=described["footprint_wkt"],
            resolution_m=float(info["resolution_m"]), width=info["width"], height=info["height"],
            bands=info["bands"], dtype=info["dtype"], nodata=info["nodata"], crs=info["crs"],
            zooms=described["zooms"], cog_path=final, file_size=size, sha256=sha, author=author or author_default(),
            source_path=str(source), source_sha256=source_sha, converted=converted)
        with db.transaction(settings) as conn:
            cat.lock_collection(conn, collection)
            col = cat.get_collection(conn, collection)
            summary.new_collection = col is None
            col = cat.create_collection(
                conn, collection, kind=kind or (col.kind if col else "ortho"), title_zh=title_zh, title_en=title_en,
                description=description, access_level=access_level or "public", exist_ok=True)
            replaced = cat.register_item(conn, item)
            still_used = replaced is not None and replaced.cog_path != final and any(
                other.cog_path == replaced.cog_path for other in cat.list_items(conn, collection)
                if other.item_id != replaced.item_id)
        committed = True
    except BaseException:
        for leftover in (tmp, None if preexisting else final):
            if leftover is not None and not committed:
                try:
                    leftover.unlink(missing_ok=True)
                except OSError:
                    pass
        raise
    finally:
        if tmp.exists():
            tmp.unlink(missing_ok=True)

    if replaced is not None and replaced.cog_path != final and not still_used:
        with db.connect(settings) as conn:
            if not cat.path_in_use(conn, replaced.cog_path):
                replaced.cog_path.unlink(missing_ok=True)
    summary.converted = converted
    summary.replaced = replaced.item_id if replaced is not None else None
    summary.kind = col.kind
    summary.cog_path = str(final)
    summary.sha256, summary.file_size = sha, size
    summary.resolution_m, summary.bands, summary.dtype = item.resolution_m, item.bands, item.dtype
    summary.crs, summary.bbox = item.crs, described["bbox"]
    summary.seconds = time.perf_counter() - t0
    return summary


# -- the command (registered as `geotwin ingest imagery` in spatial_api/ingest/cli.py) -------------


def cli_command(
    path: Path,
    collection: str,
    datetime_: str,
    kind: str | None,
    title: str | None,
    title_zh: str | None,
    title_en: str | None,
    item_id: str | None,
    cog_dir: Path | None,
    access: str | None,
    author: str | None,
    as_json: bool,
) -> int:
    """Run one ingestion for the command line; prints the outcome, returns the exit status."""
    import json

    from rich.console import Console

    console, err = Console(), Console(stderr=True, soft_wrap=True)
    try:
        s = ingest_imagery(path, collection=collection, datetime_=datetime_, kind=kind, title=title,
                           title_zh=title_zh, title_en=title_en, item_id=item_id, cog_dir=cog_dir,
                           access_level=access, author=author)
    except IngestError as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc)}, ensure_ascii=False))
        else:
            err.print(f"[bold red]error:[/] {exc}\nNothing was written: the imagery catalogue is as it was.")
        return 1
    if as_json:
        print(json.dumps({"ok": True, **s.to_dict()}, ensure_ascii=False))
    elif s.skipped:
        console.print(f"[yellow]●[/] {collection}/{s.item_id} ({s.datetime[:10]}) already holds {path}: nothing written.")
    else:
        what = "written as a COG" if s.converted else "already a COG, copied"
        console.print(f"[green]●[/] {collection}/{s.item_id} ({s.datetime[:10]}) ← {path}: {what}"
                      + (f", replaces item {s.replaced!r}" if s.replaced else "")
                      + (f" (new {s.kind} collection)" if s.new_collection else ""))
        console.print(f"  {s.cog_path}  {s.file_size / 1e6:.1f} MB, {s.bands} × {s.dtype}, {s.resolution_m:.2f} m, "
                      f"{s.crs}, sha256 {s.sha256[:16]}…  ({s.seconds:.1f} s)")
    return 0
