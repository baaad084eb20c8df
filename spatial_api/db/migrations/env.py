"""Alembic environment: every table lives in geotwin's schema (GEOTWIN_DB_SCHEMA)."""

from alembic import context
from sqlalchemy import create_engine, text

config = context.config
schema = config.attributes["schema"]


def run_migrations_online() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        # PostGIS may already be installed by an administrator (external databases).
        has_postgis = connection.execute(
            text("SELECT 1 FROM pg_extension WHERE extname = 'postgis'")
        ).scalar()
        if not has_postgis:
            connection.execute(text("CREATE EXTENSION IF NOT EXISTS postgis"))
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        connection.execute(text(f'SET search_path TO "{schema}", public'))
        connection.commit()
        context.configure(
            connection=connection,
            version_table_schema=schema,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("geotwin runs migrations online only: `geotwin db up`")
run_migrations_online()
