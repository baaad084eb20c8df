"""Credentials never stored or logged: redaction of query strings and of the server's request log.

A key may arrive in the URL (``?api_key=`` — the documented way for tile URLs, and the only one
QGIS 3.22 has), so every query string that is kept anywhere (the audit log, the access log) goes
through :func:`query` first. Parameters named like a credential (``api_key``, ``apikey``,
``access_token``, ``token``, ``key``, …; any case, percent-encoded names too) keep their name and
lose their value; any other value that is a geotwin API key (``gtk_…``) is dropped as well. Every
other parameter is kept exactly as sent, so the log still says what was asked.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

REDACTED = "REDACTED"
#: Query parameters whose value is a credential (compared case-insensitively, after decoding).
SECRET_PARAMETERS = frozenset({
    "api_key", "apikey", "api-key", "x-api-key", "key", "token", "access_token", "id_token", "refresh_token",
    "auth", "authorization", "password", "secret", "client_secret",
})
#: A geotwin API key anywhere in a value (also percent-encoded underscores).
_KEY_IN_VALUE = re.compile(r"gtk(?:_|%5f)[0-9a-f]{10}(?:_|%5f)", re.IGNORECASE)


def query(text: str) -> str:
    """``text`` (a raw query string, without ``?``) with every credential value replaced."""
    if not text:
        return text
    parts = text.split("&")
    changed = False
    for i, part in enumerate(parts):
        name, eq, value = part.partition("=")
        if _KEY_IN_VALUE.search(part):  # a key, wherever it stands (also a bare ?gtk_…)
            parts[i] = f"{name}{eq}{REDACTED}" if value and not _KEY_IN_VALUE.search(name) else REDACTED
            changed = True
            continue
        if not value:
            continue
        plain = unquote_plus(name).strip().lower()
        if plain in SECRET_PARAMETERS:
            parts[i] = f"{name}{eq}{REDACTED}"
            changed = True
    return "&".join(parts) if changed else text


def target(text: str) -> str:
    """A path with an optional query string (``/tiles/…?api_key=…``), its query redacted."""
    path, mark, q = text.partition("?")
    return f"{path}?{query(q)}" if mark else text


def detail(value: dict) -> dict:
    """An audit entry's ``detail`` with its ``query`` redacted (entries recorded by older servers)."""
    q = value.get("query") if isinstance(value, dict) else None
    if isinstance(q, str):
        clean = query(q)
        if clean != q:
            return {**value, "query": clean}
    return value


class AccessLogFilter(logging.Filter):
    """Redacts the request line of uvicorn's access log (``uvicorn.access``; its arguments are
    client, method, path with query, HTTP version, status) — and of any record given to it whose
    string arguments hold a query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            clean = tuple(target(a) if isinstance(a, str) and "?" in a else a for a in args)
            if clean != args:
                record.args = clean
        elif isinstance(record.msg, str) and "?" in record.msg and not args:
            record.msg = " ".join(target(w) if "?" in w else w for w in record.msg.split(" "))
        return True


def install_log_filter(logger_name: str = "uvicorn.access") -> None:
    """Put :class:`AccessLogFilter` on ``logger_name`` (once per process)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, AccessLogFilter) for f in logger.filters):
        logger.addFilter(AccessLogFilter())
