"""The devices as Mapbox vector tiles (WebMercatorQuad): one layer ``devices`` with the properties
device_id, type, type_label, status, open_alerts, community — only the devices the caller may see
(:func:`sensing.devices.visible_devices_sql`), restricted ones audited like every other read."""

from __future__ import annotations

import psycopg

from sensing import devices
from spatial_api import security

LAYER = "devices"
EXTENT = 4096
BUFFER = 64


def in_matrix(z: int, x: int, y: int) -> bool:
    return 0 <= z <= 24 and 0 <= x < 2 ** z and 0 <= y < 2 ** z


def tile(conn: psycopg.Connection, principal: security.Principal, z: int, x: int, y: int) -> bytes:
    """The tile's bytes (empty when no visible device is in it)."""
    vis, params = devices.visible_devices_sql("d", principal)
    labels = "CASE d.type " + " ".join(f"WHEN '{t}' THEN '{v.label}'" for t, v in devices.TYPES.items()) + \
        " ELSE d.type END"
    row = conn.execute(
        f"""
        WITH t AS (SELECT ST_TileEnvelope(%s, %s, %s) AS env),
        q AS (
            SELECT d.device_id, d.type, {labels} AS type_label, s.status,
                   {devices.open_alerts_sql(conn)} AS open_alerts, d.community, d.restricted,
                   ST_AsMVTGeom(ST_Transform(d.geom, 3857), t.env, {EXTENT}, {BUFFER}, true) AS geom
            FROM sensing_devices d JOIN sensing_device_status s ON s.device_id = d.device_id, t
            WHERE d.retired_at IS NULL AND d.geom && ST_Transform(ST_Expand(t.env, (ST_XMax(t.env) - ST_XMin(t.env))
                                                                         * {BUFFER} / {EXTENT}), 4326)
              AND {vis}
        )
        SELECT (SELECT ST_AsMVT(m, '{LAYER}', {EXTENT}, 'geom')
                FROM (SELECT device_id, type, type_label, status, open_alerts, community, geom
                      FROM q WHERE geom IS NOT NULL) m),
               (SELECT array_agg(device_id) FROM q WHERE restricted AND geom IS NOT NULL)
        """, [z, x, y, *params]).fetchone()
    devices.note_household_read(row[1] or [])
    return bytes(row[0] or b"")
