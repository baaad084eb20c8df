"""The tiling room: vector tiles (OGC API – Tiles, XYZ, TileJSON), WMTS, and imagery through
TiTiler over the imagery catalogue."""

from __future__ import annotations

from spatial_api.rooms import ORDER_ROOM, Room
from tiling import imagery, routes, wmts


def install(app, settings) -> None:
    tile_router = routes.router(settings)
    app.include_router(tile_router)
    app.state.tile_cache, app.state.tile_invalidator = tile_router.tile_cache, tile_router.tile_invalidator
    app.include_router(wmts.router(settings))
    app.state.extra_conformance += routes.CONFORMANCE
    imagery.install(app, settings)


ROOM = Room("tiles", install, ORDER_ROOM, "vector tiles, WMTS, imagery tiles")
