"""HTTP ``/sensing/...``: the device registry and status (this module), alerts and rules
(:mod:`sensing.alerts_api`, included here).

- ``GET /sensing/devices`` (GeoJSON; filters type, status, community, street, building_id, bbox;
  limit/offset), ``GET /sensing/devices/{id}`` (with household for who may see it and the latest
  value of each Datastream), ``GET /sensing/devices/{id}/series`` (raw or hour/day aggregates),
  ``GET /sensing/types``, ``GET /sensing/status`` (counts by type × status),
  ``GET /sensing/buildings`` (for the 3D twin), ``GET /sensing/tiles/{z}/{x}/{y}.mvt``.
- ``POST /sensing/devices``, ``PATCH`` / ``DELETE /sensing/devices/{id}``: ``sensing:manage``.
- ``POST /sensing/devices/{id}/absences``: ``sensing:alerts`` (a community worker of the device's
  community, an admin) — an announced absence that suppresses inactivity alerts.

Who sees what: :func:`sensing.devices.visible_devices_sql` — a device the caller may not see does
not exist for them (404, absent from lists and tiles); every read of a household's data is named
in the request's audit entry. Errors: the OGC exception JSON; 400 names the parameter.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Body, Query
from fastapi.responses import Response

from sensing import devices, http, tiles
from spatial_api import security
from spatial_api.api import time as timepolicy
from spatial_api.api.errors import ApiError, invalid_parameter, not_found

MVT = "application/vnd.mapbox-vector-tile"


_json = http.json_response

#: the registry's errors in HTTP
_ERRORS = {devices.NotFound: lambda exc: not_found(str(exc)),
           devices.DeviceError: lambda exc: ApiError(400, "InvalidParameterValue", str(exc))}


def _bbox(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None or not text.strip():
        return None
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4 or not (parts[0] <= parts[2] and parts[1] <= parts[3]):
        raise invalid_parameter("bbox", f"{text!r}: give minLon,minLat,maxLon,maxLat (WGS 84 degrees)")
    return parts[0], parts[1], parts[2], parts[3]


def _instant(text: str | None, name: str, day: str) -> datetime | None:
    try:
        return timepolicy.parse_instant(text, name, day=day)
    except timepolicy.TimeError as exc:
        raise invalid_parameter(exc.parameter, exc.message) from None


class DevicesAPI:
    def __init__(self, settings):
        self.settings = settings

    def call(self, fn, *args, write: bool = False, **kwargs):
        """fn(conn, …) on a pooled connection (committed when ``write``); domain errors → HTTP."""
        return http.call(self.settings, _ERRORS, fn, *args, write=write, **kwargs)

    # ------------------------------------------------------------------ reads
    def types(self) -> Response:
        return _json({"types": devices.catalogue()})

    def list_devices(self, type: str | None = None,
                     status: str | None = Query(None, description="online | offline | unknown"),
                     community: str | None = None, street: str | None = None, building_id: str | None = None,
                     bbox: str | None = Query(None, description="minLon,minLat,maxLon,maxLat"),
                     limit: int = Query(1000, ge=1, le=10000), offset: int = Query(0, ge=0)) -> Response:
        """The devices the caller may see, as GeoJSON (feature id = device id)."""
        p = security.current()
        rows, total = self.call(devices.listing, p, type=type, status=status, community=community, street=street,
                                building_id=building_id, bbox=_bbox(bbox), limit=limit, offset=offset)
        return _json({"type": "FeatureCollection", "features": [devices.feature(r) for r in rows],
                      "numberMatched": total, "numberReturned": len(rows)}, media_type="application/geo+json")

    def get_device(self, device_id: str) -> Response:
        return _json(self.call(devices.get, security.current(), device_id), media_type="application/geo+json")

    def get_series(self, device_id: str,
                   datastream: int | None = Query(None, description="A Datastream id of the device (default: its first)"),
                   start: str | None = None, end: str | None = None,
                   period: str = Query("raw", description="raw | hour | day")) -> Response:
        t0, t1 = _instant(start, "start", "start"), _instant(end, "end", "end")
        return _json(self.call(devices.series, security.current(), device_id, datastream=datastream,
                               start=t0, end=t1, period=period))

    def get_status(self) -> Response:
        return _json(self.call(devices.status_counts, security.current()))

    def get_buildings(self, bbox: str | None = Query(None, description="minLon,minLat,maxLon,maxLat")) -> Response:
        return _json(self.call(devices.buildings, security.current(), _bbox(bbox)))

    def get_tile(self, z: int, x: int, y: int) -> Response:
        if not tiles.in_matrix(z, x, y):
            raise not_found(f"tile {z}/{x}/{y} is outside the WebMercatorQuad matrix")
        data = self.call(tiles.tile, security.current(), z, x, y)
        if not data:
            return Response(status_code=204)
        return Response(data, media_type=MVT)

    # ------------------------------------------------------------------ writes
    def _visible(self, conn, device_id: str) -> None:
        vis, params = devices.visible_devices_sql("d", security.current())
        if conn.execute(f"SELECT 1 FROM sensing_devices d WHERE d.device_id = %s AND {vis}",
                        [device_id, *params]).fetchone() is None:
            raise devices.NotFound(f"device {device_id!r} does not exist")

    def create_device(self, body: dict = Body(..., description="A device (fields of sensing.devices.FIELDS) or a "
                                                               "GeoJSON Feature whose properties are those fields")) -> Response:
        security.require("sensing:manage")
        spec = body
        if body.get("type") == "Feature":
            spec = {**(body.get("properties") or {}), "geometry": body.get("geometry")}

        def work(conn):
            added = devices.add(conn, spec)
            return added, devices.get(conn, security.Principal("registry", "admin", "cli"), added.device_id)

        added, device = self.call(work, write=True)
        device["properties"].pop("household", None)  # echoed to nobody: the caller may not be allowed to read it
        device["mqtt"] = {"username": added.mqtt_username, "password": added.mqtt_password,
                          "topics": [f"v1.1/Datastreams({i})/Observations" for i in added.datastreams.values()],
                          "note": "the password is shown only now"}
        return _json(device, 201, media_type="application/geo+json")

    def patch_device(self, device_id: str, body: dict = Body(...)) -> Response:
        security.require("sensing:manage")

        def work(conn):
            self._visible(conn, device_id)
            devices.update(conn, device_id, body)
            return devices.get(conn, security.current(), device_id)

        return _json(self.call(work, write=True), media_type="application/geo+json")

    def delete_device(self, device_id: str) -> Response:
        security.require("sensing:manage")

        def work(conn):
            self._visible(conn, device_id)
            row = devices.retire(conn, device_id)
            return {"device_id": device_id, "retired_at": row["retired_at"]}

        return _json(self.call(work, write=True))

    def add_absence(self, device_id: str, body: dict = Body(..., description='{"start", "end", "reason", '
                                                                            '"announced_by"}')) -> Response:
        security.require("sensing:alerts")
        unknown = set(body) - {"start", "end", "reason", "announced_by"}
        if unknown:
            raise invalid_parameter(min(unknown), "unknown field; give start, end, reason, announced_by")
        for k in ("start", "end"):
            if not isinstance(body.get(k), str):
                raise invalid_parameter(k, "required: a date-time (RFC 3339; naive = district time) or a date")
        start, end = _instant(body["start"], "start", "start"), _instant(body["end"], "end", "end")
        if start >= end:
            raise invalid_parameter("end", "must be after start")
        reason = body.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
            raise invalid_parameter("reason", "text of at most 500 characters")
        announced_by = body.get("announced_by")
        if announced_by is not None and (not isinstance(announced_by, str) or len(announced_by) > 200):
            raise invalid_parameter("announced_by", "text of at most 200 characters (who announced it, e.g. 女儿 王芳)")

        def work(conn):
            self._visible(conn, device_id)
            return devices.add_absence(conn, device_id, start, end, reason=reason, announced_by=announced_by,
                                       author=security.current().name)

        return _json(self.call(work, write=True), 201)


def router(settings) -> APIRouter:
    from sensing import alerts_api

    r = APIRouter()
    api = DevicesAPI(settings)
    tags = ["sensing"]
    r.add_api_route("/sensing/types", api.types, methods=["GET"], tags=tags, summary="Device types")
    r.add_api_route("/sensing/devices", api.list_devices, methods=["GET"], tags=tags, summary="Devices (GeoJSON)")
    r.add_api_route("/sensing/devices", api.create_device, methods=["POST"], tags=tags, summary="Register a device")
    r.add_api_route("/sensing/devices/{device_id}", api.get_device, methods=["GET"], tags=tags, summary="A device")
    r.add_api_route("/sensing/devices/{device_id}", api.patch_device, methods=["PATCH"], tags=tags,
                    summary="Change a device")
    r.add_api_route("/sensing/devices/{device_id}", api.delete_device, methods=["DELETE"], tags=tags,
                    summary="Retire a device")
    r.add_api_route("/sensing/devices/{device_id}/series", api.get_series, methods=["GET"], tags=tags,
                    summary="A datastream's time series")
    r.add_api_route("/sensing/devices/{device_id}/absences", api.add_absence, methods=["POST"], tags=tags,
                    summary="Announce an absence (suppresses inactivity alerts)")
    r.add_api_route("/sensing/status", api.get_status, methods=["GET"], tags=tags, summary="Counts by type × status")
    r.add_api_route("/sensing/buildings", api.get_buildings, methods=["GET"], tags=tags,
                    summary="Buildings with devices (for the 3D twin)")
    r.add_api_route("/sensing/tiles/{z}/{x}/{y}.mvt", api.get_tile, methods=["GET"], tags=tags,
                    summary="Devices as vector tiles (layer 'devices')")
    r.include_router(alerts_api.router(settings))
    return r
