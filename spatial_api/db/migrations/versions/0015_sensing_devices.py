"""Sensing devices registry and community scoping (issue 16) — being built.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from alembic import op  # noqa: F401

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
