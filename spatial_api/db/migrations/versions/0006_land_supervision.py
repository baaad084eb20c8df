"""Land post-approval supervision: runs, findings, cases (with their event log and files).

The rules read the layer store (features as of the run's date) and never write it; everything
they produce lives in these tables.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        -- m² → {"m2", "ha" (公顷), "mu" (亩 = 10000/15 m²)}
        CREATE FUNCTION sup_area_units(m2 double precision) RETURNS jsonb
            LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
            SELECT jsonb_build_object('m2', round(m2::numeric, 2),
                                      'ha', round((m2 / 10000.0)::numeric, 4),
                                      'mu', round((m2 * 15.0 / 10000.0)::numeric, 3))
        $$;

        -- One evaluation of (a subset of) the rule library as of a date.
        CREATE TABLE sup_runs (
            id              bigserial PRIMARY KEY,
            as_of           date NOT NULL,
            known_at        timestamptz,          -- NULL: as the store knows it now
            rules           text[] NOT NULL,
            parameters      jsonb NOT NULL,       -- the effective parameters of every rule run
            layers          jsonb NOT NULL,       -- layer name → {changeset_id, valid_from, features}
            author          text NOT NULL,
            started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
            finished_at     timestamptz,
            seconds         double precision,
            previous_run_id bigint REFERENCES sup_runs (id),
            counts          jsonb NOT NULL DEFAULT '{}'::jsonb,
            notes           jsonb NOT NULL DEFAULT '[]'::jsonb
        );

        CREATE TABLE sup_findings (
            id            bigserial PRIMARY KEY,
            run_id        bigint NOT NULL REFERENCES sup_runs (id) ON DELETE CASCADE,
            rule          text NOT NULL,
            subject_id    text NOT NULL,         -- parcel id (R1–R12) or approval id (R13)
            parcel_id     text,
            severity      text NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
            status        text NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'persisting')),
            message       text NOT NULL,
            measures      jsonb NOT NULL,        -- the values that decided it
            sources       jsonb NOT NULL DEFAULT '{}'::jsonb,  -- feature versions (vid) used
            area_m2       double precision,      -- area concerned (parcel, overlap, out-of-bounds part …)
            street_code   text,
            street_name   text,
            land_use_code text,
            geom          geometry(Geometry, 4490),   -- evidence: overlap, out-of-bounds part, parcel …
            geom_3857     geometry(Geometry, 3857),
            UNIQUE (run_id, rule, subject_id)
        );
        CREATE INDEX sup_findings_run_idx ON sup_findings (run_id, rule);
        CREATE INDEX sup_findings_subject_idx ON sup_findings (subject_id);
        CREATE INDEX sup_findings_geom_3857_idx ON sup_findings USING gist (geom_3857);

        -- Findings of the previous run that this run no longer finds.
        CREATE TABLE sup_resolved (
            run_id      bigint NOT NULL REFERENCES sup_runs (id) ON DELETE CASCADE,
            finding_id  bigint NOT NULL REFERENCES sup_findings (id) ON DELETE CASCADE,
            PRIMARY KEY (run_id, finding_id)
        );

        CREATE TABLE sup_cases (
            id             bigserial PRIMARY KEY,
            title          text NOT NULL,
            parcel_id      text,
            assignee       text,
            due_date       date,
            status         text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
            disposition    text CHECK (disposition IN ('fee_charged', 'land_recovered', 'rectified', 'exempted')),
            disposition_reason text,
            fee_cny        numeric(16, 2),
            created_by     text NOT NULL,
            created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
            closed_by      text,
            closed_at      timestamptz,
            CHECK ((status = 'closed') = (disposition IS NOT NULL))
        );

        CREATE TABLE sup_case_findings (
            case_id     bigint NOT NULL REFERENCES sup_cases (id),
            finding_id  bigint NOT NULL REFERENCES sup_findings (id),
            PRIMARY KEY (case_id, finding_id)
        );

        -- Every step of a case, append-only: who did what when.
        CREATE TABLE sup_case_events (
            id            bigserial PRIMARY KEY,
            case_id       bigint NOT NULL REFERENCES sup_cases (id),
            kind          text NOT NULL CHECK (kind IN ('opened', 'assigned', 'inspection', 'note', 'closed', 'reopened')),
            author        text NOT NULL,
            at            timestamptz NOT NULL DEFAULT clock_timestamp(),
            details       jsonb NOT NULL DEFAULT '{}'::jsonb,
            inspected_on  date,
            location      geometry(Point, 4490)
        );
        CREATE INDEX sup_case_events_case_idx ON sup_case_events (case_id, id);

        CREATE TABLE sup_case_files (
            id            bigserial PRIMARY KEY,
            event_id      bigint NOT NULL REFERENCES sup_case_events (id),
            file_name     text NOT NULL,
            content_type  text NOT NULL,
            size_bytes    bigint NOT NULL,
            sha256        text NOT NULL,
            data          bytea NOT NULL
        );
        CREATE INDEX sup_case_files_event_idx ON sup_case_files (event_id);
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE sup_case_files;
        DROP TABLE sup_case_events;
        DROP TABLE sup_case_findings;
        DROP TABLE sup_cases;
        DROP TABLE sup_resolved;
        DROP TABLE sup_findings;
        DROP TABLE sup_runs;
        DROP FUNCTION sup_area_units(double precision);
        """
    )
