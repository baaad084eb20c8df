"""The styles room: MapLibre style documents, glyphs and sprites (``/styles``)."""

from __future__ import annotations

from spatial_api.rooms import ORDER_ROOM, Room
from styles import routes


def install(app, settings) -> None:
    app.include_router(routes.router(settings))


# after the tiles room: a style probes the imagery routes to decide whether to offer imagery
ROOM = Room("styles", install, ORDER_ROOM + 10, "MapLibre styles, glyphs, sprites")
