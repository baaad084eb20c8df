"""Layers editable through the API (OGC API Features Part 4): a flag on the registry.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE layers ADD COLUMN editable boolean NOT NULL DEFAULT false")


def downgrade() -> None:
    op.execute("ALTER TABLE layers DROP COLUMN editable")
