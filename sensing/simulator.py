"""(being built)"""


def simulate() -> None:
    """Publish live readings over MQTT (being built)."""
    raise SystemExit("not built yet")
