"""The imagery catalogue: collections (ortho, satellite, DEM …) and their dated items (COGs).

A tile names a collection or an item of this catalogue, never a path: the only files the tile
server opens are the ``cog_path`` of these rows (see tiling/imagery.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE imagery_collections (
            id              text PRIMARY KEY CHECK (id ~ '^[a-z][a-z0-9_]{0,47}$'),
            title_zh        text,
            title_en        text,
            kind            text NOT NULL
                            CHECK (kind IN ('ortho', 'satellite', 'aerial', 'dem', 'dsm', 'other')),
            description     text,
            access_level    text NOT NULL DEFAULT 'public'
                            CHECK (access_level IN ('public', 'internal', 'restricted')),
            default_format  text NOT NULL DEFAULT 'png'
                            CHECK (default_format IN ('png', 'jpg', 'webp')),
            created_at      timestamptz NOT NULL DEFAULT now(),
            updated_at      timestamptz NOT NULL DEFAULT now()
        );

        -- One dated image of a collection: a Cloud-Optimized GeoTIFF in the managed folder.
        CREATE TABLE imagery_items (
            collection      text NOT NULL REFERENCES imagery_collections (id),
            item_id         text NOT NULL CHECK (item_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'),
            datetime        timestamptz NOT NULL,
            footprint       geometry(Polygon, 4490) NOT NULL,
            resolution_m    double precision NOT NULL CHECK (resolution_m > 0),
            width           integer NOT NULL,
            height          integer NOT NULL,
            bands           integer NOT NULL CHECK (bands > 0),
            dtype           text NOT NULL,
            nodata          double precision,
            crs             text NOT NULL,
            -- zoom range per tile matrix set id: {"WebMercatorQuad": [min, max], ...}
            zooms           jsonb NOT NULL DEFAULT '{}'::jsonb,
            cog_path        text NOT NULL,
            file_size       bigint NOT NULL,
            sha256          text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
            source_path     text,
            source_sha256   text CHECK (source_sha256 ~ '^[0-9a-f]{64}$'),
            converted       boolean NOT NULL DEFAULT false,
            created_at      timestamptz NOT NULL DEFAULT now(),
            author          text NOT NULL,
            PRIMARY KEY (collection, item_id),
            UNIQUE (collection, datetime)
        );
        CREATE INDEX imagery_items_footprint_idx ON imagery_items USING gist (footprint);
        CREATE INDEX imagery_items_time_idx ON imagery_items (collection, datetime DESC);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE imagery_items; DROP TABLE imagery_collections;")
