"""Roles, what each may see and do. Pure data: no database, no web framework."""

from __future__ import annotations

ROLES = ("public", "external-platform", "community-worker", "planner", "land-officer", "gis-staff", "admin")
LEVELS = ("public", "internal", "restricted")

#: The access levels of layers, imagery collections and tilesets a role may see.
SEES: dict[str, frozenset[str]] = {
    "public": frozenset({"public"}),
    "external-platform": frozenset({"public", "internal"}),
    "community-worker": frozenset({"public", "internal"}),  # + the households of its own community (sensing)
    "planner": frozenset({"public", "internal"}),
    "land-officer": frozenset({"public", "internal", "restricted"}),
    "gis-staff": frozenset({"public", "internal", "restricted"}),
    "admin": frozenset({"public", "internal", "restricted"}),
}

#: Actions that change something, and the roles that may take them.
MAY: dict[str, frozenset[str]] = {
    "features:write": frozenset({"gis-staff", "admin"}),       # OGC API Part 4 edits
    "ingest": frozenset({"gis-staff", "admin"}),               # layers and imagery through the API
    "twin:build": frozenset({"gis-staff", "planner", "admin"}),
    "supervision:read": frozenset({"planner", "land-officer", "gis-staff", "admin"}),
    "supervision:run": frozenset({"land-officer", "admin"}),
    "cases:write": frozenset({"land-officer", "admin"}),
    "audit:read": frozenset({"admin"}),
    "keys:manage": frozenset({"admin"}),
    # sensing (issue 16): the pilot's households (a community worker: its own community only)
    "sensing:households": frozenset({"community-worker", "admin"}),
    "sensing:manage": frozenset({"gis-staff", "admin"}),       # the device registry, alert rules
    "sensing:write": frozenset({"gis-staff", "admin"}),        # SensorThings API writes
    "sensing:alerts": frozenset({"community-worker", "admin"}),  # work alerts (acknowledge, visit, close)
}


def can_see(role: str, level: str) -> bool:
    return level in SEES.get(role, SEES["public"])


def may(role: str, action: str) -> bool:
    if action not in MAY:
        raise KeyError(f"unknown action {action!r}")
    return role in MAY[action]


def highest(roles) -> str | None:
    """The most capable of several role names (an OIDC token may carry several); None if none known."""
    known = [r for r in roles if r in ROLES]
    return max(known, key=ROLES.index) if known else None
