"""The rooms of the ground floor itself, declared like every other room (pyproject.toml,
``geotwin.routes``): the OGC API – Features, access control's own routes, place-name search."""

from __future__ import annotations

from spatial_api.rooms import ORDER_GROUND, Room


def _ogc(app, settings) -> None:
    from spatial_api.ogc import routes

    routes.install(app, settings)


def _security(app, settings) -> None:
    from spatial_api.security import routes

    routes.install(app, settings)


def _geocode(app, settings) -> None:
    from spatial_api import geocode

    app.include_router(geocode.router(settings))


OGC = Room("ogc", _ogc, ORDER_GROUND, "OGC API – Features (Parts 1–4) with time travel")
SECURITY = Room("security", _security, ORDER_GROUND + 1, "/whoami and /admin/audit")
GEOCODE = Room("geocode", _geocode, ORDER_GROUND + 2, "place names and addresses: search, autocomplete, reverse")
