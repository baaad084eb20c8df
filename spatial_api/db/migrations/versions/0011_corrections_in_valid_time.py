"""Corrections in valid time (issue 14): a version the store no longer believes is superseded,
never deleted or rewritten.

A change valid from a date D inside a *closed* version [a, b) of a feature cannot be written by
closing a range, the only update the store makes: the version's valid range itself was wrong. It
is superseded (``superseded_at`` = the correction's transaction time, ``superseded_by`` = its
changeset) and replaced by what is believed now: a copy [a, D) and the correction [D, b).
As-known-at queries before the correction still see the superseded version.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: a catalogue-only change on every partition, no table rewrite.
    op.execute("ALTER TABLE features ADD COLUMN superseded_at timestamptz, ADD COLUMN superseded_by bigint")
    # the latest recorded change per layer (supervision's "inputs changed since" check)
    op.execute("CREATE INDEX IF NOT EXISTS changesets_layer_recorded_idx ON changesets (layer, recorded_at)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS changesets_layer_recorded_idx")
    op.execute("ALTER TABLE features DROP COLUMN superseded_by, DROP COLUMN superseded_at")
