"""create_app(settings): builds the FastAPI application and mounts every package's router.

So far: a landing page listing the layers of the store, and a health check. The OGC API
(features, tiles) is mounted here as its packages arrive (issues 3 and 4)."""

from __future__ import annotations

from fastapi import FastAPI, Request

from spatial_api.config import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="geotwin",
        description="Spatio-temporal GIS and CIM digital-twin server (Longgang district)",
        version="0.1.0",
    )
    app.state.settings = settings

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict:
        from spatial_api import db

        with db.connect(settings) as conn:
            conn.execute("SELECT 1")
        return {"status": "ok"}

    @app.get("/", tags=["service"])
    def landing(request: Request) -> dict:
        from spatial_api import db, store

        with db.connect(settings) as conn:
            layers = store.list_layers(conn)
        base = str(request.base_url).rstrip("/")
        return {
            "title": "geotwin",
            "description": "龙岗区时空信息平台 / Longgang spatio-temporal platform",
            "links": [
                {"href": f"{base}/", "rel": "self", "type": "application/json", "title": "this document"},
                {"href": f"{base}/openapi.json", "rel": "service-desc",
                 "type": "application/vnd.oai.openapi+json;version=3.0", "title": "API definition"},
            ],
            "layers": [
                {"name": r["name"], "title_zh": r["title_zh"], "title_en": r["title_en"],
                 "geometry": r["geometry_family"], "features": r["current_features"],
                 "latest_valid_from": r["latest_valid_from"].isoformat() if r["latest_valid_from"] else None}
                for r in layers if r["access_level"] == "public"
            ],
        }

    return app
