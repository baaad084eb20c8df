"""MapLibre styles of the district, with glyphs and sprites served locally (no internet).

- :mod:`styles.documents`: the style documents (MapLibre style spec v8), generated per request:
  one per thematic layer (``land_use``, ``farmland``, ``basic_farmland``, ``forest``,
  ``eco_redline``, ``approvals``, ``parcels``, ``buildings`` and ``buildings_3d``
  (fill-extrusion), ``roads``, ``place_names``, ``streets``, ``communities``, ``imagery``,
  ``terrain``) and the composite ``district``. Sources point at this server with absolute URLs
  built from the request's base URL; ``?datetime=`` is passed into every tile URL.
- :mod:`styles.palette`: colours generated from ``landuse-classes.json`` (land use by GB/T 21010
  code through its 2023 planning class) and the palettes derived from them.
- :mod:`styles.glyphs`, :mod:`styles.sprites`, :mod:`styles.assets`: glyph PBFs (fontnik over
  Debian's Noto Sans) and sprite sheets (maki icons via resvg), built by ``make assets``.
- :mod:`styles.routes`: ``/styles``, ``/styles/{id}``, ``/styles/glyphs/...``, ``/styles/sprites/...``.

Chinese labels: the server ships the Latin glyph ranges only (Noto Sans Regular / Bold /
Italic). CJK characters are drawn by the browser's own fonts through MapLibre's
``localIdeographFontFamily`` — a *map option*, not a style property, so the map client must set
it when it creates the map::

    new maplibregl.Map({container: "map", style: "/styles/district",
                        localIdeographFontFamily: "'Noto Sans CJK SC', 'Source Han Sans SC', "
                                                  + "'Microsoft YaHei', 'PingFang SC', sans-serif"});

(the same value is in every style's ``metadata["geotwin:localIdeographFontFamily"]`` and in the
``/styles`` list). With the option set, MapLibre never requests the CJK glyph ranges; any range
it does request exists as a file (ranges a font lacks are valid, empty PBFs — a 404 would make
MapLibre drop the labels of the whole tile).
"""
