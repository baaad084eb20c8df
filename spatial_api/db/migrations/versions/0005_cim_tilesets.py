"""CIM twin state: built 3D Tiles tilesets, their tiles' content hashes (incremental rebuilds)
and the registered BIM (IFC) models.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE cim_tilesets (
            id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
            title       text,
            out_dir     text NOT NULL,
            as_of       timestamptz,
            built_at    timestamptz NOT NULL DEFAULT now(),
            layout      jsonb NOT NULL,
            params      jsonb NOT NULL DEFAULT '{}'::jsonb,
            stats       jsonb NOT NULL DEFAULT '{}'::jsonb
        )
        """
    )
    op.execute(
        """
        CREATE TABLE cim_tiles (
            tileset_id     text NOT NULL REFERENCES cim_tilesets (id) ON DELETE CASCADE,
            tile_key       text NOT NULL,
            uri            text NOT NULL,
            content_hash   text NOT NULL,
            feature_count  integer NOT NULL,
            bytes          bigint NOT NULL,
            region         double precision[] NOT NULL,
            transform      double precision[] NOT NULL,
            built_at       timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tileset_id, tile_key)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE cim_models (
            id             text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
            name           text,
            source_path    text NOT NULL,
            stored_path    text NOT NULL,
            sha256         text NOT NULL,
            ifc_schema     text NOT NULL,
            georef         jsonb NOT NULL,
            warnings       jsonb NOT NULL DEFAULT '[]'::jsonb,
            footprint      geometry(Polygon, 4490) NOT NULL,
            element_count  integer NOT NULL,
            registered_at  timestamptz NOT NULL DEFAULT now(),
            registered_by  text,
            active         boolean NOT NULL DEFAULT true
        )
        """
    )
    op.execute("CREATE INDEX cim_models_footprint_gist ON cim_models USING gist (footprint)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS cim_models")
    op.execute("DROP TABLE IF EXISTS cim_tiles")
    op.execute("DROP TABLE IF EXISTS cim_tilesets")
