"""Place-name and address search: a derived lookup table (geocode_index) and its state.

The store stays the only writer of features. ``geocode_index`` holds one row per *current*
feature (valid_to IS NULL) of the layers place_names, addresses, streets and communities,
rebuilt from the store by ``spatial_api.geocode.refresh`` whenever those layers have a newer
changeset than ``geocode_state`` records. It can be dropped and rebuilt at any time.

pg_trgm (postgresql-contrib; a trusted extension) gives the trigram GIN index used for
substring (LIKE '%..%') and fuzzy (word similarity) search of queries of 3+ characters. It is
created in ``public`` so that every geotwin schema (production, tests) finds its operators on
the search path (``<schema>, public``) and dropping a schema never drops the extension.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;

        CREATE TABLE geocode_index (
            layer         text NOT NULL,
            fid           text NOT NULL,
            kind          text NOT NULL,     -- place kind, 'address', 'street', 'community'
            name          text NOT NULL,     -- display: place name, full address, street / community name
            search        text NOT NULL,     -- normalised (NFKC, lower case, no blanks, no 深圳市/龙岗区 prefix)
            short         text,              -- addresses: road + door number + building (五和大道123号3栋)
            street        text,
            community     text,
            road          text,
            door_number   text,
            door_no       integer,           -- the digits of the door number (123号 -> 123)
            building      text,
            code          text,              -- streets / communities: statistical code
            parent_code   text,              -- communities: the street's code
            rank_base     smallint NOT NULL, -- importance: 0 street, 1 community, 2-4 places, 5 address
            changeset_id  bigint NOT NULL,
            geom          geometry(Point, 4490) NOT NULL,  -- the point (point on surface for polygons)
            area          geometry(Geometry, 4490),        -- streets / communities: the polygon
            PRIMARY KEY (layer, fid)
        );
        -- substring and fuzzy search (3+ characters)
        CREATE INDEX geocode_index_search_trgm ON geocode_index USING gin (search public.gin_trgm_ops);
        -- prefix search (any length, ordered)
        CREATE INDEX geocode_index_search_prefix ON geocode_index (search text_pattern_ops);
        CREATE INDEX geocode_index_short_prefix ON geocode_index (short text_pattern_ops)
            WHERE short IS NOT NULL;
        -- the small set of named things (everything but addresses), scanned in rank order
        CREATE INDEX geocode_index_named ON geocode_index (rank_base, length(search))
            WHERE layer <> 'addresses';
        -- structured address look-ups
        CREATE INDEX geocode_index_road_door ON geocode_index (road text_pattern_ops, door_no)
            WHERE layer = 'addresses';
        CREATE INDEX geocode_index_door ON geocode_index (door_no) WHERE layer = 'addresses';
        -- reverse geocoding
        CREATE INDEX geocode_index_addr_geom ON geocode_index USING gist (geom) WHERE layer = 'addresses';
        CREATE INDEX geocode_index_area ON geocode_index USING gist (area) WHERE area IS NOT NULL;

        -- the latest changeset of each source layer the index reflects
        CREATE TABLE geocode_state (
            layer         text PRIMARY KEY,
            changeset_id  bigint NOT NULL,
            refreshed_at  timestamptz NOT NULL DEFAULT now()
        );
        """
    )


def downgrade() -> None:
    # pg_trgm is left installed: other schemas of the database may use it.
    op.execute("DROP TABLE geocode_state; DROP TABLE geocode_index;")
