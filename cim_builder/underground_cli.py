"""PLACEHOLDER (lead, issue 17): commands added to ``geotwin cim``."""

from __future__ import annotations


def register(cim_app) -> None:
    pass
