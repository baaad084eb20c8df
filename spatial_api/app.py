"""create_app(settings): builds the FastAPI application and mounts every package's router:
the OGC API (features, transactions) and place-name / address search."""

from __future__ import annotations

from fastapi import FastAPI

from spatial_api.config import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    from spatial_api import ogc

    settings = settings or get_settings()
    app = FastAPI(
        title="geotwin",
        description="Spatio-temporal GIS and CIM digital-twin server (Longgang district): "
                    "OGC API – Features with time travel",
        version="0.1.0",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict:
        from spatial_api import db

        with db.connect(settings) as conn:
            conn.execute("SELECT 1")
        return {"status": "ok"}

    ogc.install(app, settings)
    from spatial_api.security import routes as security_routes

    security_routes.install(app, settings)
    from spatial_api import geocode

    app.include_router(geocode.router(settings))
    from tiling import routes as tiles

    tile_router = tiles.router(settings)
    app.include_router(tile_router)
    app.state.tile_cache, app.state.tile_invalidator = tile_router.tile_cache, tile_router.tile_invalidator
    from tiling import wmts

    app.include_router(wmts.router(settings))
    app.state.extra_conformance += tiles.CONFORMANCE
    from tiling import imagery  # imagery tiles through TiTiler, over the imagery catalogue

    imagery.install(app, settings)
    from styles import routes as styles  # MapLibre styles, glyphs and sprites

    app.include_router(styles.router(settings))
    from land_supervision import routes as supervision  # /supervision/...

    app.include_router(supervision.router(settings))
    from cim_builder import routes as twin  # /twin/tilesets: 3D Tiles of the CIM twin

    app.include_router(twin.router(settings))
    __import__("web").install(app, settings)  # /map, /twin (static web clients), /vendor: last, after every API route
    return app
