"""PLACEHOLDER (lead, issue 17): routes added to the twin room."""

from __future__ import annotations

from fastapi import APIRouter


def router(settings) -> APIRouter:
    return APIRouter()
