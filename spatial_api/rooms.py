"""Rooms plug into the house through entry points (pyproject.toml), as pytest plugins and
TiTiler extensions do: the ground floor (``spatial_api``) imports no room; it discovers them.

- ``geotwin.routes``: each entry names a :class:`Room` — its ``install(app, settings)`` mounts the
  room's HTTP routes; ``order`` says where it goes (lower first; the web clients' static folders
  last, after every API route they might shadow). Ties go by name.
- ``geotwin.commands``: each entry names a Typer app, added to ``geotwin`` under the entry's name.
- ``geotwin.ingest``: each entry names a command function, added to ``geotwin ingest`` under the
  entry's name (``geotwin ingest pipes`` comes from the underground room).
- ``geotwin.representations``: each entry names a function ``(conn, entity, at) -> list[dict]``
  giving a geographic entity's representations that the room holds (the twin's prisms and BIM
  models, the sensing room's Things); ``/entities/{code}`` gathers them.

A third-party package adds a room by declaring the same entry points; nothing here changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable

ROUTES_GROUP = "geotwin.routes"
COMMANDS_GROUP = "geotwin.commands"
INGEST_GROUP = "geotwin.ingest"
REPRESENTATIONS_GROUP = "geotwin.representations"

#: Conventional places in the mounting order.
ORDER_GROUND, ORDER_ROOM, ORDER_STATIC = 0, 100, 1000


class RoomError(RuntimeError):
    """A room that cannot be loaded: the message names the entry point and what to do."""


@dataclass(frozen=True)
class Room:
    """What a room declares: its name, its installer and its place in the mounting order."""

    name: str
    install: Callable[[Any, Any], None]  # install(app, settings)
    order: int = ORDER_ROOM
    description: str = ""


def _entries(group: str) -> list:
    return sorted(entry_points(group=group), key=lambda ep: ep.name)


def _load(ep) -> Any:
    try:
        return ep.load()
    except Exception as exc:  # an entry point that does not import: name it, do not start half a server
        raise RoomError(f"entry point {ep.group}:{ep.name} = {ep.value!r} cannot be loaded: {exc}. "
                        "Reinstall geotwin (`make setup`, or `pip install -e .`) after changing entry points.") from exc


def rooms() -> list[Room]:
    """Every room declared under ``geotwin.routes``, in mounting order."""
    found = []
    for ep in _entries(ROUTES_GROUP):
        room = _load(ep)
        if not isinstance(room, Room):
            raise RoomError(f"entry point {ROUTES_GROUP}:{ep.name} = {ep.value!r} is a {type(room).__name__}, "
                            "not a spatial_api.rooms.Room")
        found.append(room)
    if not found:
        raise RoomError(f"no room is declared under the entry-point group {ROUTES_GROUP!r}: geotwin is not "
                        "installed as a package. Run `make setup` (or `pip install -e .`).")
    return sorted(found, key=lambda r: (r.order, r.name))


def command_groups() -> list[tuple[str, Any]]:
    """(name, Typer app) of every ``geotwin.commands`` entry, by name."""
    return [(ep.name, _load(ep)) for ep in _entries(COMMANDS_GROUP)]


def ingest_commands() -> list[tuple[str, Any]]:
    """(name, command function) of every ``geotwin.ingest`` entry, by name."""
    return [(ep.name, _load(ep)) for ep in _entries(INGEST_GROUP)]


def representation_providers() -> list[tuple[str, Callable]]:
    """(room name, provider) of every ``geotwin.representations`` entry, by name."""
    return [(ep.name, _load(ep)) for ep in _entries(REPRESENTATIONS_GROUP)]


__all__ = ["COMMANDS_GROUP", "INGEST_GROUP", "REPRESENTATIONS_GROUP", "ingest_commands", "representation_providers", "ORDER_GROUND", "ORDER_ROOM", "ORDER_STATIC", "ROUTES_GROUP", "Room", "RoomError",
           "command_groups", "rooms"]
