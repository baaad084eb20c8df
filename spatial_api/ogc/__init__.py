"""OGC API – Features over the layer store (Part 1 core, Part 2 CRS by reference) with time
travel: ``datetime`` selects the versions valid at a valid time; every feature's versions and
the changes between two times have their own resources.

``router(settings)`` is mounted at the root by ``spatial_api.app.create_app``. Only layers whose
access level is ``public`` are visible until access control (issue 8) knows the caller.
"""

from __future__ import annotations

from spatial_api.ogc.features import ApiError, install, router

__all__ = ["ApiError", "install", "router"]
