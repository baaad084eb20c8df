"""MapLibre style documents (style spec v8), generated per request from the layers the store
holds and the request's base URL.

A *group* is the drawing of one thematic layer (its MapLibre layers and labels); a *style* is a
list of groups. Thematic styles draw one group over a plain background; ``district`` draws every
group whose layer exists, bodies bottom to top and all labels last, so no line covers a label.
Every URL is absolute on this server; ``datetime`` goes into every tile URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import quote

from styles import palette, sprites

FONT = ["Noto Sans Regular"]
FONT_BOLD = ["Noto Sans Bold"]
FONT_ITALIC = ["Noto Sans Italic"]
#: What the map client should pass as the ``localIdeographFontFamily`` map option (CJK labels are
#: drawn with the browser's fonts; the server ships Latin glyph ranges only).
LOCAL_IDEOGRAPH_FONT_FAMILY = "'Noto Sans CJK SC', 'Source Han Sans SC', 'Microsoft YaHei', 'PingFang SC', sans-serif"
HALO = "#ffffff"
TEXT = "#333333"


@dataclass
class Context:
    base: str  # scheme://host[:port][/root], no trailing slash
    datetime: str | None = None  # already validated
    layers: dict[str, dict] = field(default_factory=dict)  # present layer name → registry row
    imagery: bool = False  # the imagery API is mounted
    bounds: list[float] | None = None  # lon/lat box to centre on when there is no ``home``
    #: the map's first view (spatial_api.settings_store.home_view): {"center": [lon, lat], "zoom": z,
    #: "bbox": [w, s, e, n] | None, "source": how it was chosen}
    home: dict | None = None

    def query(self, **params: str) -> str:
        if self.datetime:
            params["datetime"] = self.datetime
        if not params:
            return ""
        return "?" + "&".join(f"{k}={quote(v, safe=':')}" for k, v in params.items())

    def vector(self, layer: str) -> dict:
        return {"type": "vector", "url": f"{self.base}/tiles/{quote(layer, safe='')}/tilejson.json{self.query()}"}

    def imagery_tilejson(self, collection: str, **params: str) -> str:
        """TileJSON of an imagery collection; the imagery API carries ``params`` (algorithm,
        datetime) into its tile URLs ``.../tiles/WebMercatorQuad/{z}/{x}/{y}.{jpg|png}?...``."""
        return f"{self.base}/imagery/collections/{collection}/tilejson.json{self.query(**params)}"


@dataclass
class Drawing:
    sources: dict
    bodies: list[dict]
    labels: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Group:
    id: str
    requires: str  # a store layer name, or "@imagery" for the imagery API
    title_zh: str
    title_en: str
    draw: Callable[[Context], Drawing]


def datetime_param(text: str, instant: datetime) -> str:
    """The ``datetime`` put into tile URLs: as given, except that a value with a UTC offset is
    written as the same instant in UTC (``…Z``). A ``+08:00`` survives our own URL encoding, but a
    TileJSON that copies it into its tile template unencoded would turn the ``+`` into a space."""
    text = text.strip()
    if re.search(r"[+-]\d\d:?\d\d$", text) and "T" in text.upper():
        return instant.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    return text


def _zoom(base: float, *stops) -> list:
    return ["interpolate", ["exponential", base], ["zoom"], *stops]


def _label_paint(colour: str = TEXT, halo: float = 1.5) -> dict:
    return {"text-color": colour, "text-halo-color": HALO, "text-halo-width": halo}


# -- groups ---------------------------------------------------------------------------------------


def _land_use(ctx: Context) -> Drawing:
    src = "land_use"
    return Drawing({src: ctx.vector(src)}, [
        {"id": "land_use-fill", "type": "fill", "source": src, "source-layer": src,
         "paint": {"fill-color": palette.landuse_colour_expression("dlbm"),
                   "fill-opacity": _zoom(1, 10, 0.9, 16, 0.75)}},
        {"id": "land_use-outline", "type": "line", "source": src, "source-layer": src, "minzoom": 14,
         "paint": {"line-color": "#ffffff", "line-opacity": 0.6, "line-width": _zoom(1.5, 14, 0.3, 18, 1.2)}},
    ], [
        {"id": "land_use-label", "type": "symbol", "source": src, "source-layer": src, "minzoom": 16,
         "layout": {"text-field": ["get", "dlmc"], "text-font": FONT, "text-size": 10, "text-max-width": 6},
         "paint": _label_paint("#555555", 1.2)},
    ])


def _farmland(ctx: Context) -> Drawing:
    src = "farmland"
    base = palette.class_colour("耕地")
    water = palette.class_colour("陆地水域")
    shades = ["match", ["to-string", ["get", "dlbm"]],
              "0101", palette.mix(base, water, 0.3),  # 水田 paddy: towards water blue
              "0102", palette.mix(base, water, 0.15),  # 水浇地 irrigated
              palette.darken(base, 0.08)]  # 0103 旱地 dry
    return Drawing({src: ctx.vector(src)}, [
        {"id": "farmland-fill", "type": "fill", "source": src, "source-layer": src,
         "paint": {"fill-color": shades, "fill-opacity": 0.9}},
        {"id": "farmland-outline", "type": "line", "source": src, "source-layer": src, "minzoom": 12,
         "paint": {"line-color": palette.darken(base, 0.35), "line-width": _zoom(1.5, 12, 0.4, 18, 1.5)}},
    ], [
        {"id": "farmland-label", "type": "symbol", "source": src, "source-layer": src, "minzoom": 16,
         "layout": {"text-field": ["get", "dlmc"], "text-font": FONT, "text-size": 10},
         "paint": _label_paint("#6b6b3a", 1.2)},
    ])


def _basic_farmland(ctx: Context) -> Drawing:
    src = "basic_farmland"
    c = palette.BASIC_FARMLAND
    return Drawing({src: ctx.vector(src)}, [
        {"id": "basic_farmland-fill", "type": "fill", "source": src, "source-layer": src,
         "paint": {"fill-color": c, "fill-opacity": 0.25}},
        {"id": "basic_farmland-hatch", "type": "fill", "source": src, "source-layer": src, "minzoom": 12,
         "paint": {"fill-pattern": "hatch-basic-farmland", "fill-opacity": 0.8}},
        {"id": "basic_farmland-outline", "type": "line", "source": src, "source-layer": src,
         "paint": {"line-color": palette.darken(c, 0.15), "line-width": _zoom(1.5, 10, 0.8, 18, 2.5)}},
    ])


def _forest(ctx: Context) -> Drawing:
    src = "forest"
    base = palette.class_colour("林地")
    return Drawing({src: ctx.vector(src)}, [
        {"id": "forest-fill", "type": "fill", "source": src, "source-layer": src,
         "paint": {"fill-color": ["match", ["get", "lz"], "公益林", palette.darken(base, 0.12), base],
                   "fill-opacity": 0.75}},
        {"id": "forest-outline", "type": "line", "source": src, "source-layer": src, "minzoom": 12,
         "paint": {"line-color": palette.darken(base, 0.35), "line-width": _zoom(1.5, 12, 0.4, 18, 1.5)}},
    ], [
        {"id": "forest-label", "type": "symbol", "source": src, "source-layer": src, "minzoom": 16,
         "layout": {"text-field": ["get", "dlmc"], "text-font": FONT, "text-size": 10},
         "paint": _label_paint(palette.darken(base, 0.5), 1.2)},
    ])


def _eco_redline(ctx: Context) -> Drawing:
    src = "eco_redline"
    red = palette.RED_LINE
    return Drawing({src: ctx.vector(src)}, [
        {"id": "eco_redline-hatch", "type": "fill", "source": src, "source-layer": src,
         "paint": {"fill-pattern": "hatch-redline", "fill-opacity": 0.55}},
        {"id": "eco_redline-line", "type": "line", "source": src, "source-layer": src,
         "layout": {"line-join": "round"},
         "paint": {"line-color": red, "line-width": _zoom(1.5, 10, 1.5, 18, 4)}},
    ], [
        {"id": "eco_redline-label", "type": "symbol", "source": src, "source-layer": src, "minzoom": 12,
         "layout": {"text-field": ["get", "name"], "text-font": FONT_BOLD, "text-size": 12, "text-max-width": 8},
         "paint": _label_paint(palette.darken(red, 0.2))},
    ])


def _approvals(ctx: Context) -> Drawing:
    src = "approvals"
    colours: list = ["match", ["get", "batch_type"]]
    for kind, colour in palette.APPROVAL_TYPES.items():
        colours += [kind, colour]
    colours.append("#555555")
    return Drawing({src: ctx.vector(src)}, [
        {"id": "approvals-fill", "type": "fill", "source": src, "source-layer": src,
         "paint": {"fill-color": colours, "fill-opacity": 0.12}},
        {"id": "approvals-line", "type": "line", "source": src, "source-layer": src,
         "paint": {"line-color": colours, "line-width": _zoom(1.5, 10, 1, 18, 2.5), "line-dasharray": [3, 2]}},
    ], [
        {"id": "approvals-label", "type": "symbol", "source": src, "source-layer": src, "minzoom": 14,
         "layout": {"text-field": ["get", "approval_id"], "text-font": FONT, "text-size": 11},
         "paint": _label_paint(colours)},
    ])


def _parcels(ctx: Context) -> Drawing:
    src = "parcels"
    line = palette.PARCEL_LINE
    return Drawing({src: ctx.vector(src)}, [
        {"id": "parcels-fill", "type": "fill", "source": src, "source-layer": src,
         "paint": {"fill-color": palette.landuse_colour_expression("land_use_code"), "fill-opacity": 0.35}},
        {"id": "parcels-line", "type": "line", "source": src, "source-layer": src,
         "paint": {"line-color": line, "line-width": _zoom(1.5, 11, 0.8, 18, 2.5)}},
    ], [
        {"id": "parcels-label", "type": "symbol", "source": src, "source-layer": src, "minzoom": 14,
         "layout": {"text-field": ["format", ["get", "parcel_id"], {"text-font": ["literal", FONT_BOLD]},
                                   "\n", {},
                                   ["coalesce", ["get", "project_name"], ["get", "name"], ""],
                                   {"font-scale": 0.85}],
                    "text-font": FONT, "text-size": 11, "text-max-width": 10},
         "paint": _label_paint(palette.darken(line, 0.2))},
    ])


def _building_colour() -> list:
    expr: list = ["match", ["get", "use"]]
    for use, colour in palette.building_colours().items():
        expr += [use, colour]
    expr.append(palette.BUILDING_BASE)
    return expr


def _building_height() -> list:
    return ["coalesce", ["get", "height_m"], ["*", ["coalesce", ["get", "floors"], 1], 3]]


def _buildings(ctx: Context) -> Drawing:
    src = "buildings"
    return Drawing({src: ctx.vector(src)}, [
        {"id": "buildings-fill", "type": "fill", "source": src, "source-layer": src, "minzoom": 13,
         "paint": {"fill-color": _building_colour(), "fill-opacity": _zoom(1, 13, 0.6, 16, 0.95)}},
        {"id": "buildings-outline", "type": "line", "source": src, "source-layer": src, "minzoom": 15,
         "paint": {"line-color": palette.darken(palette.BUILDING_BASE, 0.3), "line-width": 0.6}},
    ])


def _buildings_3d(ctx: Context) -> Drawing:
    src = "buildings"
    return Drawing({src: ctx.vector(src)}, [
        {"id": "buildings_3d-extrusion", "type": "fill-extrusion", "source": src, "source-layer": src,
         "minzoom": 13,
         "paint": {"fill-extrusion-color": _building_colour(), "fill-extrusion-height": _building_height(),
                   "fill-extrusion-base": 0, "fill-extrusion-opacity": 0.9}},
    ])


def _roads(ctx: Context) -> Drawing:
    src = "roads"
    bodies: list[dict] = []
    classes = list(palette.ROAD_CLASSES.items())
    for name, (fill, casing, w10, w18, minzoom) in reversed(classes):  # least important drawn first
        slug = f"c{classes.index((name, palette.ROAD_CLASSES[name]))}"
        flt = ["==", ["get", "road_class"], name]
        common = {"source": src, "source-layer": src, "minzoom": minzoom, "filter": flt,
                  "layout": {"line-cap": "round", "line-join": "round"},
                  "metadata": {"geotwin:road_class": name}}
        bodies.append({"id": f"roads-{slug}-casing", "type": "line", **common,
                       "paint": {"line-color": casing, "line-width": _zoom(1.5, 10, w10 + 0.8, 18, w18 + 3)}})
        bodies.append({"id": f"roads-{slug}-fill", "type": "line", **common,
                       "paint": {"line-color": fill, "line-width": _zoom(1.5, 10, w10, 18, w18)}})
    label = {"id": "roads-label", "type": "symbol", "source": src, "source-layer": src, "minzoom": 13,
             "filter": ["has", "name"],
             "layout": {"symbol-placement": "line", "text-field": ["get", "name"], "text-font": FONT,
                        "text-size": _zoom(1, 13, 11, 18, 14), "symbol-spacing": 300, "text-max-angle": 30,
                        "text-rotation-alignment": "map", "text-pitch-alignment": "viewport"},
             "paint": _label_paint("#4a4a4a", 2)}
    return Drawing({src: ctx.vector(src)}, bodies, [label])


def _pipes(ctx: Context) -> Drawing:
    """Pipe segments coloured by type (width grows with the diameter / section), manholes as
    rings in their type's colour where the points layer is present."""
    src = "pipe_segments"
    size = ["coalesce", ["get", "diameter_mm"], ["get", "width_mm"], 300]
    sources = {src: ctx.vector(src)}
    bodies = [
        {"id": "pipes-line", "type": "line", "source": src, "source-layer": src, "minzoom": 13,
         "layout": {"line-cap": "round", "line-join": "round"},
         "paint": {"line-color": palette.pipe_colour_expression(),
                   "line-width": ["interpolate", ["linear"], ["zoom"],
                                  13, 0.6, 16, ["+", 1, ["/", size, 400]], 19, ["+", 2, ["/", size, 150]]]}},
    ]
    labels = [
        {"id": "pipes-label", "type": "symbol", "source": src, "source-layer": src, "minzoom": 17,
         "layout": {"symbol-placement": "line", "text-font": FONT, "text-size": 10, "symbol-spacing": 250,
                    "text-field": ["concat", ["get", "type"], " ",
                                   ["case", ["has", "diameter_mm"], ["concat", "DN", ["to-string", ["get", "diameter_mm"]]],
                                    ["concat", ["to-string", ["get", "width_mm"]], "×",
                                     ["to-string", ["get", "height_mm"]]]]]},
         "paint": _label_paint(palette.darken(palette.PIPE_UNKNOWN, 0.3), 1.5)},
    ]
    if "pipe_points" in ctx.layers:
        pts = "pipe_points"
        sources[pts] = ctx.vector(pts)
        bodies.append({"id": "pipes-manhole", "type": "circle", "source": pts, "source-layer": pts, "minzoom": 16,
                       "filter": ["==", ["get", "is_manhole"], True],
                       "paint": {"circle-radius": _zoom(1.5, 16, 2.5, 19, 6), "circle-color": "#ffffff",
                                 "circle-stroke-color": palette.pipe_colour_expression(),
                                 "circle-stroke-width": _zoom(1, 16, 1, 19, 2)}})
    return Drawing(sources, bodies, labels)


def _basements(ctx: Context) -> Drawing:
    src = "basements"
    fill = palette.BASEMENT_FILL
    return Drawing({src: ctx.vector(src)}, [
        {"id": "basements-fill", "type": "fill", "source": src, "source-layer": src, "minzoom": 13,
         "paint": {"fill-color": fill, "fill-opacity": 0.25}},
        {"id": "basements-line", "type": "line", "source": src, "source-layer": src, "minzoom": 13,
         "paint": {"line-color": palette.darken(fill, 0.2), "line-width": 1.2, "line-dasharray": [3, 2]}},
    ], [
        {"id": "basements-label", "type": "symbol", "source": src, "source-layer": src, "minzoom": 16,
         "layout": {"text-field": ["coalesce", ["get", "name"], ["get", "use"], ""], "text-font": FONT,
                    "text-size": 10},
         "paint": _label_paint(palette.darken(fill, 0.4))},
    ])


#: place-name tiers: (id suffix, kinds, minzoom, text size, text colour)
_PLACE_TIERS = [
    ("major", ["landmark", "station", "mountain"], 11, 13, None),
    ("public", ["hospital", "school", "park", "community_centre"], 13, 12, None),
    ("areas", ["village", "residential", "industrial_park"], 14, 11, None),
    ("poi", ["poi"], 15, 11, None),
]


def _place_names(ctx: Context) -> Drawing:
    src = "place_names"
    icon: list = ["match", ["get", "kind"]]
    colour: list = ["match", ["get", "kind"]]
    for kind, (_, badge) in sprites.PLACE_ICONS.items():
        icon += [kind, sprites.icon_name(kind)]
        colour += [kind, palette.darken(badge, 0.25)]
    icon.append(sprites.icon_name("poi"))
    colour.append(TEXT)
    labels = []
    for suffix, kinds, minzoom, size, _ in _PLACE_TIERS:
        labels.append({
            "id": f"place_names-{suffix}", "type": "symbol", "source": src, "source-layer": src,
            "minzoom": minzoom, "filter": ["match", ["get", "kind"], kinds, True, False],
            "layout": {"icon-image": icon, "icon-size": 1, "text-field": ["get", "name"], "text-font": FONT,
                       "text-size": size, "text-anchor": "top", "text-offset": [0, 1.0], "text-max-width": 8,
                       "text-optional": True},
            "paint": _label_paint(colour)})
    labels.append({
        "id": "place_names-water", "type": "symbol", "source": src, "source-layer": src, "minzoom": 11,
        "filter": ["match", ["get", "kind"], ["river", "reservoir"], True, False],
        "layout": {"text-field": ["get", "name"], "text-font": FONT_ITALIC, "text-size": 13,
                   "text-letter-spacing": 0.2},
        "paint": _label_paint(palette.WATER_TEXT)})
    return Drawing({src: ctx.vector(src)}, [], labels)


def _streets(ctx: Context) -> Drawing:
    src = "streets"
    return Drawing({src: ctx.vector(src)}, [
        {"id": "streets-line", "type": "line", "source": src, "source-layer": src,
         "layout": {"line-join": "round"},
         "paint": {"line-color": palette.STREET_LINE, "line-width": _zoom(1.2, 9, 1.2, 16, 3),
                   "line-dasharray": [4, 2], "line-opacity": 0.85}},
    ], [
        {"id": "streets-label", "type": "symbol", "source": src, "source-layer": src, "minzoom": 9, "maxzoom": 16,
         "layout": {"text-field": ["get", "name"], "text-font": FONT_BOLD, "text-size": _zoom(1, 9, 12, 14, 17),
                    "text-letter-spacing": 0.3},
         "paint": _label_paint(palette.darken(palette.STREET_LINE, 0.2), 2)},
    ])


def _communities(ctx: Context) -> Drawing:
    src = "communities"
    return Drawing({src: ctx.vector(src)}, [
        {"id": "communities-line", "type": "line", "source": src, "source-layer": src, "minzoom": 11,
         "paint": {"line-color": palette.COMMUNITY_LINE, "line-width": _zoom(1.2, 11, 0.6, 16, 1.5),
                   "line-dasharray": [1, 2]}},
    ], [
        {"id": "communities-label", "type": "symbol", "source": src, "source-layer": src, "minzoom": 13,
         "layout": {"text-field": ["get", "name"], "text-font": FONT, "text-size": 12},
         "paint": _label_paint(palette.darken(palette.COMMUNITY_LINE, 0.3))},
    ])


def _imagery(ctx: Context) -> Drawing:
    src = {"type": "raster", "url": ctx.imagery_tilejson("ortho", format="jpg"), "tileSize": 256}
    return Drawing({"ortho": src}, [{"id": "imagery-ortho", "type": "raster", "source": "ortho",
                                     "paint": {"raster-fade-duration": 0}}])


def dem_source(ctx: Context) -> dict:
    # TileJSON of the imagery API: its zoom range and bounds come from the catalogue (so the client
    # overzooms a 10 m DEM instead of asking for z17 tiles); its tiles are
    # .../dem/tiles/WebMercatorQuad/{z}/{x}/{y}.png?algorithm=terrainrgb[&datetime=]
    return {"type": "raster-dem", "url": ctx.imagery_tilejson("dem", algorithm="terrainrgb"), "tileSize": 256,
            "encoding": "mapbox"}


def _hillshade(ctx: Context) -> Drawing:
    return Drawing({"dem": dem_source(ctx)}, [
        {"id": "hillshade", "type": "hillshade", "source": "dem",
         "paint": {"hillshade-exaggeration": 0.35, "hillshade-shadow-color": "#473b24",
                   "hillshade-highlight-color": "#ffffff"}}])


def _relief(ctx: Context) -> Drawing:
    src = {"type": "raster", "url": ctx.imagery_tilejson("dem", algorithm="hillshade"), "tileSize": 256}
    return Drawing({"hillshade": src}, [{"id": "relief", "type": "raster", "source": "hillshade",
                                         "paint": {"raster-opacity": 0.9}}])


IMAGERY = "@imagery"
GROUPS: dict[str, Group] = {g.id: g for g in [
    Group("imagery", IMAGERY, "正射影像", "Orthoimagery", _imagery),
    Group("relief", IMAGERY, "地形晕渲（服务端）", "Relief shading (server-rendered)", _relief),
    Group("land_use", "land_use", "土地利用现状", "Land use", _land_use),
    Group("farmland", "farmland", "耕地", "Farmland", _farmland),
    Group("forest", "forest", "林地", "Forest land", _forest),
    Group("basic_farmland", "basic_farmland", "永久基本农田", "Permanent basic farmland", _basic_farmland),
    Group("eco_redline", "eco_redline", "生态保护红线", "Ecological protection red line", _eco_redline),
    Group("approvals", "approvals", "建设用地批准", "Construction-land approvals", _approvals),
    Group("parcels", "parcels", "供地项目", "Granted parcels", _parcels),
    Group("hillshade", IMAGERY, "地形晕渲", "Hillshade", _hillshade),
    Group("buildings", "buildings", "建筑物", "Buildings", _buildings),
    Group("buildings_3d", "buildings", "建筑物（三维）", "Buildings (3D)", _buildings_3d),
    Group("roads", "roads", "道路", "Roads", _roads),
    Group("basements", "basements", "地下空间", "Underground structures", _basements),
    Group("pipes", "pipe_segments", "地下管线", "Underground utilities", _pipes),
    Group("communities", "communities", "社区", "Communities", _communities),
    Group("streets", "streets", "街道", "Streets (sub-districts)", _streets),
    Group("place_names", "place_names", "地名", "Place names", _place_names),
]}


@dataclass(frozen=True)
class StyleDef:
    id: str
    title_zh: str
    title_en: str
    groups: tuple[str, ...]
    hidden: frozenset[str] = frozenset()  # groups drawn with visibility none (the client toggles)
    terrain: bool = False
    pitch: float = 0
    composite: bool = False  # groups whose layer is missing are left out (else: the style is missing)


def _thematic(gid: str, **kw) -> StyleDef:
    g = GROUPS[gid]
    return StyleDef(gid, g.title_zh, g.title_en, (gid,), **kw)


STYLES: dict[str, StyleDef] = {s.id: s for s in [
    StyleDef("district", "龙岗区时空信息一张图", "District map (all layers)", tuple(GROUPS) , composite=True,
             hidden=frozenset({"imagery", "relief", "farmland", "forest", "buildings_3d", "basements", "pipes"})),
    *[_thematic(g) for g in ("land_use", "farmland", "basic_farmland", "forest", "eco_redline", "approvals",
                             "parcels", "buildings")],
    _thematic("buildings_3d", pitch=55),
    *[_thematic(g) for g in ("roads", "place_names", "streets", "communities", "imagery")],
    StyleDef("terrain", "地形", "Terrain (3D relief and hillshade)", ("relief",), terrain=True, pitch=60),
]}


def available(style: StyleDef, ctx: Context) -> list[str]:
    """The groups of ``style`` that can be drawn here; [] when a non-composite style cannot."""
    ok = [g for g in style.groups
          if (ctx.imagery if GROUPS[g].requires == IMAGERY else GROUPS[g].requires in ctx.layers)]
    if not style.composite and len(ok) < len(style.groups):
        return []
    return ok


def missing(style: StyleDef, ctx: Context) -> list[str]:
    return sorted({"the imagery API" if GROUPS[g].requires == IMAGERY else f"layer {GROUPS[g].requires!r}"
                   for g in style.groups if g not in available(style, ctx)})


def build(style: StyleDef, ctx: Context) -> dict:
    """The style document (raises LookupError when ``style`` cannot be drawn here)."""
    groups = available(style, ctx)
    if not groups:
        raise LookupError(f"style {style.id!r} needs {', '.join(missing(style, ctx))}, "
                          "which this server does not have")
    sources: dict = {}
    bodies: list[dict] = []
    labels: list[dict] = []
    for gid in groups:
        g = GROUPS[gid]
        d = g.draw(ctx)
        sources.update(d.sources)
        for layer in d.bodies + d.labels:
            layer.setdefault("metadata", {}).update(
                {"geotwin:group": gid, "geotwin:title_zh": g.title_zh, "geotwin:title_en": g.title_en})
            if gid in style.hidden:
                layer.setdefault("layout", {})["visibility"] = "none"
        bodies += d.bodies
        labels += d.labels
    if style.terrain:
        sources["dem"] = dem_source(ctx)
    doc: dict = {
        "version": 8,
        "name": f"{style.title_zh} {style.title_en}",
        "metadata": {
            "geotwin:id": style.id, "geotwin:title_zh": style.title_zh, "geotwin:title_en": style.title_en,
            "geotwin:datetime": ctx.datetime, "geotwin:groups": groups,
            "geotwin:localIdeographFontFamily": LOCAL_IDEOGRAPH_FONT_FAMILY,
        },
        "sources": sources,
        "sprite": f"{ctx.base}/styles/sprites/{sprites.SPRITE_NAME}",
        "glyphs": f"{ctx.base}/styles/glyphs/{{fontstack}}/{{range}}.pbf",
        "layers": [{"id": "background", "type": "background", "paint": {"background-color": palette.BACKGROUND}}]
        + bodies + labels,
    }
    if ctx.home:
        # the configured home view (`geotwin config set home`) or its default (the buildings layer),
        # the same for every style: every user's first view is the district, whatever else is loaded
        doc["center"] = list(ctx.home["center"])
        doc["zoom"] = ctx.home["zoom"]
        doc["metadata"]["geotwin:home"] = {k: ctx.home.get(k) for k in ("center", "zoom", "bbox", "source")}
    elif ctx.bounds:
        w, s, e, n = ctx.bounds
        doc["center"] = [round((w + e) / 2, 6), round((s + n) / 2, 6)]
        doc["zoom"] = 12
    doc["pitch"] = style.pitch
    if style.terrain:
        doc["terrain"] = {"source": "dem", "exaggeration": 1.5}
    return doc
