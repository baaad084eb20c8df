"""Map styles without a database: every style validated by MapLibre's own validator, land-use
colours evaluated by MapLibre's own expression engine, glyph PBFs built by fontnik and decoded
as protobuf, sprite sheets rendered by resvg and checked against their index."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from styles import assets, documents, glyphs, palette, sprites

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / "node_modules"
VALIDATOR = NODE_MODULES / "@maplibre" / "maplibre-gl-style-spec" / "dist" / "gl-style-validate.mjs"
STYLE_SPEC = NODE_MODULES / "@maplibre" / "maplibre-gl-style-spec" / "dist" / "index.mjs"
ALL_LAYERS = ["land_use", "farmland", "basic_farmland", "forest", "eco_redline", "approvals", "parcels",
              "buildings", "roads", "place_names", "streets", "communities"]

# MapLibre's expression engine, run on a paint property of one layer of a style file for a list
# of features: prints the evaluated colours as [r, g, b, a] (0-255, a 0-1).
EVALUATE_JS = """
import { readFileSync } from "node:fs";
import * as spec from "%s";
const [styleFile, layerId, prop, featuresFile, zoom] = process.argv.slice(2);
const style = JSON.parse(readFileSync(styleFile, "utf8"));
const layer = style.layers.find(l => l.id === layerId);
const group = prop in (layer.paint || {}) ? "paint" : "layout";
const propSpec = spec.latest[`${group}_${layer.type}`][prop];
const e = spec.createPropertyExpression(layer[group][prop], `layers.${layerId}.${group}.${prop}`, propSpec);
if (e.result !== "success") { console.error(JSON.stringify(e.value)); process.exit(3); }
const out = JSON.parse(readFileSync(featuresFile, "utf8")).map(props => {
  const c = e.value.evaluate({ zoom: Number(zoom) }, { type: 3, properties: props });
  const k = 255 / (c.a || 1);  // colours are premultiplied
  return [Math.round(c.r * k), Math.round(c.g * k), Math.round(c.b * k), c.a];
});
console.log(JSON.stringify(out));
"""


def validate_styles(paths: list[Path]) -> None:
    """MapLibre's gl-style-validate over the files (one run): zero errors."""
    assert paths
    out = subprocess.run(["node", str(VALIDATOR), *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr


def evaluate(tmp_path: Path, style: dict, layer_id: str, prop: str, features: list[dict], zoom: float = 14) -> list:
    script = tmp_path / "evaluate.mjs"
    script.write_text(EVALUATE_JS % STYLE_SPEC.as_uri(), encoding="utf-8")
    style_file, feats = tmp_path / "style-eval.json", tmp_path / "features.json"
    style_file.write_text(json.dumps(style, ensure_ascii=False), encoding="utf-8")
    feats.write_text(json.dumps(features, ensure_ascii=False), encoding="utf-8")
    out = subprocess.run(["node", str(script), str(style_file), layer_id, prop, str(feats), str(zoom)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def rgb(colour_name: str) -> list[int]:
    return list(palette.classes()["planning_colours_rgb"][colour_name])


def full_context(**kw) -> documents.Context:
    return documents.Context(base="http://127.0.0.1:8765", layers={n: {"name": n} for n in ALL_LAYERS},
                             imagery=True, bounds=[114.2, 22.68, 114.3, 22.76], **kw)


def urls(doc) -> list[str]:
    found: list[str] = []
    if isinstance(doc, dict):
        for v in doc.values():
            found += urls(v)
    elif isinstance(doc, list):
        for v in doc:
            found += urls(v)
    elif isinstance(doc, str) and re.search(r"https?://", doc):
        found.append(doc)
    return found


# -- palette -------------------------------------------------------------------------------------


def test_the_packaged_classes_file_is_the_shared_one():
    shared = ROOT.parent / "shared" / "domain" / "landuse-classes.json"
    if shared.exists():  # the domain file of the project's shared folder (present in CI and on dev machines)
        assert json.loads(shared.read_text(encoding="utf-8")) == palette.classes()
    assert palette.classes()["planning_colours_rgb"]["耕地"] == [245, 248, 220]


def test_every_code_of_the_classification_has_an_explicit_colour():
    c = palette.classes()
    codes = set(c["gbt21010_2017"]["level2"]) | set(c["gbt21010_2017"]["survey_extras"])
    assert codes - set(palette.CODE_CLASS) == set()
    assert set(c["gbt21010_2017"]["level1"]) <= set(palette.LEVEL1_CLASS)
    colours = c["planning_colours_rgb"]
    assert {v for v in palette.CODE_CLASS.values()} | set(palette.LEVEL1_CLASS.values()) <= set(colours)
    # a level-2 name that IS a planning class takes that class's colour
    for code, name in c["gbt21010_2017"]["level2"].items():
        if name in colours:
            assert palette.code_colour(code) == palette.hex_colour(colours[name]), code


def test_landuse_colours_through_maplibres_expression_engine(tmp_path):
    doc = documents.build(documents.STYLES["land_use"], full_context())
    expected = {  # by hand, from the 2023 classification's treatment of each survey class
        "0101": "耕地", "0102": "耕地", "0103": "耕地", "0201": "园地", "0301": "林地", "0305": "林地",
        "0303": "湿地", "0404": "草地", "05H1": "商业服务业用地", "0601": "工业用地", "0604": "仓储用地",
        "0701": "城镇住宅用地", "0702": "农村宅基地", "0809": "公用设施用地", "0810": "公园绿地",
        "0810A": "广场用地", "08H1": "机关团体用地", "08H2": "教育用地", "1001": "交通运输用地",
        "1003": "公路用地", "1004": "城镇道路用地", "1006": "农业设施建设用地", "1101": "陆地水域",
        "1103": "陆地水域", "1104": "陆地水域", "1201": "其他土地", "1202": "农业设施建设用地",
        "1206": "其他土地",
        # not in the table: by the first level
        "0399": "林地", "0799": "城镇住宅用地", "1199": "陆地水域", "05": "商业服务业用地",
    }
    features = [{"dlbm": code} for code in expected] + [{"dlbm": "9999"}, {"dlbm": ""}, {}]
    got = evaluate(tmp_path, doc, "land_use-fill", "fill-color", features)
    for (code, name), colour in zip(expected.items(), got):
        assert colour == rgb(name) + [1], (code, name, colour)
    assert got[len(expected):] == [list(palette.rgb_of(palette.UNKNOWN)) + [1]] * 3


def test_derived_palettes_stay_inside_the_json_colours():
    for use, colour in palette.building_colours().items():
        base = palette.class_colour(palette.BUILDING_USE_CLASS[use])
        assert colour == palette.mix(base, palette.BUILDING_BASE, 0.55)
    with pytest.raises(KeyError, match="no colour"):
        palette.class_colour("不存在的用地")


# -- style documents ------------------------------------------------------------------------------


def test_every_style_validates_with_maplibres_validator(tmp_path):
    paths = []
    home = {"center": [114.25, 22.72], "zoom": 13.4, "bbox": [114.2, 22.68, 114.3, 22.76], "source": "default"}
    for ctx in (full_context(home=home), full_context(datetime="2021-06-01T00:00:00+08:00"),
                documents.Context(base="http://127.0.0.1:8765", layers={"roads": {}}, imagery=False)):
        for sid, style in documents.STYLES.items():
            if not documents.available(style, ctx):
                continue
            p = tmp_path / f"{sid}-{len(paths)}.json"
            p.write_text(json.dumps(documents.build(style, ctx), ensure_ascii=False), encoding="utf-8")
            paths.append(p)
    assert len(paths) == 2 * len(documents.STYLES) + 2  # district and roads with only roads present
    validate_styles(paths)


def test_datetime_reaches_every_tile_url_and_urls_stay_on_the_server():
    ctx = full_context(datetime="2021-06-01T00:00:00+08:00")
    doc = documents.build(documents.STYLES["district"], ctx)
    everything = urls(doc)
    assert everything and all(u.startswith("http://127.0.0.1:8765/") for u in everything)
    for sid, src in doc["sources"].items():
        for u in [src["url"]] if "url" in src else src["tiles"]:
            assert "datetime=2021-06-01T00:00:00%2B08:00" in u, (sid, u)  # '+' encoded, or it reads as ' '
    assert doc["glyphs"].endswith("/styles/glyphs/{fontstack}/{range}.pbf")
    assert doc["sources"]["dem"]["encoding"] == "mapbox" and doc["sources"]["dem"]["type"] == "raster-dem"
    assert doc["sources"]["dem"]["url"].startswith("http://127.0.0.1:8765/imagery/collections/dem/tilejson.json?"
                                                   "algorithm=terrainrgb&datetime=")
    assert "algorithm=hillshade&" in doc["sources"]["hillshade"]["url"]
    import styles

    assert "localIdeographFontFamily" in styles.__doc__ and "Noto Sans CJK SC" in styles.__doc__
    assert doc["metadata"]["geotwin:localIdeographFontFamily"] == documents.LOCAL_IDEOGRAPH_FONT_FAMILY


@pytest.mark.parametrize("text, expected", [
    ("2021-06-01", "2021-06-01"),
    ("2021-06-01T00:00:00Z", "2021-06-01T00:00:00Z"),
    ("2021-06-01T08:00:00+08:00", "2021-06-01T00:00:00Z"),
    ("2021-06-01T00:00:00-05:00", "2021-06-01T05:00:00Z"),
    ("2021-06-01T08:00:00.5+0800", "2021-06-01T00:00:00.500000Z"),
])
def test_datetimes_with_an_offset_go_into_urls_as_utc(text, expected):
    from datetime import datetime

    assert documents.datetime_param(text, datetime.fromisoformat(text.replace("Z", "+00:00"))) == expected


def test_composite_leaves_out_missing_layers_and_thematic_styles_refuse():
    ctx = documents.Context(base="http://h", layers={"roads": {}, "land_use": {}}, imagery=False)
    doc = documents.build(documents.STYLES["district"], ctx)
    assert set(doc["sources"]) == {"roads", "land_use"}
    assert {lyr.get("source") for lyr in doc["layers"]} == {None, "roads", "land_use"}
    with pytest.raises(LookupError, match="layer 'farmland'"):
        documents.build(documents.STYLES["farmland"], ctx)
    with pytest.raises(LookupError, match="imagery API"):
        documents.build(documents.STYLES["terrain"], ctx)
    # labels are drawn after every body layer
    kinds = [lyr["type"] for lyr in doc["layers"]]
    assert "symbol" not in kinds[:max(i for i, k in enumerate(kinds) if k != "symbol")]


def test_style_references_only_sprite_images_that_exist(tmp_path):
    names = {e.name for e in sprites.entries(ROOT)}
    doc = documents.build(documents.STYLES["district"], full_context())
    used = set()
    for lyr in doc["layers"]:
        for key in ("icon-image", "fill-pattern"):
            v = {**lyr.get("layout", {}), **lyr.get("paint", {})}.get(key)
            if v is not None:
                used |= {s for s in json.dumps(v).split('"') if s.startswith(("pn-", "hatch-"))}
    assert used and used <= names
    assert {sprites.icon_name(k) for k in sprites.PLACE_ICONS} <= used


# -- glyphs --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_glyphs(tmp_path_factory):
    out = tmp_path_factory.mktemp("glyphs")
    assets.build_glyphs(out, ROOT, fonts=["Noto Sans Regular", "Noto Sans Bold"])
    return out


def test_glyph_pbf_decodes_with_sdf_bitmaps_of_the_right_size(built_glyphs):
    files = sorted(p.name for p in (built_glyphs / "Noto Sans Regular").iterdir())
    assert len(files) == 256 and "65280-65535.pbf" in files
    msg = glyphs.decode((built_glyphs / "Noto Sans Regular" / "0-255.pbf").read_bytes())
    (stack,) = msg.stacks
    assert stack.name == "Noto Sans Regular" and stack.range == "0-255"
    by_id = {g.id: g for g in stack.glyphs}
    assert len(by_id) > 180
    for ch in "A0gé":
        g = by_id[ord(ch)]
        assert g.width > 0 and g.height > 0 and g.advance > 0, ch
        assert len(g.bitmap) == (g.width + 2 * glyphs.BORDER) * (g.height + 2 * glyphs.BORDER), ch
        # a signed distance field: inside the glyph near 255, far outside near 0
        assert max(g.bitmap) > 200 and min(g.bitmap) < 40, ch
    assert by_id[ord(" ")].advance > 0 and not by_id[ord(" ")].bitmap
    assert by_id[ord("W")].advance > by_id[ord("i")].advance
    cjk = glyphs.decode((built_glyphs / "Noto Sans Regular" / "19968-20223.pbf").read_bytes())
    assert cjk.stacks[0].range == "19968-20223" and len(cjk.stacks[0].glyphs) == 0  # valid and empty


def test_a_font_stack_takes_each_glyph_from_the_first_font_that_has_it(built_glyphs):
    reg = (built_glyphs / "Noto Sans Regular" / "0-255.pbf").read_bytes()
    bold = (built_glyphs / "Noto Sans Bold" / "0-255.pbf").read_bytes()
    merged = glyphs.decode(glyphs.combine([reg, bold], "Noto Sans Regular,Noto Sans Bold", "0-255")).stacks[0]
    regular = {g.id: g for g in glyphs.decode(reg).stacks[0].glyphs}
    assert merged.name == "Noto Sans Regular,Noto Sans Bold"
    ids = [g.id for g in merged.glyphs]
    assert ids == sorted(ids) and set(ids) == set(regular) | {g.id for g in glyphs.decode(bold).stacks[0].glyphs}
    assert {g.id: g.bitmap for g in merged.glyphs}[65] == regular[65].bitmap


@pytest.mark.parametrize("text", ["0-300", "1-256", "65536-65791", "abc", "0-255.pbf", "-1-254"])
def test_bad_glyph_ranges_are_refused(text):
    with pytest.raises(glyphs.RangeError, match="range"):
        glyphs.parse_range(text)


def test_glyph_ranges_that_exist():
    assert glyphs.parse_range("0-255") == (0, 255) and glyphs.parse_range("65280-65535") == (65280, 65535)


def test_a_missing_font_says_which_package_to_install(monkeypatch):
    monkeypatch.setattr(assets, "FONT_DIRS", [Path("/nonexistent")])
    with pytest.raises(assets.AssetError, match="fonts-noto-core"):
        assets.font_file("Noto Sans Regular")


# -- sprites -------------------------------------------------------------------------------------


def test_sprite_sheets_match_their_index(tmp_path):
    assets.build_sprites(tmp_path, ROOT)
    one = json.loads((tmp_path / "geotwin.json").read_text())
    two = json.loads((tmp_path / "geotwin@2x.json").read_text())
    im1, im2 = Image.open(tmp_path / "geotwin.png"), Image.open(tmp_path / "geotwin@2x.png")
    assert im2.size == (2 * im1.size[0], 2 * im1.size[1])
    assert set(one) == set(two) == {e.name for e in sprites.entries(ROOT)}
    for name, e in one.items():
        assert e["pixelRatio"] == 1 and two[name]["pixelRatio"] == 2
        box = ("x", "y", "width", "height")
        assert {k: two[name][k] for k in box} == {k: 2 * e[k] for k in box}
        for idx, im in ((e, im1), (two[name], im2)):
            assert idx["x"] + idx["width"] <= im.size[0] and idx["y"] + idx["height"] <= im.size[1], name
            cell = im.convert("RGBA").crop((idx["x"], idx["y"], idx["x"] + idx["width"], idx["y"] + idx["height"]))
            assert cell.getchannel("A").getextrema()[1] == 255, f"{name} is empty"
    # cells do not overlap
    boxes = [(e["x"], e["y"], e["x"] + e["width"], e["y"] + e["height"]) for e in one.values()]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    # an icon is its badge colour; a hatch pattern is transparent between its lines
    kind = "hospital"
    e = two[sprites.icon_name(kind)]
    px = im2.convert("RGBA").getpixel((e["x"] + 8, e["y"] + e["height"] // 2))
    assert px[:3] == palette.rgb_of(sprites.PLACE_ICONS[kind][1]) and px[3] == 255
    h = one["hatch-redline"]
    cell = im1.convert("RGBA").crop((h["x"], h["y"], h["x"] + h["width"], h["y"] + h["height"]))
    alphas = [cell.getpixel((x, y))[3] for x in range(h["width"]) for y in range(h["height"])]
    assert min(alphas) == 0 and max(alphas) == 255
    # seamless: 45° lines of period = cell size, so alpha depends on (x + y) mod size only,
    # across the cell's edges too (anti-aliasing allowed)
    s = h["width"]
    for x in range(s):
        for y in range(s):
            a, b = cell.getpixel((x, y))[3], cell.getpixel(((x + 1) % s, (y - 1) % s))[3]
            assert abs(a - b) <= 64, (x, y, a, b)


def test_missing_maki_icons_say_how_to_install_them(tmp_path):
    with pytest.raises(sprites.SpriteSourceError, match="make assets"):
        sprites.entries(tmp_path)


def test_asset_build_is_idempotent_and_a_failed_one_leaves_the_previous_assets_whole(tmp_path, monkeypatch):
    out = tmp_path / "assets"
    assert assets.build(out) is True
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len(before) == 3 * 256 + 4 + 1  # glyph ranges of three fonts, two sheets + indexes, the stamp
    assert assets.build(out) is False  # inputs unchanged: nothing rebuilt

    def broken(folder, root):
        raise assets.AssetError("sprite sheet geotwin.png failed")

    monkeypatch.setattr(assets, "build_sprites", broken)
    with pytest.raises(assets.AssetError, match="sprite sheet"):
        assets.build(out, force=True)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in out.iterdir()) == ["glyphs", "sprites", assets.STAMP]
