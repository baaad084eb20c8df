"""The underground room: ``/underground/types`` and ``/underground/under`` (what lies under a
parcel). The pipe layers themselves are ordinary store layers (OGC API Features, vector tiles,
history); their 3D tileset is the twin's (``geotwin cim underground``)."""

from __future__ import annotations

from spatial_api.rooms import ORDER_ROOM, Room


def install(app, settings) -> None:
    from underground import routes

    app.include_router(routes.router(settings))


ROOM = Room("underground", install, ORDER_ROOM, "underground utilities and structures")
