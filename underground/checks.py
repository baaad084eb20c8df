"""Checks of a pipe survey on its way in: pure functions over numpy / pandas / shapely, no database.

Every problem names the point or segment by its survey id, with a code and a message. The codes
fall into four kinds (:data:`KINDS`):

- ``error`` — structural: duplicate ids, a segment whose point is missing, a segment from a point
  to itself or of zero length, a missing or negative depth or ground elevation, no diameter and no
  section, a value that is not a number. Always refuses the load.
- ``depth`` — implausible depth (deeper than the type's maximum, :mod:`underground.catalogue`) or
  a pipe whose top is above the ground; ``uphill`` — a gravity drain whose end invert is higher
  than its start invert; ``crossing`` — two pipes closer than their radii. Each refuses the load
  unless accepted (``--accept depth,uphill,crossing``), and is then recorded with the changeset.

Crossings: the 3D distance between the two pipes' axis segments against the sum of their radii;
a box section (W×H) counts with half its diagonal, the radius of the circle around it — a
conservative envelope (two boxes side by side may be reported although their walls clear).
Wall thickness is ignored throughout: sizes are the survey's nominal ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import shapely

from underground.catalogue import PipeType

KINDS = ("error", "depth", "uphill", "crossing")
#: Kinds ``--accept`` may accept; structural errors never.
ACCEPTABLE = ("depth", "uphill", "crossing")
#: A gravity drain may rise this much (survey precision, 5 mm) before it counts as uphill.
UPHILL_TOLERANCE_M = 0.005
#: Coincident ends closer than this (metres, horizontally and vertically) make a zero-length segment.
ZERO_LENGTH_M = 0.001


@dataclass(frozen=True)
class Problem:
    code: str      # e.g. missing_point, uphill
    kind: str      # one of KINDS
    id: str        # the survey id of the point or segment at fault
    message: str
    layer: str = "segments"  # 'points' | 'segments'
    row: int | None = None   # 1-based row in its file, where known

    def to_dict(self) -> dict:
        return asdict(self)


def _fmt(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") if np.isfinite(v) else "?"


# -- structure -------------------------------------------------------------------------------

def duplicate_ids(ids: pd.Series, rows: pd.Series, *, layer: str) -> list[Problem]:
    """Ids that appear more than once (every row of each named)."""
    dup = ids.duplicated(keep=False) & ids.notna()
    out = []
    for value, grp in rows[dup].groupby(ids[dup], sort=True):
        what = "point" if layer == "points" else "segment"
        out.append(Problem(f"duplicate_{what}", "error", str(value),
                           f"{what} id {value!r} appears in rows {', '.join(map(str, grp.tolist()))}: "
                           "an id must name one survey " + ("point" if layer == "points" else "segment"),
                           layer, int(grp.iloc[0])))
    return out


def missing_values(frame: pd.DataFrame, id_col: str, columns: dict[str, str], *, layer: str) -> list[Problem]:
    """Rows whose required value is empty: ``columns`` maps column → its survey name."""
    out = []
    for col, label in columns.items():
        for i in np.flatnonzero(frame[col].isna().to_numpy()):
            rid = frame[id_col].iloc[i]
            out.append(Problem(f"missing_{col}", "error", str(rid), f"{label} is empty", layer,
                               int(frame["row"].iloc[i])))
    return out


def segment_structure(seg: pd.DataFrame, point_ids: pd.Index) -> list[Problem]:
    """Missing start / end points and segments from a point to itself."""
    out = []
    known = set(point_ids)
    for end, label in (("start_id", "start"), ("end_id", "end")):
        missing = ~seg[end].isin(known) & seg[end].notna()
        for sid, pid, row in zip(seg.loc[missing, "segment_id"], seg.loc[missing, end], seg.loc[missing, "row"]):
            out.append(Problem("missing_point", "error", str(sid),
                               f"{label} point {pid!r} is not in the points file", "segments", int(row)))
    same = (seg["start_id"] == seg["end_id"]).to_numpy()
    for sid, pid, row in zip(seg.loc[same, "segment_id"], seg.loc[same, "start_id"], seg.loc[same, "row"]):
        out.append(Problem("same_point", "error", str(sid), f"starts and ends at point {pid!r}", "segments", int(row)))
    return out


def depths(seg: pd.DataFrame) -> list[Problem]:
    """Missing or negative depth at either end (after the per-end overrides), missing ground."""
    out = []
    for end, label in (("start", "start"), ("end", "end")):
        d = seg[f"{end}_depth"].to_numpy(dtype=float)
        g = seg[f"{end}_ground_z"].to_numpy(dtype=float)
        known = seg[f"{end}_known"].to_numpy(dtype=bool)  # the point exists
        for i in np.flatnonzero(known & np.isnan(d)):
            out.append(Problem("missing_depth", "error", str(seg["segment_id"].iat[i]),
                               f"no depth at the {label} (point {seg[f'{end}_id'].iat[i]!r} has no 埋深 and the "
                               f"segment no {'起点' if end == 'start' else '终点'}埋深)", "segments", int(seg["row"].iat[i])))
        for i in np.flatnonzero(known & (d < 0)):
            out.append(Problem("negative_depth", "error", str(seg["segment_id"].iat[i]),
                               f"depth {_fmt(d[i])} m at the {label} (point {seg[f'{end}_id'].iat[i]!r}) is negative",
                               "segments", int(seg["row"].iat[i])))
        for i in np.flatnonzero(known & np.isnan(g)):
            out.append(Problem("missing_ground_z", "error", str(seg["segment_id"].iat[i]),
                               f"point {seg[f'{end}_id'].iat[i]!r} at the {label} has no 地面高程", "segments",
                               int(seg["row"].iat[i])))
    return out


def sizes(seg: pd.DataFrame) -> list[Problem]:
    """No diameter and no section, or a size that is not positive."""
    out = []
    w, h = seg["width_mm"].to_numpy(dtype=float), seg["height_mm"].to_numpy(dtype=float)
    for i in np.flatnonzero(np.isnan(w) | np.isnan(h)):
        if seg["size_text"].iat[i]:
            continue  # reported by the reader as bad_section
        out.append(Problem("missing_size", "error", str(seg["segment_id"].iat[i]),
                           "neither 管径 (diameter, mm) nor 断面尺寸 (section W×H, mm) is given", "segments",
                           int(seg["row"].iat[i])))
    for i in np.flatnonzero((w <= 0) | (h <= 0)):
        out.append(Problem("bad_size", "error", str(seg["segment_id"].iat[i]),
                           f"size {_fmt(w[i])}×{_fmt(h[i])} mm is not positive", "segments", int(seg["row"].iat[i])))
    return out


def zero_length(seg: pd.DataFrame) -> list[Problem]:
    """Segments between two distinct points that stand at the same place."""
    d = np.hypot(seg["x1"] - seg["x0"], seg["y1"] - seg["y0"]).to_numpy(dtype=float)
    bad = (d < ZERO_LENGTH_M) & (seg["start_id"] != seg["end_id"]).to_numpy()
    return [Problem("zero_length", "error", str(seg["segment_id"].iat[i]),
                    f"points {seg['start_id'].iat[i]!r} and {seg['end_id'].iat[i]!r} are at the same place "
                    f"({_fmt(d[i])} m apart)", "segments", int(seg["row"].iat[i]))
            for i in np.flatnonzero(bad)]


# -- plausibility -----------------------------------------------------------------------------

def plausibility(seg: pd.DataFrame, ptype: PipeType) -> list[Problem]:
    """Depths beyond the type's maximum; a pipe top above the ground (an invert shallower than
    the pipe is high)."""
    out = []
    h = seg["height_mm"].to_numpy(dtype=float) / 1000.0
    for end, label in (("start", "start"), ("end", "end")):
        d = seg[f"{end}_depth"].to_numpy(dtype=float)
        g = seg[f"{end}_ground_z"].to_numpy(dtype=float)
        axis = seg[f"{end}_axis_z"].to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            deep = d > ptype.max_depth_m
            above = ((axis + h / 2) > g + 1e-9) & (d >= 0)  # a negative depth is an error already
        for i in np.flatnonzero(deep):
            out.append(Problem("implausible_depth", "depth", str(seg["segment_id"].iat[i]),
                               f"depth {_fmt(d[i])} m at the {label} (point {seg[f'{end}_id'].iat[i]!r}) is more than "
                               f"the {_fmt(ptype.max_depth_m)} m plausible for {ptype.name}", "segments",
                               int(seg["row"].iat[i])))
        for i in np.flatnonzero(above & ~deep):
            out.append(Problem("above_ground", "depth", str(seg["segment_id"].iat[i]),
                               f"at the {label} (point {seg[f'{end}_id'].iat[i]!r}) the pipe's top "
                               f"{_fmt(axis[i] + h[i] / 2)} m is above the ground {_fmt(g[i])} m "
                               f"(depth {_fmt(d[i])} m to the {'invert' if ptype.gravity else 'top'}, "
                               f"pipe {_fmt(h[i])} m high)", "segments", int(seg["row"].iat[i])))
    return out


def uphill(seg: pd.DataFrame, ptype: PipeType) -> list[Problem]:
    """Gravity drains (flowing start → end) whose end invert is above the start invert."""
    if not ptype.gravity:
        return []
    h = seg["height_mm"].to_numpy(dtype=float) / 1000.0
    inv0 = seg["start_axis_z"].to_numpy(dtype=float) - h / 2
    inv1 = seg["end_axis_z"].to_numpy(dtype=float) - h / 2
    run = np.hypot(seg["x1"] - seg["x0"], seg["y1"] - seg["y0"]).to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        bad = inv1 > inv0 + UPHILL_TOLERANCE_M
        slope = (inv1 - inv0) / run * 1000.0
    return [Problem("uphill", "uphill", str(seg["segment_id"].iat[i]),
                    f"{ptype.name} flows uphill: invert {_fmt(inv0[i])} m at {seg['start_id'].iat[i]!r} → "
                    f"{_fmt(inv1[i])} m at {seg['end_id'].iat[i]!r}, slope +{slope[i]:.1f}‰ over "
                    f"{_fmt(run[i])} m (check the depths or swap start and end)", "segments", int(seg["row"].iat[i]))
            for i in np.flatnonzero(bad)]


# -- crossings --------------------------------------------------------------------------------

def segment_distance(p1: np.ndarray, q1: np.ndarray, p2: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Shortest 3D distances between segments p1–q1 and p2–q2 (arrays of shape (n, 3)).

    The closest points of two segments, vectorised (Ericson, *Real-Time Collision Detection*,
    5.1.9): the closest points of the infinite lines, parameter s on the first clamped to [0, 1],
    t on the second computed from s and clamped, s recomputed from the clamped t. Degenerate
    segments (points) and parallel segments (s = 0, then t from it) are handled."""
    p1, q1, p2, q2 = (np.asarray(a, dtype=float).reshape(-1, 3) for a in (p1, q1, p2, q2))
    d1, d2, r = q1 - p1, q2 - p2, p1 - p2
    a = np.einsum("ij,ij->i", d1, d1)
    e = np.einsum("ij,ij->i", d2, d2)
    f = np.einsum("ij,ij->i", d2, r)
    c = np.einsum("ij,ij->i", d1, r)
    b = np.einsum("ij,ij->i", d1, d2)
    eps = 1e-12
    first_point, second_point = a <= eps, e <= eps
    denom = a * e - b * b
    # General case: s from the lines' closest points (0 when parallel), clamped.
    s = np.where(denom > eps * np.maximum(a * e, 1.0),
                 np.divide(b * f - c * e, denom, out=np.zeros_like(a), where=denom != 0), 0.0)
    s = np.clip(s, 0.0, 1.0)
    t = np.divide(b * s + f, e, out=np.zeros_like(a), where=~second_point)
    # t outside [0, 1]: clamp it and recompute s for the clamped end.
    s = np.where(t < 0, np.clip(np.divide(-c, a, out=np.zeros_like(a), where=~first_point), 0, 1), s)
    s = np.where(t > 1, np.clip(np.divide(b - c, a, out=np.zeros_like(a), where=~first_point), 0, 1), s)
    t = np.clip(t, 0.0, 1.0)
    # Degenerate segments.
    s = np.where(first_point, 0.0, s)
    t = np.where(first_point & ~second_point, np.clip(np.divide(f, e, out=np.zeros_like(a), where=~second_point), 0, 1), t)
    t = np.where(second_point, 0.0, t)
    s = np.where(second_point & ~first_point, np.clip(np.divide(-c, a, out=np.zeros_like(a), where=~first_point), 0, 1), s)
    c1 = p1 + d1 * s[:, None]
    c2 = p2 + d2 * t[:, None]
    return np.linalg.norm(c1 - c2, axis=1)


def radius_m(width_mm: np.ndarray, height_mm: np.ndarray) -> np.ndarray:
    """A pipe's radius in metres: half the diameter (W = H), or half the diagonal of a box."""
    w, h = np.asarray(width_mm, dtype=float), np.asarray(height_mm, dtype=float)
    return np.where(w == h, w / 2000.0, np.hypot(w, h) / 2000.0)


@dataclass
class Axes:
    """Pipe axes in metres (EPSG:4547 x, y; orthometric z) with radii and end-point ids."""

    ids: np.ndarray       # segment ids
    p: np.ndarray         # (n, 3) start
    q: np.ndarray         # (n, 3) end
    r: np.ndarray         # (n,) radius, m
    start: np.ndarray     # start point ids
    end: np.ndarray       # end point ids
    label: np.ndarray | None = None  # what to call each in a message (stored: "燃气 RQ-12")

    def valid(self) -> np.ndarray:
        return np.isfinite(self.p).all(axis=1) & np.isfinite(self.q).all(axis=1) & np.isfinite(self.r)

    def subset(self, m: np.ndarray) -> Axes:
        return Axes(self.ids[m], self.p[m], self.q[m], self.r[m], self.start[m], self.end[m],
                    None if self.label is None else self.label[m])


def _pairs(a: Axes, b: Axes) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (index in a, index in b) whose plan views come within the radii: an STRtree
    over b's 2D axes queried with a's axes and per-segment distances r_a + max(r_b) — the same
    candidates as buffering every axis by its radius, without building the buffers."""
    if not len(a.ids) or not len(b.ids):
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    lines_a = shapely.linestrings(np.stack([a.p[:, :2], a.q[:, :2]], axis=1))
    lines_b = shapely.linestrings(np.stack([b.p[:, :2], b.q[:, :2]], axis=1))
    tree = shapely.STRtree(lines_b)
    ia, ib = tree.query(lines_a, predicate="dwithin", distance=a.r + float(b.r.max()))
    return ia, ib


def crossings(load: Axes, stored: Axes | None = None) -> list[Problem]:
    """Pipes whose axes come closer than the sum of their radii: among ``load`` (pairs that share
    a point — a joint — excluded) and between ``load`` and ``stored`` (other types' current
    segments). Sorted by segment id."""
    out: list[tuple[str, str, float, Problem]] = []
    load = load.subset(load.valid())
    ia, ib = _pairs(load, load)
    keep = ia < ib
    ia, ib = ia[keep], ib[keep]
    shared = ((load.start[ia] == load.start[ib]) | (load.start[ia] == load.end[ib])
              | (load.end[ia] == load.start[ib]) | (load.end[ia] == load.end[ib]))
    ia, ib = ia[~shared], ib[~shared]
    for i, j, dist, clear in _close(load, load, ia, ib):
        out.append(Problem("crossing", "crossing", str(load.ids[i]),
                           f"comes within {_fmt(dist)} m of segment {load.ids[j]!r} (axes); their radii add up "
                           f"to {_fmt(load.r[i] + load.r[j])} m: they overlap by {_fmt(-clear)} m"))
    if stored is not None and len(stored.ids):
        stored = stored.subset(stored.valid())
        ia, ib = _pairs(load, stored)
        for i, j, dist, clear in _close(load, stored, ia, ib):
            other = stored.label[j] if stored.label is not None else stored.ids[j]
            out.append(Problem("crossing", "crossing", str(load.ids[i]),
                               f"comes within {_fmt(dist)} m of stored segment {other} (axes); their radii add up "
                               f"to {_fmt(load.r[i] + stored.r[j])} m: they overlap by {_fmt(-clear)} m"))
    return sorted(out, key=lambda p: p.id)


def _close(a: Axes, b: Axes, ia: np.ndarray, ib: np.ndarray):
    if not len(ia):
        return []
    dist = segment_distance(a.p[ia], a.q[ia], b.p[ib], b.q[ib])
    clear = dist - a.r[ia] - b.r[ib]
    hit = np.flatnonzero(clear < 0)
    return [(int(ia[k]), int(ib[k]), float(dist[k]), float(clear[k])) for k in hit]


def check_all(points: pd.DataFrame, seg: pd.DataFrame, ptype: PipeType, *, stored: Axes | None = None,
              read_problems: list[Problem] = ()) -> list[Problem]:
    """Every problem of a derived survey (see :func:`underground.survey.derive`)."""
    problems = list(read_problems)
    problems += duplicate_ids(points["point_id"], points["row"], layer="points")
    problems += missing_values(points, "point_id", {"x": "X coordinate", "y": "Y coordinate"}, layer="points")
    problems += duplicate_ids(seg["segment_id"], seg["row"], layer="segments")
    problems += segment_structure(seg, pd.Index(points["point_id"]))
    problems += depths(seg)
    problems += sizes(seg)
    problems += zero_length(seg)
    problems += plausibility(seg, ptype)
    problems += uphill(seg, ptype)
    problems += crossings(load_axes(seg), stored)
    return problems


def load_axes(seg: pd.DataFrame) -> Axes:
    return Axes(
        ids=seg["segment_id"].to_numpy(dtype=object),
        p=seg[["x0", "y0", "start_axis_z"]].to_numpy(dtype=float),
        q=seg[["x1", "y1", "end_axis_z"]].to_numpy(dtype=float),
        r=radius_m(seg["width_mm"].to_numpy(dtype=float), seg["height_mm"].to_numpy(dtype=float)),
        start=seg["start_id"].to_numpy(dtype=object), end=seg["end_id"].to_numpy(dtype=object))


def summarise(problems: list[Problem]) -> dict[str, int]:
    """Problem counts by code."""
    out: dict[str, int] = {}
    for p in problems:
        out[p.code] = out.get(p.code, 0) + 1
    return out


__all__ = [
    "ACCEPTABLE",
    "KINDS",
    "UPHILL_TOLERANCE_M",
    "Axes",
    "Problem",
    "check_all",
    "crossings",
    "load_axes",
    "radius_m",
    "segment_distance",
    "summarise",
    "uphill",
]
