"""``geotwin mqtt up`` as a function: the local broker's configuration, its users (from
``mqtt_credentials``: the service user made when missing, the password file and the ACL written)
and its process — idempotent."""

from __future__ import annotations

from sensing.mqtt import credentials
from sensing.mqtt.broker import LocalBroker
from spatial_api.config import Settings


def up(settings: Settings | None = None, conn=None, *, timeout: float = 30,
       worker_session: str | None = None) -> tuple[LocalBroker, bool]:
    """Write the configuration, the service user and the credential files; start mosquitto unless
    it runs (then reload its users). Returns (the broker, whether it was started). ``conn``: a
    connection to the schema whose users the broker serves (default: a new one from settings)."""
    broker = LocalBroker(settings)
    broker.prepare()
    own = conn is None
    if own:
        from spatial_api import db

        conn = db.connect(broker.settings)
    try:
        broker.write_state(conn.execute("SELECT current_schema()").fetchone()[0])
        credentials.ensure_service_user(conn, broker)
        conn.commit()
        credentials.write_files(conn, broker)
    finally:
        if own:
            conn.close()
    return broker, broker.start(timeout=timeout, worker_session=worker_session)


__all__ = ["up"]
