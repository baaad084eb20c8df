"""The demo district builder: a deterministic synthetic Longgang-like district written as
ordinary files (GeoPackage / Shapefile / Cloud-Optimized GeoTIFF) plus ``manifest.json``, and
loaded through the same ingestion GIS staff use.

    from data.demo import build_files, load
    manifest = build_files(Path(".geotwin/demo/small"), size="small", seed=2024)
    summaries = load(manifest)

Modules: ``_world`` (terrain, water, admin areas, roads, lots), ``_development`` (parcels,
buildings, approvals, planted cases), ``_landuse`` (two survey years and the protection
layers), ``_places`` (place names, addresses), ``_imagery`` (DEM and imagery COGs),
``_pipes`` (the utility network as CJJ 61 surveys, basements), ``_io`` (typed file writing),
``checks`` (naive evaluation of the supervision rules).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import shapely

from data import _development, _imagery, _io, _landuse, _pipes, _places, _world, sensing_demo
from data._config import CENTRE, CRS, EPOCHS, REFERENCE_DATE, SIZES, SURVEY_DATES
from data._io import write_layer
from data.checks import naive_findings
from spatial_api.ingest import ingest_vector
from spatial_api import entities
from spatial_api.ingest.imagery import ingest_imagery
from underground.ingest import ingest_pipes

MANIFEST_FORMAT = "geotwin-demo-manifest/1"
#: bump when the builder's output changes, so `geotwin demo build` rebuilds existing folders
BUILDER_VERSION = 6  # 2: industrial parcels rendered with little green + a planted R9 green-ratio case
#: (2 changes the imagery and the manifest's R9 lists only: the vector layers are those of 1)
#: 3: the sensing devices and readings (sensing.json, the manifest's "sensing"; layers as in 2)
#: 4: the underground (pipe surveys per type, the basements layer, the manifest's "underground");
#:    manhole-cover sensors on the network's manholes
#: 5: the imagery only: no street trees inside parcels, the lawn of an industrial parcel capped at 6% of its
#:    pixels (the landscaped R9 case at least 60%), so R9's green ratio reads the same on every size
#: 6: the pipe surveys (and sensing.json's manhole covers): crossings judged at the crossing's height,
#:    streets cut at crests and dips for drain routing — plausible depths on the large district's hills
Step = Callable[[str], None]


@dataclass
class LayerFile:
    """One vector file to load, in load order."""
    path: Path
    layer: str
    key: str
    valid_from: date | None
    title_zh: str
    title_en: str
    access_level: str  # public | internal | restricted
    mode: str = "replace"
    crs: str | None = None  # only when the file's own CRS must be overridden
    encoding: str | None = None
    count: int = 0
    geometry_type: str = ""
    fields: list[str] = field(default_factory=list)
    file_crs: str = CRS


@dataclass
class RasterFile:
    kind: str  # imagery | dem
    path: Path
    epoch_id: str | None = None
    acquired_on: date | None = None
    gsd_m: float = 0.0
    sensor: str | None = None
    width: int = 0
    height: int = 0
    crs: str = CRS
    extra: dict = field(default_factory=dict)


@dataclass
class Manifest:
    out_dir: Path
    size: str
    seed: int
    crs: str
    bbox: list[float]
    centre: list[float]
    reference_date: date
    layers: list[LayerFile]
    imagery: list[RasterFile]
    dem: RasterFile
    planted_cases: dict[str, list[str]]
    negative_cases: dict[str, list[str]]
    imagery_changes: dict[str, Any]
    land_use_changes: dict[str, Any]
    counts: dict[str, int]
    expected_findings: dict[str, list[str]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: the sensing demo (data.sensing_demo): plan file, counts, planted / guard device ids
    sensing: dict[str, Any] = field(default_factory=dict)
    #: the utility network (data._pipes): per type its survey files and counts, the survey area
    underground: dict[str, Any] = field(default_factory=dict)
    format: str = MANIFEST_FORMAT
    builder_version: int = BUILDER_VERSION

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def conv(v):
            if isinstance(v, Path):
                try:
                    return v.relative_to(self.out_dir).as_posix()
                except ValueError:
                    return str(v)
            if isinstance(v, date):
                return v.isoformat()
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [conv(x) for x in v]
            if isinstance(v, (np.integer,)):
                return int(v)
            if isinstance(v, (np.floating,)):
                return float(v)
            return v

        d = {k: conv(v) for k, v in asdict(self).items() if k != "out_dir"}
        d["layers"] = [conv(asdict(x)) for x in self.layers]
        d["imagery"] = [conv(asdict(x)) for x in self.imagery]
        d["dem"] = conv(asdict(self.dem))
        return d

    def write(self) -> Path:
        p = self.out_dir / "manifest.json"
        p.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
        return p

    @classmethod
    def read(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        out_dir = path.parent.resolve()
        d = json.loads(path.read_text(encoding="utf-8"))

        def dt(v):
            return date.fromisoformat(v) if v else None

        layers = [LayerFile(**{**x, "path": out_dir / x["path"], "valid_from": dt(x["valid_from"])}) for x in d["layers"]]
        imagery = [RasterFile(**{**x, "path": out_dir / x["path"], "acquired_on": dt(x["acquired_on"])})
                   for x in d["imagery"]]
        dem = RasterFile(**{**d["dem"], "path": out_dir / d["dem"]["path"], "acquired_on": dt(d["dem"]["acquired_on"])})
        return cls(out_dir=out_dir, size=d["size"], seed=d["seed"], crs=d["crs"], bbox=d["bbox"], centre=d["centre"],
                   reference_date=dt(d["reference_date"]), layers=layers, imagery=imagery, dem=dem,
                   planted_cases=d["planted_cases"], negative_cases=d["negative_cases"],
                   imagery_changes=d["imagery_changes"], land_use_changes=d["land_use_changes"],
                   counts=d["counts"], expected_findings=d.get("expected_findings", {}),
                   timings=d.get("timings", {}), sensing=d.get("sensing", {}),
                   underground=d.get("underground", {}), format=d.get("format", MANIFEST_FORMAT),
                   builder_version=d.get("builder_version", 0))

    def layer(self, name: str, which: int = -1) -> LayerFile:
        return [x for x in self.layers if x.layer == name][which]

    def pipe_surveys(self) -> list[dict]:
        """The underground's surveys, one per type, with absolute ``points`` / ``segments`` paths."""
        return [{**t, "points": self.out_dir / t["points"], "segments": self.out_dir / t["segments"]}
                for t in self.underground.get("types", [])]


# -- layer catalogue: titles, keys, access levels ------------------------------------------------

TITLES = {
    "streets": ("街道", "Streets (sub-districts)", "public", "code"),
    "communities": ("社区", "Communities", "public", "code"),
    "roads": ("道路中心线", "Road centre lines", "public", "road_id"),
    "place_names": ("地名", "Place names", "public", "pn_id"),
    "addresses": ("门牌地址", "Door-number addresses", "internal", "addr_id"),
    "land_use": ("土地利用现状（三调地类图斑）", "Land use (third national land survey parcels)", "internal", "bsm"),
    "farmland": ("耕地", "Farmland", "internal", "farmland_id"),
    "basic_farmland": ("永久基本农田", "Permanent basic farmland", "restricted", "jbnt_id"),
    "forest": ("林地", "Forest land", "internal", "forest_id"),
    "eco_redline": ("生态保护红线", "Ecological protection red line", "restricted", "redline_id"),
    "approvals": ("建设用地批准（批次）", "Construction-land approval batches", "internal", "approval_id"),
    "parcels": ("供地项目（出让地块）", "Project land supply (granted parcels)", "internal", "parcel_id"),
    "buildings": ("建筑物轮廓", "Building footprints", "public", "building_id"),
    "basements": ("地下空间（地下室、地下车库）", "Basements and underground garages", "internal", "basement_id"),
    "imagery": ("影像目录", "Imagery catalogue", "public", "epoch_id"),
}


def _layer(out_dir: Path, fname: str, layer: str, frame: pd.DataFrame, geoms, valid_from, *,
           file_crs: str = CRS, geometry_type: str | None = None) -> LayerFile:
    zh, en, access, key = TITLES[layer]
    path = out_dir / fname
    info = write_layer(path, frame, geoms, layer=layer, crs=file_crs, geometry_type=geometry_type)
    return LayerFile(path=path, layer=layer, key=key, valid_from=valid_from, title_zh=zh, title_en=en,
                     access_level=access, count=info["count"], geometry_type=info["geometry_type"],
                     fields=info["fields"], file_crs=file_crs,
                     encoding="UTF-8" if path.suffix == ".shp" else None)


# -- build -----------------------------------------------------------------------------------------

def existing(out_dir: Path, size: str, seed: int) -> "Manifest | None":
    """The manifest of a complete earlier build of the same size, seed and builder version."""
    p = Path(out_dir) / "manifest.json"
    if not p.exists():
        return None
    try:
        m = Manifest.read(p)
    except (ValueError, KeyError, TypeError):
        return None
    if (m.size, m.seed, m.format, m.builder_version) != (size, seed, MANIFEST_FORMAT, BUILDER_VERSION):
        return None
    files = [x.path for x in m.layers] + [x.path for x in m.imagery] + [m.dem.path]
    files += [m.out_dir / m.sensing["file"]] if m.sensing else []
    files += [p for t in m.pipe_surveys() for p in (t["points"], t["segments"])]
    return (m if all(f.exists() for f in files) and m.expected_findings and m.sensing and m.underground.get("types")
            else None)


def build_files(out_dir: Path, size: str = "small", seed: int = 2024, *, on_step: Step | None = None,
                verify: bool = True, reuse: bool = False) -> "Manifest":
    """Write the demo district for ``size`` into ``out_dir`` and return its manifest (also
    written as ``out_dir/manifest.json``). Same seed → same attribute content (and the same
    bytes). ``reuse``: return an earlier complete build of the same size / seed as it is."""
    if size not in SIZES:
        raise ValueError(f"size {size!r}: choose one of {', '.join(SIZES)}")
    spec = SIZES[size]
    out_dir = Path(out_dir).resolve()
    if reuse:
        m = existing(out_dir, size, seed)
        if m is not None:
            return m
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "imagery").mkdir(exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    last = [t0, None]

    def step(name: str) -> None:
        now = time.perf_counter()
        if last[1] is not None:
            timings[last[1]] = round(now - last[0], 2)
        last[0], last[1] = now, name
        if on_step:
            on_step(name)

    step("terrain and water")
    world = _world.make_world(spec, seed)
    step("streets and communities")
    _world.make_admin(world)
    step("road network")
    _world.make_roads(world)
    step("blocks and lots")
    _world.make_lots(world)
    step("parcels, buildings, approvals")
    dev = _development.make_development(world)
    step("land use (2020, 2023)")
    lu = _landuse.make_landuse(world, dev)
    prot = _landuse.protection_layers(world, dev, lu)
    step("underground (pipe network, basements)")
    network = _pipes.make_network(world, size)
    pipe_problems = _pipes.problems(network)
    if pipe_problems:
        raise AssertionError("demo builder: the pipe network is implausible: " + "; ".join(pipe_problems[:10]))
    surveys = _pipes.write_surveys(network, out_dir / "underground", CRS)
    bf, bg = _pipes.make_basements(world, dev)

    step("writing vector files")
    layers: list[LayerFile] = []
    poly = _io.polygonal
    st = pd.DataFrame({"code": world.street_codes, "name": world.street_names,
                       "area_km2": np.round(shapely.area(world.street_geoms) / 1e6, 3)})
    layers.append(_layer(out_dir, "streets.gpkg", "streets", st, poly(world.street_geoms), date(2023, 1, 1)))
    cm = pd.DataFrame({"code": world.community_codes, "name": world.community_names,
                       "street_code": world.community_street,
                       "area_km2": np.round(shapely.area(world.community_geoms) / 1e6, 3)})
    layers.append(_layer(out_dir, "communities.gpkg", "communities", cm, poly(world.community_geoms), date(2023, 1, 1)))
    rf, rg = _places.roads_frame(world)
    layers.append(_layer(out_dir, "roads.gpkg", "roads", rf, rg, date(2025, 12, 31)))
    pf, pg = _places.place_names(world, dev)
    layers.append(_layer(out_dir, "place_names.shp", "place_names", pf, pg, date(2025, 12, 31)))
    af, ag = _places.addresses(world, dev)
    ag84 = _to_cgcs2000(ag)
    layers.append(_layer(out_dir, "addresses.gpkg", "addresses", af, ag84, date(2025, 12, 31), file_crs="EPSG:4490"))
    layers.append(_layer(out_dir, "land_use_2020.gpkg", "land_use", lu.frame2020, poly(lu.geom2020), SURVEY_DATES[0],
                         geometry_type=None))
    layers.append(_layer(out_dir, "land_use_2023.gpkg", "land_use", lu.frame2023, poly(lu.geom2023), SURVEY_DATES[1]))
    for name, vf in (("farmland", SURVEY_DATES[1]), ("basic_farmland", SURVEY_DATES[1]), ("forest", SURVEY_DATES[1]),
                     ("eco_redline", date(2022, 9, 30))):
        f, g = prot[name]
        layers.append(_layer(out_dir, f"{name}.gpkg", name, f, poly(g), vf))
    layers.append(_layer(out_dir, "approvals.gpkg", "approvals", dev.approvals, poly(dev.approval_geom), REFERENCE_DATE))
    layers.append(_layer(out_dir, "parcels.gpkg", "parcels", dev.parcels, poly(dev.parcel_geom), REFERENCE_DATE))
    layers.append(_layer(out_dir, "buildings.gpkg", "buildings", dev.buildings, poly(dev.building_geom), REFERENCE_DATE))
    layers.append(_layer(out_dir, "basements.gpkg", "basements", bf, poly(bg), REFERENCE_DATE))

    step("DEM")
    dem_info = _imagery.write_dem(world, out_dir / "dem.tif")
    dem = RasterFile(kind="dem", path=out_dir / "dem.tif", gsd_m=spec.dem_px, width=dem_info["width"],
                     height=dem_info["height"], extra={"min_m": dem_info["min_m"], "max_m": dem_info["max_m"],
                                                       "units": "metre"})
    step("imagery")
    rend = _imagery.Renderer(world, dev, lu)
    imagery: list[RasterFile] = []
    for ei, (eid, when, sensor) in enumerate(EPOCHS):
        if on_step:
            on_step(f"imagery {when.isoformat()}")
        img = rend.render(ei, when)
        path = out_dir / "imagery" / f"{eid}_{when.isoformat()}.tif"
        _imagery.write_cog(img, path, rend.grid.transform, kind="rgb")
        imagery.append(RasterFile(kind="imagery", path=path, epoch_id=eid, acquired_on=when, gsd_m=spec.px,
                                  sensor=sensor, width=rend.grid.width, height=rend.grid.height))
    step("imagery catalogue")
    foot = shapely.box(*world.bounds)
    for k, r in enumerate(imagery):
        cat = pd.DataFrame({
            "epoch_id": [x.epoch_id for x in imagery[:k + 1]],
            "acquired_on": [x.acquired_on for x in imagery[:k + 1]],
            "path": [str(x.path) for x in imagery[:k + 1]],
            "file_name": [x.path.relative_to(out_dir).as_posix() for x in imagery[:k + 1]],
            "gsd_m": [x.gsd_m for x in imagery[:k + 1]],
            "sensor": [x.sensor for x in imagery[:k + 1]],
        })
        layers.append(_layer(out_dir, f"imagery_catalogue_{r.acquired_on.year}.gpkg", "imagery", cat,
                             np.array([foot] * (k + 1), dtype=object), r.acquired_on))

    step("sensing plan (devices, readings checked)")
    sensing = sensing_demo.plan(out_dir, {x.layer: x.path for x in layers}, REFERENCE_DATE, CRS, size, seed,
                                manholes=network.manholes())

    step("manifest")
    stable = [pid for pid, s in zip(dev.parcels["parcel_id"], dev.parcels["actual_completion"])
              if s is not None and s < EPOCHS[0][1] and pid not in sum(dev.planted.values(), [])][:20]
    counts = {x.layer if x.layer not in ("land_use", "imagery") else f"{x.layer}:{x.path.stem}": x.count for x in layers}
    counts["imagery_epochs"] = len(imagery)
    for t in surveys:
        counts[f"pipe_points:{t['code']}"] = t["points_count"]
        counts[f"pipe_segments:{t['code']}"] = t["segments_count"]
    underground = {"crs": CRS, "survey_area": [round(v, 3) for v in network.box.bounds], "types": surveys,
                   "segments": sum(t["segments_count"] for t in surveys), "seconds": network.seconds,
                   "note": "CJJ 61 surveys: points (GeoPackage, Chinese headers) and segments (CSV) per type; "
                           "depth to the top, to the invert for 雨水 / 污水"}
    manifest = Manifest(
        out_dir=out_dir, size=size, seed=seed, crs=CRS, bbox=[round(v, 3) for v in world.bounds],
        centre=list(CENTRE), reference_date=REFERENCE_DATE, layers=layers, imagery=imagery, dem=dem,
        planted_cases=dev.planted, negative_cases=dev.negatives,
        imagery_changes={"from_epoch": EPOCHS[0][0], "to_epoch": EPOCHS[-1][0], "parcels": dev.imagery_change,
                         "stable_parcels": stable,
                         "note": "construction (bare soil → roofs) inside these parcels between the two epochs"},
        land_use_changes=lu.counts, counts=counts, timings=timings, sensing=sensing, underground=underground,
    )
    manifest.write()
    step("verify")
    if verify:
        found = naive_findings(out_dir)
        problems = verify_planted(manifest, found)
        if problems:
            raise AssertionError("demo builder: planted cases do not hold: " + "; ".join(problems))
        manifest.expected_findings = found
    step("done")
    timings["total"] = round(time.perf_counter() - t0, 2)
    manifest.timings = timings
    manifest.write()
    return manifest


def _to_cgcs2000(geoms: np.ndarray) -> np.ndarray:
    from pyproj import Transformer

    tr = Transformer.from_crs(CRS, "EPSG:4490", always_xy=True)

    def f(xy):
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.set_precision(shapely.transform(geoms, f), 1e-8)


# a planted parcel may rightly show up under a related rule too: idle parcels are also late
# starters, a two-year idle parcel is also a one-year one, a footprint over the boundary is
# also inside the setback zone
ALSO = {"R3": {"R4", "R5"}, "R4": {"R5"}, "R10": {"R11"}}


def verify_planted(manifest: Manifest, found: dict | None = None) -> list[str]:
    """Problems with the planted cases: empty when every planted id is found by the naive
    rules, no negative case is, and nothing else is found."""
    found = naive_findings(manifest.out_dir) if found is None else found
    problems = []
    for rule, ids in manifest.planted_cases.items():
        missing = sorted(set(ids) - set(found.get(rule, [])))
        if missing:
            problems.append(f"{rule}: planted {missing} not found")
        if not ids:
            problems.append(f"{rule}: nothing planted")
    for rule, ids in manifest.negative_cases.items():
        wrong = sorted(set(ids) & set(found.get(rule, [])))
        if wrong:
            problems.append(f"{rule}: negative case(s) {wrong} found")
    for rule, ids in found.items():
        allowed = set(manifest.planted_cases.get(rule, []))
        for other in ALSO.get(rule, ()):
            allowed |= set(manifest.planted_cases.get(other, []))
        extra = sorted(set(ids) - allowed)
        if extra:
            problems.append(f"{rule}: unplanted finding(s) {extra[:5]}{'…' if len(extra) > 5 else ''}")
    return problems


# -- load --------------------------------------------------------------------------------------

#: Entity codes given at load time, in order: (layer, entity type, assign options). Features
#: without an entity get a new one (a re-load finds them all linked: nothing changes); the
#: addresses join their building's entity through ``building_id``. ``pipe_points`` become
#: ``manhole`` entities — every surveyed point, valves and plain points too: the entity type for a
#: point of the network.
ENTITY_ASSIGNMENTS: tuple[tuple[str, str, dict], ...] = (
    ("buildings", "building", {}),
    ("addresses", "building", {"key": "building_id", "ref_layer": "buildings", "match": "key"}),
    ("parcels", "parcel", {}),
    ("roads", "road", {}),
    ("basements", "underground_structure", {}),
    ("pipe_points", "manhole", {}),
    ("pipe_segments", "pipe_segment", {}),
)

def load(manifest: Manifest, *, progress: bool = True) -> list:
    """Load every vector file through ``spatial_api.ingest.ingest_vector`` (the code path of
    ``geotwin ingest vector``), in manifest order, the imagery and DEM, each type's pipe survey
    through ``underground.ingest.ingest_pipes`` (``geotwin ingest pipes``), the entity codes
    (:data:`ENTITY_ASSIGNMENTS`), then the sensing demo. Returns the summaries (first one per
    layer file, in manifest order). Loading the same build again changes nothing."""
    summaries = []
    prog = None
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn())
        prog.start()
        task = prog.add_task("loading the demo district", total=len(manifest.layers))
    try:
        for lf in manifest.layers:
            if prog:
                prog.update(task, description=f"ingest {lf.layer} ← {lf.path.name}")
            summary = ingest_vector(
                lf.path, layer=lf.layer, key=lf.key, mode=lf.mode, valid_from=lf.valid_from, crs=lf.crs,
                from_gcj02=False, encoding=lf.encoding, title_zh=lf.title_zh, title_en=lf.title_en,
                access_level=lf.access_level, author="demo-builder",
            )
            summaries.append(summary)
            if prog:
                prog.advance(task)
        # Imagery epochs → collection "ortho" (item = epoch id, dated by acquisition); the DEM →
        # collection "dem", dated with the first epoch. Idempotent (the same file is not re-registered).
        for img in manifest.imagery:
            summaries.append(ingest_imagery(img.path, collection="ortho", datetime_=img.acquired_on, kind="ortho",
                                            item_id=img.epoch_id, title_zh="正射影像", title_en="Orthophotos",
                                            author="demo-builder"))
        dem_date = manifest.dem.acquired_on or min(img.acquired_on for img in manifest.imagery)
        summaries.append(ingest_imagery(manifest.dem.path, collection="dem", datetime_=dem_date, kind="dem",
                                        item_id="dem", title_zh="数字高程模型", title_en="Digital elevation model",
                                        author="demo-builder"))
        # The utility network: one survey per type, checked on the way in against the types
        # already stored (crossings), both layers in one transaction; an unchanged survey is a no-op.
        for t in manifest.pipe_surveys():
            if prog:
                prog.update(task, description=f"ingest pipes {t['type']} ← {t['segments'].name}")
            summaries.append(ingest_pipes(t["points"], t["segments"], type=t["type"], crs=manifest.crs,
                                          valid_from=manifest.reference_date, author="demo-builder"))
        # Geographic entities for the loaded layers (features already linked are left as they are).
        loaded = {x.layer for x in manifest.layers} | ({"pipe_points", "pipe_segments"} if manifest.underground else set())
        for layer, etype, options in ENTITY_ASSIGNMENTS:
            if layer in loaded:
                if prog:
                    prog.update(task, description=f"entity codes: {layer} → {etype}")
                summaries.append(entities.assign(layer, entity_type=etype, author="demo-builder", **options))
        # The sensing devices on the loaded buildings / addresses, their readings, and the alert
        # rules evaluated at the reference time (a dict: see data.sensing_demo.load).
        if manifest.sensing:
            if prog:
                prog.update(task, description="sensing devices and readings")
            summaries.append(sensing_demo.load(manifest))
    finally:
        if prog:
            prog.stop()
    return summaries
