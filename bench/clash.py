"""Clash check benchmark (issue 17: "clash check of one IFC model against 10,000 pipe segments: < 2 s").

In a throwaway schema (``geotwin_bench_clash``, dropped at the end unless --keep):

- the duplex sample (``shared/samples/duplex.ifc``, 236 elements) registered with
  ``--at 114.2514,22.7215,35`` (its origin on the ground at 35 m);
- 10,000 pipe segments (``--segments``) of every type written into ``pipe_segments`` with the
  contract's properties: a street grid of 30 m segments 1–4 m under the ground in a 1.2 km
  square around the model, plus a few dozen pipes passing under, beside and through it (round and
  box sections), so that the report has cuts, near misses and clear pipes;
- one basement in ``basements`` next to it (an underground structure to report).

Timed (``clash.check`` in process, median of ``--runs``): the model (cold: the first run,
tessellation by IfcOpenShell included; warm: the model's mesh cached, as in a server that checked
it before), and a planned basement made from the model's footprint (6 m deep). Prints the table
and writes a markdown section (``--md``, default /tmp/h_D_bench.md).

    .venv/bin/python bench/clash.py [--segments 10000] [--runs 5] [--keep] [--md FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCHEMA = "geotwin_bench_clash"
os.environ["GEOTWIN_DB_SCHEMA"] = SCHEMA
DUPLEX = ROOT.parent / "shared" / "samples" / "duplex.ifc"
AT = (114.2514, 22.7215, 35.0)
GROUND = 35.0
TYPES = [("JS", "给水"), ("YS", "雨水"), ("WS", "污水"), ("RQ", "燃气"), ("DL", "电力"), ("TX", "通信"), ("RL", "热力")]


def pipes(n: int, centre, rng):
    """n segments: a grid network around ``centre`` (EPSG:4547) and ~40 pipes near the model."""
    import numpy as np

    cx, cy = centre
    rows = []
    near = 40
    k = 0
    spacing, seg = 10.0, 30.0
    half = 150.0
    lines = int(2 * half / spacing)
    while len(rows) < n - near:
        t, name = TYPES[k % len(TYPES)]
        horizontal = (k // len(TYPES)) % 2 == 0
        line = (k // (2 * len(TYPES))) % lines
        step = k // (2 * len(TYPES) * lines)
        off = -half + line * spacing + 1.5 * (k % len(TYPES))
        a = -half + (step * seg) % (2 * half)
        p0 = (cx + a, cy + off) if horizontal else (cx + off, cy + a)
        p1 = (cx + a + seg, cy + off) if horizontal else (cx + off, cy + a + seg)
        z0 = GROUND - rng.uniform(1, 4)
        rows.append((t, name, p0, p1, z0, z0 - rng.uniform(0, 0.3), rng.choice([100, 200, 300, 400, 600]), None))
        k += 1
    for i in range(near):  # under, beside and through the model, every direction
        t, name = TYPES[i % len(TYPES)]
        ang = np.radians(rng.uniform(0, 180))
        d = rng.uniform(-20, 20)
        ox, oy = cx + d * np.cos(ang + np.pi / 2), cy + d * np.sin(ang + np.pi / 2)
        p0 = (ox - 40 * np.cos(ang), oy - 40 * np.sin(ang))
        p1 = (ox + 40 * np.cos(ang), oy + 40 * np.sin(ang))
        z0 = GROUND - rng.uniform(0.5, 5)
        box = (800, 600) if i % 9 == 0 else None
        rows.append((t, name, p0, p1, z0, z0 - rng.uniform(0, 0.5), None if box else 300, box))
    return rows


def load(settings, n: int) -> tuple:
    import numpy as np
    import pandas as pd
    import shapely
    from pyproj import Transformer

    from cim_builder.ifc import register
    from spatial_api import db, store

    with db.connect(settings, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
    db.migrate(settings)
    tmp = Path(tempfile.mkdtemp(prefix="bench-clash-"))
    info = register(settings, DUPLEX, model_id="duplex", at=AT, store_dir=tmp)
    to_m = Transformer.from_crs("EPSG:4490", "EPSG:4547", always_xy=True)
    to_d = Transformer.from_crs("EPSG:4547", "EPSG:4490", always_xy=True)
    centre = to_m.transform(*info["centre"])
    rng = np.random.default_rng(17)
    rows = pipes(n, centre, rng)
    geoms, props = [], []
    for i, (code, name, p0, p1, z0, z1, d, box) in enumerate(rows):
        a, b = to_d.transform(*p0), to_d.transform(*p1)
        geoms.append(shapely.LineString([a, b]))
        w, h = box if box else (d, d)
        props.append({"id": f"{code}-S{i}", "segment_id": f"S{i}", "type": name, "type_code": code,
                      "diameter_mm": d, "width_mm": w, "height_mm": h, "material": "PE",
                      "start_axis_z": z0, "end_axis_z": z1})
    schema = [("id", "string"), ("segment_id", "string"), ("type", "string"), ("type_code", "string"),
              ("diameter_mm", "number"), ("width_mm", "number"), ("height_mm", "number"), ("material", "string"),
              ("start_axis_z", "number"), ("end_axis_z", "number")]
    base = shapely.box(centre[0] + 14, centre[1] - 10, centre[0] + 34, centre[1] + 10)
    with db.connect(settings) as conn:
        for name, family, key, sch, fids, gs, ps in (
                ("pipe_segments", "LineString", "id", schema, [p["id"] for p in props], geoms, props),
                ("basements", "Polygon", "basement_id", [("basement_id", "string"), ("use", "string"),
                                                         ("depth_m", "number"), ("ground_z", "number")],
                 ["DX1"], [shapely.transform(base, lambda c: np.column_stack(to_d.transform(c[:, 0], c[:, 1])))],
                 [{"basement_id": "DX1", "use": "地下车库", "depth_m": 6.0, "ground_z": GROUND}])):
            store.create_layer(conn, store.Layer(name=name, geometry_family=family, key_field=key,
                                                 properties=[{"name": a, "type": b} for a, b in sch]),
                               with_partition=False)
            layer = store.get_layer(conn, name)
            fr = store.FeatureRows(rows=np.arange(1, len(fids) + 1), fids=np.array(fids, dtype=object),
                                   geometry=np.array(gs, dtype=object),
                                   properties=pd.DataFrame(ps, dtype=object))
            store.write_changeset(conn, layer, fr, mode="replace", valid_from=datetime(2024, 1, 1, tzinfo=timezone.utc),
                                  author="bench", source="bench/clash.py", new_layer=True)
        conn.commit()
    return tmp, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segments", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--md", type=Path, default=Path("/tmp/h_D_bench.md"))
    args = ap.parse_args()

    from cim_builder import clash, ifc
    from spatial_api.config import get_settings, reset_settings

    reset_settings()
    settings = get_settings()
    assert settings.db_schema == SCHEMA
    load1 = os.getloadavg()[0]
    tmp, info = load(settings, args.segments)
    try:
        ifc._ELEMENTS_CACHE.clear()
        t = time.perf_counter()
        cold = clash.check(settings, model="duplex")
        cold_s = time.perf_counter() - t
        warm, warm_cpu, reports = [], [], []
        for _ in range(args.runs):
            t, c = time.perf_counter(), time.process_time()
            reports.append(clash.check(settings, model="duplex"))
            warm.append(time.perf_counter() - t)
            warm_cpu.append(time.process_time() - c)
        r = reports[-1]
        fp = r["subject"]["footprint"]
        planned = []
        for _ in range(args.runs):
            t = time.perf_counter()
            pr = clash.check(settings, footprint=fp, depth_m=6.0, ground_z=GROUND)
            planned.append(time.perf_counter() - t)
        load2 = os.getloadavg()[0]
        s, ps = r["summary"], pr["summary"]
        lines = [
            "### Clash check (issue 17)",
            "",
            f"`bench/clash.py`: the duplex IFC ({info['elements']} elements, placed with `--at "
            f"{','.join(map(str, AT))}`) and a planned basement on its footprint (6 m deep) against "
            f"{args.segments:,} pipe segments around it (a 300 m street grid (10 m apart) of every type + 40 pipes under, beside "
            "and through the model, some 800×600 box sections) and one neighbouring basement; `clash.check` in "
            f"process, median of {args.runs}; 2 cores shared, load average {load1:.1f} → {load2:.1f}.",
            "",
            "| subject | pipes examined | reported (≤ 5 m) | cuts | too close | structures | wall time |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| duplex, cold (tessellation included) | {cold['summary']['pipes_examined']:,} | {cold['summary']['pipes']} | "
            f"{cold['summary']['cuts']} | {cold['summary']['too_close']} | {cold['summary']['structures']} | {cold_s:.2f} s |",
            f"| duplex, warm (mesh cached) | {s['pipes_examined']:,} | {s['pipes']} | {s['cuts']} | {s['too_close']} | "
            f"{s['structures']} | {statistics.median(warm):.2f} s (CPU {statistics.median(warm_cpu):.2f} s) |",
            f"| planned basement (footprint × 6 m) | {ps['pipes_examined']:,} | {ps['pipes']} | {ps['cuts']} | "
            f"{ps['too_close']} | {ps['structures']} | {statistics.median(planned):.2f} s |",
            "",
            "\"pipes examined\": the segments the index returns around the subject (its box + 10 m); the rest "
            "stay in PostGIS. "
            f"Warm duplex run split: {json.dumps(s['seconds'])} (subject = meshing / placing the model, read = pipes "
            "and structures from PostGIS, check = the exact distances). Goal < 2 s (warm): "
            + ("met" if statistics.median(warm) < 2 else
               (f"met in CPU time ({statistics.median(warm_cpu):.2f} s); the wall time suffers the shared machine's load"
                if statistics.median(warm_cpu) < 2 else "NOT met"))
            + f"; fastest warm run {min(warm):.2f} s. The cold run adds IfcOpenShell's tessellation of the model.",
        ]
        text = "\n".join(lines) + "\n"
        print(text)
        args.md.write_text(text)
    finally:
        if not args.keep:
            import shutil

            from spatial_api import db

            with db.connect(settings, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
