"""The CIM twin room: ``/twin/tilesets`` (OGC 3D Tiles 1.1 of the twin)."""

from __future__ import annotations

from cim_builder import routes
from spatial_api.rooms import ORDER_ROOM, Room


def install(app, settings) -> None:
    app.include_router(routes.router(settings))


ROOM = Room("twin", install, ORDER_ROOM, "3D Tiles of the city information model")
