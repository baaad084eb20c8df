"""The sensing room's representations of a geographic entity (``geotwin.representations`` entry
``sensing``), gathered by ``/entities/{code}``: the devices of the entity — those whose
``building_id`` is the key of one of its features, whose address is the full address of one of
its address features, or whose STA Thing is linked to it (entity links of kind ``sta_thing``) —
each as its STA Thing (``@iot.id``, selfLink ``/sta/v1.1/Things(id)``) with the device's type and
status. As of a time: installed (``installed_on``, else registered) by then and not retired
before. The devices' privacy rule applies (``devices.visible_devices_sql``): a household meter
is listed only to the roles that may see households, and such reads are audited."""

from __future__ import annotations

from datetime import datetime, timezone

from psycopg.rows import dict_row

from sensing import devices
from spatial_api import security


def representations(conn, entity, at) -> list[dict]:
    reps = entity.get("representations") or []
    keys = sorted({str(r["fid"]) for r in reps if r.get("kind") == "feature"})
    addresses = sorted({str(a) for r in reps if r.get("kind") == "feature"
                        for a in [((r.get("version") or {}).get("properties") or {}).get("full_address")] if a})
    things = sorted({int(r["thing"]) for r in reps if r.get("kind") == "sta_thing" and str(r.get("thing", "")).isdigit()})
    if not (keys or addresses or things):
        return []
    if conn.execute("SELECT to_regclass('sensing_devices')").fetchone()[0] is None:
        return []
    visible, vparams = devices.visible_devices_sql("d", security.current())
    when = at or datetime.now(timezone.utc)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""
            SELECT d.device_id, d.thing_id, d.type, d.name, d.building_id, d.address, d.restricted, d.installed_on,
                   d.retired_at, s.status, s.last_seen
            FROM sensing_devices d LEFT JOIN sensing_device_status s ON s.device_id = d.device_id
            WHERE (d.building_id = ANY(%s) OR d.address = ANY(%s) OR d.thing_id = ANY(%s))
              AND coalesce(d.installed_on::timestamptz, d.created_at) <= %s
              AND (d.retired_at IS NULL OR d.retired_at > %s)
              AND {visible}
            ORDER BY d.device_id
            """, [keys, addresses, things, when, when, *vparams]).fetchall()
    devices.note_household_read(r["device_id"] for r in rows if r["restricted"])
    labels = {t: spec.label for t, spec in devices.TYPES.items()}
    return [{"kind": "sta_thing", "thing": str(r["thing_id"]) if r["thing_id"] is not None else None,
             "@iot.id": r["thing_id"], "selfLink": f"/sta/v1.1/Things({r['thing_id']})" if r["thing_id"] is not None else None,
             "href": f"/sensing/devices/{r['device_id']}", "device_id": r["device_id"], "deviceType": r["type"],
             "deviceTypeTitle": labels.get(r["type"]), "name": r["name"], "status": r["status"] or "unknown",
             "lastSeen": r["last_seen"].isoformat() if r["last_seen"] else None,
             "via": "building" if r["building_id"] in keys else "address" if r["address"] in addresses else "link"}
            for r in rows]
