"""Vector tiles: generalised geometries per zoom (issue 15).

``tile_generalisations`` holds, per feature version (layer, vid), the version's geometry prepared
for the low zooms of WebMercatorQuad — simplified, snapped to each zoom's pixel grid and made valid
there (ST_AsMVTGeom), in the tile coordinates (0…4096, y down, SRID 0) of its *home tile* at that
zoom, the tile holding the centre of its bounding box (``hx``, ``hy``: the home tile at zoom 13;
at zoom z it is ``hx >> (13 - z)``, ``hy >> (13 - z)``) — one column per prepared zoom (``z9`` …
``z13``; NULL: the version collapses below a pixel at that zoom), with the bounding box of its Web
Mercator geometry (``bbox``, the one spatial index) and its fid, temporal columns and properties
copied, so that a tile needs no join.
Partitioned by layer like ``features``; each partition (``tilegen_<layer>``) is created by
tiling/generalise.py when the layer is first generalised. ``tile_generalised`` records per layer
how far the generalisations go (the last changeset and version reflected) and by which rules: a
tile statement uses them only while they reflect the layer's latest changeset.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

#: the zooms prepared (tiling/generalise.py ZOOMS must match)
ZOOMS = (9, 10, 11, 12, 13)


def upgrade() -> None:
    columns = "".join(f"            z{z}            geometry,\n" for z in ZOOMS)
    op.execute(
        f"""
        CREATE TABLE tile_generalisations (
            layer          text NOT NULL,
            vid            bigint NOT NULL,
            fid            text NOT NULL,
            valid_from     timestamptz NOT NULL,
            valid_to       timestamptz,
            superseded_at  timestamptz,
            properties     jsonb NOT NULL,
            bbox           box NOT NULL,
            hx             integer NOT NULL,
            hy             integer NOT NULL,
{columns}            PRIMARY KEY (layer, vid)
        ) PARTITION BY LIST (layer);

        CREATE TABLE tile_generalised (
            layer              text PRIMARY KEY,
            rules              integer NOT NULL,
            through_changeset  bigint NOT NULL,
            through_vid        bigint NOT NULL,
            versions           bigint NOT NULL DEFAULT 0,
            seconds            double precision,
            updated_at         timestamptz NOT NULL DEFAULT now()
        );
        """
    )
    op.execute("CREATE INDEX tile_generalisations_bbox_idx ON tile_generalisations USING gist (bbox)")


def downgrade() -> None:
    op.execute("DROP TABLE tile_generalised; DROP TABLE tile_generalisations;")
