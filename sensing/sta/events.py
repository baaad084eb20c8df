"""What happened to SensorThings entities, for whoever listens in the same process (the MQTT
notifier publishes it to subscribers of ``v1.1/…`` topics). Writers call :func:`emit` after their
transaction committed; listeners must not raise (a failing listener is logged, never the writer's
problem)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("geotwin.sensing")


@dataclass(frozen=True)
class Change:
    op: str            # "create" | "update" | "delete"
    set_name: str      # e.g. "Observations"
    id: int
    #: the entity as served (its JSON object, self links included) — None for a delete
    entity: dict | None = None
    #: names of the properties changed by an update (None: unknown / all)
    changed: tuple[str, ...] | None = None


_listeners: list[Callable[[Change], None]] = []


def subscribe(fn: Callable[[Change], None]) -> Callable[[], None]:
    _listeners.append(fn)
    return lambda: _listeners.remove(fn) if fn in _listeners else None


def emit(change: Change) -> None:
    for fn in list(_listeners):
        try:
            fn(change)
        except Exception:  # a listener's failure is not the writer's
            log.exception("sensing: listener %r failed on %s", fn, change.op)
