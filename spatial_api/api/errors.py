"""Errors of every HTTP route, in OGC API's exception JSON (``{"code", "description"}``), and the
handlers that turn exceptions into it — installed once for the whole application."""

from __future__ import annotations

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg import OperationalError
from psycopg.errors import QueryCanceled
from psycopg_pool import PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from spatial_api import db
from spatial_api.api import time as timepolicy


class ApiError(Exception):
    """An answer other than success: HTTP status, OGC exception code, a description naming the
    parameter or resource and what to do."""

    def __init__(self, status: int, code: str, description: str, headers: dict | None = None):
        super().__init__(description)
        self.status, self.code, self.description, self.headers = status, code, description, headers


def invalid_parameter(parameter: str, description: str) -> ApiError:
    """400 InvalidParameterValue, the parameter named first."""
    return ApiError(400, "InvalidParameterValue", f"{parameter}: {description}")


def not_found(description: str) -> ApiError:
    return ApiError(404, "NotFound", description)


def from_time_error(exc: timepolicy.TimeError) -> ApiError:
    return invalid_parameter(exc.parameter, exc.message)


_ROUTING_CODES = {400: "InvalidParameterValue", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
                  405: "MethodNotAllowed", 406: "NotAcceptable", 413: "PayloadTooLarge", 415: "UnsupportedMediaType"}


def error_shape(app: FastAPI, prefix: str, shape) -> None:
    """A room whose standard answers errors in another JSON shape (SensorThings: FROST-Server's
    ``{"code": 400, "type": "error", "message": …}``) registers it for its path prefix:
    ``shape(status, code, description) -> dict``. Every handler below then answers requests under
    that prefix in that shape, with the same status, headers and description."""
    shapes = getattr(app.state, "error_shapes", None)
    if shapes is None:
        shapes = app.state.error_shapes = []
    shapes.append((prefix, shape))


def error_body(request: Request, status: int, code: str, description: str) -> dict:
    for prefix, shape in getattr(request.app.state, "error_shapes", None) or ():
        if request.url.path.startswith(prefix):
            return shape(status, code, description)
    return {"code": code, "description": description}


def install_error_handlers(app: FastAPI) -> None:
    """Every error of the application in the exception JSON (called once by create_app)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body(request, exc.status, exc.code, exc.description), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(timepolicy.TimeError)
    async def _time_error(request: Request, exc: timepolicy.TimeError):
        return JSONResponse(error_body(request, 400, "InvalidParameterValue", str(exc)), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # Routing's own refusals (no such path, method not allowed) in the same exception JSON.
        description = str(exc.detail)
        if exc.status_code == 404 and description == "Not Found":
            description = (f"no resource at {request.url.path[:200]!r}; the API's resources are listed at / "
                           "and /openapi.json")
        elif exc.status_code == 405 and description == "Method Not Allowed":
            description = f"{request.method} is not allowed on {request.url.path[:200]!r}"
        return JSONResponse(error_body(request, exc.status_code, _ROUTING_CODES.get(exc.status_code, "Error"), description),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(psycopg.DataError)
    async def _bad_value(request: Request, exc: psycopg.DataError):
        # A value of the request that PostgreSQL cannot take (a text where a number is queried, a
        # number out of range, a NUL byte): the caller's mistake, not the server's.
        message = (exc.diag.message_primary if getattr(exc, "diag", None) else None) or str(exc)
        return JSONResponse(error_body(request, 400, "InvalidParameterValue",
                                  f"a value in the request does not fit: {message[:300]}"), status_code=400)

    @app.exception_handler(QueryCanceled)
    async def _too_long(request: Request, exc: QueryCanceled):
        return JSONResponse(error_body(request, 413, "RequestTooExpensive", "the request took longer than the "
                                  f"server allows ({db.API_STATEMENT_TIMEOUT}); narrow it (bbox, filter, limit)"),
                            status_code=413)

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def _database_down(request: Request, exc: Exception):
        # The database is restarting or unreachable: say so at once (the pool reconnects by itself).
        return JSONResponse(error_body(request, 503, "ServiceUnavailable", "the database is not reachable right "
                                  "now; retry in a few seconds"), status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', [])[1:]) or 'request'}: {err.get('msg')}"
            for err in exc.errors())
        return JSONResponse(error_body(request, 400, "InvalidParameterValue", problems), status_code=400)


__all__ = ["ApiError", "error_body", "error_shape", "from_time_error", "install_error_handlers", "invalid_parameter", "not_found"]
