"""(being built)"""

from fastapi import APIRouter


def router(settings) -> APIRouter:
    from sensing import alerts_api

    r = APIRouter()
    r.include_router(alerts_api.router(settings))
    return r
