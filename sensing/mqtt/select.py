"""``$select`` in SensorThings MQTT topics (OGC 18-088 §14.2.1): a subscriber of
``v1.1/Observations?$select=result,phenomenonTime`` receives only those properties.

A plain broker delivers by topic equality, so somebody must publish to that very topic; FROST-Server
does it inside its embedded broker, which sees every SUBSCRIBE. geotwin's mosquitto loads a small
plugin (``sensing/mqtt/plugin/geotwin_select.c``, built by :func:`build_plugin`) that, on each
SUBSCRIBE whose filter holds ``?$select=``, publishes a retained message to
``$geotwin/select/<filter>`` (``%``, ``+`` and ``#`` written ``%25``, ``%2B``, ``%23``). Every
publisher of STA notifications — the ingestion worker, the API's notifier, the announcer —
subscribes to ``$geotwin/select/#`` (:data:`ANNOUNCE_FILTER`; retained: it learns the select lists
asked for before it started, across broker restarts) and, for each notification it publishes to a
topic ``T`` matched by a select filter's part before ``?``, also publishes the selected properties
to ``T?$select=…`` (:meth:`SelectTopics.variants`). Names follow ``$select`` over HTTP: ``id`` is
``@iot.id``, a navigation property gives its ``@iot.navigationLink``; unknown names are left out.

A select list once asked for stays known (MQTT has no "last subscriber gone" signal a broker plugin
can rely on across persistent sessions): its notifications cost one more PUBLISH each, to a topic
perhaps nobody listens to any more. ``$expand`` / ``$filter`` in topics are not part of STA 1.1's
MQTT extension.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from pathlib import Path

from paho.mqtt.client import topic_matches_sub

log = logging.getLogger("geotwin.sensing.mqtt")

PREFIX = "$geotwin/select/"
ANNOUNCE_FILTER = PREFIX + "#"
PLUGIN_SOURCE = Path(__file__).resolve().parent / "plugin" / "geotwin_select.c"
PLUGIN_NAME = "geotwin_select.so"


def decode(announcement: str) -> str:
    """The subscription filter named by a ``$geotwin/select/…`` topic."""
    return announcement[len(PREFIX):].replace("%23", "#").replace("%2B", "+").replace("%25", "%")


def parse_filter(topic_filter: str) -> tuple[str, str, list[str]] | None:
    """``v1.1/Observations?$select=id,result`` → (base filter, query suffix ``?$select=id,result``,
    names ``["id", "result"]``); None when it is not a select filter."""
    base, sep, query = topic_filter.partition("?")
    if not sep or not base:
        return None
    names: list[str] = []
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == "$select":
            names += [n.strip() for n in value.split(",") if n.strip()]
    return (base, "?" + query, names) if names else None


def select_json(entity: dict, names: list[str]) -> dict:
    """The members of an entity's JSON that ``$select=names`` keeps, in the entity's order."""
    wanted = set(names)
    out = {}
    for key, value in entity.items():
        if key == "@iot.id":
            keep = "id" in wanted
        elif key == "@iot.selfLink":
            keep = "@iot.selfLink" in wanted
        elif key.endswith("@iot.navigationLink"):
            keep = key[:-len("@iot.navigationLink")] in wanted
        else:
            keep = key in wanted
        if keep:
            out[key] = value
    return out


class SelectTopics:
    """The select filters announced by the broker's plugin; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._filters: dict[str, tuple[str, str, list[str]]] = {}

    def __bool__(self) -> bool:
        return bool(self._filters)

    def add(self, announcement: str, payload: bytes = b"1") -> bool:
        """Take a message of ``$geotwin/select/#``; True when it named a new filter (an empty
        retained payload forgets it)."""
        if not announcement.startswith(PREFIX):
            return False
        topic_filter = decode(announcement)
        with self._lock:
            if not payload:
                return self._filters.pop(topic_filter, None) is not None
            if topic_filter in self._filters:
                return False
            parsed = parse_filter(topic_filter)
            if parsed is None:
                return False
            self._filters[topic_filter] = parsed
        log.info("mqtt: notifications also go to %s", topic_filter)
        return True

    def variants(self, topic: str, entity: dict) -> list[tuple[str, dict]]:
        """(topic, JSON) of the selected notifications that go with one published to ``topic``."""
        if not self._filters:
            return []
        with self._lock:
            filters = list(self._filters.values())
        out = []
        for base, suffix, names in filters:
            if base == topic or (("+" in base or "#" in base) and topic_matches_sub(base, topic)):
                out.append((topic + suffix, select_json(entity, names)))
        return out


def build_plugin(folder: Path) -> Path | None:
    """The broker plugin, compiled into ``folder`` when missing or older than its source (needs a C
    compiler and Debian's mosquitto-dev + libmosquitto-dev headers); None, with a warning, when it
    cannot be built — the broker then runs without it and ``$select`` topics get nothing."""
    target = folder / PLUGIN_NAME
    if target.exists() and target.stat().st_mtime >= PLUGIN_SOURCE.stat().st_mtime:
        return target
    cc = shutil.which("cc") or shutil.which("gcc")
    missing = [h for h in ("/usr/include/mosquitto_plugin.h", "/usr/include/mosquitto.h") if not Path(h).exists()]
    if cc is None or missing:
        log.warning("mqtt: the $select plugin is not built (%s): `make setup` installs gcc, mosquitto-dev and "
                    "libmosquitto-dev; $select topics get no notifications meanwhile",
                    "no C compiler" if cc is None else "missing " + ", ".join(missing))
        return None
    tmp = target.with_suffix(".tmp.so")
    proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(tmp), str(PLUGIN_SOURCE)],
                          capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        log.warning("mqtt: the $select plugin did not compile: %s", (proc.stderr or proc.stdout).strip()[:2000])
        tmp.unlink(missing_ok=True)
        return None
    tmp.replace(target)
    return target


__all__ = ["ANNOUNCE_FILTER", "PREFIX", "SelectTopics", "build_plugin", "decode", "parse_filter",
           "select_json"]
