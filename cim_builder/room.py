"""The CIM twin room: ``/twin/tilesets`` (OGC 3D Tiles 1.1 of the twin)."""

from __future__ import annotations

from cim_builder import clash_routes, indoor_routes, routes
from spatial_api.rooms import ORDER_ROOM, Room


def install(app, settings) -> None:
    app.include_router(routes.router(settings))
    app.include_router(clash_routes.router(settings))   # POST /twin/clash
    app.include_router(indoor_routes.router(settings))  # /twin/models/{id}/storeys …


ROOM = Room("twin", install, ORDER_ROOM, "3D Tiles of the city information model")
