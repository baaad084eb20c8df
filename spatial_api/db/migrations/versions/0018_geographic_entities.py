"""Geographic entities (issue 17): stable codes for real objects, their representations and
their life (created, retired, split, merged), every change a changeset with valid time.

- ``entity_changesets``: one row per entity change (assign, split, merge, retire, link) — who,
  when recorded, valid from, counts. Not the layers' ``changesets``: those name a layer (NOT NULL,
  a foreign key to ``layers``), and an entity change is not a change of any one layer.
- ``entity_sequences``: the last sequence number issued per type; codes are
  ``<district 6 digits><type 2 letters><sequence 10 digits>`` and are never reused (the counter
  only grows; a retired entity keeps its code).
- ``entities``: code, type, name, valid range ``[valid_from, valid_to)``, the changesets that
  created and retired it. Nothing is deleted: retiring closes the range.
- ``entity_links``: code → representation, each with its own valid range and the changesets
  that opened and closed it: ``feature`` (source = layer, key = fid), ``bim_model`` (source =
  key = model id), ``bim_element`` (source = model id, key = GlobalId), ``sta_thing`` (source =
  'sta', key = Thing id). At most one open link per representation (a partial unique index): a
  representation belongs to one entity at a time. ``is_primary``: the feature that gives the
  entity its geometry (listings, geometric matching).
- ``entity_lineage``: parent → child, 'split' or 'merge', with valid time and changeset.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08
"""

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE entity_changesets (
            id           bigserial PRIMARY KEY,
            action       text NOT NULL CHECK (action IN ('assign', 'split', 'merge', 'retire', 'link', 'unlink')),
            layer        text,
            author       text NOT NULL,
            recorded_at  timestamptz NOT NULL DEFAULT now(),
            valid_from   timestamptz NOT NULL,
            counts       jsonb NOT NULL DEFAULT '{}'::jsonb,
            message      text
        );

        CREATE TABLE entity_sequences (
            type  text PRIMARY KEY,
            last  bigint NOT NULL DEFAULT 0 CHECK (last >= 0 AND last < 10000000000)
        );

        CREATE TABLE entities (
            code        text PRIMARY KEY CHECK (code ~ '^[0-9]{6}[A-Z]{2}[0-9]{10}$'),
            type        text NOT NULL,
            name        text,
            valid_from  timestamptz NOT NULL,
            valid_to    timestamptz,
            created_by  bigint NOT NULL REFERENCES entity_changesets (id),
            retired_by  bigint REFERENCES entity_changesets (id),
            CHECK (valid_to IS NULL OR valid_to >= valid_from)
        );
        CREATE INDEX entities_type_idx ON entities (type, code);

        CREATE TABLE entity_links (
            id          bigserial PRIMARY KEY,
            code        text NOT NULL REFERENCES entities (code),
            kind        text NOT NULL CHECK (kind IN ('feature', 'bim_model', 'bim_element', 'sta_thing')),
            source      text NOT NULL,
            key         text NOT NULL,
            is_primary  boolean NOT NULL DEFAULT false,
            valid_from  timestamptz NOT NULL,
            valid_to    timestamptz,
            created_by  bigint NOT NULL REFERENCES entity_changesets (id),
            closed_by   bigint REFERENCES entity_changesets (id),
            CHECK (valid_to IS NULL OR valid_to >= valid_from)
        );
        -- a representation belongs to at most one entity at a time
        CREATE UNIQUE INDEX entity_links_open_idx ON entity_links (kind, source, key) WHERE valid_to IS NULL;
        CREATE INDEX entity_links_ref_idx ON entity_links (kind, source, key, valid_from);
        CREATE INDEX entity_links_code_idx ON entity_links (code, valid_from);

        CREATE TABLE entity_lineage (
            parent        text NOT NULL REFERENCES entities (code),
            child         text NOT NULL REFERENCES entities (code),
            relation      text NOT NULL CHECK (relation IN ('split', 'merge')),
            valid_from    timestamptz NOT NULL,
            changeset_id  bigint NOT NULL REFERENCES entity_changesets (id),
            PRIMARY KEY (parent, child)
        );
        CREATE INDEX entity_lineage_child_idx ON entity_lineage (child);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE entity_lineage; DROP TABLE entity_links; DROP TABLE entities; "
               "DROP TABLE entity_sequences; DROP TABLE entity_changesets;")
