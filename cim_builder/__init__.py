"""The CIM builder: GIS footprints and BIM models merged into one OGC 3D Tiles 1.1 twin.

    geotwin cim build [--as-of DATE] [--out DIR] [--dem PATH]      # buildings layer → tileset
    geotwin cim add-ifc FILE [--at LON,LAT[,H]] [--rotation DEG] [--crs CRS]

Modules: ``geo`` (CRSs, ECEF, east-north-up frames, heights, DEM), ``lod1`` (footprints →
prisms, vectorised), ``glb`` (glTF 2.0 binary with EXT_mesh_features + EXT_structural_metadata),
``tileset`` (quadtree layout, tileset.json, structural check), ``ifc`` (IfcOpenShell:
georeferencing, elements, metadata, the model registry), ``build`` (the incremental build),
``routes`` (``/twin/tilesets``), ``cli``. ``validate_gltf.mjs`` runs the Khronos validator.
"""

from cim_builder.geo import DEFAULT_GEOID_SEPARATION, CimError

__all__ = ["CimError", "DEFAULT_GEOID_SEPARATION"]
