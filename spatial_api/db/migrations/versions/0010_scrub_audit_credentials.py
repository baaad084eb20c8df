"""Audit entries written before credentials were redacted (issue 12, item 1) lose them: every
stored query string goes through the same redaction as new entries.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import json

from alembic import op
from sqlalchemy import text

from spatial_api.security.redact import query as redact_query

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def scrub(conn) -> int:
    """Redact the query string of every audit entry that holds one; returns how many changed."""
    rows = conn.execute(text("SELECT id, detail->>'query' FROM audit_log WHERE detail ? 'query' "
                             "AND detail->>'query' <> ''")).fetchall()
    changed = 0
    for entry_id, raw in rows:
        clean = redact_query(raw)
        if clean != raw:
            conn.execute(text("UPDATE audit_log SET detail = jsonb_set(detail, '{query}', CAST(:q AS jsonb)) "
                              "WHERE id = :id"), {"q": json.dumps(clean), "id": entry_id})
            changed += 1
    return changed


def upgrade() -> None:
    scrub(op.get_bind())


def downgrade() -> None:
    pass  # a removed credential cannot be put back (nor should it be)
