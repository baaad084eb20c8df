"""PLACEHOLDER (lead, issue 17): replaced by the underground room's routes."""

from __future__ import annotations

from spatial_api.rooms import ORDER_ROOM, Room


def install(app, settings) -> None:
    pass


ROOM = Room("underground", install, ORDER_ROOM, "underground utilities and structures")
