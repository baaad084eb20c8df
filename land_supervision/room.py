"""The land-supervision room: ``/supervision/...`` (runs, findings, cases, reports, tiles)."""

from __future__ import annotations

from land_supervision import routes
from spatial_api.rooms import ORDER_ROOM, Room


def install(app, settings) -> None:
    app.include_router(routes.router(settings))


ROOM = Room("supervision", install, ORDER_ROOM, "post-approval land supervision")
