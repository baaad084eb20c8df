"""The ``home`` setting without a database: the forms `geotwin config set home` takes, the messages
for bad ones, the zoom that fits a box, and the style document's first view."""

from __future__ import annotations

import math

import pytest
from pyproj import Transformer

from spatial_api import settings_store as ss
from styles import documents

TO_MERC = Transformer.from_crs(4326, 3857, always_xy=True)
#: metres across the Web Mercator world, and MapLibre's 512-pixel world at zoom 0
WORLD_M = 2 * math.pi * 6378137.0


@pytest.mark.parametrize("text, value", [
    ("114.25,22.72,13", {"center": [114.25, 22.72], "zoom": 13}),
    (" 114.25, 22.72, 13.5 ", {"center": [114.25, 22.72], "zoom": 13.5}),
    ("114.25 22.72 13", {"center": [114.25, 22.72], "zoom": 13}),
    ("114.05,22.55,114.40,22.82", {"bbox": [114.05, 22.55, 114.4, 22.82]}),
    ("-122.5,37.7,-122.3,37.8", {"bbox": [-122.5, 37.7, -122.3, 37.8]}),
    ("layer:buildings", {"layer": "buildings"}),
])
def test_the_forms_of_home(text, value):
    assert ss.parse_home(text) == value
    ss.KNOWN["home"].check(value)  # what the store accepts back
    assert ss.parse_home(ss.describe("home", value)) == value  # `config get` prints a form `set` takes


@pytest.mark.parametrize("text, says", [
    ("22.72,114.25,13", "longitude comes first — did you mean 114.25,22.72"),
    ("525000,2514000,13", "projected coordinates"),
    ("114.25,22.72", "has 2 values"),
    ("", "has 0 values"),
    ("114.25,22.72,-1", "zoom -1 is outside 0–22"),
    ("114.4,22.6,114.1,22.8", "e.g. 114.1,22.6,114.4,22.8"),
    ("114.1,22.6,114.1,22.8", "MINLON < MAXLON"),
    ("190,22.6,191,22.8", "not a longitude"),
    ("114.25,nan,13", "not a finite number"),
    ("114.25,x,13", "latitude 'x' is not a number"),
    ("layer:Buildings", "is not a layer name"),
])
def test_bad_homes_say_what_to_give(text, says):
    with pytest.raises(ss.SettingError) as err:
        ss.parse_home(text)
    assert says in str(err.value) and str(err.value).startswith("home:")


def test_unknown_settings_list_the_known_ones():
    with pytest.raises(ss.SettingError, match="'hoem' is not a setting.*home"):
        ss.lookup("hoem")
    with pytest.raises(ss.SettingError):
        ss.KNOWN["home"].check({"centre": [1, 2]})


@pytest.mark.parametrize("bbox", [[114.05, 22.55, 114.40, 22.82], [114.23, 22.71, 114.27, 22.73],
                                  [-74.05, 40.68, -73.90, 40.88], [100.0, 60.0, 101.0, 60.2]])
def test_a_box_is_shown_whole_at_the_fitted_zoom_and_no_deeper(bbox):
    """Checked against pyproj's Web Mercator: the box's size in pixels at the zoom fits the viewport
    (less the padding); a tenth of a zoom deeper it would not."""
    centre, zoom = ss.fit(bbox)
    (x0, x1), (y0, y1) = TO_MERC.transform([bbox[0], bbox[2]], [bbox[1], bbox[3]])
    w, h = ss.VIEWPORT[0] - 2 * ss.PADDING, ss.VIEWPORT[1] - 2 * ss.PADDING

    def pixels(z):
        per_px = WORLD_M / (512 * 2 ** z)
        return (x1 - x0) / per_px, (y1 - y0) / per_px

    px, py = pixels(zoom)
    assert px <= w + 1e-6 and py <= h + 1e-6
    px, py = pixels(zoom + 0.1)
    assert px > w or py > h
    cx, cy = TO_MERC.transform(*centre)
    assert abs(cx - (x0 + x1) / 2) < 1 and abs(cy - (y0 + y1) / 2) < 1  # the middle of the box on the map


def test_the_style_opens_on_the_home_view():
    home = {"center": [114.2, 22.7], "zoom": 15.0, "bbox": None, "source": "setting home (centre and zoom)"}
    ctx = documents.Context(base="http://127.0.0.1:8765", layers={"land_use": {"name": "land_use"}},
                            bounds=[116.0, 24.0, 116.1, 24.1], home=home)
    for style in ("district", "land_use"):
        doc = documents.build(documents.STYLES[style], ctx)
        assert doc["center"] == [114.2, 22.7] and doc["zoom"] == 15.0
        assert doc["metadata"]["geotwin:home"] == home
