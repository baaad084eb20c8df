"""The web clients' room: ``/map``, ``/twin`` and ``/vendor`` — static folders, mounted last so
that no API route (``/twin/tilesets`` …) is shadowed by them."""

from __future__ import annotations

import web
from spatial_api.rooms import ORDER_STATIC, Room

ROOM = Room("web", web.install, ORDER_STATIC, "the map and twin web clients")
