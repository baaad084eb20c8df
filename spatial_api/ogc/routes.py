"""The OGC API – Features room of the ground floor: Part 1 (core), 2 (CRS), 3 (queryables,
filter, CQL2) and 4 (create / replace / update / delete)."""

from __future__ import annotations

from fastapi import FastAPI

from spatial_api.config import Settings
from spatial_api.ogc import cql2, features, transactions

FILTER_CONFORMANCE = [
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables-query-parameters",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
]


def install(app: FastAPI, settings: Settings) -> None:
    app.state.extra_conformance += list(transactions.CONFORMANCE) + FILTER_CONFORMANCE + list(cql2.CONFORMANCE)
    app.include_router(features.router(settings))
    app.include_router(transactions.router(settings))
    features.install_openapi(app)  # `limit` as components/parameters/limit, where QGIS reads the page size


__all__ = ["install"]
