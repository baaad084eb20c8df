"""The rooms of the ground floor itself, declared like every other room (pyproject.toml,
``geotwin.routes``): the OGC API – Features, access control's own routes, place-name search."""

from __future__ import annotations

from spatial_api import geocode
from spatial_api.ogc import routes as ogc_routes
from spatial_api.rooms import ORDER_GROUND, Room
from spatial_api.security import routes as security_routes


def _geocode(app, settings) -> None:
    app.include_router(geocode.router(settings))


OGC = Room("ogc", ogc_routes.install, ORDER_GROUND, "OGC API – Features (Parts 1–4) with time travel")
SECURITY = Room("security", security_routes.install, ORDER_GROUND + 1, "/whoami and /admin/audit")
GEOCODE = Room("geocode", _geocode, ORDER_GROUND + 2, "place names and addresses: search, autocomplete, reverse")


def _entities(app, settings) -> None:
    from spatial_api.entities import api as entities_api

    app.include_router(entities_api.router(settings))


ENTITIES = Room("entities", _entities, ORDER_GROUND + 3, "geographic entities and their representations")
