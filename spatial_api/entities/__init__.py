"""Geographic entities (地理实体, issue 17): one stable code per real object — building, parcel,
road, manhole, pipe segment, device, underground structure, water body — with its
representations (features of any layer, BIM models and elements, STA Things, and what rooms
contribute: the twin's prisms, the sensors) and its life (created, retired, split, merged), every
change a changeset with valid time (tables of migration 0018).

Public API::

    from spatial_api import entities
    entities.assign("buildings", entity_type="building")                 # new codes
    entities.assign("addresses", entity_type="building", key="building_id", ref_layer="buildings", match="key")
    entities.assign("buildings_2025", entity_type="building", match="geometry")
    entities.split(code, into=[("buildings", "B1a"), ("buildings", "B1b")], valid_from="2025-03-01")
    entities.merge([a, b], into=("buildings", "B9"), valid_from="2025-03-01")
    entities.retire(code, valid_from="2026-01-01")
    entities.entity_for_feature(conn, "buildings", "B1", at=None)
    entities.describe(conn, code, at, visible=lambda layer: True)
"""

from spatial_api.entities.core import (
    CODE_RE,
    DISTRICT_CODE,
    LINK_KINDS,
    MATCHES,
    TYPES,
    AssignReport,
    EntityError,
    assign,
    check_code,
    check_type,
    entity_for_feature,
    link,
    merge,
    retire,
    split,
)
from spatial_api.entities.read import describe, listing

__all__ = ["AssignReport", "CODE_RE", "DISTRICT_CODE", "EntityError", "LINK_KINDS", "MATCHES", "TYPES", "assign",
           "check_code", "check_type", "describe", "entity_for_feature", "link", "listing", "merge", "retire", "split"]
