"""The layer store: registry, versioned features and changesets. The ONLY code that writes features.

Public API::

    from spatial_api import store
    store.get_layer(conn, "land_use"); store.list_layers(conn)
    store.features(conn, "land_use", at=datetime(...)); store.count(...)
    store.diff(conn, "land_use", t1, t2); store.changesets(conn, "land_use")
    store.feature_history(conn, "land_use", fid)
    store.write_changeset(conn, layer, rows, mode=..., valid_from=..., author=..., source=...)
"""

from spatial_api.store.queries import (
    Diff,
    changesets,
    count,
    diff,
    feature_history,
    features,
    temporal_filter,
)
from spatial_api.store.registry import (
    ACCESS_LEVELS,
    LAYER_NAME_RE,
    Layer,
    check_layer_name,
    create_layer,
    get_layer,
    list_layers,
    partition_name,
    update_layer,
)
from spatial_api.store.types import GEOMETRY_FAMILIES, PROPERTY_TYPES, SQL_CASTS, StoreError
from spatial_api.store.writer import (
    DEFAULT_TOLERANCE_DEG,
    MODES,
    VersionConflict,
    close_features,
    FeatureRows,
    WriteResult,
    drop_orphan_partition,
    finish_changeset,
    latest_valid_from,
    matches_state,
    properties_to_json,
    write_changeset,
)

__all__ = [
    "ACCESS_LEVELS", "DEFAULT_TOLERANCE_DEG", "GEOMETRY_FAMILIES", "LAYER_NAME_RE", "PROPERTY_TYPES", "SQL_CASTS", "StoreError", "MODES", "VersionConflict", "close_features", "Diff", "FeatureRows", "Layer", "WriteResult", "changesets",
    "check_layer_name", "count", "create_layer", "diff", "feature_history", "features",
    "drop_orphan_partition", "finish_changeset", "get_layer", "latest_valid_from", "matches_state", "list_layers", "partition_name", "properties_to_json",
    "temporal_filter", "update_layer", "write_changeset",
]

# The imagery catalogue (collections and dated COG items): ``store.imagery.latest_path(conn, "dem")``.
from spatial_api.store import imagery  # noqa: E402

__all__ += ["imagery"]
