"""PLACEHOLDER (lead, issue 17): this room's representations of a geographic entity."""

from __future__ import annotations


def representations(conn, entity, at) -> list[dict]:
    return []
