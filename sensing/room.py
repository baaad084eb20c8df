"""The sensing room: ``/sta/v1.1`` (OGC SensorThings API 1.1) and ``/sensing/...`` (devices,
status, alerts and their workflow, rules, the live alert stream, the devices' vector tiles)."""

from __future__ import annotations

from spatial_api.rooms import ORDER_ROOM, Room


def _frost_error(status: int, code: str, description: str) -> dict:
    """SensorThings errors as FROST-Server writes them (the standard names no shape)."""
    return {"code": status, "type": "error", "message": description}


def install(app, settings) -> None:
    from sensing import api
    from sensing.sta import read_routes, write_routes
    from spatial_api.api.errors import error_shape

    error_shape(app, "/sta/", _frost_error)

    # writes first: $batch and POST paths must not be shadowed by the read router's catch-all path
    app.include_router(write_routes.router(settings))
    app.include_router(read_routes.router(settings))
    app.include_router(api.router(settings))
    # STA's MQTT extension: created and updated entities published to their topics; the landing
    # page lists the broker (app.state.mqtt_endpoints). Without a broker the API works and says so.
    from sensing.mqtt import notify

    notify.install(app, settings)


ROOM = Room("sensing", install, ORDER_ROOM, "IoT sensing: SensorThings API 1.1, devices, alerts")
