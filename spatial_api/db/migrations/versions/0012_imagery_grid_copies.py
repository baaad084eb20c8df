"""Imagery: web-optimised copies per served tile grid (issue 15).

- ``imagery_item_grids``: per item and tile grid (``WebMercatorQuad``, ``CGCS2000Quad``), a copy of
  the item's COG warped once at ingest onto that grid (rio-cogeo, tiles and overviews aligned with
  the grid's tiles), and the zoom levels it holds. A tile of that grid at one of those zooms is then
  one block read with no warping (tiling/imagery.py). Deleted with the item.
- ``imagery_collections.version``: bumped by triggers whenever a collection, one of its items or
  one of their copies changes (any writer, SQL included). The imagery tile cache keys its tiles by
  it and checks it on every hit, so a tile rendered before a change is never served after it.
- The default tile format of photographic collections (ortho, satellite, aerial) becomes JPEG.
  No code path ever set ``default_format`` to anything but the column's default ``png``, so every
  such row still holds that default, not a choice.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE imagery_item_grids (
            collection  text NOT NULL,
            item_id     text NOT NULL,
            tms         text NOT NULL CHECK (tms ~ '^[A-Za-z0-9_.-]{1,64}$'),
            cog_path    text NOT NULL,
            minzoom     integer NOT NULL CHECK (minzoom >= 0),
            maxzoom     integer NOT NULL CHECK (maxzoom >= minzoom),
            file_size   bigint NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (collection, item_id, tms),
            FOREIGN KEY (collection, item_id) REFERENCES imagery_items (collection, item_id) ON DELETE CASCADE
        );
        CREATE INDEX imagery_item_grids_path_idx ON imagery_item_grids (cog_path);

        ALTER TABLE imagery_collections ADD COLUMN version bigint NOT NULL DEFAULT 0;

        -- Any change of a collection's row bumps its version (unless the statement set it itself).
        CREATE FUNCTION imagery_collection_version() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.version IS NOT DISTINCT FROM OLD.version THEN
                NEW.version := OLD.version + 1;
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER imagery_collections_version BEFORE UPDATE ON imagery_collections
            FOR EACH ROW EXECUTE FUNCTION imagery_collection_version();

        -- Any change of an item or of a grid copy bumps its collection's version (the collections
        -- table of the changed table's own schema, whatever the writer's search_path).
        CREATE FUNCTION imagery_catalogue_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            bump text := format('UPDATE %I.imagery_collections SET version = version + 1 WHERE id = $1',
                                TG_TABLE_SCHEMA);
        BEGIN
            IF TG_OP <> 'INSERT' THEN
                EXECUTE bump USING OLD.collection;
            END IF;
            IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.collection IS DISTINCT FROM OLD.collection) THEN
                EXECUTE bump USING NEW.collection;
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER imagery_items_changed AFTER INSERT OR UPDATE OR DELETE ON imagery_items
            FOR EACH ROW EXECUTE FUNCTION imagery_catalogue_changed();
        CREATE TRIGGER imagery_item_grids_changed AFTER INSERT OR UPDATE OR DELETE ON imagery_item_grids
            FOR EACH ROW EXECUTE FUNCTION imagery_catalogue_changed();

        UPDATE imagery_collections SET default_format = 'jpg'
        WHERE kind IN ('ortho', 'satellite', 'aerial') AND default_format = 'png';
        """
    )


def downgrade() -> None:
    op.execute(
        """
        UPDATE imagery_collections SET default_format = 'png'
        WHERE kind IN ('ortho', 'satellite', 'aerial') AND default_format = 'jpg';
        DROP TRIGGER imagery_items_changed ON imagery_items;
        DROP TABLE imagery_item_grids;
        DROP FUNCTION imagery_catalogue_changed();
        DROP TRIGGER imagery_collections_version ON imagery_collections;
        DROP FUNCTION imagery_collection_version();
        ALTER TABLE imagery_collections DROP COLUMN version;
        """
    )
