"""Coordinates and heights for the twin.

- Metric work happens in EPSG:4547 (CGCS2000 / 3-degree Gauss-Krüger CM 114E).
- Heights: the DEM and IFC ``OrthogonalHeight`` give **orthometric** heights (above the geoid /
  China's height datum). 3D Tiles (and so CesiumJS) place content with **ellipsoidal** heights on
  the CGCS2000 ≈ WGS84 ellipsoid: ``h = H + N``, where ``N`` is the geoid separation.
  The default ``N = -2.6 m`` is EGM96 at Longgang's centre (114.2514 E, 22.7215 N), read from
  PROJ's ``egm96_15.gtx`` grid (it varies from -3.1 m in the south-west of Shenzhen to -1.6 m in
  the north-east). Pass ``--geoid-separation`` for a better local value (SZGEOID / CQG2000);
  every build records the value it used.
- CGCS2000 → ECEF (EPSG:4479, CGCS2000 geocentric) goes through pyproj, vectorised. Each tile
  has its own east-north-up frame; the tile's ``transform`` maps it to ECEF, and the glb's
  positions are that ENU frame turned y-up (glTF): (x, y, z)_gltf = (e, u, -n).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from pyproj import CRS, Transformer

#: Geoid separation (m) used when none is given: EGM96 at Longgang's centre (see module doc).
DEFAULT_GEOID_SEPARATION = -2.6
METRIC_CRS = "EPSG:4547"
GEOCENTRIC_CRS = "EPSG:4479"  # CGCS2000 geocentric (ECEF)
GEOGRAPHIC_CRS = "EPSG:4490"

# CGCS2000 ellipsoid (the same a and f as GRS80)
_A = 6378137.0
_F = 1 / 298.257222101


class CimError(ValueError):
    """An error the user can fix: the message names the file / parameter and what to do."""


def parse_at(at: str | None) -> tuple | None:
    """``--at LON,LAT[,H]`` (degrees, metres) → a tuple; None stays None."""
    if at is None:
        return None
    try:
        parts = tuple(float(v) for v in at.split(","))
    except ValueError:
        parts = ()
    if len(parts) not in (2, 3):
        raise CimError(f"--at {at!r}: give LON,LAT or LON,LAT,H (degrees, metres), e.g. 114.2514,22.7215,35")
    return parts


def tilesets_dir(settings) -> Path:
    """Where built tilesets go: ``$GEOTWIN_TILESETS_DIR``, default ``<home>/tilesets``."""
    return Path(os.environ.get("GEOTWIN_TILESETS_DIR") or Path(settings.home) / "tilesets")


def models_dir(settings) -> Path:
    """Where registered IFC files are copied: ``$GEOTWIN_MODELS_DIR``, default ``<home>/models``."""
    return Path(os.environ.get("GEOTWIN_MODELS_DIR") or Path(settings.home) / "models")


@lru_cache(maxsize=32)
def to_ecef(crs: str) -> Transformer:
    """Projected / geographic CRS (x, y, ellipsoidal height) → ECEF metres.

    PROJ knows datum shifts from most datums to WGS 84 but few to CGCS2000, and where it knows
    none it uses a "ballpark" operation that ignores the datum (about 100 m off for the Dutch
    Amersfoort / RD New, EPSG:28992). Such CRSs go to WGS 84's ECEF instead (EPSG:4978): CGCS2000
    and WGS 84 agree to within a few decimetres, about the accuracy of those shifts themselves."""
    src = CRS.from_user_input(crs).to_3d()
    t = Transformer.from_crs(src, GEOCENTRIC_CRS, always_xy=True)
    if "ballpark" in t.description.lower():
        w = Transformer.from_crs(src, "EPSG:4978", always_xy=True)
        if "ballpark" not in w.description.lower():
            return w
    return t


@lru_cache(maxsize=32)
def transformer(src: str, dst: str) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)


def lonlat_to_ecef(lon, lat, h) -> np.ndarray:
    """Geodetic (degrees, ellipsoidal metres) → ECEF, closed form (used by tests and frames)."""
    lon, lat, h = np.radians(np.asarray(lon, float)), np.radians(np.asarray(lat, float)), np.asarray(h, float)
    e2 = _F * (2 - _F)
    n = _A / np.sqrt(1 - e2 * np.sin(lat) ** 2)
    return np.stack([(n + h) * np.cos(lat) * np.cos(lon), (n + h) * np.cos(lat) * np.sin(lon),
                     (n * (1 - e2) + h) * np.sin(lat)], axis=-1)


def ecef_to_lonlat(xyz: np.ndarray) -> np.ndarray:
    """ECEF → (lon°, lat°, ellipsoidal h) via pyproj."""
    t = Transformer.from_crs(GEOCENTRIC_CRS, CRS(GEOGRAPHIC_CRS).to_3d(), always_xy=True)
    lon, lat, h = t.transform(xyz[:, 0], xyz[:, 1], xyz[:, 2])
    return np.stack([lon, lat, h], axis=-1)


def enu_rotation(lon: float | np.ndarray, lat: float | np.ndarray) -> np.ndarray:
    """Rows: east, north, up unit vectors (ECEF) at lon/lat in degrees; shape (..., 3, 3)."""
    lo, la = np.radians(lon), np.radians(lat)
    sl, cl, sp, cp = np.sin(lo), np.cos(lo), np.sin(la), np.cos(la)
    east = np.stack([-sl, cl, np.zeros_like(sl)], axis=-1)
    north = np.stack([-sp * cl, -sp * sl, cp], axis=-1)
    up = np.stack([cp * cl, cp * sl, sp], axis=-1)
    return np.stack([east, north, up], axis=-2)


@dataclass(frozen=True)
class Frame:
    """A local east-north-up frame at ``origin`` (ECEF)."""

    origin: np.ndarray  # (3,)
    rotation: np.ndarray  # (3, 3): rows e, n, u

    @classmethod
    def at(cls, lon: float, lat: float, h: float = 0.0) -> "Frame":
        return cls(lonlat_to_ecef(lon, lat, h), enu_rotation(lon, lat))

    def local(self, ecef: np.ndarray) -> np.ndarray:
        """ECEF (n, 3) → ENU (n, 3), float64."""
        return (ecef - self.origin) @ self.rotation.T

    def gltf(self, ecef: np.ndarray) -> np.ndarray:
        """ECEF → glTF y-up positions (float32): (e, u, -n)."""
        enu = self.local(ecef)
        return np.stack([enu[:, 0], enu[:, 2], -enu[:, 1]], axis=1).astype(np.float32)

    def direction_gltf(self, vectors: np.ndarray) -> np.ndarray:
        enu = vectors @ self.rotation.T
        return np.stack([enu[:, 0], enu[:, 2], -enu[:, 1]], axis=1)

    def transform(self) -> list[float]:
        """The tile transform (ENU → ECEF) as 3D Tiles wants it: 16 numbers, column-major."""
        e, n, u = self.rotation
        o = self.origin
        return [float(v) for v in (*e, 0.0, *n, 0.0, *u, 0.0, *o, 1.0)]


def gltf_to_ecef(positions: np.ndarray, transform: list[float]) -> np.ndarray:
    """Inverse of :meth:`Frame.gltf` through a tile transform (tests and checks)."""
    p = np.asarray(positions, float)
    enu = np.stack([p[:, 0], -p[:, 2], p[:, 1]], axis=1)
    m = np.asarray(transform, float).reshape(4, 4).T  # column-major → row-major
    return enu @ m[:3, :3].T + m[:3, 3]


# ------------------------------------------------------------------------------------------
# DEM


@dataclass
class Dem:
    """A DEM held in memory (float64) with bilinear sampling in its CRS."""

    path: Path
    crs: str
    data: np.ndarray
    nodata_mask: np.ndarray
    transform: tuple  # affine a, b, c, d, e, f
    identity: str  # path + size + mtime: part of every tile's content hash

    @classmethod
    def open(cls, path: str | Path) -> "Dem":
        # deferred: rasterio takes ~0.7 s to import and only reading a DEM (a build) needs it;
        # convert-ifc and `geotwin cim check` do not
        import rasterio

        from spatial_api import objectstore

        remote = objectstore.is_remote(path) or objectstore.is_remote(str(path))
        if not remote:  # an s3:// DEM (a catalogue item in object storage) is read through GDAL's /vsis3/
            path = Path(path)
            if not path.exists():
                raise CimError(f"--dem {path}: no such file")
        try:
            with objectstore.rasterio_env(), rasterio.open(str(path)) as src:
                if src.crs is None:
                    raise CimError(f"DEM {path} has no CRS: give it one (gdal_edit.py -a_srs EPSG:4547 {path})")
                band = src.read(1, masked=True)
                crs = src.crs.to_string()
                transform = tuple(src.transform)[:6]
        except CimError:
            raise
        except Exception as exc:  # rasterio's own message names the problem
            raise CimError(f"DEM {path} cannot be read: {exc}") from None
        mask = np.ma.getmaskarray(band) | ~np.isfinite(band.filled(np.nan))
        data = band.filled(np.nan).astype(np.float64)
        if remote:  # the object's size and ETag stand for the file's size and mtime
            meta = objectstore.head(str(path)) or {}
            identity = f"{path}:{meta.get('size')}:{meta.get('e_tag')}"
        else:
            st = path.stat()
            identity = f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"
        return cls(path=path, crs=crs, data=data, nodata_mask=mask, transform=transform, identity=identity)

    def sample(self, x: np.ndarray, y: np.ndarray, crs: str = METRIC_CRS) -> np.ndarray:
        """Bilinear heights at points given in ``crs``; NaN outside the DEM or on nodata."""
        if CRS.from_user_input(crs) != CRS.from_user_input(self.crs):
            x, y = transformer(crs, self.crs).transform(x, y)
        a, b, c, d, e, f = self.transform
        if b != 0 or d != 0:
            raise CimError(f"DEM {self.path} is rotated: warp it north-up first (gdalwarp)")
        col = (np.asarray(x) - c) / a - 0.5
        row = (np.asarray(y) - f) / e - 0.5
        h, w = self.data.shape
        c0 = np.clip(np.floor(col).astype(np.int64), 0, w - 2)
        r0 = np.clip(np.floor(row).astype(np.int64), 0, h - 2)
        fc = np.clip(col - c0, 0.0, 1.0)
        fr = np.clip(row - r0, 0.0, 1.0)
        z00 = self.data[r0, c0]
        z01 = self.data[r0, c0 + 1]
        z10 = self.data[r0 + 1, c0]
        z11 = self.data[r0 + 1, c0 + 1]
        z = (z00 * (1 - fc) * (1 - fr) + z01 * fc * (1 - fr) + z10 * (1 - fc) * fr + z11 * fc * fr)
        outside = (col < -0.5) | (row < -0.5) | (col > w - 0.5) | (row > h - 0.5)
        z = np.where(outside, np.nan, z)
        # a nodata neighbour: fall back to the nearest cell's value
        bad = ~np.isfinite(z) & ~outside
        if bad.any():
            rn = np.clip(np.rint(row[bad]).astype(np.int64), 0, h - 1)
            cn = np.clip(np.rint(col[bad]).astype(np.int64), 0, w - 1)
            z[bad] = self.data[rn, cn]
        return z


def resolve_dem(conn, dem: str | Path | None, at=None) -> Dem:
    """The DEM to stand buildings on: ``--dem PATH`` if given, else the newest item (acquired at
    or before ``at``) of the imagery catalogue's ``dem`` collection."""
    if dem:
        return Dem.open(dem)
    path = None
    try:
        # deferred: spatial_api.store pulls in psycopg and pandas (~1.5 s); geo is the light base
        # every cim_builder module imports (convert-ifc needs no database), and only a build
        # without --dem asks the imagery catalogue
        from spatial_api.store import imagery
    except ImportError:  # the imagery catalogue is not installed in this tree
        imagery = None
    if imagery is not None and hasattr(imagery, "latest_path"):
        exists = conn.execute("SELECT to_regclass('imagery_items') IS NOT NULL").fetchone()[0]
        if exists:
            path = imagery.latest_path(conn, "dem", at)
    if path is None:
        raise CimError("no DEM: pass --dem or ingest one with "
                       "geotwin ingest imagery FILE --collection dem --kind dem --datetime YYYY-MM-DD")
    if not Path(path).exists():
        raise CimError(f"the imagery catalogue's DEM {path} is missing on disk: pass --dem or re-ingest it")
    return Dem.open(path)
