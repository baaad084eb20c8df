"""The device registry: field devices linked to their SensorThings Things, their status from the
data, and who may see them.

**Types** (:data:`TYPES`, data, not code): each device type names its Chinese label, its default
reporting interval and the Datastreams a device of that type gets (observed property, unit,
observation type). Adding a device creates, in one transaction: the STA Thing (``properties``:
``deviceId``, ``type``, ``community``, ``street``, ``restricted``, ``buildingId`` — the STA read
side (``sensing.sta.read.visible_things_sql``) hides households by the same rule as
:func:`visible_devices_sql`, from these properties, so they are kept in sync on every update; a
difference: non-household Things are readable through STA by any caller, as FROST-Server serves
them, while ``/sensing/devices`` lists devices to roles that see internal data only), its Location (the device's point) and
a HistoricalLocation, the Sensor and ObservedProperties (shared by name across devices), one
Datastream per stream of the type, the ``sensing_devices`` row and an MQTT credential allowed to
publish to exactly those Datastreams' ``Observations`` topics (its password is returned once).

**Building link**: a device given a ``building_id`` without a point stands at the building's
point on surface (layer ``buildings`` of the store); street, community and address default to
the building's first address (layer ``addresses``) when not given.

**Status** (view ``sensing_device_status``, migration 0015): last seen, battery, and
online / offline / unknown, from the maintained stream statistics only.

**Who sees what** (:func:`visible_devices_sql`): restricted devices (the water-meter pilot's
households) only for roles that may ``sensing:households`` — a community worker only those of its
own community, an admin all; other devices for every role that sees ``internal`` data and for
community workers; anonymous/public callers see none. Readers of household data call
:func:`note_household_read` (the request's audit entry names every device read).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from spatial_api import security

OM = "http://www.opengis.net/def/observationType/OGC-OM/2.0/"
OM_MEASUREMENT = OM + "OM_Measurement"
OM_TRUTH = OM + "OM_TruthObservation"
OM_COUNT = OM + "OM_CountObservation"
UCUM = "http://unitsofmeasure.org/ucum.html#"


@dataclass(frozen=True)
class StreamSpec:
    key: str             # stable key within the type (datastream properties.key)
    name: str            # the ObservedProperty's name (shared by every device), e.g. 用水量
    description: str
    definition: str      # the ObservedProperty's definition (a URI)
    unit_name: str | None
    unit_symbol: str | None
    unit_definition: str | None
    observation_type: str = OM_MEASUREMENT

    @property
    def unit(self) -> dict:
        return {"name": self.unit_name, "symbol": self.unit_symbol, "definition": self.unit_definition}


@dataclass(frozen=True)
class DeviceType:
    type: str
    label: str           # Chinese, as shown to users
    label_en: str
    sensor: str          # the STA Sensor's description (its name is the label)
    expected_interval: timedelta
    offline_after: int   # offline when nothing arrived within offline_after × expected_interval
    streams: tuple[StreamSpec, ...]
    default_restricted: bool = False


BATTERY = StreamSpec("battery", "电池电量", "电池剩余电量", "urn:geotwin:property:battery-level",
                     "百分比", "%", UCUM + "%")

#: The device types and what each measures. Add a type here (and nothing else) to register it.
TYPES: dict[str, DeviceType] = {t.type: t for t in (
    DeviceType("water-meter", "智能水表", "smart water meter",
               "NB-IoT 智能水表：每半小时上报该时段用水量", timedelta(minutes=30), 3, (
                   StreamSpec("volume", "用水量", "每半小时用水量（该时段的体积）", "urn:geotwin:property:water-volume",
                              "立方米", "m³", UCUM + "m3"),
                   BATTERY)),
    DeviceType("manhole-cover", "智能井盖", "smart manhole cover",
               "智能井盖监测终端：倾角、开启状态、井内水位", timedelta(hours=1), 3, (
                   StreamSpec("tilt", "倾角", "井盖倾斜角度", "urn:geotwin:property:tilt-angle", "度", "°", UCUM + "deg"),
                   StreamSpec("open", "井盖开启", "井盖是否开启", "urn:geotwin:property:cover-open",
                              None, None, None, OM_TRUTH),
                   StreamSpec("water-level", "井内水位", "井内水位高度", "urn:geotwin:property:water-level",
                              "米", "m", UCUM + "m"),
                   BATTERY)),
    DeviceType("hydrant-pressure", "消火栓压力", "fire hydrant pressure",
               "消火栓压力监测终端", timedelta(hours=1), 3, (
                   StreamSpec("pressure", "水压", "消火栓管网水压", "urn:geotwin:property:water-pressure",
                              "兆帕", "MPa", UCUM + "MPa"),)),
    DeviceType("traffic-counter", "交通流量", "traffic counter",
               "路口车流量检测器：每 5 分钟车辆数", timedelta(minutes=5), 3, (
                   StreamSpec("count", "车流量", "每 5 分钟通过车辆数", "urn:geotwin:property:vehicle-count",
                              "辆/5分钟", "veh/5min", UCUM + "%7Bveh%7D/(5.min)", OM_COUNT),)),
)}

STATUSES = ("online", "offline", "unknown")
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
BUILDINGS_LAYER = "buildings"
ADDRESSES_LAYER = "addresses"
#: Fields of a device as given to add / update / import.
FIELDS = ("device_id", "type", "name", "community", "street", "building_id", "address", "lon", "lat",
          "installed_on", "restricted", "household", "expected_interval", "offline_after", "properties")
UPDATABLE = frozenset(FIELDS) - {"device_id", "type"}
HOUSEHOLD_KEYS = {"resident": {"name", "age", "phone"}, "family": {"name", "relation", "phone"}}


class DeviceError(ValueError):
    """Bad device input or an impossible registry operation; the message says what to do."""


class NotFound(LookupError):
    pass


def catalogue() -> list[dict]:
    """The device types as data (for documentation, the API and clients)."""
    return [{"type": t.type, "label": t.label, "label_en": t.label_en,
             "expected_interval_s": int(t.expected_interval.total_seconds()), "offline_after": t.offline_after,
             "datastreams": [{"key": s.key, "name": s.name, "unit": s.unit, "observation_type": s.observation_type}
                             for s in t.streams]} for t in TYPES.values()]


# --------------------------------------------------------------------------------------------- access

def may_see_households(principal: security.Principal) -> bool:
    return principal.may("sensing:households")


def visible_devices_sql(alias: str, principal: security.Principal) -> tuple[str, list]:
    """A SQL condition over ``sensing_devices`` aliased ``alias`` selecting the devices the
    principal may see, and its parameters (``%s`` placeholders). Restricted devices: roles that
    may ``sensing:households`` (a community worker: only its own community); other devices: roles
    that see ``internal`` data and community workers. Marks the response as caller-dependent."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", alias):
        raise ValueError(f"alias {alias!r} is not a plain SQL name")
    security.depends_on_caller()
    others = principal.sees("internal") or principal.role == "community-worker"
    if principal.may("sensing:households"):
        if principal.role == "community-worker":
            if not principal.community:
                return f"(NOT {alias}.restricted)", []
            return f"(NOT {alias}.restricted OR {alias}.community = %s)", [principal.community]
        return "true", []
    if others:
        return f"(NOT {alias}.restricted)", []
    return "false", []


def note_household_read(device_ids: Iterable[str]) -> None:
    """Record in the request's audit entry that these restricted devices' data was read."""
    for d in device_ids:
        security.note_restricted(f"sensing/devices/{d}")


# ------------------------------------------------------------------------------------------ validation

def _interval(value: Any, name: str) -> timedelta:
    if isinstance(value, timedelta):
        td = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        td = timedelta(minutes=value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        m = re.fullmatch(r"(?i)P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", text)
        m2 = re.fullmatch(r"(?i)(\d+(?:\.\d+)?)\s*(s|sec|seconds?|min|minutes?|h|hours?)?", text)
        if m and any(m.groups()):
            d, h, mi, s = (int(g or 0) for g in m.groups())
            td = timedelta(days=d, hours=h, minutes=mi, seconds=s)
        elif m2:
            n, unit = float(m2.group(1)), (m2.group(2) or "min").lower()
            td = timedelta(seconds=n) if unit.startswith("s") else (
                timedelta(hours=n) if unit.startswith("h") else timedelta(minutes=n))
        else:
            raise DeviceError(f"{name}: {value!r} is not an interval; give minutes (30), '30 minutes', '1 h' or PT30M")
    else:
        raise DeviceError(f"{name}: {value!r} is not an interval; give minutes (30), '30 minutes', '1 h' or PT30M")
    if td <= timedelta(0) or td > timedelta(days=31):
        raise DeviceError(f"{name}: {value!r} must be more than 0 and at most 31 days")
    return td


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "是", "t", "y"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "0", "否", "f", "n"):
        return False
    raise DeviceError(f"{name}: {value!r} is not true or false")


def _household(value: Any) -> dict | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DeviceError(f"household: not JSON ({exc.msg} at character {exc.pos}); give "
                              '{"resident": {"name", "age", "phone"}, "family": [{"name", "relation", "phone"}], '
                              '"notes": "…"}') from None
    if not isinstance(value, dict):
        raise DeviceError("household: must be a JSON object with resident, family, notes")
    unknown = set(value) - {"resident", "family", "notes"}
    if unknown:
        raise DeviceError(f"household: unknown key(s) {', '.join(sorted(unknown))}; allowed: resident, family, notes")
    resident = value.get("resident")
    if resident is not None:
        if not isinstance(resident, dict):
            raise DeviceError("household.resident: must be an object {name, age, phone}")
        bad = set(resident) - HOUSEHOLD_KEYS["resident"]
        if bad:
            raise DeviceError(f"household.resident: unknown key(s) {', '.join(sorted(bad))}; allowed: name, age, phone")
        age = resident.get("age")
        if age is not None and (isinstance(age, bool) or not isinstance(age, int) or not 0 <= age <= 130):
            raise DeviceError(f"household.resident.age: {age!r} is not an age in years (an integer 0–130)")
    family = value.get("family")
    if family is not None:
        if not isinstance(family, list) or not all(isinstance(f, dict) for f in family):
            raise DeviceError("household.family: must be a list of {name, relation, phone}")
        for i, f in enumerate(family):
            bad = set(f) - HOUSEHOLD_KEYS["family"]
            if bad:
                raise DeviceError(f"household.family[{i}]: unknown key(s) {', '.join(sorted(bad))}; "
                                  "allowed: name, relation, phone")
    if value.get("notes") is not None and not isinstance(value["notes"], str):
        raise DeviceError("household.notes: must be text")
    return value


def _text(value: Any, name: str, max_len: int = 200) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    value = value.strip()
    if "\x00" in value or len(value) > max_len:
        raise DeviceError(f"{name}: at most {max_len} characters of text")
    return value or None


def check(spec: dict, *, partial: bool = False) -> dict:
    """A clean device spec from the given fields (strings from CSV are accepted); raises
    :class:`DeviceError` naming the field. ``partial``: an update (only the given fields)."""
    unknown = set(spec) - set(FIELDS) - {"geometry"}
    if unknown:
        raise DeviceError(f"unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(FIELDS)}")
    out: dict[str, Any] = {}
    if not partial:
        device_id = _text(spec.get("device_id"), "device_id", 64)
        if not device_id or not DEVICE_ID_RE.match(device_id):
            raise DeviceError(f"device_id: {spec.get('device_id')!r} — give an id of letters, digits, '-', '_', '.' "
                              "(at most 64, starting with a letter or digit), e.g. WM-BT-0001")
        out["device_id"] = device_id
        dtype = _text(spec.get("type"), "type", 40)
        if dtype not in TYPES:
            raise DeviceError(f"type: {spec.get('type')!r} — choose one of {', '.join(TYPES)}")
        out["type"] = dtype
    elif set(spec) & {"device_id", "type"}:
        raise DeviceError("device_id and type cannot change: retire the device and add a new one")
    for name, max_len in (("name", 200), ("community", 100), ("street", 100), ("building_id", 64), ("address", 300)):
        if name in spec:
            out[name] = _text(spec[name], name, max_len)
    if "geometry" in spec and spec["geometry"] is not None:
        g = spec["geometry"]
        if not (isinstance(g, dict) and g.get("type") == "Point" and isinstance(g.get("coordinates"), list)
                and len(g["coordinates"]) >= 2):
            raise DeviceError("geometry: a device's geometry is a GeoJSON Point")
        spec = {**spec, "lon": g["coordinates"][0], "lat": g["coordinates"][1]}
    has_lon = spec.get("lon") not in (None, "")
    has_lat = spec.get("lat") not in (None, "")
    if has_lon != has_lat:
        raise DeviceError("lon/lat: give both (WGS 84 degrees) or neither")
    if has_lon:
        try:
            lon, lat = float(spec["lon"]), float(spec["lat"])
        except (TypeError, ValueError):
            raise DeviceError(f"lon/lat: {spec['lon']!r}, {spec['lat']!r} are not numbers (WGS 84 degrees)") from None
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise DeviceError(f"lon/lat: {lon}, {lat} is outside WGS 84 longitude/latitude (lon first)")
        out["lon"], out["lat"] = lon, lat
    elif "lon" in spec or "lat" in spec:
        out["lon"] = out["lat"] = None
    if spec.get("installed_on") not in (None, ""):
        v = spec["installed_on"]
        if isinstance(v, datetime):
            v = v.date()
        if not isinstance(v, date):
            try:
                v = date.fromisoformat(str(v).strip())
            except ValueError:
                raise DeviceError(f"installed_on: {spec['installed_on']!r} is not a date (YYYY-MM-DD)") from None
        out["installed_on"] = v
    elif "installed_on" in spec:
        out["installed_on"] = None
    if spec.get("restricted") not in (None, ""):
        out["restricted"] = _bool(spec["restricted"], "restricted")
    if "household" in spec:
        out["household"] = _household(spec["household"])
    if spec.get("expected_interval") not in (None, ""):
        out["expected_interval"] = _interval(spec["expected_interval"], "expected_interval")
    if spec.get("offline_after") not in (None, ""):
        v = spec["offline_after"]
        try:
            n = int(v) if not isinstance(v, bool) and float(v) == int(float(v)) else None
        except (TypeError, ValueError):
            n = None
        if n is None or not 1 <= n <= 1000:
            raise DeviceError(f"offline_after: {v!r} — give a whole number of intervals (1–1000)")
        out["offline_after"] = n
    if spec.get("properties") not in (None, ""):
        v = spec["properties"]
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                raise DeviceError("properties: not a JSON object") from None
        if not isinstance(v, dict):
            raise DeviceError("properties: must be a JSON object")
        out["properties"] = v
    if not partial:
        t = TYPES[out["type"]]
        if out.get("household") and out.get("restricted") is False:
            raise DeviceError("household: household data is personal; a device with a household must be "
                              "restricted (restricted=true)")
        out.setdefault("restricted", bool(out.get("household")) or t.default_restricted)
    return out


# ------------------------------------------------------------------------------------------ writing

@dataclass
class Added:
    device_id: str
    thing_id: int
    datastreams: dict[str, int]           # stream key → Datastream id
    mqtt_username: str | None
    mqtt_password: str | None = field(repr=False, default=None)  # shown once

    def as_dict(self) -> dict:
        return {"device_id": self.device_id, "thing_id": self.thing_id, "datastreams": self.datastreams,
                "mqtt_username": self.mqtt_username, "mqtt_password": self.mqtt_password}


def _shared_entity(conn, table: str, name: str, insert: str, params: tuple) -> int:
    row = conn.execute(f"SELECT id FROM {table} WHERE name = %s ORDER BY id LIMIT 1", (name,)).fetchone()
    if row:
        return row[0]
    return conn.execute(insert, params).fetchone()[0]


def _building(conn, building_id: str, buildings_layer: str, addresses_layer: str) -> dict | None:
    """The building's point on surface (WGS 84) and its first address, or None if unknown."""
    row = conn.execute(
        "SELECT ST_X(p), ST_Y(p) FROM (SELECT ST_Transform(ST_PointOnSurface(f.geom), 4326) AS p FROM features f "
        "WHERE f.layer = %s AND f.fid = %s AND f.valid_to IS NULL LIMIT 1) x",
        (buildings_layer, building_id)).fetchone()
    if row is None:
        return None
    out = {"lon": row[0], "lat": row[1]}
    addr = conn.execute(
        "SELECT f.properties FROM features f WHERE f.layer = %s AND f.valid_to IS NULL "
        "AND f.properties ->> 'building_id' = %s ORDER BY f.fid LIMIT 1", (addresses_layer, building_id)).fetchone()
    if addr:
        p = addr[0]
        out.update({"address": p.get("full_address"), "street": p.get("street"), "community": p.get("community")})
    return out


def _thing_properties(d: dict) -> dict:
    return {"deviceId": d["device_id"], "type": d["type"], "community": d.get("community"),
            "street": d.get("street"), "restricted": bool(d.get("restricted")), "buildingId": d.get("building_id")}


def _topics(stream_ids: Iterable[int]) -> list[str]:
    return [f"v1.1/Datastreams({i})/Observations" for i in stream_ids]


def issue_mqtt_credential(conn: psycopg.Connection, added: Added) -> Added:
    """Issue (or re-issue) the device's MQTT credential: user name = device id, allowed to publish
    to its Datastreams' Observations topics only; the password is set on ``added`` (shown once)."""
    try:
        from sensing.mqtt import credentials
    except ImportError as exc:
        raise DeviceError(f"cannot issue the device's MQTT credential: sensing.mqtt.credentials is not available "
                          f"({exc}); add the device with issue_credential=False (CLI: --no-credential) and "
                          "issue one later") from None
    try:
        password = credentials.issue(conn, added.device_id, role="device", read_topics=[],
                                     write_topics=_topics(added.datastreams.values()))
    except credentials.CredentialError as exc:
        raise DeviceError(f"MQTT credential of {added.device_id!r}: {exc}") from None
    conn.execute("UPDATE sensing_devices SET mqtt_username = %s WHERE device_id = %s", (added.device_id, added.device_id))
    added.mqtt_username, added.mqtt_password = added.device_id, password
    return added


def add(conn: psycopg.Connection, spec: dict, *, issue_credential: bool = True,
        buildings_layer: str = BUILDINGS_LAYER, addresses_layer: str = ADDRESSES_LAYER) -> Added:
    """Register a device (see the module's docstring) in the caller's transaction."""
    d = check(spec)
    t = TYPES[d["type"]]
    if conn.execute("SELECT 1 FROM sensing_devices WHERE device_id = %s", (d["device_id"],)).fetchone():
        raise DeviceError(f"device_id: {d['device_id']!r} is already registered (retired devices keep their id); "
                          "choose another id or PATCH the existing device")
    if d.get("building_id"):
        b = _building(conn, d["building_id"], buildings_layer, addresses_layer)
        if b is None:
            raise DeviceError(f"building_id: {d['building_id']!r} is not a current building of layer "
                              f"{buildings_layer!r}; check the id or give lon/lat and an address instead")
        if d.get("lon") is None:
            d["lon"], d["lat"] = b["lon"], b["lat"]
        for k in ("address", "street", "community"):
            if not d.get(k) and b.get(k):
                d[k] = b[k]
    if d.get("restricted") and not d.get("community"):
        raise DeviceError("community: a restricted device (a household) needs its community — the community "
                          "workers who may see it are those of that community")
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.sensing_registry'))")
    sensor_id = _shared_entity(
        conn, "sta_sensors", t.label,
        "INSERT INTO sta_sensors (name, description, encoding_type, metadata, properties) "
        "VALUES (%s, %s, 'text/plain', %s, %s) RETURNING id",
        (t.label, t.sensor, t.sensor, json.dumps({"deviceType": t.type}, ensure_ascii=False)))
    name = d.get("name") or d["device_id"]
    thing_id = conn.execute(
        "INSERT INTO sta_things (name, description, properties) VALUES (%s, %s, %s) RETURNING id",
        (name, f"{t.label} {d.get('address') or d['device_id']}",
         json.dumps(_thing_properties(d), ensure_ascii=False))).fetchone()[0]
    if d.get("lon") is not None:
        _new_location(conn, thing_id, d)
    streams: dict[str, int] = {}
    for s in t.streams:
        op_id = _shared_entity(
            conn, "sta_observed_properties", s.name,
            "INSERT INTO sta_observed_properties (name, definition, description) VALUES (%s, %s, %s) RETURNING id",
            (s.name, s.definition, s.description))
        streams[s.key] = conn.execute(
            "INSERT INTO sta_datastreams (name, description, observation_type, unit_of_measurement, thing_id, "
            "sensor_id, observed_property_id, properties) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (f"{d['device_id']} {s.name}", s.description, s.observation_type, json.dumps(s.unit, ensure_ascii=False),
             thing_id, sensor_id, op_id, json.dumps({"deviceId": d["device_id"], "key": s.key}))).fetchone()[0]
    conn.execute(
        """INSERT INTO sensing_devices (device_id, thing_id, type, name, community, street, building_id, address, geom,
               installed_on, restricted, household, expected_interval, offline_after, mqtt_username, properties)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s,
                   CASE WHEN %s::float8 IS NULL THEN NULL ELSE ST_SetSRID(ST_MakePoint(%s, %s), 4326) END,
                   %s, %s, %s, %s, %s, %s, %s)""",
        (d["device_id"], thing_id, d["type"], d.get("name"), d.get("community"), d.get("street"), d.get("building_id"),
         d.get("address"), d.get("lon"), d.get("lon"), d.get("lat"), d.get("installed_on"), d["restricted"],
         json.dumps(d["household"], ensure_ascii=False) if d.get("household") else None,
         d.get("expected_interval", t.expected_interval), d.get("offline_after", t.offline_after), None,
         json.dumps(d["properties"], ensure_ascii=False) if d.get("properties") else None))
    added = Added(d["device_id"], thing_id, streams, None)
    return issue_mqtt_credential(conn, added) if issue_credential else added


def _new_location(conn, thing_id: int, d: dict) -> None:
    point = {"type": "Point", "coordinates": [d["lon"], d["lat"]]}
    loc_id = conn.execute(
        "INSERT INTO sta_locations (name, description, encoding_type, location, geom) "
        "VALUES (%s, %s, 'application/geo+json', %s, ST_SetSRID(ST_MakePoint(%s, %s), 4326)) RETURNING id",
        (d.get("address") or d["device_id"], f"{d['device_id']} 安装位置", json.dumps(point), d["lon"], d["lat"])
    ).fetchone()[0]
    conn.execute("DELETE FROM sta_thing_locations WHERE thing_id = %s", (thing_id,))
    conn.execute("INSERT INTO sta_thing_locations (thing_id, location_id) VALUES (%s, %s)", (thing_id, loc_id))
    hl = conn.execute("INSERT INTO sta_historical_locations (thing_id, time) VALUES (%s, now()) RETURNING id",
                      (thing_id,)).fetchone()[0]
    conn.execute("INSERT INTO sta_location_history (historical_location_id, location_id) VALUES (%s, %s)", (hl, loc_id))


def _row(conn, device_id: str, *, lock: bool = False) -> dict:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT *, ST_X(geom) AS lon, ST_Y(geom) AS lat FROM sensing_devices WHERE device_id = %s"
                          + (" FOR UPDATE" if lock else ""), (device_id,)).fetchone()
    if row is None:
        raise NotFound(f"device {device_id!r} is not registered")
    return row


def update(conn: psycopg.Connection, device_id: str, changes: dict, *,
           buildings_layer: str = BUILDINGS_LAYER, addresses_layer: str = ADDRESSES_LAYER) -> dict:
    """Change some fields of a device (keeping its Thing's properties and Location in sync)."""
    c = check(changes, partial=True)
    if not c:
        raise DeviceError(f"nothing to change; updatable fields: {', '.join(sorted(UPDATABLE))}")
    row = _row(conn, device_id, lock=True)
    if row["retired_at"] is not None:
        raise DeviceError(f"device {device_id!r} was retired at {row['retired_at']:%Y-%m-%d %H:%M}; it cannot change")
    if c.get("building_id") and c.get("building_id") != row["building_id"] and "lon" not in c:
        b = _building(conn, c["building_id"], buildings_layer, addresses_layer)
        if b is None:
            raise DeviceError(f"building_id: {c['building_id']!r} is not a current building of layer "
                              f"{buildings_layer!r}")
        c["lon"], c["lat"] = b["lon"], b["lat"]
    merged = {**row, **c}
    if merged.get("household") and not merged["restricted"]:
        raise DeviceError("restricted: a device with household data must stay restricted (remove the household "
                          "first: household=null)")
    if merged["restricted"] and not merged.get("community"):
        raise DeviceError("community: a restricted device (a household) needs its community")
    sets, params = [], []
    for k, v in c.items():
        if k in ("lon", "lat"):
            continue
        sets.append(f"{k} = %s")
        params.append(json.dumps(v, ensure_ascii=False) if k in ("household", "properties") and v is not None else v)
    if "lon" in c:
        sets.append("geom = CASE WHEN %s::float8 IS NULL THEN NULL ELSE ST_SetSRID(ST_MakePoint(%s, %s), 4326) END")
        params += [c["lon"], c["lon"], c["lat"]]
    sets.append("updated_at = now()")
    conn.execute(f"UPDATE sensing_devices SET {', '.join(sets)} WHERE device_id = %s", (*params, device_id))
    if row["thing_id"] is not None:
        conn.execute("UPDATE sta_things SET properties = coalesce(properties, '{}'::jsonb) || %s::jsonb, "
                     "name = %s WHERE id = %s",
                     (json.dumps(_thing_properties(merged), ensure_ascii=False),
                      merged.get("name") or device_id, row["thing_id"]))
        if "lon" in c and c["lon"] is not None and (c["lon"], c["lat"]) != (row["lon"], row["lat"]):
            _new_location(conn, row["thing_id"], merged)
    return _row(conn, device_id)


def retire(conn: psycopg.Connection, device_id: str) -> dict:
    """Retire a device: it leaves listings, tiles and status; its Thing and readings stay; its MQTT
    credential is revoked (when the broker's credential store is installed)."""
    row = _row(conn, device_id, lock=True)
    if row["retired_at"] is not None:
        raise DeviceError(f"device {device_id!r} was already retired at {row['retired_at']:%Y-%m-%d %H:%M}")
    conn.execute("UPDATE sensing_devices SET retired_at = now(), updated_at = now() WHERE device_id = %s", (device_id,))
    if row["thing_id"] is not None:
        conn.execute("UPDATE sta_things SET properties = coalesce(properties, '{}'::jsonb) || "
                     "jsonb_build_object('retired', true) WHERE id = %s", (row["thing_id"],))
    if row["mqtt_username"]:
        try:
            from sensing.mqtt import credentials
        except ImportError as exc:
            raise DeviceError(f"cannot revoke the device's MQTT credential {row['mqtt_username']!r}: "
                              f"sensing.mqtt.credentials is not available ({exc})") from None
        credentials.revoke(conn, row["mqtt_username"])
    return _row(conn, device_id)


# ------------------------------------------------------------------------------------------ import

def read_rows(path: Path | str, data: bytes | None = None) -> list[tuple[str, dict]]:
    """Rows of a CSV (UTF-8, header row) or GeoJSON FeatureCollection file: [(label, fields)] where
    label names the row for messages ("row 3" = the third data row, "feature 2")."""
    path = Path(path)
    raw = data if data is not None else path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DeviceError(f"{path.name}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json") or text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DeviceError(f"{path.name}: not JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"), list):
            raise DeviceError(f"{path.name}: expected a GeoJSON FeatureCollection of Point features")
        rows = []
        for i, f in enumerate(doc["features"], 1):
            if not isinstance(f, dict) or f.get("type") != "Feature":
                rows.append((f"feature {i}", {"__error__": "not a GeoJSON Feature"}))
                continue
            props = dict(f.get("properties") or {})
            if f.get("geometry") is not None:
                props["geometry"] = f["geometry"]
            rows.append((f"feature {i}" + (f" ({props.get('device_id')})" if props.get("device_id") else ""), props))
        return rows
    if suffix not in (".csv", ".txt", ""):
        raise DeviceError(f"{path.name}: give a .csv (UTF-8, header row) or a .geojson file")
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "device_id" not in [h.strip() for h in reader.fieldnames]:
        raise DeviceError(f"{path.name}: the CSV needs a header row with at least device_id and type "
                          f"(columns: {', '.join(FIELDS)})")
    rows = []
    for i, r in enumerate(reader, 1):
        fields = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in r.items() if k is not None}
        if None in r:
            fields["__error__"] = f"{len(r[None])} value(s) more than the header's columns"
        fields = {k: v for k, v in fields.items() if v not in ("", None) or k == "__error__"}
        rows.append((f"row {i}" + (f" ({fields.get('device_id')})" if fields.get("device_id") else ""), fields))
    return rows


def import_rows(conn: psycopg.Connection, rows: list[tuple[str, dict]], *, issue_credential: bool = True,
                buildings_layer: str = BUILDINGS_LAYER, addresses_layer: str = ADDRESSES_LAYER) -> list[Added]:
    """Add every row or none: every bad row is named in one :class:`DeviceError` and nothing is
    written (a savepoint per row keeps checking after a failed one; the caller's transaction is
    rolled back to where it was)."""
    if not rows:
        raise DeviceError("the file has no devices")
    problems: list[str] = []
    added: list[Added] = []
    seen: dict[str, str] = {}
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        conn.execute("SELECT 1")  # open the caller's transaction: the block below is a savepoint in it
    with conn.transaction():  # outer savepoint: undone whole when any row fails
        for label, fields in rows:
            if "__error__" in fields:
                problems.append(f"{label}: {fields['__error__']}")
                continue
            did = fields.get("device_id")
            if did in seen:
                problems.append(f"{label}: device_id {did!r} repeats {seen[did]}")
                continue
            if did:
                seen[did] = label
            try:
                with conn.transaction():
                    added.append(add(conn, fields, issue_credential=False,
                                     buildings_layer=buildings_layer, addresses_layer=addresses_layer))
            except DeviceError as exc:
                problems.append(f"{label}: {exc}")
            except psycopg.errors.DataError as exc:
                problems.append(f"{label}: {exc.diag.message_primary or exc}")
        if problems:
            raise ImportFailed(problems)
        if issue_credential:  # only once every row is in: a failed import issues nothing
            for a in added:
                issue_mqtt_credential(conn, a)
    return added


class ImportFailed(DeviceError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        n = len(problems)
        super().__init__(f"{n} bad row{'s' if n > 1 else ''}, nothing imported (fix and import the file again):\n"
                         + "\n".join(f"  {p}" for p in problems))


def import_file(conn: psycopg.Connection, path: Path | str, **kwargs) -> list[Added]:
    return import_rows(conn, read_rows(path), **kwargs)


# ------------------------------------------------------------------------------------------ reading

def _alerts_available(conn) -> bool:
    return conn.execute("SELECT to_regclass('sensing_alerts') IS NOT NULL").fetchone()[0]


def open_alerts_sql(conn, alias: str = "d") -> str:
    """A SQL expression: the number of active (not closed) alerts of device ``alias`` (0 before the
    alerts' migration)."""
    if not _alerts_available(conn):
        return "0"
    return f"(SELECT count(*) FROM sensing_alerts a WHERE a.device_id = {alias}.device_id AND a.state <> 'closed')::int"


def _iso(v):
    return v.isoformat() if isinstance(v, (datetime, date)) else v


def listing(conn: psycopg.Connection, principal: security.Principal, *, type: str | None = None,
            status: str | None = None, community: str | None = None, street: str | None = None,
            building_id: str | None = None, bbox: tuple[float, float, float, float] | None = None,
            limit: int = 1000, offset: int = 0, include_retired: bool = False) -> tuple[list[dict], int]:
    """The devices the principal may see (with status), and how many match in all."""
    if type is not None and type not in TYPES:
        raise DeviceError(f"type: {type!r} — choose one of {', '.join(TYPES)}")
    if status is not None and status not in STATUSES:
        raise DeviceError(f"status: {status!r} — choose one of {', '.join(STATUSES)}")
    vis, params = visible_devices_sql("d", principal)
    where = [vis]
    if not include_retired:
        where.append("d.retired_at IS NULL")
    for col, val in (("type", type), ("community", community), ("street", street), ("building_id", building_id)):
        if val is not None:
            where.append(f"d.{col} = %s")
            params.append(val)
    if status is not None:
        where.append("s.status = %s")
        params.append(status)
    if bbox is not None:
        where.append("d.geom && ST_MakeEnvelope(%s, %s, %s, %s, 4326)")
        params.extend(bbox)
    cond = " AND ".join(where)
    base = f"FROM sensing_devices d JOIN sensing_device_status s ON s.device_id = d.device_id WHERE {cond}"
    with conn.cursor(row_factory=dict_row) as cur:
        total = cur.execute(f"SELECT count(*) AS n {base}", params).fetchone()["n"]
        rows = cur.execute(
            f"""SELECT d.device_id, d.name, d.type, d.community, d.street, d.building_id, d.address, d.restricted,
                       d.thing_id, d.installed_on, d.retired_at, ST_X(d.geom) AS lon, ST_Y(d.geom) AS lat,
                       s.status, s.last_seen, s.battery, {open_alerts_sql(conn)} AS open_alerts
                {base} ORDER BY d.device_id LIMIT %s OFFSET %s""", [*params, limit, offset]).fetchall()
    note_household_read(r["device_id"] for r in rows if r["restricted"])
    return rows, total


def feature(row: dict, *, detail: bool = False) -> dict:
    """A device row as a GeoJSON Feature (the API's and the CLI's shape)."""
    t = TYPES.get(row["type"])
    props = {"device_id": row["device_id"], "name": row.get("name"), "type": row["type"],
             "type_label": t.label if t else row["type"], "community": row.get("community"),
             "street": row.get("street"), "building_id": row.get("building_id"), "address": row.get("address"),
             "status": row.get("status"), "last_seen": _iso(row.get("last_seen")), "battery": row.get("battery"),
             "thing_id": row.get("thing_id"), "open_alerts": row.get("open_alerts", 0),
             "restricted": row.get("restricted")}
    if detail:
        props["installed_on"] = _iso(row.get("installed_on"))
        ei = row.get("expected_interval")
        props["expected_interval"] = int(ei.total_seconds()) if isinstance(ei, timedelta) else ei
        props["offline_after"] = row.get("offline_after")
        props["retired_at"] = _iso(row.get("retired_at"))
        props["mqtt_username"] = row.get("mqtt_username")
        props["properties"] = row.get("properties")
        if "household" in row:
            props["household"] = row["household"]
    geom = ({"type": "Point", "coordinates": [row["lon"], row["lat"]]} if row.get("lon") is not None else None)
    return {"type": "Feature", "id": row["device_id"], "geometry": geom, "properties": props}


def get(conn: psycopg.Connection, principal: security.Principal, device_id: str) -> dict:
    """One device the principal may see (NotFound otherwise — a restricted device the caller may
    not see does not exist for them), with status, household (restricted devices, for who may see
    them) and the latest value of each Datastream."""
    vis, params = visible_devices_sql("d", principal)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"""SELECT d.*, ST_X(d.geom) AS lon, ST_Y(d.geom) AS lat, s.status, s.last_seen, s.battery,
                       {open_alerts_sql(conn)} AS open_alerts
                FROM sensing_devices d JOIN sensing_device_status s ON s.device_id = d.device_id
                WHERE d.device_id = %s AND {vis}""", [device_id, *params]).fetchone()
        if row is None:
            raise NotFound(f"device {device_id!r} does not exist")
        if row["restricted"]:
            note_household_read([device_id])
        else:
            row.pop("household", None)  # only households carry personal data
        latest = cur.execute(
            """SELECT ds.id AS datastream_id, ds.name, op.name AS observed_property,
                      ds.unit_of_measurement ->> 'symbol' AS unit, ds.observation_type,
                      coalesce(to_jsonb(st.last_result_number), st.last_result_json) AS value, st.last_time AS time,
                      st.observations
               FROM sta_datastreams ds JOIN sta_observed_properties op ON op.id = ds.observed_property_id
               LEFT JOIN sta_stream_stats st ON st.stream_id = ds.id
               WHERE ds.thing_id = %s ORDER BY ds.id""", (row["thing_id"],)).fetchall() if row["thing_id"] else []
    f = feature(row, detail=True)
    f["latest"] = [{**r, "time": _iso(r["time"])} for r in latest]
    return f


def series(conn: psycopg.Connection, principal: security.Principal, device_id: str, *, datastream: int | None,
           start: datetime | None, end: datetime | None, period: str = "raw", max_points: int = 20000) -> dict:
    """A Datastream of a visible device over [start, end): raw observations (at most
    ``max_points``; ``truncated`` says when more exist) or hour / day aggregates from
    ``sta_aggregates``. Without start/end: the last 2 days (raw), 30 days (hour) or 365 days (day)
    up to the latest observation."""
    if period not in ("raw", "hour", "day"):
        raise DeviceError(f"period: {period!r} — choose raw, hour or day")
    vis, params = visible_devices_sql("d", principal)
    with conn.cursor(row_factory=dict_row) as cur:
        dev = cur.execute(f"SELECT d.device_id, d.thing_id, d.restricted FROM sensing_devices d "
                          f"WHERE d.device_id = %s AND {vis}", [device_id, *params]).fetchone()
        if dev is None:
            raise NotFound(f"device {device_id!r} does not exist")
        streams = cur.execute(
            "SELECT ds.id, ds.name, ds.unit_of_measurement ->> 'symbol' AS unit, st.last_time "
            "FROM sta_datastreams ds LEFT JOIN sta_stream_stats st ON st.stream_id = ds.id "
            "WHERE ds.thing_id = %s ORDER BY ds.id", (dev["thing_id"],)).fetchall() if dev["thing_id"] else []
        if not streams:
            raise NotFound(f"device {device_id!r} has no datastreams")
        if datastream is None:
            ds = streams[0]
        else:
            ds = next((s for s in streams if s["id"] == datastream), None)
            if ds is None:
                raise DeviceError(f"datastream: {datastream} is not a datastream of device {device_id!r}; its "
                                  f"datastreams: {', '.join(str(s['id']) + ' ' + s['name'] for s in streams)}")
        if dev["restricted"]:
            note_household_read([device_id])
        if end is None:
            end = (ds["last_time"] + timedelta(microseconds=1)) if ds["last_time"] else datetime.now().astimezone()
        if start is None:
            start = end - {"raw": timedelta(days=2), "hour": timedelta(days=30), "day": timedelta(days=365)}[period]
        if start >= end:
            raise DeviceError("start: must be before end")
        out = {"device_id": device_id, "datastream": ds["id"], "name": ds["name"], "unit": ds["unit"],
               "period": period, "start": start.isoformat(), "end": end.isoformat()}
        if period == "raw":
            rows = cur.execute(
                "SELECT phenomenon_time_start AS t, coalesce(to_jsonb(result_number), result_json) AS value "
                "FROM sta_observations WHERE stream_id = %s AND phenomenon_time_start >= %s "
                "AND phenomenon_time_start < %s ORDER BY phenomenon_time_start LIMIT %s",
                (ds["id"], start, end, max_points + 1)).fetchall()
            out["truncated"] = len(rows) > max_points
            out["points"] = [{"t": r["t"].isoformat(), "value": r["value"]} for r in rows[:max_points]]
        else:
            rows = cur.execute(
                "SELECT bucket AS t, n, min, max, sum, sum / nullif(n, 0) AS mean FROM sta_aggregates "
                "WHERE stream_id = %s AND period = %s AND bucket >= %s AND bucket < %s ORDER BY bucket",
                (ds["id"], period, start, end)).fetchall()
            out["points"] = [{"t": r["t"].isoformat(), "n": r["n"], "min": r["min"], "max": r["max"],
                              "mean": r["mean"], "sum": r["sum"]} for r in rows]
    return out


def status_counts(conn: psycopg.Connection, principal: security.Principal) -> dict:
    """Counts of the visible, active devices by type × status."""
    vis, params = visible_devices_sql("d", principal)
    rows = conn.execute(
        f"SELECT d.type, s.status, count(*) FROM sensing_devices d JOIN sensing_device_status s "
        f"ON s.device_id = d.device_id WHERE d.retired_at IS NULL AND {vis} GROUP BY 1, 2", params).fetchall()
    by_type: dict[str, dict] = {}
    for dtype, st, n in rows:
        entry = by_type.setdefault(dtype, {"type": dtype, "type_label": TYPES[dtype].label if dtype in TYPES else dtype,
                                           **{s: 0 for s in STATUSES}, "total": 0})
        entry[st] += n
        entry["total"] += n
    total = {s: sum(e[s] for e in by_type.values()) for s in STATUSES}
    return {"types": sorted(by_type.values(), key=lambda e: e["type"]),
            "total": {**total, "total": sum(total.values())}}


def buildings(conn: psycopg.Connection, principal: security.Principal,
              bbox: tuple[float, float, float, float] | None = None) -> list[dict]:
    """Buildings with visible devices: their point, device count, types, open alerts and the
    highest severity among them (for the 3D twin)."""
    vis, params = visible_devices_sql("d", principal)
    where = ["d.retired_at IS NULL", "d.building_id IS NOT NULL", vis]
    if bbox is not None:
        where.append("d.geom && ST_MakeEnvelope(%s, %s, %s, %s, 4326)")
        params = [*params, *bbox]
    alerts = _alerts_available(conn)
    sev = ("(SELECT max(CASE a.severity WHEN 'critical' THEN 3 WHEN 'warning' THEN 2 WHEN 'info' THEN 1 END) "
           "FROM sensing_alerts a WHERE a.device_id = d.device_id AND a.state <> 'closed')" if alerts else "NULL::int")
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""SELECT d.building_id, ST_X(ST_Centroid(ST_Collect(d.geom))) AS lon,
                       ST_Y(ST_Centroid(ST_Collect(d.geom))) AS lat, count(*)::int AS devices,
                       array_agg(DISTINCT d.type ORDER BY d.type) AS types,
                       sum({open_alerts_sql(conn)})::int AS open_alerts, max({sev}) AS max_sev,
                       array_agg(d.device_id) FILTER (WHERE d.restricted) AS restricted_ids
                FROM sensing_devices d WHERE {' AND '.join(where)}
                GROUP BY d.building_id ORDER BY d.building_id""", params).fetchall()
    out = []
    for r in rows:
        note_household_read(r.pop("restricted_ids") or [])
        r["max_severity"] = {3: "critical", 2: "warning", 1: "info"}.get(r.pop("max_sev"))
        out.append(r)
    return out


def add_absence(conn: psycopg.Connection, device_id: str, start: datetime, end: datetime, *,
                reason: str | None, announced_by: str | None, author: str) -> dict:
    """Record an announced absence of a device's resident (``sensing_absences``, migration 0016):
    inactivity and baseline alerts are not raised for windows it covers. ``announced_by``
    defaults to the author (the caller)."""
    row = _row(conn, device_id)
    if row["retired_at"] is not None:
        raise DeviceError(f"device {device_id!r} is retired")
    if end <= start:
        raise DeviceError("end: must be after start")
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "INSERT INTO sensing_absences (device_id, start_at, end_at, reason, announced_by) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id, device_id, start_at AS start, end_at AS \"end\", reason, "
            "announced_by, created_at",
            (device_id, start, end, (reason or "").strip(), (announced_by or "").strip() or author)).fetchone()
