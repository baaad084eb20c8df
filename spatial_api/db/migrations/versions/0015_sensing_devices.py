"""Sensing (issue 16): the device registry and community scoping.

``sensing_devices``: one row per field device (smart water meter, manhole cover, hydrant pressure
sensor, traffic counter …), linked to its SensorThings Thing (``thing_id``; the Thing carries the
device's id, type, community, restricted flag and building in its ``properties`` so that the STA
side filters the same way). ``restricted`` devices are the water-meter pilot's households: their
row, readings and alerts are personal information (``household``: resident {name, age, phone},
family [{name, relation, phone}], notes), seen only by roles that may ``sensing:households``
(a community worker: its own community only).

Status comes from the data, never stored: the view ``sensing_device_status`` gives per device the
last time anything arrived (max of ``sta_stream_stats.last_time`` over its Datastreams), the
latest battery level (the Datastream whose ObservedProperty is 电池电量) and
``online`` / ``offline`` / ``unknown`` (online when something arrived within
``expected_interval * offline_after``). It reads the maintained stream stats only (no scan of
observations), so listings, tiles and the CLI all use it.

``api_keys.community``: the community of a ``community-worker`` key (required for that role), and
the role list of ``api_keys`` gains ``community-worker``.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE sensing_devices (
            device_id          text PRIMARY KEY,
            thing_id           bigint UNIQUE REFERENCES sta_things (id) ON DELETE SET NULL,
            type               text NOT NULL,
            name               text,
            community          text,
            street             text,
            building_id        text,
            address            text,
            geom               geometry(Point, 4326),
            installed_on       date,
            restricted         boolean NOT NULL DEFAULT false,
            household          jsonb,              -- personal data: resident, family, notes
            expected_interval  interval NOT NULL DEFAULT '30 minutes' CHECK (expected_interval > interval '0'),
            offline_after      integer NOT NULL DEFAULT 3 CHECK (offline_after > 0),
            mqtt_username      text,
            properties         jsonb,
            created_at         timestamptz NOT NULL DEFAULT now(),
            updated_at         timestamptz NOT NULL DEFAULT now(),
            retired_at         timestamptz
        );
        CREATE INDEX sensing_devices_community_idx ON sensing_devices (community);
        CREATE INDEX sensing_devices_type_idx ON sensing_devices (type);
        CREATE INDEX sensing_devices_building_idx ON sensing_devices (building_id);
        CREATE INDEX sensing_devices_geom_idx ON sensing_devices USING gist (geom);

        -- Status from the data: the maintained stream stats only, no observation scan.
        CREATE VIEW sensing_device_status AS
        SELECT d.device_id,
               s.last_seen,
               s.battery,
               CASE WHEN s.last_seen IS NULL THEN 'unknown'
                    WHEN s.last_seen >= now() - d.expected_interval * d.offline_after THEN 'online'
                    ELSE 'offline' END AS status
        FROM sensing_devices d
        LEFT JOIN LATERAL (
            SELECT max(st.last_time) AS last_seen,
                   (array_agg(st.last_result_number ORDER BY st.last_time DESC NULLS LAST)
                        FILTER (WHERE op.name = '电池电量'))[1] AS battery
            FROM sta_datastreams ds
            JOIN sta_observed_properties op ON op.id = ds.observed_property_id
            LEFT JOIN sta_stream_stats st ON st.stream_id = ds.id
            WHERE ds.thing_id = d.thing_id
        ) s ON true;

        ALTER TABLE api_keys ADD COLUMN community text;
        ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_role_check;
        ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
            CHECK (role IN ('public', 'external-platform', 'community-worker', 'planner',
                            'land-officer', 'gis-staff', 'admin'));
        ALTER TABLE api_keys ADD CONSTRAINT api_keys_community_check
            CHECK (role <> 'community-worker' OR nullif(btrim(community), '') IS NOT NULL);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP VIEW sensing_device_status;
        DROP TABLE sensing_devices;
        ALTER TABLE api_keys DROP CONSTRAINT api_keys_community_check;
        ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
        DELETE FROM api_keys WHERE role = 'community-worker';
        ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
            CHECK (role IN ('public', 'external-platform', 'planner', 'land-officer', 'gis-staff', 'admin'));
        ALTER TABLE api_keys DROP COLUMN community;
        """
    )
