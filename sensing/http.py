"""What the /sensing routes share: JSON responses (UTF-8 as is, ISO 8601 times, intervals in
seconds) and domain functions run on a pooled connection with their errors turned into HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from fastapi.responses import Response

from spatial_api import db
from spatial_api.api.errors import ApiError


def _default(v):
    if hasattr(v, "isoformat"):  # datetime, date, time
        return v.isoformat()
    if hasattr(v, "total_seconds"):
        return int(v.total_seconds())
    raise TypeError(f"{type(v).__name__} is not JSON")


def json_response(data: Any, status: int = 200, media_type: str = "application/json") -> Response:
    return Response(json.dumps(data, ensure_ascii=False, default=_default), status_code=status, media_type=media_type)


def call(settings, errors: Mapping[type, Callable[[Exception], ApiError]], fn, *args, write: bool = False,
         **kwargs):
    """``fn(conn, …)`` on a pooled connection, committed when ``write``; an exception of a type
    in ``errors`` (checked in order) becomes the ApiError its function makes."""
    try:
        with db.pool(settings).connection() as conn:
            out = fn(conn, *args, **kwargs)
            if write:
                conn.commit()
            return out
    except tuple(errors) as exc:
        for kind, make in errors.items():
            if isinstance(exc, kind):
                raise make(exc) from None
        raise
