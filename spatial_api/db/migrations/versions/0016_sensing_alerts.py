"""Sensing alert rules, baselines, absences, alerts, notification outbox (issue 16) — being built.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from alembic import op  # noqa: F401

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
