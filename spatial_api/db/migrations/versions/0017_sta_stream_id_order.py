"""Observations of one stream in id order (issue 16): ``(stream_id, id)`` on every partition.

``Datastreams(x)/Observations`` without ``$orderby`` is ordered by id (FROST-Server's default,
and the last key of every order). Without this index PostgreSQL answered ``stream_id = x ORDER BY
id LIMIT n`` by walking the id index of every partition and filtering on the stream — 0.5–1 s
on 10 million observations (bench/sensing_store.py); with it the page is one index range.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX sta_observations_stream_id_idx ON sta_observations (stream_id, id)")


def downgrade() -> None:
    op.execute("DROP INDEX sta_observations_stream_id_idx")
