"""Committed changes, announced.

Every changeset the store commits is announced twice:

- to every process, through PostgreSQL ``NOTIFY geotwin_changes`` (sent by
  :func:`spatial_api.store.finish_changeset` inside the writing transaction, so it is delivered
  only if and when the transaction commits) — the CLI's ingests reach the server this way;
- inside the process that wrote it, synchronously, through :func:`committed` — an edit made
  through the API has invalidated this process's caches before its HTTP response leaves.

Subscribers (the tile cache) must be idempotent: they may hear of a changeset both ways.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

CHANNEL = "geotwin_changes"

Subscriber = Callable[[str, str, int | None], None]  # (schema, layer, changeset id or None = the layer itself)
_subscribers: list[Subscriber] = []
_lock = threading.Lock()
log = logging.getLogger(__name__)


def subscribe(fn: Subscriber) -> None:
    with _lock:
        if fn not in _subscribers:
            _subscribers.append(fn)


def unsubscribe(fn: Subscriber) -> None:
    with _lock:
        if fn in _subscribers:
            _subscribers.remove(fn)


def committed(schema: str, layer: str, changeset_id: int | None) -> None:
    """Tell this process's subscribers that ``changeset_id`` of ``layer`` has been committed
    (``None``: the layer's registry entry changed — access level, schema, tile options)."""
    with _lock:
        subs = list(_subscribers)
    for fn in subs:
        fn(schema, layer, changeset_id)
