"""Access control: API keys (hashed) with roles and rate limits; the audit log.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE api_keys (
            id            bigserial PRIMARY KEY,
            key_id        text NOT NULL UNIQUE,          -- the public part of the key (gtk_<key_id>_<secret>)
            secret_sha256 text NOT NULL,                 -- sha256 of the whole key; the key itself is never stored
            name          text NOT NULL,
            role          text NOT NULL CHECK (role IN ('public', 'external-platform', 'planner',
                                                        'land-officer', 'gis-staff', 'admin')),
            rate_per_min  integer NOT NULL DEFAULT 6000 CHECK (rate_per_min > 0),
            created_at    timestamptz NOT NULL DEFAULT now(),
            created_by    text NOT NULL,
            revoked_at    timestamptz,
            revoked_by    text
        )
        """
    )
    op.execute(
        """
        CREATE TABLE audit_log (
            id         bigserial PRIMARY KEY,
            at         timestamptz NOT NULL DEFAULT clock_timestamp(),
            principal  text NOT NULL,       -- key name, OIDC subject, or 'anonymous'
            role       text NOT NULL,
            via        text NOT NULL,       -- key | oidc | anonymous | cli
            action     text NOT NULL,       -- write | read-restricted | key-create | key-revoke | …
            target     text NOT NULL,       -- e.g. collections/parcels/items/P001, tiles/eco_redline/14/…
            method     text,
            status     integer,
            client     text,                -- the caller's address
            detail     jsonb NOT NULL DEFAULT '{}'::jsonb
        )
        """
    )
    op.execute("CREATE INDEX audit_log_at ON audit_log (at)")
    op.execute("CREATE INDEX audit_log_principal ON audit_log (principal, at)")


def downgrade() -> None:
    op.execute("DROP TABLE audit_log")
    op.execute("DROP TABLE api_keys")
