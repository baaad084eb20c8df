"""OGC API – Features over the layer store (Part 1 core, Part 2 CRS by reference, Part 3
filtering with CQL2, Part 4 transactions) with time travel: ``datetime`` selects the versions
valid at a valid time; every feature's versions and the changes between two times have their own
resources. Mounted by the ``ogc`` room (spatial_api.ground, spatial_api.ogc.routes)."""
