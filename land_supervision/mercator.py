"""The Web Mercator (EPSG:3857) copy of a finding's geometry, in SQL — shared by the rule engine
(``engine.py``) and the imagery evidence (``evidence.py``), which both write ``sup_findings``.

EPSG:3857 from CGCS2000 lon/lat as a PROJ string pair: Web Mercator puts longitude / latitude
unchanged on the sphere of radius 6378137, and PROJ has no CGCS2000 → WGS 84 shift (only a null
"ballpark" one), so this gives the same numbers as ST_Transform(g, 3857) (checked in the tests)
without PROJ's search of its database for a CGCS2000 → WGS 84 operation, which costs 0.15–0.5 s
on every new database connection (measured; this pair: < 0.02 s; the CLI opens one per run)."""

from __future__ import annotations

GEOG_PROJ = "+proj=longlat +a=6378137 +b=6378137 +no_defs"
MERC_PROJ = "+proj=merc +a=6378137 +b=6378137 +lat_ts=0 +lon_0=0 +x_0=0 +y_0=0 +k=1 +units=m +no_defs"


def to_3857(expr_4490: str) -> str:
    """SQL: the EPSG:4490 geometry ``expr_4490`` in EPSG:3857 (see the module's docstring)."""
    return f"ST_SetSRID(ST_Transform({expr_4490}, '{GEOG_PROJ}', '{MERC_PROJ}'), 3857)"


__all__ = ["GEOG_PROJ", "MERC_PROJ", "to_3857"]
