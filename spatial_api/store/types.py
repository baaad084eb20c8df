"""The store's own vocabulary: what a layer's properties and geometries may be, how each
property type is cast in SQL, the access levels and write modes — and :class:`StoreError`, whose
messages name the problem in the store's words (a caller adds its own: the command line names the
flag to use, an HTTP route the parameter)."""

from __future__ import annotations

#: Property types known to the layer registry.
PROPERTY_TYPES = ("string", "integer", "number", "boolean", "date", "datetime")

#: Geometry families a layer can hold (multi-part variants belong to the family).
GEOMETRY_FAMILIES = ("Point", "LineString", "Polygon")

#: Who may see a layer (spatial_api.security maps roles onto these).
ACCESS_LEVELS = ("public", "internal", "restricted")

#: How a changeset relates to the layer's current state.
MODES = ("replace", "append", "upsert")

#: Property type → the SQL type its jsonb text is cast to (filters, sorting, typed tiles).
SQL_CASTS = {"string": "text", "integer": "bigint", "number": "double precision", "boolean": "boolean",
             "date": "date", "datetime": "timestamptz"}


class StoreError(Exception):
    """A request the store refuses; nothing was written.

    ``subject`` names what was wrong in the store's words (``access level``, ``mode``, ``layer
    name``, ``valid from`` …) and ``value`` the value given, so that a caller can restate the
    message in its own terms (``IngestError.from_store`` puts the command-line flag in front)."""

    def __init__(self, message: str, *, subject: str | None = None, value=None, detail: str | None = None):
        super().__init__(message)
        self.subject, self.value, self.detail = subject, value, detail

    @classmethod
    def about(cls, subject: str, value, detail: str) -> "StoreError":
        """``<subject> <value>: <detail>``, e.g. ``access level 'secret': choose one of …``."""
        return cls(f"{subject} {value!r}: {detail}", subject=subject, value=value, detail=detail)


__all__ = ["ACCESS_LEVELS", "GEOMETRY_FAMILIES", "MODES", "PROPERTY_TYPES", "SQL_CASTS", "StoreError"]
