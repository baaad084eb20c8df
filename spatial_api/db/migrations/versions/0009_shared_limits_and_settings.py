"""Rate-limit counters shared by every server process, and operator settings kept in the store.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Requests counted per caller (key id or client address) and fixed window, summed over every
    # worker and replica. UNLOGGED: counters are worth nothing after a crash, and need no WAL.
    op.execute(
        """
        CREATE UNLOGGED TABLE rate_counters (
            who        text NOT NULL,          -- 'key:<key_id>', 'anon:<address>', 'fail:<address>'
            window_at  timestamptz NOT NULL,   -- start of the counting window
            n          integer NOT NULL DEFAULT 0,
            PRIMARY KEY (who, window_at)
        )
        """
    )
    op.execute("CREATE INDEX rate_counters_window ON rate_counters (window_at)")
    # Operator settings (`geotwin config set NAME VALUE`): one JSON value per name.
    op.execute(
        """
        CREATE TABLE settings (
            name        text PRIMARY KEY,
            value       jsonb NOT NULL,
            updated_at  timestamptz NOT NULL DEFAULT now(),
            updated_by  text NOT NULL
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE settings")
    op.execute("DROP TABLE rate_counters")
