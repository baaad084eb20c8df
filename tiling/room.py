"""The tiling room: vector tiles (OGC API – Tiles, XYZ, TileJSON), WMTS, and imagery through
TiTiler over the imagery catalogue."""

from __future__ import annotations

from spatial_api import health
from spatial_api.rooms import ORDER_ROOM, Room
from tiling import imagery, routes, wmts


def install(app, settings) -> None:
    tile_router = routes.router(settings)
    app.include_router(tile_router)
    app.state.tile_cache, app.state.tile_invalidator = tile_router.tile_cache, tile_router.tile_invalidator
    health.add_check(app, "tile_cache_listener", lambda: listener_health(tile_router.tile_invalidator))
    app.include_router(wmts.router(settings))
    app.state.extra_conformance += routes.CONFORMANCE
    imagery.install(app, settings)


def listener_health(invalidator) -> dict:
    """/healthz: the tile cache's LISTEN connection (started by the first tile; while it is lost,
    tiles bypass the cache, so a lost listener fails the check)."""
    if invalidator is None:
        return {"ok": True, "cache": "off"}
    if invalidator._thread is None:
        return {"ok": True, "listening": False, "note": "starts with the first tile"}
    alive = invalidator._thread.is_alive() and invalidator.connected.is_set()
    return {"ok": alive, "listening": alive, "changesets_applied_up_to": invalidator._high}


ROOM = Room("tiles", install, ORDER_ROOM, "vector tiles, WMTS, imagery tiles")
