"""``geotwin ingest imagery``: a GeoTIFF → a Cloud-Optimized GeoTIFF in the managed folder → an item
of the imagery catalogue (``spatial_api.store.imagery``).

Steps: the file is opened with rasterio (readable, georeferenced, a CRS PROJ can transform to
CGCS2000), every block is read once (a truncated or corrupt file fails here, not in a tile request
later), ``rio_cogeo.cog_validate`` decides whether it already is a COG: a COG is copied as it is,
anything else is written as one by rio-cogeo (DEFLATE with a predictor, internal overviews). The
item records the footprint in EPSG:4490, the resolution in metres, bands / dtype / nodata, the CRS,
the zoom range per tile grid, the file's size and sha256, and who loaded it.

Web-optimised copies (issue 15): besides that master COG, the item gets one copy per served tile
grid (``WebMercatorQuad``, ``CGCS2000Quad``; :func:`write_grid_copy`): the master warped once onto
the grid (nearest neighbour, as TiTiler's own warped read samples it) at the grid's zoom nearest the
image's resolution, in 256-px blocks with overviews, the finest levels' blocks aligned with the
grid's tiles (rio-cogeo's web-optimised COG with ``aligned_levels``), lossless (DEFLATE), with a
mask outside the image. A tile of that grid at one of the copy's zooms is then a window of one
level — one block where the level is aligned — read without warping (tiling/imagery.py). The
copies live beside the master, in ``grids/<tms>/`` of its folder, and are recorded in
``imagery_item_grids`` with their zoom range. A copy that cannot be written fails the ingest.

All-or-nothing: the COG and its copies are written under temporary names, the catalogue rows are
inserted in one transaction (serialised per collection), and a failure anywhere removes the new
files and leaves the catalogue as it was. Re-ingesting the same file for the same datetime writes
nothing (an item registered before the copies existed gets them then); a different file for a
datetime already in the collection replaces that item (its old COG and copies are removed after
the commit).

Object storage (issue 18): with ``store="s3"`` (``--store s3``: the bucket GEOTWIN_S3_BUCKET,
prefix ``imagery``), ``store="s3://BUCKET/prefix"`` or GEOTWIN_IMAGERY_STORE set to either, the
COG and its copies go to an S3-compatible bucket (``spatial_api.objectstore``) instead of the
managed folder: they are written and checked (COG validation, sha256, description, the copies)
in a local staging folder exactly as on disk, then uploaded under their final keys
(``<prefix>/[<schema>/]<collection>/<item>.<sha>.tif``, ``…/grids/<tms>/…``); the catalogue records
the ``s3://`` URIs, which the tile server opens through GDAL's ``/vsis3/`` (range requests). The
store is checked (reachable, credentials, bucket) before any work; a failure after an upload
deletes the uploaded objects, as a failure on disk removes the new files.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from spatial_api.config import Settings, author_default, get_settings
from spatial_api.ingest.types import IngestError, in_cli_words
from spatial_api.api.grids import TMS
from spatial_api import db, objectstore
from spatial_api.ingest import parse_valid_time
from spatial_api.store import imagery as cat

__all__ = ["ImagerySummary", "ingest_imagery", "managed_dir"]

#: Tile grids whose zoom range is recorded per item (ids as in spatial_api.api.grids.TMS).
ZOOM_GRIDS = ("WebMercatorQuad", "CGCS2000Quad")
#: Tile grids an item gets a web-optimised copy on (every grid the tile server serves).
GRID_COPIES = ZOOM_GRIDS
#: Sub-folder of a master COG's folder holding its grid copies (``grids/<tms>/<master's name>``).
GRIDS_DIR = "grids"


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
    #: the web-optimised copies written by this ingest: {tms: {"cog_path", "minzoom", "maxzoom", "file_size"}}
    #: (an item skipped as already there gets only the copies it lacked)
    grids: dict[str, dict] = field(default_factory=dict)
    grid_seconds: float = 0.0  # of ``seconds``, the time spent writing the copies

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def managed_dir(settings: Settings, collection: str) -> Path:
    """Default home of a collection's COGs: ``<GEOTWIN_HOME>/imagery/<collection>`` for the default
    schema, ``<GEOTWIN_HOME>/imagery/<schema>/<collection>`` for any other (tests, benches), so
    that two catalogues never share — and never remove — each other's files."""
    if settings.db_schema == "geotwin":
        return settings.home / "imagery" / collection
    return settings.home / "imagery" / settings.db_schema / collection


#: ``--store`` / GEOTWIN_IMAGERY_STORE: where new COGs go — the managed folder, or a bucket.
STORE_ENV = "GEOTWIN_IMAGERY_STORE"


def store_root(settings: Settings, collection: str, store: str | None) -> objectstore.ObjectPath | None:
    """The bucket prefix a collection's new COGs go to, or None for the local folder. ``store``:
    None (GEOTWIN_IMAGERY_STORE, else local), ``"local"``, ``"s3"`` (the configured bucket, prefix
    ``imagery``) or ``"s3://BUCKET/prefix"``. Under the prefix the layout is the managed folder's
    (a schema other than the default one gets its own sub-prefix)."""
    choice = store if store is not None else (os.environ.get(STORE_ENV) or "local")
    param = "--store" if store is not None else STORE_ENV
    if choice in ("", "local"):
        return None
    try:
        if choice == "s3":
            base = objectstore.ObjectPath(objectstore.s3_settings().bucket, "imagery")
        elif choice.startswith(objectstore.SCHEME):
            base = objectstore.ObjectPath.parse(choice)
        else:
            raise IngestError(f"{param} {choice!r}: give local, s3 (the bucket GEOTWIN_S3_BUCKET) or s3://BUCKET/prefix")
    except objectstore.ObjectStoreError as exc:
        raise IngestError(f"{param} {choice}: {exc}") from None
    return base / collection if settings.db_schema == "geotwin" else base / settings.db_schema / collection


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


# -- web-optimised copies -------------------------------------------------------------------


def grid_copy_path(master: Path, tms_id: str) -> Path:
    """Where the copy of ``master`` on grid ``tms_id`` lives: ``<master's folder>/grids/<tms>/<master's name>``
    (the master's name carries its item id and content hash, so the copy's does too)."""
    return master.parent / GRIDS_DIR / tms_id / master.name


def _aligned_grid(src, tms, tile: int) -> tuple[dict, int, int, int]:
    """rio-cogeo's web-optimised grid of ``src`` on ``tms`` (at the zoom nearest its resolution,
    its extent whole tiles of that zoom), widened so that as many overview levels as possible are
    aligned with the grid's tiles too, within twice the area of the unaligned grid: aligning the
    coarsest levels, whose tiles are about the image's size, would multiply the copy's area (up to
    16 times) for a handful of tiles. Returns (WarpedVRT parameters, max zoom, overview levels,
    aligned levels: zooms ``max zoom − aligned`` … ``max zoom`` are tile-aligned)."""
    from rasterio.rio.overview import get_maximum_overview_level
    from rio_cogeo.utils import get_web_optimized_params

    base = get_web_optimized_params(src, tms=tms)
    area = base["width"] * base["height"]
    grid, aligned = base, 0
    for k in range(1, 31):
        wider = get_web_optimized_params(src, tms=tms, aligned_levels=k)
        if k > get_maximum_overview_level(wider["width"], wider["height"], minsize=tile) \
                or wider["width"] * wider["height"] > 2 * area:
            break
        grid, aligned = wider, k
    levels = get_maximum_overview_level(grid["width"], grid["height"], minsize=tile)
    # the grid's resolution is that of one of its zooms (the same call rio-cogeo made to choose it)
    maxzoom = tms.zoom_for_res(grid["transform"].a, max_z=30, zoom_level_strategy="auto")
    return grid, maxzoom, levels, aligned


def write_grid_copy(master: Path, dst: Path, tms_id: str) -> cat.GridCopy:
    """Write the web-optimised copy of the COG ``master`` on grid ``tms_id`` to ``dst``.

    The master is warped (nearest neighbour, the kernel TiTiler's warped read uses by default) onto
    the grid's pixels at the zoom nearest its resolution (rio-cogeo's ``get_web_optimized_params``,
    ``zoom_level_strategy="auto"``), and written by rio-cogeo as a COG in blocks of the grid's tile
    size with internal overviews, lossless (DEFLATE with a predictor). The extent is widened to whole
    tiles of a coarser zoom (:func:`_aligned_grid`), so that the blocks of the finest levels are
    exactly the grid's tiles at their zoom (the copy's ``TILING_SCHEME_ALIGNED_LEVELS``; a tile of a
    coarser level reads up to 4 blocks, still without warping). Outside the image the copy is masked (its nodata if the master has one, else an internal mask —
    or the master's alpha band). Overviews are resampled as the master's were (its
    ``OVERVIEW_RESAMPLING`` tag; else nearest for 8-bit images, average otherwise, as write_cog does).
    Returns the copy's description (zoom range = its levels)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles
    from rio_cogeo.utils import has_alpha_band

    tms = TMS.get(tms_id)
    tile = tms.matrix(tms.minzoom).tileWidth
    with objectstore.rasterio_env(), rasterio.open(str(master)) as src:  # a master in a bucket: /vsis3/
        dtype = src.dtypes[0]
        grid, maxzoom, levels, aligned = _aligned_grid(src, tms, tile)
        add_alpha = src.nodata is None and not has_alpha_band(src)
        vrt_options = dict(grid, resampling=Resampling.nearest)
        if src.nodata is not None:
            vrt_options.update(nodata=src.nodata, src_nodata=src.nodata)
        elif add_alpha:
            vrt_options["add_alpha"] = True  # the area outside the image, masked in the copy
        resampling = (src.tags().get("OVERVIEW_RESAMPLING") or "").lower()
        if resampling not in Resampling.__members__:
            resampling = "nearest" if dtype == "uint8" else "average"
        profile = cog_profiles.get("deflate")
        profile.update(predictor=3 if dtype.startswith("float") else 2, blockxsize=tile, blockysize=tile)
        with WarpedVRT(src, **vrt_options) as vrt, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rio-cogeo's notes on masks and nodata, affine's deprecations
            cog_translate(vrt, str(dst), profile, add_mask=add_alpha, overview_level=levels,
                          overview_resampling=resampling, in_memory=False, quiet=True,
                          config={"GDAL_TIFF_INTERNAL_MASK": True, "GDAL_NUM_THREADS": "ALL_CPUS"},
                          additional_cog_metadata={"TILING_SCHEME_NAME": tms_id,
                                                   "TILING_SCHEME_ZOOM_LEVEL": maxzoom,
                                                   "TILING_SCHEME_ALIGNED_LEVELS": aligned})
    return cat.GridCopy(tms_id, dst, maxzoom - levels, maxzoom, dst.stat().st_size)


def _write_grid_copies(master: Path, final_master: Path, grids, made: list[Path], path: str | Path,
                       staging: Path | None = None) -> dict:
    """The copies of ``master`` (possibly still under its temporary name) on ``grids``, written
    under temporary names beside where ``final_master`` goes (in ``staging`` when that is in a
    bucket); each file path, folder or temporary file that now exists because of this call is
    appended to ``made`` (the caller removes them on failure). Returns {tms: (temporary path,
    final path, GridCopy with the final path)}."""
    out = {}
    for tms_id in grids:
        final = grid_copy_path(final_master, tms_id)
        if objectstore.is_remote(final):
            tmp = staging / f".{tms_id}.{final.stem}.{uuid.uuid4().hex[:8]}.tmp.tif"
        else:
            for folder in (final.parent.parent, final.parent):
                if not folder.exists():
                    folder.mkdir()
                    made.append(folder)
            tmp = final.parent / f".{final.stem}.{uuid.uuid4().hex[:8]}.tmp.tif"
        made.append(tmp)
        try:
            copy = write_grid_copy(master, tmp, tms_id)
        except Exception as exc:
            raise IngestError(f"{path}: writing the web-optimised copy on {tms_id} failed ({_gdal_message(exc)}). "
                              f"Check free space in {tmp.parent}.") from None
        out[tms_id] = (tmp, final, cat.GridCopy(tms_id, final, copy.minzoom, copy.maxzoom, copy.file_size))
    return out


def _remove(paths) -> None:
    """Remove files (and the folders among ``paths``, when empty), newest first; never raises."""
    for p in reversed(list(paths)):
        try:
            if p.is_dir():
                p.rmdir()
            else:
                p.unlink(missing_ok=True)
        except (OSError, objectstore.ObjectStoreError):
            pass


def _copy_summary(copies: dict[str, cat.GridCopy]) -> dict[str, dict]:
    return {t: {"cog_path": str(c.cog_path), "minzoom": c.minzoom, "maxzoom": c.maxzoom, "file_size": c.file_size}
            for t, c in copies.items()}


def _add_missing_copies(settings: Settings, current: cat.Item, path: str | Path) -> dict[str, cat.GridCopy]:
    """An item already in the catalogue lacks copies on some grids (registered before they
    existed, or a copy's file went missing): write them beside its COG and record them, all or
    nothing. Returns the copies written."""
    with db.connect(settings) as conn:
        have = cat.grid_copies(conn, current.collection, current.item_id)
    missing = [t for t in GRID_COPIES if t not in have or not have[t].cog_path.exists()]
    if not missing:
        return {}
    made: list[Path] = []
    committed = False
    staging = objectstore.local_staging(settings) if objectstore.is_remote(current.cog_path) else None
    try:
        written = _write_grid_copies(current.cog_path, current.cog_path, missing, made, path, staging)
        placed = []
        for tmp, final, _ in written.values():
            if not final.exists():
                placed.append(final)
            _place(tmp, final, path)
        made += placed
        with db.transaction(settings) as conn:
            cat.lock_collection(conn, current.collection)
            still = cat.get_item(conn, current.collection, current.item_id)
            if still is None or still.sha256 != current.sha256:
                raise IngestError(f"{path}: item {current.item_id!r} of {current.collection!r} changed while its "
                                  "web-optimised copies were written; run the ingest again.")
            cat.register_grid_copies(conn, current.collection, current.item_id,
                                     {t: c for t, (_, _, c) in written.items()})
        committed = True
    finally:
        if not committed:
            _remove(made)
        if staging is not None:
            objectstore.remove_staging(staging)
    return {t: c for t, (_, _, c) in written.items()}


def _place(tmp: Path, final, path: str | Path) -> None:
    """Move a finished file into place (on disk: a rename; in a bucket: an upload)."""
    try:
        objectstore.place(tmp, final)
    except objectstore.ObjectStoreError as exc:
        raise IngestError(f"{path}: {exc}") from None


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
    store: str | None = None,
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
    remote = store_root(settings, collection, store)
    if remote is not None and cog_dir:
        raise IngestError(f"--cog-dir {cog_dir} and --store {remote}: give one of them (where the COG goes)")
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
        t_grids = time.perf_counter()
        summary.grids = _copy_summary(_add_missing_copies(settings, current, path))
        summary.grid_seconds = time.perf_counter() - t_grids if summary.grids else 0.0
        summary.seconds = time.perf_counter() - t0
        return summary

    info = inspect_raster(source)
    staging: Path | None = None
    if remote is not None:
        try:  # reachable, the credentials, the bucket: before any work
            objectstore.check(remote)
        except objectstore.ObjectStoreError as exc:
            raise IngestError(f"--store {remote}: {exc}") from None
        out_dir = remote
        staging = objectstore.local_staging(settings)
    else:
        out_dir = Path(cog_dir).expanduser() if cog_dir else managed_dir(settings, collection)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IngestError(f"--cog-dir {out_dir}: cannot create the folder ({exc.strerror}). "
                              "Give a writable folder.") from None
        out_dir = out_dir.resolve()
    tmp = (staging or out_dir) / f".{item_id}.{uuid.uuid4().hex[:8]}.tmp.tif"
    final: Path | None = None
    preexisting = committed = False
    made: list[Path] = []  # grid copies' files and folders this ingest created (removed on failure)
    old_copies: dict[str, cat.GridCopy] = {}
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
        t_grids = time.perf_counter()
        copies = _write_grid_copies(tmp, final, GRID_COPIES, made, path, staging)
        summary.grid_seconds = time.perf_counter() - t_grids
        preexisting = final.exists()  # same item id and content (name has the sha): another item's file
        _place(tmp, final, path)
        for copy_tmp, copy_final, _ in copies.values():
            if not copy_final.exists():  # else: the same content, another item's (see preexisting)
                made.append(copy_final)
            _place(copy_tmp, copy_final, path)
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
            before = cat.item_at(conn, collection, when)
            if before is not None:
                old_copies = cat.grid_copies(conn, collection, before.item_id)
            replaced = cat.register_item(conn, item)  # the replaced item's copies go with it (cascade)
            cat.register_grid_copies(conn, collection, item_id, {t: c for t, (_, _, c) in copies.items()})
            still_used = replaced is not None and replaced.cog_path != final and any(
                other.cog_path == replaced.cog_path for other in cat.list_items(conn, collection)
                if other.item_id != replaced.item_id)
        committed = True
    except BaseException:
        if not committed:
            _remove(made)
        for leftover in (tmp, None if preexisting else final):
            if leftover is not None and not committed:
                try:
                    leftover.unlink(missing_ok=True)
                except (OSError, objectstore.ObjectStoreError):
                    pass
        raise
    finally:
        if tmp.exists():
            tmp.unlink(missing_ok=True)
        if staging is not None:
            objectstore.remove_staging(staging)

    if replaced is not None and replaced.cog_path != final and not still_used:
        with db.connect(settings) as conn:
            if not cat.path_in_use(conn, replaced.cog_path):
                replaced.cog_path.unlink(missing_ok=True)
    if old_copies:
        new_paths = {c.cog_path for _, _, c in copies.values()}
        with db.connect(settings) as conn:
            for old in old_copies.values():
                if old.cog_path not in new_paths and not cat.grid_path_in_use(conn, old.cog_path):
                    old.cog_path.unlink(missing_ok=True)
    summary.grids = _copy_summary({t: c for t, (_, _, c) in copies.items()})
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
    store: str | None = None,
) -> int:
    """Run one ingestion for the command line; prints the outcome, returns the exit status."""
    import json

    from rich.console import Console

    console, err = Console(), Console(stderr=True, soft_wrap=True)
    try:
        s = ingest_imagery(path, collection=collection, datetime_=datetime_, kind=kind, title=title,
                           title_zh=title_zh, title_en=title_en, item_id=item_id, cog_dir=cog_dir,
                           access_level=access, author=author, store=store)
    except IngestError as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc)}, ensure_ascii=False))
        else:
            err.print(f"[bold red]error:[/] {exc}\nNothing was written: the imagery catalogue is as it was.")
        return 1
    if as_json:
        print(json.dumps({"ok": True, **s.to_dict()}, ensure_ascii=False))
    elif s.skipped and not s.grids:
        console.print(f"[yellow]●[/] {collection}/{s.item_id} ({s.datetime[:10]}) already holds {path}: nothing written.")
    elif s.skipped:
        console.print(f"[yellow]●[/] {collection}/{s.item_id} ({s.datetime[:10]}) already holds {path}; "
                      "its missing web-optimised copies were written.")
        _print_grids(console, s)
    else:
        what = "written as a COG" if s.converted else "already a COG, copied"
        console.print(f"[green]●[/] {collection}/{s.item_id} ({s.datetime[:10]}) ← {path}: {what}"
                      + (f", replaces item {s.replaced!r}" if s.replaced else "")
                      + (f" (new {s.kind} collection)" if s.new_collection else ""))
        console.print(f"  {s.cog_path}  {s.file_size / 1e6:.1f} MB, {s.bands} × {s.dtype}, {s.resolution_m:.2f} m, "
                      f"{s.crs}, sha256 {s.sha256[:16]}…  ({s.seconds:.1f} s)")
        _print_grids(console, s)
    return 0


def _print_grids(console, s: ImagerySummary) -> None:
    grids = ", ".join(f"{t} z{g['minzoom']}–{g['maxzoom']} ({g['file_size'] / 1e6:.1f} MB)" for t, g in s.grids.items())
    console.print(f"  web-optimised copies (tiles read without warping): {grids}  ({s.grid_seconds:.1f} s)")
