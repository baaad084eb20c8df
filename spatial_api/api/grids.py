"""The tile matrix sets every tiled resource uses (vector tiles, imagery, WMTS, map tilesets):
OGC's WebMercatorQuad and a CGCS2000 geographic quad, registered with morecantile."""

from __future__ import annotations

import morecantile
import pyproj

#: A CGCS2000 geographic grid (WorldCRS84Quad-like on EPSG:4490): two 256-px tiles at zoom 0.
CGCS2000_QUAD = morecantile.TileMatrixSet.custom(
    [-180.0, -90.0, 180.0, 90.0], pyproj.CRS.from_epsg(4490), id="CGCS2000Quad",
    title="CGCS2000 geographic quad (EPSG:4490)", matrix_scale=[2, 1], minzoom=0, maxzoom=20,
    geographic_crs=pyproj.CRS.from_epsg(4490),
)
#: morecantile's registry with CGCS2000Quad added (``TMS.get(name)``).
TMS = morecantile.tms.register({"CGCS2000Quad": CGCS2000_QUAD})
#: The served grids and the SRID of each.
GRIDS = {"WebMercatorQuad": 3857, "CGCS2000Quad": 4490}

__all__ = ["CGCS2000_QUAD", "GRIDS", "TMS"]
