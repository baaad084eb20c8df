"""Sensing alerts (issue 16): rules as data, per-device baselines, announced absences, alerts with a
life cycle, the notification outbox.

- ``sensing_rules``: one row per rule — ``kind`` (threshold | rate-of-change | no-data |
  inactivity | continuous-use | baseline), the device type and datastream (observed property
  name) it reads, ``params`` (jsonb, validated by ``sensing.rules``), severity, who is told
  (``notify``: person | family | community). Seeded with the pilot's defaults (domain brief §7).
- ``sensing_baselines``: per device and half-hour of the week (``slot`` 0..335, Monday 00:00 in
  Asia/Shanghai = 0; ``sensing_slot_of_week(t)``) the share of weeks with use (``p_use``), the
  mean and 90th percentile of the volume, over ``weeks`` observed weeks (``sensing.baseline``).
- ``sensing_absences``: a resident away (announced by the family / community): inactivity and
  baseline alerts are not raised for a window that overlaps an absence. Written by the device
  API (``POST /sensing/devices/{id}/absences``).
- ``sensing_alerts``: one row per alert; at most one active (not closed) alert per device and
  rule (partial unique index), ``state`` open → notified → acknowledged → visited → closed, every
  step a row of ``sensing_alert_steps`` (author, time, note).
- ``sensing_outbox``: one message per alert and recipient, delivered by ``sensing.notify.dispatch``
  with retries (attempts, next_attempt_at, last_error) until ``sent_at``.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
        -- The half-hour of the week in the district's zone (Monday 00:00–00:30 = 0 … Sunday 23:30 = 335).
        CREATE FUNCTION sensing_slot_of_week(t timestamptz) RETURNS integer
        LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT ((extract(isodow FROM t AT TIME ZONE 'Asia/Shanghai')::int - 1) * 48
                    + extract(hour FROM t AT TIME ZONE 'Asia/Shanghai')::int * 2
                    + (extract(minute FROM t AT TIME ZONE 'Asia/Shanghai') >= 30)::int)
        $$;

        CREATE TABLE sensing_rules (
            rule_id            text PRIMARY KEY CHECK (rule_id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
            kind               text NOT NULL CHECK (kind IN ('threshold', 'rate-of-change', 'no-data', 'inactivity',
                                                             'continuous-use', 'baseline')),
            device_type        text,                 -- NULL: every type (no-data)
            observed_property  text,                 -- the datastream's name / observed property, e.g. 用水量
            params             jsonb NOT NULL DEFAULT '{}'::jsonb,
            severity           text NOT NULL DEFAULT 'warning' CHECK (severity IN ('info', 'warning', 'critical')),
            notify             text[] NOT NULL DEFAULT '{community}'
                               CHECK (notify <@ ARRAY['person', 'family', 'community']),
            enabled            boolean NOT NULL DEFAULT true,
            title              text NOT NULL,        -- the alert's title (Chinese)
            description        text NOT NULL DEFAULT '',   -- Chinese / English
            updated_at         timestamptz NOT NULL DEFAULT now(),
            updated_by         text NOT NULL DEFAULT 'migration'
        );

        CREATE TABLE sensing_baselines (
            device_id   text NOT NULL REFERENCES sensing_devices (device_id) ON DELETE CASCADE,
            slot        smallint NOT NULL CHECK (slot BETWEEN 0 AND 335),
            weeks       integer NOT NULL,            -- weeks with a reading in this slot
            uses        integer NOT NULL,            -- … of which with use
            p_use       double precision NOT NULL,   -- uses / weeks
            mean        double precision NOT NULL,   -- mean volume (m³) of the slot
            q90         double precision NOT NULL,   -- 90th percentile of the volume
            max         double precision NOT NULL,
            learned_at  timestamptz NOT NULL,        -- the end of the learning window
            PRIMARY KEY (device_id, slot)
        );

        CREATE TABLE sensing_absences (
            id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            device_id     text NOT NULL REFERENCES sensing_devices (device_id) ON DELETE CASCADE,
            start_at      timestamptz NOT NULL,
            end_at        timestamptz NOT NULL,
            reason        text NOT NULL DEFAULT '',
            announced_by  text NOT NULL,
            created_at    timestamptz NOT NULL DEFAULT now(),
            CHECK (end_at > start_at)
        );
        CREATE INDEX sensing_absences_device_idx ON sensing_absences (device_id, start_at, end_at);

        CREATE TABLE sensing_alerts (
            alert_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            device_id     text NOT NULL REFERENCES sensing_devices (device_id) ON DELETE CASCADE,
            rule_id       text NOT NULL REFERENCES sensing_rules (rule_id) ON UPDATE CASCADE,
            kind          text NOT NULL,
            severity      text NOT NULL,
            state         text NOT NULL DEFAULT 'open'
                          CHECK (state IN ('open', 'notified', 'acknowledged', 'visited', 'closed')),
            title         text NOT NULL,
            message       text NOT NULL,
            opened_at     timestamptz NOT NULL,
            updated_at    timestamptz NOT NULL,
            closed_at     timestamptz,
            window_start  timestamptz,
            window_end    timestamptz,
            evidence      jsonb NOT NULL DEFAULT '{}'::jsonb,
            community     text,
            CHECK ((state = 'closed') = (closed_at IS NOT NULL))
        );
        CREATE UNIQUE INDEX sensing_alerts_active_idx ON sensing_alerts (device_id, rule_id) WHERE state <> 'closed';
        CREATE INDEX sensing_alerts_state_idx ON sensing_alerts (state, opened_at DESC);
        CREATE INDEX sensing_alerts_community_idx ON sensing_alerts (community, opened_at DESC);
        CREATE INDEX sensing_alerts_device_idx ON sensing_alerts (device_id, rule_id, closed_at);

        CREATE TABLE sensing_alert_steps (
            alert_id  bigint NOT NULL REFERENCES sensing_alerts (alert_id) ON DELETE CASCADE,
            seq       integer NOT NULL,
            step      text NOT NULL CHECK (step IN ('open', 'notified', 'acknowledged', 'visited', 'closed')),
            at        timestamptz NOT NULL,
            author    text NOT NULL,
            note      text,
            PRIMARY KEY (alert_id, seq)
        );

        CREATE TABLE sensing_outbox (
            id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            alert_id         bigint NOT NULL REFERENCES sensing_alerts (alert_id) ON DELETE CASCADE,
            channel          text NOT NULL,           -- sms | webhook | …
            recipient_kind   text NOT NULL,           -- person | family | community
            recipient        text NOT NULL,           -- a phone number, 'community:<name>' …
            payload          jsonb NOT NULL,
            created_at       timestamptz NOT NULL DEFAULT now(),
            attempts         integer NOT NULL DEFAULT 0,
            next_attempt_at  timestamptz NOT NULL DEFAULT now(),
            sent_at          timestamptz,
            last_error       text
        );
        CREATE INDEX sensing_outbox_pending_idx ON sensing_outbox (next_attempt_at) WHERE sent_at IS NULL;
        CREATE INDEX sensing_outbox_alert_idx ON sensing_outbox (alert_id);
        """
    )
    op.execute(
        r"""
        INSERT INTO sensing_rules (rule_id, kind, device_type, observed_property, params, severity, notify, title, description)
        VALUES
        ('wm-inactivity', 'inactivity', 'water-meter', '用水量',
         '{"hours": 12, "min_total": 0.01, "baseline_guard": true}', 'critical', '{community,family}',
         '长时间未用水',
         '12 小时内用水量少于 0.01 m³：独居老人可能发生意外，通知社区和家属。'
         ' / Less than 0.01 m³ of water in 12 hours: alert the community and the family.'),
        ('wm-leak', 'continuous-use', 'water-meter', '用水量',
         '{"hours": 24, "min_per_slot": 0}', 'warning', '{person,family,community}',
         '疑似漏水',
         '连续 24 小时每个半小时都有用水（含平时夜间不用水的时段）：疑似漏水或水龙头未关。'
         ' / Use in every half-hour slot for 24 hours, the quiet night slots included: a leak or a tap left open.'),
        ('wm-unusual-silence', 'baseline', 'water-meter', '用水量',
         '{"alpha": 0.001, "min_hours": 3, "lookback_hours": 48, "min_use": 0}', 'warning', '{family,community}',
         '用水习惯异常',
         '按本人近几周的用水习惯（每周各半小时的用水概率），此段时间不用水极不寻常：比 12 小时规则更早告警；'
         '平时此时不用水（如夜间）则不告警。'
         ' / No use for longer than this person''s baseline (use by half-hour of the week) allows:'
         ' an alert before the 12-hour rule for a regular person, none in their usual quiet hours.'),
        ('mc-open', 'threshold', 'manhole-cover', '井盖开启',
         '{"op": "=", "value": true, "max_age_hours": 2}', 'critical', '{community}',
         '井盖开启',
         '井盖被打开或移位。 / The manhole cover is open.'),
        ('mc-tilt', 'threshold', 'manhole-cover', '倾角',
         '{"op": ">", "value": 10, "max_age_hours": 2}', 'warning', '{community}',
         '井盖倾斜',
         '井盖倾角大于 10°。 / The manhole cover tilts more than 10°.'),
        ('mc-water-level', 'threshold', 'manhole-cover', '井内水位',
         '{"op": ">", "value": 1.0, "max_age_hours": 2}', 'warning', '{community}',
         '井内水位过高',
         '井内水位高于 1.0 m：有冒溢风险。 / Water in the manhole above 1.0 m: it may overflow.'),
        ('mc-water-rise', 'rate-of-change', 'manhole-cover', '井内水位',
         '{"hours": 1, "max_delta": 0.5, "direction": "rise"}', 'warning', '{community}',
         '井内水位快速上涨',
         '1 小时内井内水位上涨超过 0.5 m。 / The water in the manhole rose more than 0.5 m in an hour.'),
        ('hp-low', 'threshold', 'hydrant-pressure', '水压',
         '{"op": "<", "value": 0.1, "max_age_hours": 2}', 'critical', '{community}',
         '消火栓水压过低',
         '消火栓水压低于 0.1 MPa：无法保障灭火用水。 / Hydrant pressure below 0.1 MPa.'),
        ('no-data', 'no-data', NULL, NULL,
         '{}', 'warning', '{community}',
         '设备离线',
         '连续 N 个上报周期（设备的 offline_after × expected_interval）未收到数据；数据恢复后自动关闭。'
         ' / Nothing received within N expected intervals (the device''s offline_after); closed by itself when data returns.');
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE sensing_outbox, sensing_alert_steps, sensing_alerts, sensing_absences, sensing_baselines,
                   sensing_rules;
        DROP FUNCTION sensing_slot_of_week(timestamptz);
        """
    )
