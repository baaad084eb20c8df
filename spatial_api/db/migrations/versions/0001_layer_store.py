"""The layer store: registry, changesets, versioned features (partitioned by layer).

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE layers (
            name            text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,47}$'),
            title_zh        text,
            title_en        text,
            geometry_family text NOT NULL CHECK (geometry_family IN ('Point', 'LineString', 'Polygon')),
            -- ordered list of {"name": ..., "type": ...}
            properties      jsonb NOT NULL DEFAULT '[]'::jsonb,
            key_field       text,
            access_level    text NOT NULL DEFAULT 'public'
                            CHECK (access_level IN ('public', 'internal', 'restricted')),
            description     text,
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now()
        );

        -- Transaction time: one row per write, with who, when, source and counts.
        CREATE TABLE changesets (
            id           bigserial PRIMARY KEY,
            layer        text NOT NULL REFERENCES layers (name),
            author       text NOT NULL,
            recorded_at  timestamptz NOT NULL DEFAULT now(),
            valid_from   timestamptz NOT NULL,
            mode         text NOT NULL,
            source       text,
            source_hash  text,
            counts       jsonb NOT NULL DEFAULT '{}'::jsonb,
            message      text
        );
        CREATE INDEX changesets_layer_idx ON changesets (layer, id);

        CREATE SEQUENCE feature_vid_seq AS bigint;

        -- Every version of every feature. Valid time [valid_from, valid_to) says when a version
        -- is true in the world; transaction time [tx_from, tx_to) says when the store knew it.
        -- Nothing is updated but the closing of a range (valid_to, tx_to, closed_by).
        CREATE TABLE features (
            layer         text NOT NULL,
            vid           bigint NOT NULL DEFAULT nextval('feature_vid_seq'),
            fid           text NOT NULL,
            valid_from    timestamptz NOT NULL,
            valid_to      timestamptz,
            tx_from       timestamptz NOT NULL,
            tx_to         timestamptz,
            changeset_id  bigint NOT NULL,
            closed_by     bigint,
            properties    jsonb NOT NULL DEFAULT '{}'::jsonb,
            geom          geometry(Geometry, 4490) NOT NULL,
            -- derived by the store's writer, never edited: a Web Mercator copy for tiles and
            -- md5(EWKB of geom || properties JSON) to find unchanged features on re-ingest.
            -- Computed client-side, in parallel with the server's COPY (see store/writer.py).
            geom_3857     geometry(Geometry, 3857) NOT NULL,
            content_hash  uuid NOT NULL,
            PRIMARY KEY (layer, vid),
            CHECK (valid_to IS NULL OR valid_to >= valid_from)
        ) PARTITION BY LIST (layer);
        ALTER SEQUENCE feature_vid_seq OWNED BY features.vid;

        -- at most one open (current) version per feature
        CREATE UNIQUE INDEX features_open_fid_idx ON features (layer, fid) WHERE valid_to IS NULL;
        CREATE INDEX features_fid_idx ON features (layer, fid, valid_from);
        CREATE INDEX features_geom_idx ON features USING gist (geom);
        CREATE INDEX features_geom_3857_idx ON features USING gist (geom_3857);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE features; DROP TABLE changesets; DROP TABLE layers;")
