"""The demo district's sensing data (issue 16): the water-meter pilot's households and the other
field devices, their history, the planted alert cases — and the habits the live simulator continues.

Two stages, like the rest of the demo:

- :func:`plan` (in ``build_files``, no database): picks the pilot's households on real residential
  buildings / addresses of 坂田 and 布吉 (the address layer's ``street`` / ``community``), invents
  their residents and habits, places manhole covers and fire hydrants along the roads and traffic
  counters at road junctions, and writes ``sensing.json`` (the plan) next to the manifest; the
  manifest's ``sensing`` section names the planted cases. The readings are generated from the plan
  (seeded, deterministic) and checked naively there (:func:`naive_findings`): every planted case
  holds in the data and no other household looks like one.
- :func:`load` (in ``data.demo.load``, after the layers): writes the devices (their SensorThings
  Things, Locations, Datastreams — as ``sensing.devices`` shapes them), the announced absence and the
  readings (COPY into ``sta_observations``), replacing an earlier demo load; then :func:`check` learns
  the baselines and evaluates the alert rules at the reference time (``sensing.baseline`` /
  ``sensing.rules``): every planted case alerted, no guard case.

Time: the data ends at the demo's reference time, :data:`REFERENCE_HOUR` o'clock (Asia/Shanghai) of
the manifest's ``reference_date``. Water meters report the volume of each half-hour slot (m³,
resolution 1 L; the observation's phenomenonTime is the slot interval), other devices at their
type's interval over the last few days.

The pilot's planted cases (device ids in ``manifest.sensing.planted`` / ``.negative``):

- ``inactivity`` — a fall: normal morning use, then nothing for 14 h up to the reference time;
- ``leak`` — a running toilet: use in every half-hour slot for 30 h;
- ``absence`` (guard) — away 3 days, announced by the family (a ``sensing_absences`` row): no alert;
- ``heavy-cleaning`` (guard) — the day before: use in every daytime slot, quiet night: no leak alert;

and on the other devices: ``manhole-open`` (a cover open and tilted), ``manhole-flooded`` (water
rising in a shaft), ``hydrant-low`` (pressure under 0.1 MPa).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

CST = timezone(timedelta(hours=8))  # Asia/Shanghai (no daylight saving)
#: the hour of the reference date at which the demo's data ends and the rules are evaluated
REFERENCE_HOUR = 20
SLOT = timedelta(minutes=30)
PLAN_FILE = "sensing.json"
PLAN_FORMAT = "geotwin-sensing-demo/1"
STREETS = ("坂田街道", "布吉街道")


@dataclass(frozen=True)
class SensingSize:
    households: int
    days: int            # days of half-hourly meter history
    manholes: int
    hydrants: int
    counters: int
    other_days: int      # days of history for the other devices


SIZES = {
    "small": SensingSize(households=40, days=28, manholes=24, hydrants=10, counters=8, other_days=2),
    "medium": SensingSize(households=200, days=60, manholes=180, hydrants=80, counters=40, other_days=3),
    "large": SensingSize(households=200, days=60, manholes=400, hydrants=160, counters=80, other_days=3),
}

#: Stream names per device type and the interval of their readings (as ``sensing.devices.TYPES``
#: names them — the load maps them onto the registry's Datastreams by name; batteries daily).
STREAMS = {
    "water-meter": {"用水量": timedelta(minutes=30), "电池电量": timedelta(days=1)},
    "manhole-cover": {"倾角": timedelta(hours=1), "井盖开启": timedelta(hours=1), "井内水位": timedelta(hours=1),
                      "电池电量": timedelta(days=1)},
    "hydrant-pressure": {"水压": timedelta(hours=1)},
    "traffic-counter": {"车流量": timedelta(minutes=5)},
}

PLANTED_KINDS = ("inactivity", "leak", "manhole-open", "manhole-flooded", "hydrant-low")
GUARD_KINDS = ("absence", "heavy-cleaning")


def reference_time(reference_date: date) -> datetime:
    return datetime.combine(reference_date, time(REFERENCE_HOUR), CST)


# -- people ------------------------------------------------------------------------------------------

_SURNAMES = list("陈张李黄刘林钟曾叶罗邱温何吴谢郑廖王杨赖徐朱邓彭周胡萧蔡")
_FEMALE = ["秀英", "桂英", "玉兰", "秀兰", "淑贞", "桂兰", "凤英", "玉珍", "月娥", "金凤", "亚妹", "带娣",
           "来娣", "秀珍", "瑞娇", "惠芳", "月英", "妹仔", "银娣", "丽珍", "少梅", "淑芬"]
_MALE = ["德明", "福生", "国华", "水生", "金水", "亚福", "振华", "炳坤", "家祥", "永福", "锦添", "耀祖",
         "志强", "汉文", "伟民", "观生", "宝财", "运来", "添福", "长庚"]
_YOUNG = ["建军", "伟", "海燕", "丽华", "志明", "晓红", "国平", "雪梅", "文斌", "春燕", "小军", "美玲",
          "俊杰", "晓东", "丽娟", "永红", "卫东", "红梅"]
_NOTES = ["独居，患高血压，每日服药", "行动不便，使用助行器", "听力较差，敲门需用力", "糖尿病，子女每周探望一次",
          "记忆力减退，家属同意社区定期上门", "腿脚不便，住低层", "心脏支架术后，需关注", "性格开朗，常去社区长者食堂",
          "视力较差", "老伴去世后独居"]


def _phone(k: int) -> str:
    """A number in the fictional range 138-0000-xxxx (digits only, as an SMS gateway takes it)."""
    return f"1380000{k:04d}"


def _household(rng: np.random.Generator, idx: int) -> dict:
    female = rng.random() < 0.65
    surname = _SURNAMES[rng.integers(len(_SURNAMES))]
    name = surname + (_FEMALE if female else _MALE)[rng.integers(len(_FEMALE if female else _MALE))]
    family = []
    for j in range(int(rng.integers(1, 3))):
        rel = ["儿子", "女儿", "侄子", "孙女", "儿媳"][rng.integers(5)]
        fam_surname = surname if rel in ("儿子", "侄子", "孙女") else _SURNAMES[rng.integers(len(_SURNAMES))]
        family.append({"name": fam_surname + _YOUNG[rng.integers(len(_YOUNG))], "relation": rel,
                       "phone": _phone(1000 + idx * 3 + j + 1)})
    return {"resident": {"name": name, "age": int(rng.integers(80, 97)), "phone": _phone(1000 + idx * 3)},
            "family": family, "notes": _NOTES[rng.integers(len(_NOTES))]}


# -- habits and the meter series ---------------------------------------------------------------------

def habit(rng: np.random.Generator) -> dict:
    """One resident's daily pattern, in half-hour slots of the local day (0 = 00:00–00:30)."""
    return {
        "wake": int(rng.integers(11, 15)),          # 05:30 … 07:00
        "bed": int(rng.integers(43, 46)),           # 21:30 … 22:30
        "lunch": int(rng.integers(23, 26)),         # 11:30 … 12:30
        "dinner": int(rng.integers(35, 38)),        # 17:30 … 18:30
        "toilet_every": int(rng.integers(4, 7)),    # every 2–3 h while up
        "night_toilet": round(float(rng.uniform(0.3, 0.7)), 2),
        "shower_days": sorted(int(d) for d in rng.choice(7, size=int(rng.integers(2, 5)), replace=False)),
        "shower_slot": int(rng.integers(38, 42)),   # 19:00 … 20:30
        "laundry_days": sorted(int(d) for d in rng.choice(7, size=int(rng.integers(1, 3)), replace=False)),
        "scale": round(float(rng.uniform(0.9, 1.3)), 2),
    }


def habit_of(device_id: str) -> dict:
    """A habit for any device id (the simulator's fallback for meters the demo did not plan)."""
    h = int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:8], "big")
    return habit(np.random.default_rng(h))


def day_volumes(h: dict, days: list[date], rng: np.random.Generator) -> np.ndarray:
    """Volumes (m³, 1 L resolution) of each half-hour slot of the given local days: (len(days), 48)."""
    n = len(days)
    v = np.zeros((n, 48))
    rows = np.arange(n)
    weekday = np.array([d.weekday() for d in days])
    wake = np.clip(h["wake"] + rng.integers(-1, 2, n), 0, 47)
    bed = np.clip(h["bed"] + rng.integers(-1, 2, n), 0, 47)

    def add(slots, litres, mask=None):
        slots = np.clip(np.asarray(slots), 0, 47)
        m = np.ones(n, bool) if mask is None else mask
        amount = litres / 1000.0 * np.clip(rng.lognormal(0.0, 0.25, n), 0.7, 1.6)
        np.add.at(v, (rows[m], slots[m]), amount[m])

    add(wake, 14)                                          # wash + toilet on getting up
    add(wake + 2, 4)                                       # breakfast
    add(h["lunch"] + rng.integers(-1, 2, n), 8)
    add(h["dinner"] + rng.integers(-1, 2, n), 10)
    add(bed, 10)                                           # wash + toilet at bedtime
    add(bed - 2, 6)                                        # … and an hour before
    add(bed - 4, 4)                                        # tea, the dishes
    add(wake + 1, 6)
    k = 1
    while True:                                            # toilet every 2–3 h while up
        s = wake + k * h["toilet_every"] + rng.integers(-1, 2, n)
        m = s < bed
        if not m.any():
            break
        add(s, 6, m)
        k += 1
    add(np.full(n, h["shower_slot"]) + rng.integers(-1, 2, n), 35, np.isin(weekday, h["shower_days"]))
    add(rng.integers(18, 22, n), 50, np.isin(weekday, h["laundry_days"]))
    add(rng.integers(2, 10, n), 6, rng.random(n) < h["night_toilet"])  # a night toilet, 01:00–05:00
    awake = (np.arange(48)[None, :] > wake[:, None]) & (np.arange(48)[None, :] < bed[:, None])
    v += np.where(awake & (rng.random((n, 48)) < 0.12), rng.uniform(0.001, 0.003, (n, 48)), 0.0)  # hand washing
    return np.round(v * h["scale"], 3)


@dataclass
class Series:
    """One datastream's readings: slot / instant starts (UTC seconds) and values."""
    device_id: str
    stream: str
    start: np.ndarray                # datetime64[s], UTC
    end: np.ndarray | None           # interval ends (None: instants)
    values: np.ndarray               # float, or bool for truth observations


def _utc64(t: datetime) -> np.datetime64:
    return np.datetime64(t.astimezone(timezone.utc).replace(tzinfo=None), "s")


def meter_series(dev: dict, ref: datetime, days: int, seed: int) -> np.ndarray:
    """The half-hour volumes of a planned household from ``ref - days`` to ``ref`` with its planted
    case applied: shape (days * 48,), slot i = [ref - days + i·30 min, + 30 min)."""
    rng = np.random.default_rng([seed, 16, dev["index"]])
    t0 = ref - timedelta(days=days)
    local_days = [(t0 + timedelta(days=d)).date() for d in range(days + 2)]
    vol = day_volumes(dev["habit"], local_days, rng).ravel()
    first = int((t0 - datetime.combine(local_days[0], time(0), CST)) / SLOT)
    vol = vol[first:first + days * 48].copy()
    n = vol.size
    def at(t: datetime) -> int:  # the slot index of a time
        return int((t - t0) / SLOT)

    case = dev.get("case")
    if case == "inactivity":   # a fall: used water on getting up (05:30), nothing since 06:00
        fall = datetime.combine(ref.date(), time(6), CST)
        vol[at(fall):] = 0.0
        vol[at(fall) - 1] = max(vol[at(fall) - 1], 0.014)
    elif case == "leak":       # a running toilet for the last 30 hours
        s = at(ref - timedelta(hours=30))
        vol[s:] = np.round(vol[s:] + rng.uniform(0.004, 0.009, n - s), 3)
    elif case == "absence":    # away for the last three days (announced by the family)
        leave = at(ref - timedelta(days=3))
        vol[leave - 1] = max(vol[leave - 1], 0.012)  # a last wash before leaving
        vol[leave:] = 0.0
    elif case == "heavy-cleaning":  # yesterday: use in every slot 07:00–21:00, quiet nights around it
        day = ref.date() - timedelta(days=1)

        def local(d, hour):
            return max(0, min(n, at(datetime.combine(d, time(hour), CST))))

        a, b = local(day, 7), local(day, 21)
        vol[a:b] = np.round(vol[a:b] + rng.uniform(0.015, 0.045, b - a), 3)
        vol[local(day - timedelta(days=1), 23):local(day, 5)] = 0.0
        vol[local(day, 23):local(ref.date(), 5)] = 0.0
    return vol


def series_of(plan_doc: dict, seed: int) -> Iterator[Series]:
    """Every datastream's readings of a plan (deterministic)."""
    ref = datetime.fromisoformat(plan_doc["reference_time"])
    days, other_days = plan_doc["days"], plan_doc["other_days"]
    for dev in plan_doc["devices"]:
        rng = np.random.default_rng([seed, 17, dev["index"]])
        if dev["type"] == "water-meter":
            vol = meter_series(dev, ref, days, seed)
            start = _utc64(ref - timedelta(days=days)) + np.arange(vol.size) * np.timedelta64(30 * 60, "s")
            yield Series(dev["device_id"], "用水量", start, start + np.timedelta64(30 * 60, "s"), vol)
            yield _battery(dev, ref, days, rng)
        elif dev["type"] == "manhole-cover":
            yield from _manhole(dev, ref, other_days, rng, plan_doc.get("rain"))
            yield _battery(dev, ref, other_days, rng)
        elif dev["type"] == "hydrant-pressure":
            yield _hydrant(dev, ref, other_days, rng)
        elif dev["type"] == "traffic-counter":
            yield _traffic(dev, ref, other_days, rng)


def _instants(ref: datetime, days: int, step: timedelta) -> tuple[np.ndarray, np.ndarray]:
    """Reading times (UTC datetime64) every ``step`` ending at ``ref`` and their local hours."""
    k = int(timedelta(days=days) / step)
    t = _utc64(ref) - np.arange(k, 0, -1) * np.timedelta64(int(step.total_seconds()), "s")
    hours = ((t.astype("datetime64[m]").astype(np.int64) / 60.0) + 8) % 24
    return t, hours


def _battery(dev, ref, days, rng) -> Series:
    t, _ = _instants(ref, days, timedelta(days=1))
    start = dev.get("battery0", 90.0)
    v = np.round(start - np.arange(t.size) * 0.05 + rng.normal(0, 0.3, t.size), 1)
    return Series(dev["device_id"], "电池电量", t, None, np.clip(v, 0, 100))


def _manhole(dev, ref, days, rng, rain) -> Iterator[Series]:
    t, _ = _instants(ref, days, timedelta(hours=1))
    n = t.size
    tilt = np.round(np.abs(dev["tilt0"] + rng.normal(0, 0.15, n)), 1)
    level = dev["level0"] + rng.normal(0, 0.02, n)
    if rain:  # a shower over the district: every shaft's water rises and falls back
        r0 = _utc64(datetime.fromisoformat(rain["start"]))
        dt = (t - r0).astype(np.int64) / 3600.0
        wet = (dt >= 0) & (dt < rain["hours"] * 3)
        level += np.where(wet, rain["rise_m"] * np.exp(-np.maximum(dt, 0) / rain["hours"]), 0)
    opened = np.zeros(n, bool)
    case = dev.get("case")
    if case == "manhole-open":          # knocked open three hours ago
        opened[-3:] = True
        tilt[-3:] = np.round(38 + rng.normal(0, 1.0, 3), 1)
    elif case == "manhole-flooded":     # water rising to the top of the shaft in the last hours
        level[-6:] = np.linspace(level[-7] + 0.3, dev["depth_m"] - 0.15, 6)
    yield Series(dev["device_id"], "倾角", t, None, tilt)
    yield Series(dev["device_id"], "井盖开启", t, None, opened)
    yield Series(dev["device_id"], "井内水位", t, None, np.round(np.clip(level, 0, dev["depth_m"]), 2))


def _hydrant(dev, ref, days, rng) -> Series:
    t, hours = _instants(ref, days, timedelta(hours=1))
    dip = 0.04 * (np.exp(-((hours - 7.5) ** 2) / 2) + np.exp(-((hours - 19) ** 2) / 2))  # morning / evening peaks
    v = dev["pressure0"] - dip + rng.normal(0, 0.008, t.size)
    if dev.get("case") == "hydrant-low":  # a broken main: pressure drops for the last six hours
        v[-6:] = 0.05 + rng.normal(0, 0.005, 6)
    return Series(dev["device_id"], "水压", t, None, np.round(v, 3))


def _traffic(dev, ref, days, rng) -> Series:
    t, hours = _instants(ref, days, timedelta(minutes=5))
    profile = (0.15 + np.exp(-((hours - 8.5) ** 2) / 1.5) + 0.9 * np.exp(-((hours - 18.5) ** 2) / 2.0)
               + 0.5 * np.exp(-((hours - 13) ** 2) / 8))
    v = rng.poisson(dev["peak_per_5min"] * profile / 1.15)
    return Series(dev["device_id"], "车流量", t, None, v.astype(float))


# -- the plan (build time, files only) -----------------------------------------------------------------

def plan(out_dir: Path, layers: dict[str, Path], reference_date: date, crs: str, size: str, seed: int,
         manholes=None) -> dict:
    """Choose the devices of the demo from the built layer files (``layers``: layer name → file;
    addresses, buildings, roads, communities, streets), write ``sensing.json`` into ``out_dir`` and
    return the manifest's ``sensing`` section. ``manholes``: the utility network's manholes
    (``data._pipes.Network.manholes()``: point_id, type, type_code, x, y in ``crs``, well_depth,
    road), drains' 检查井 first — the manhole covers stand on them, their depth the well's; without
    it (or too few) they stand on points along the roads. Raises AssertionError when a planted case
    does not hold in the generated readings (or another household looks like one)."""
    import pyogrio
    import shapely

    if size not in SIZES:
        raise ValueError(f"size {size!r}: choose one of {', '.join(SIZES)}")
    spec = SIZES[size]
    out_dir = Path(out_dir)
    ref_date = reference_date
    ref = reference_time(ref_date)

    def path(layer):
        return layers[layer]

    addr = pyogrio.read_dataframe(path("addresses"))
    bld = pyogrio.read_dataframe(path("buildings"), read_geometry=False)
    roads = pyogrio.read_dataframe(path("roads"))
    comm = pyogrio.read_dataframe(path("communities"))
    streets = pyogrio.read_dataframe(path("streets"), read_geometry=False)
    a = addr.merge(bld[["building_id", "use", "floors"]], on="building_id")
    a = a[(a["use"] == "residential") & a["street"].isin(STREETS)].sort_values("addr_id").reset_index(drop=True)
    if a.empty:
        raise AssertionError("sensing demo: no residential address in 坂田 / 布吉")
    rng = np.random.default_rng([seed, 16])
    devices: list[dict] = []

    # households: 60 % in 坂田, 40 % in 布吉 (as many as the streets' residential buildings allow)
    n = spec.households
    want = {"坂田街道": n - round(n * 0.4), "布吉街道": round(n * 0.4)}
    picks = []
    for st, k in want.items():
        pool = np.flatnonzero(a["street"].to_numpy() == st)
        other = STREETS[1 - STREETS.index(st)]
        if pool.size == 0:
            want[other] += k
            continue
        picks += [(st, i) for i in rng.choice(pool, size=k, replace=pool.size < k)]
    rooms_taken: set = set()
    planted_cycle = {"坂田街道": ["inactivity", "absence"], "布吉街道": ["leak", "heavy-cleaning"]}
    cases_left = {st: list(v) for st, v in planted_cycle.items()}
    if not (a["street"] == "布吉街道").any():  # small districts: all four cases wherever households are
        cases_left = {"坂田街道": planted_cycle["坂田街道"] + planted_cycle["布吉街道"], "布吉街道": []}
    for idx, (st, i) in enumerate(picks):
        row = a.iloc[int(i)]
        floors = max(int(row["floors"] or 1), 1)
        while True:
            room = f"{int(rng.integers(1, floors + 1))}{int(rng.integers(1, 5)):02d}室"
            if (row["building_id"], room) not in rooms_taken:
                rooms_taken.add((row["building_id"], room))
                break
        code = "BT" if st == "坂田街道" else "BJ"
        h = habit(rng)
        case = cases_left[st].pop(0) if cases_left[st] else None
        if case == "inactivity":
            h["wake"] = 11  # up at 05:30 on the day of the fall
        devices.append({
            "index": idx, "device_id": f"WM-{code}-{sum(1 for d in devices if d['device_id'][3:5] == code) + 1:04d}",
            "type": "water-meter", "name": f"智能水表 {row['community']}{row['building']}{room}",
            "street": row["street"], "community": row["community"], "building_id": row["building_id"],
            "address": f"{row['full_address']}{room}", "lon": round(float(row.geometry.x), 7),
            "lat": round(float(row.geometry.y), 7),
            "installed_on": (ref_date - timedelta(days=int(rng.integers(90, 400)))).isoformat(),
            "restricted": True, "household": _household(rng, idx), "habit": h, "case": case,
            "battery0": round(float(rng.uniform(70, 99)), 1),
        })
    missing = [c for v in cases_left.values() for c in v]
    if missing:
        raise AssertionError(f"sensing demo: too few households for the planted cases {missing}")

    # other devices, along the roads (EPSG:4547 → lon/lat); community / street from the polygons
    from pyproj import Transformer

    to84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    rg = roads.geometry.to_numpy()
    lengths = shapely.length(rg)
    cls = roads["road_class"].to_numpy()
    named = np.flatnonzero(cls != "高速公路")
    street_name = dict(zip(streets["code"], streets["name"]))

    def place(points) -> list[tuple[float, float, str, str]]:
        cg = comm.geometry.to_numpy()
        tree = shapely.STRtree(cg)
        pi, ci = tree.query(points, predicate="intersects")
        which = np.full(len(points), -1)
        which[pi] = ci
        out = []
        for p, c in zip(points, which):
            x, y = to84.transform(p.x, p.y)
            cm = comm.iloc[c] if c >= 0 else None
            out.append((round(x, 7), round(y, 7), cm["name"] if cm is not None else None,
                        street_name.get(cm["street_code"]) if cm is not None else None))
        return out

    def along_roads(k: int, offset_m: float):
        w = lengths[named] / lengths[named].sum()
        ri = named[rng.choice(named.size, size=k, p=w)]
        pts = shapely.line_interpolate_point(rg[ri], rng.uniform(0.05, 0.95, k), normalized=True)
        return ri, shapely.points(shapely.get_x(pts) + offset_m, shapely.get_y(pts))

    base = len(devices)
    covers = _on_manholes(manholes, spec.manholes, rng)
    if covers is None:  # no network: points along the roads
        ri, pts = along_roads(spec.manholes, 0.0)
        covers = [{"road": roads["name"].iloc[r], "depth_m": round(float(rng.uniform(1.8, 3.0)), 1)} for r in ri]
    else:
        pts = shapely.points([c["x"] for c in covers], [c["y"] for c in covers])
    for j, (p, c) in enumerate(zip(place(pts), covers)):
        on = {k: c[k] for k in ("manhole", "pipe_type") if k in c}
        devices.append({"index": base + j, "device_id": f"MC-{j + 1:04d}", "type": "manhole-cover",
                        "name": f"智能井盖 {c['road']} #{j + 1}", "street": p[3], "community": p[2],
                        "lon": p[0], "lat": p[1], "road": c["road"], "restricted": False, **on,
                        "installed_on": (ref_date - timedelta(days=int(rng.integers(200, 900)))).isoformat(),
                        "tilt0": round(float(rng.uniform(0.3, 2.5)), 1),
                        "level0": round(float(rng.uniform(0.1, 0.5)), 2),
                        "depth_m": c["depth_m"],
                        "battery0": round(float(rng.uniform(55, 99)), 1),
                        "case": {0: "manhole-open", 1: "manhole-flooded"}.get(j)})
    base = len(devices)
    ri, pts = along_roads(spec.hydrants, 6.0)
    for j, (p, r) in enumerate(zip(place(pts), ri)):
        devices.append({"index": base + j, "device_id": f"FH-{j + 1:04d}", "type": "hydrant-pressure",
                        "name": f"消火栓压力 {roads['name'].iloc[r]} #{j + 1}", "street": p[3], "community": p[2],
                        "lon": p[0], "lat": p[1], "road": roads["name"].iloc[r], "restricted": False,
                        "installed_on": (ref_date - timedelta(days=int(rng.integers(200, 900)))).isoformat(),
                        "pressure0": round(float(rng.uniform(0.28, 0.45)), 3), "case": "hydrant-low" if j == 0 else None})
    base = len(devices)
    for j, (p, name, road_class) in enumerate(_junctions(roads, spec.counters, rng)):
        (lon, lat, cm, st), = place(np.array([p], dtype=object))
        devices.append({"index": base + j, "device_id": f"TC-{j + 1:04d}", "type": "traffic-counter",
                        "name": f"交通流量 {name}", "street": st, "community": cm, "lon": lon, "lat": lat,
                        "road": name, "restricted": False,
                        "installed_on": (ref_date - timedelta(days=int(rng.integers(200, 900)))).isoformat(),
                        "peak_per_5min": {"主干路": 160, "次干路": 100}.get(road_class, 50), "case": None})

    absent = next(d for d in devices if d.get("case") == "absence")
    fam = absent["household"]["family"][0]
    doc = {
        "format": PLAN_FORMAT, "size": size, "seed": seed, "reference_time": ref.isoformat(),
        "days": spec.days, "other_days": spec.other_days,
        "rain": {"start": (ref - timedelta(days=1, hours=6)).isoformat(), "hours": 3, "rise_m": 0.35},
        "absences": [{"device_id": absent["device_id"], "start": (ref - timedelta(days=3, hours=2)).isoformat(),
                      "end": (ref + timedelta(days=1)).isoformat(), "reason": "外出探亲（家属提前告知）",
                      "announced_by": f"{fam['name']}（{fam['relation']}）"}],
        "devices": devices,
    }
    (out_dir / PLAN_FILE).write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    section = summary(doc)
    problems = verify(doc, naive_findings(doc, seed))
    if problems:
        raise AssertionError("sensing demo: planted cases do not hold: " + "; ".join(problems))
    return section


def _on_manholes(manholes, k: int, rng) -> list[dict] | None:
    """``k`` manholes of the network for the covers, spread over it: drains' 检查井 (storm, then
    sewage) first, then the other types' wells; None without enough manholes."""
    if manholes is None or len(manholes) < k:
        return None
    rank = {"YS": 0, "WS": 1}
    m = manholes.assign(_rank=manholes["type_code"].map(lambda c: rank.get(c, 2)))
    m = m[np.isfinite(m["well_depth"].to_numpy(dtype=float)) & (m["road"].astype(str) != "")]
    pool = []
    for _, grp in m.groupby("_rank", sort=True):
        take = min(k - len(pool), len(grp))
        pool += [grp.iloc[i] for i in np.sort(rng.choice(len(grp), size=take, replace=False))]
        if len(pool) == k:
            break
    if len(pool) < k:
        return None
    return [{"x": float(r["x"]), "y": float(r["y"]), "road": str(r["road"]), "manhole": str(r["point_id"]),
             "pipe_type": str(r["type"]), "depth_m": round(float(r["well_depth"]), 1)} for r in pool]


def _junctions(roads, k: int, rng) -> list[tuple[Any, str, str]]:
    """Road junctions (where two differently named roads cross or meet), the busiest first, spread
    over the list: (point, a name for it, the busier road's class)."""
    import shapely

    rank = {"主干路": 0, "次干路": 1, "支路": 2, "乡村道路": 3}
    g = roads.geometry.to_numpy()
    names = roads["name"].to_numpy()
    cls = roads["road_class"].to_numpy()
    ok = np.flatnonzero(np.isin(cls, list(rank)))
    tree = shapely.STRtree(g[ok])
    left, right = tree.query(g[ok], predicate="intersects")
    found = {}
    for i, j in zip(ok[left], ok[right]):
        if i >= j or names[i] == names[j]:
            continue
        x = shapely.intersection(g[i], g[j])
        for p in shapely.get_parts(x):
            if shapely.get_type_id(p) != 0:  # points only (not shared segments)
                continue
            key = (round(p.x), round(p.y))
            if key in found:
                continue
            a, b = sorted((i, j), key=lambda r: (rank[cls[r]], names[r]))
            found[key] = (rank[cls[a]] + rank[cls[b]], key[0], key[1], f"{names[a]}与{names[b]}路口", cls[a])
    found = sorted(found.values())
    if len(found) < k:
        raise AssertionError(f"sensing demo: only {len(found)} road junctions for {k} traffic counters")
    # the busiest half first, then spread over the rest
    busy = found[: k // 2]
    rest = found[k // 2:]
    step = max(1, len(rest) // (k - len(busy)))
    chosen = busy + rest[::step][: k - len(busy)]
    return [(shapely.Point(f[1], f[2]), f[3], f[4]) for f in chosen]


def summary(doc: dict) -> dict:
    """The manifest's ``sensing`` section of a plan."""
    devs = doc["devices"]
    counts: dict[str, int] = {}
    for d in devs:
        counts[d["type"]] = counts.get(d["type"], 0) + 1
    return {
        "file": PLAN_FILE, "reference_time": doc["reference_time"], "days": doc["days"],
        "other_days": doc["other_days"], "counts": counts,
        "households_by_street": {st: sum(1 for d in devs if d["type"] == "water-meter" and d["street"] == st)
                                 for st in STREETS},
        "planted": {k: [d["device_id"] for d in devs if d.get("case") == k] for k in PLANTED_KINDS},
        "negative": {k: [d["device_id"] for d in devs if d.get("case") == k] for k in GUARD_KINDS},
        "observations": expected_observations(doc),
    }


def expected_observations(doc: dict) -> int:
    n = 0
    for d in doc["devices"]:
        for step in STREAMS[d["type"]].values():
            days = doc["days"] if d["type"] == "water-meter" else doc["other_days"]
            n += int(timedelta(days=days) / step)
    return n


def read_plan(out_dir: Path) -> dict:
    p = Path(out_dir) / PLAN_FILE
    if not p.exists():
        raise FileNotFoundError(f"{p}: no sensing plan; rebuild the demo (geotwin demo build --rebuild)")
    return json.loads(p.read_text(encoding="utf-8"))


# -- naive findings (the yardstick for the rule engine) --------------------------------------------------

#: the pilot's defaults (shared/docs/domain.md §7)
INACTIVITY_HOURS, INACTIVITY_M3 = 12, 0.01
LEAK_HOURS = 24
HYDRANT_MIN_MPA = 0.1
TILT_MAX = 10.0


def naive_findings(doc: dict, seed: int) -> dict[str, list[str]]:
    """What the pilot's rules find on the generated data at the reference time, computed the naive
    way (numpy over each series): device ids per kind. Meter rules are also swept over the whole
    history (every half hour), so a household that would have alerted at any time is found —
    ``inactivity`` / ``leak`` list those found at the reference time, ``*-history`` any time."""
    absences = {a["device_id"]: (datetime.fromisoformat(a["start"]), datetime.fromisoformat(a["end"]))
                for a in doc.get("absences", [])}
    out: dict[str, list[str]] = {k: [] for k in (*PLANTED_KINDS, "inactivity-history", "leak-history",
                                                 "absence-silent")}
    win, leak_win = INACTIVITY_HOURS * 2, LEAK_HOURS * 2
    for s in series_of(doc, seed):
        if s.stream == "用水量":
            v = s.values
            c = np.concatenate([[0.0], np.cumsum(v)])
            sums = c[win:] - c[:-win]              # window ending after slot i + win - 1
            quiet = sums < INACTIVITY_M3 - 1e-9
            nz = (v > 0).astype(int)
            cn = np.concatenate([[0], np.cumsum(nz)])
            full = (cn[leak_win:] - cn[:-leak_win]) == leak_win
            window_end = s.end[win - 1:]
            away = absences.get(s.device_id)
            if away:
                a0, a1 = _utc64(away[0]), _utc64(away[1])
                covered = (s.start[: sums.size] >= a0) & (window_end <= a1)
                if quiet[-1] and covered[-1]:
                    out["absence-silent"].append(s.device_id)
                quiet = quiet & ~covered
            if quiet[-1]:
                out["inactivity"].append(s.device_id)
            if quiet.any():
                out["inactivity-history"].append(s.device_id)
            if full[-1]:
                out["leak"].append(s.device_id)
            if full.any():
                out["leak-history"].append(s.device_id)
        elif (s.stream == "井盖开启" and s.values[-1]) or (s.stream == "倾角" and s.values[-1] > TILT_MAX):
            out["manhole-open"].append(s.device_id)
        elif s.stream == "井内水位":
            depth = next(d["depth_m"] for d in doc["devices"] if d["device_id"] == s.device_id)
            if s.values[-1] > depth - 0.5:
                out["manhole-flooded"].append(s.device_id)
        elif s.stream == "水压" and s.values[-1] < HYDRANT_MIN_MPA:
            out["hydrant-low"].append(s.device_id)
    return {k: sorted(set(v)) for k, v in out.items()}


def verify(doc: dict, found: dict[str, list[str]]) -> list[str]:
    """Problems: a planted case not found, a guard case found, anything else found."""
    s = summary(doc)
    problems = []
    for kind, ids in s["planted"].items():
        if not ids:
            problems.append(f"{kind}: nothing planted")
        if set(found.get(kind, [])) != set(ids):
            problems.append(f"{kind}: planted {ids}, found {found.get(kind, [])}")
    for kind, what in (("inactivity", "no use for 12 h"), ("leak", "use in every slot for 24 h")):
        other = sorted(set(found[f"{kind}-history"]) - set(s["planted"][kind]))
        if other:
            problems.append(f"{what} at some time in the history of unplanted household(s) {other[:5]}")
    if set(found["absence-silent"]) != set(s["negative"]["absence"]):
        problems.append(f"absence: the announced household is not silent for the window ({found['absence-silent']})")
    return problems


# -- load (database) -----------------------------------------------------------------------------------

SOURCE = "geotwin-demo"


def fingerprint(out_dir: Path) -> str:
    """The plan's identity: a load of the same plan is a no-op."""
    return hashlib.sha256((Path(out_dir) / PLAN_FILE).read_bytes()).hexdigest()[:16]


def device_spec(dev: dict, plan_id: str) -> dict:
    """A planned device as ``sensing.devices.add`` takes it."""
    props = {"source": SOURCE, "plan": plan_id}
    if dev["type"] == "water-meter":
        props["habit"] = dev["habit"]
    for k in ("road", "manhole", "pipe_type", "depth_m", "tilt0", "level0", "pressure0", "peak_per_5min", "battery0"):
        if k in dev:  # the device's normal values: the simulator continues from them
            props[k] = dev[k]
    spec = {"device_id": dev["device_id"], "type": dev["type"], "name": dev["name"], "community": dev["community"],
            "street": dev["street"], "lon": dev["lon"], "lat": dev["lat"], "installed_on": dev["installed_on"],
            "restricted": dev["restricted"], "properties": props}
    for k in ("building_id", "address", "household"):
        if dev.get(k) is not None:
            spec[k] = dev[k]
    return spec


def _demo_devices(conn) -> list[tuple[str, int | None, str | None]]:
    return conn.execute(
        "SELECT device_id, thing_id, properties ->> 'plan' FROM sensing_devices "
        "WHERE properties ->> 'source' = %s ORDER BY device_id", (SOURCE,)).fetchall()


def remove(conn) -> int:
    """Delete the demo's devices with everything hanging on them (Things, Locations, Datastreams,
    readings, baselines, absences, alerts) in the caller's transaction. Returns how many."""
    rows = _demo_devices(conn)
    if not rows:
        return 0
    ids = [r[0] for r in rows]
    things = [r[1] for r in rows if r[1] is not None]
    streams = [r[0] for r in conn.execute("SELECT id FROM sta_datastreams WHERE thing_id = ANY(%s)", (things,))]
    locations = [r[0] for r in conn.execute(
        "SELECT location_id FROM sta_thing_locations WHERE thing_id = ANY(%s) "
        "UNION SELECT lh.location_id FROM sta_location_history lh JOIN sta_historical_locations h "
        "ON h.id = lh.historical_location_id WHERE h.thing_id = ANY(%s)", (things, things))]
    # The readings go first. A monthly partition that holds the demo's readings only is emptied
    # with TRUNCATE (a DELETE of 600 k rows makes the maintenance trigger recompute every bucket it
    # touched: ~10 s for nothing, as the buckets go anyway); what remains in shared partitions is
    # deleted; then the streams' stats and aggregates, the devices (baselines, absences, alerts
    # cascade) and the Things (Datastreams cascade).
    parts = [r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'sta_observations'::regclass ORDER BY 1")]
    for part in parts:
        mine, others = conn.execute(
            f'SELECT EXISTS (SELECT 1 FROM "{part}" WHERE stream_id = ANY(%s)), '
            f'EXISTS (SELECT 1 FROM "{part}" WHERE stream_id <> ALL(%s))', (streams, streams)).fetchone()
        if mine and not others:
            conn.execute(f'TRUNCATE "{part}"')
    conn.execute("DELETE FROM sta_observations WHERE stream_id = ANY(%s)", (streams,))
    conn.execute("DELETE FROM sta_aggregates WHERE stream_id = ANY(%s)", (streams,))
    conn.execute("DELETE FROM sta_stream_stats WHERE stream_id = ANY(%s)", (streams,))
    conn.execute("DELETE FROM sensing_devices WHERE device_id = ANY(%s)", (ids,))
    conn.execute("DELETE FROM sta_things WHERE id = ANY(%s)", (things,))
    conn.execute("DELETE FROM sta_locations l WHERE l.id = ANY(%s) AND NOT EXISTS "
                 "(SELECT 1 FROM sta_thing_locations tl WHERE tl.location_id = l.id)", (locations,))
    conn.execute("DELETE FROM mqtt_credentials WHERE username = ANY(%s)", (ids,))
    return len(ids)


def _iso_utc(t: np.ndarray) -> list[str]:
    return [s + "+00" for s in np.datetime_as_string(t, unit="s")]


def copy_series(conn, rows: Iterator[tuple[int, Series]]) -> int:
    """COPY readings into ``sta_observations`` (one statement: the stats / aggregates triggers run
    once). ``rows``: (datastream id, series). Returns the number of observations."""
    n = 0
    with conn.cursor() as cur:
        with cur.copy("COPY sta_observations (stream_id, phenomenon_time_start, phenomenon_time_end, "
                      "result_number, result_json) FROM STDIN") as cp:
            for stream_id, s in rows:
                starts = _iso_utc(s.start)
                ends = _iso_utc(s.end) if s.end is not None else [r"\N"] * len(starts)
                if s.values.dtype == bool:
                    vals = [f"\\N\t{'true' if v else 'false'}" for v in s.values.tolist()]
                else:
                    vals = [f"{v!r}\t\\N" for v in s.values.tolist()]
                sid = str(stream_id)
                cp.write("".join(f"{sid}\t{a}\t{b}\t{v}\n" for a, b, v in zip(starts, ends, vals)))
                n += len(starts)
    return n


def load(manifest, settings=None, *, force: bool = False, check_rules: bool = True) -> dict:
    """Write the plan's devices, absences and readings into the database (replacing an earlier demo
    load; a no-op when the same plan is loaded already, unless ``force``), then (``check_rules``)
    learn the baselines and evaluate the rules at the reference time — :func:`check`.
    Returns a summary: devices, observations, seconds, skipped, alerts, problems."""
    import time as _time

    from spatial_api import db

    try:
        from sensing import devices as registry
    except ImportError as exc:  # pragma: no cover — the sensing room is part of geotwin
        raise RuntimeError(f"the sensing room is not installed ({exc})") from None

    t0 = _time.perf_counter()
    out_dir = Path(manifest.out_dir)
    doc = read_plan(out_dir)
    plan_id = fingerprint(out_dir)
    ref = datetime.fromisoformat(doc["reference_time"])
    summary_: dict[str, Any] = {"devices": len(doc["devices"]), "observations": 0, "skipped": False,
                                "reference_time": doc["reference_time"]}
    with db.connect(settings) as conn:
        if conn.execute("SELECT to_regclass('sensing_devices') IS NULL").fetchone()[0]:
            raise RuntimeError("the database has no sensing tables yet: run `geotwin db migrate` first")
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.sensing_demo'))")
        have = _demo_devices(conn)
        if (not force and len(have) == len(doc["devices"]) and {r[2] for r in have} == {plan_id}):
            summary_["skipped"] = True
        else:
            summary_["removed"] = remove(conn)
            summary_["seconds_remove"] = round(_time.perf_counter() - t0, 2)
            streams: dict[tuple[str, str], int] = {}
            for dev in doc["devices"]:
                added = registry.add(conn, device_spec(dev, plan_id), issue_credential=False)
                keys = {s.key: s.name for s in registry.TYPES[dev["type"]].streams}
                for key, sid in added.datastreams.items():
                    streams[(dev["device_id"], keys[key])] = sid
            if conn.execute("SELECT to_regclass('sensing_absences') IS NOT NULL").fetchone()[0]:
                for a in doc.get("absences", []):
                    conn.execute("INSERT INTO sensing_absences (device_id, start_at, end_at, reason, announced_by, "
                                 "created_at) VALUES (%s, %s, %s, %s, %s, %s)",
                                 (a["device_id"], a["start"], a["end"], a["reason"], a["announced_by"],
                                  datetime.fromisoformat(a["start"]) - timedelta(hours=20)))
            summary_["seconds_devices"] = round(_time.perf_counter() - t0, 2)
            t_first = ref - timedelta(days=max(doc["days"], doc["other_days"]) + 1)
            conn.execute("SELECT sta_ensure_partitions(%s, %s)", (t_first, ref))
            summary_["observations"] = copy_series(
                conn, ((streams[(s.device_id, s.stream)], s) for s in series_of(doc, doc["seed"])))
        conn.commit()
        summary_["seconds_load"] = round(_time.perf_counter() - t0, 2)
        if check_rules and not summary_["skipped"]:  # an unchanged load keeps its alerts as they are
            summary_.update(check(conn, manifest, doc))
            conn.commit()
    summary_["seconds"] = round(_time.perf_counter() - t0, 2)
    return summary_


#: how far back the demo replays the meter rules before the reference time (hourly), so that the
#: pilot's alerts open when they would have (the fall's baseline alert in the morning, the leak's
#: after 24 h …) and a guard case that alerted at any of those hours is caught
HISTORY = timedelta(hours=12)


def check(conn, manifest, doc: dict | None = None) -> dict:
    """Learn the baselines (at midnight before the reference time, as a nightly job would), replay
    the meter rules hourly over the last :data:`HISTORY`, evaluate every rule at the reference time,
    then compare the open alerts with the planted cases: ``{"alerts": {device: [rule ids]},
    "opened": {device: {rule: time}}, "problems": [...]}`` (``problems`` empty: every planted case
    alerted, no guard case and nothing else did). Uses ``sensing.baseline.learn`` and
    ``sensing.rules.evaluate_history`` / ``evaluate``; without them ``problems`` says so."""
    doc = doc or read_plan(Path(manifest.out_dir))
    ref = datetime.fromisoformat(doc["reference_time"])
    try:
        from sensing import baseline, rules
    except ImportError as exc:
        return {"alerts": {}, "opened": {}, "problems": [f"cannot evaluate the alert rules: {exc}"]}
    ids = [d["device_id"] for d in doc["devices"]]
    meters = [d["device_id"] for d in doc["devices"] if d["type"] == "water-meter"]
    baseline.learn(conn, meters, now=datetime.combine(ref.date(), time(0), CST))
    rules.evaluate_history(conn, ref - HISTORY, ref, timedelta(hours=1), device_ids=meters)
    rules.evaluate(conn, now=ref, device_ids=ids)
    rows = conn.execute(
        "SELECT device_id, rule_id, kind, opened_at FROM sensing_alerts "
        "WHERE device_id = ANY(%s) AND state <> 'closed' ORDER BY device_id, opened_at, rule_id", (ids,)).fetchall()
    alerts: dict[str, list[str]] = {}
    kinds: dict[str, set[str]] = {}
    opened: dict[str, dict[str, str]] = {}
    for device_id, rule_id, kind, at in rows:
        alerts.setdefault(device_id, []).append(rule_id)
        kinds.setdefault(device_id, set()).add(kind)
        opened.setdefault(device_id, {})[rule_id] = at.astimezone(CST).isoformat()
    return {"alerts": alerts, "opened": opened, "problems": verify_alerts(doc, kinds)}


#: which alert kinds must be open for each planted case (any one of them)
EXPECTED_KINDS = {"inactivity": {"inactivity", "baseline"}, "leak": {"continuous-use"},
                  "manhole-open": {"threshold"}, "manhole-flooded": {"threshold", "rate-of-change"},
                  "hydrant-low": {"threshold"}}
#: the alert kinds a guard case must not raise
GUARDED_KINDS = {"absence": {"inactivity", "baseline"}, "heavy-cleaning": {"continuous-use"}}


def verify_alerts(doc: dict, kinds: dict[str, set[str]]) -> list[str]:
    """Problems with the alerts open at the reference time (device → alert kinds)."""
    s = summary(doc)
    problems = []
    planted = {d: k for k, ids in s["planted"].items() for d in ids}
    for kind, ids in s["planted"].items():
        for d in ids:
            if not kinds.get(d, set()) & EXPECTED_KINDS[kind]:
                problems.append(f"{kind}: planted {d} has no {'/'.join(sorted(EXPECTED_KINDS[kind]))} alert "
                                f"(open: {sorted(kinds.get(d, []))})")
    for kind, ids in s["negative"].items():
        for d in ids:
            wrong = kinds.get(d, set())
            if wrong:
                problems.append(f"{kind}: guard case {d} alerted ({', '.join(sorted(wrong))})")
    extra = sorted(d for d in kinds if d not in planted and d not in
                   {x for ids in s["negative"].values() for x in ids})
    if extra:
        problems.append(f"alerts on devices with no planted case: {extra[:8]}{'…' if len(extra) > 8 else ''}")
    return problems
