"""create_app(settings): the FastAPI application — the ground floor's middleware and error
handlers, then every room declared under the ``geotwin.routes`` entry points (spatial_api.rooms),
in their declared order (the web clients' static folders last)."""

from __future__ import annotations

from fastapi import FastAPI

from spatial_api import db, health, rooms
from spatial_api.api.errors import install_error_handlers
from spatial_api.config import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="geotwin",
        description="Spatio-temporal GIS and CIM digital-twin server (Longgang district): "
                    "OGC API – Features with time travel",
        version="0.1.0",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.extra_conformance = []
    install_error_handlers(app)

    health.install(app, settings)  # /healthz; rooms add their checks (health.add_check)
    if db.read_database_url(settings):  # reads on a replica, read-your-writes (spatial_api.db)
        app.add_middleware(db.ReadYourWrites, settings=settings)

    app.state.rooms = []
    for room in rooms.rooms():
        room.install(app, settings)
        app.state.rooms.append(room.name)
    return app
