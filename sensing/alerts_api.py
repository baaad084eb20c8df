"""(being built)"""

from fastapi import APIRouter


def router(settings) -> APIRouter:
    return APIRouter()
