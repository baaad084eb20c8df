"""Geometric matching of features to existing entities (``assign(match="geometry")``), in metres
(EPSG:4547), vectorised with shapely 2: an STRtree query gives the candidate pairs, one call per
measure scores them all, numpy sorts them per feature.

- Polygons: intersection over union; the best candidate with IoU ≥ 0.5 matches, unless a second
  one is within 0.1 of it (ambiguous).
- Points: distance; lines: Hausdorff distance (two crossing lines are 0 m apart but not the same
  road); the nearest within the tolerance matches, unless a second one is within a tenth of the
  tolerance of it (ambiguous).
- One entity claimed by several features (a building split in two, both halves overlapping it):
  the best claim wins when it leads the next by the margin; otherwise all those claims are
  ambiguous (nothing is assigned on a guess).
"""

from __future__ import annotations

import numpy as np
import shapely
from pyproj import Transformer

#: Polygons match by intersection over union ≥ IOU_MIN; a runner-up within IOU_MARGIN makes it ambiguous.
#: Points and lines: within DISTANCE_M metres by default.
IOU_MIN, IOU_MARGIN, DISTANCE_M = 0.5, 0.1, 2.0
_TO_METRIC = Transformer.from_crs("EPSG:4490", "EPSG:4547", always_xy=True)


def to_metric(geoms: np.ndarray) -> np.ndarray:
    if not len(geoms):
        return geoms
    return shapely.transform(geoms, lambda xy: np.column_stack(_TO_METRIC.transform(xy[:, 0], xy[:, 1])))


def _scores(new: np.ndarray, cands: np.ndarray, family: str, tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(feature index, candidate index, score) of every admissible pair, and whether higher is better."""
    tree = shapely.STRtree(cands)
    if family == "Polygon":
        i, j = tree.query(new, predicate="intersects")
        inter = shapely.area(shapely.intersection(new[i], cands[j]))
        union = shapely.area(new[i]) + shapely.area(cands[j]) - inter
        score = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        keep = score >= IOU_MIN - IOU_MARGIN  # a runner-up just under the bar still makes a match ambiguous
        return i[keep], j[keep], score[keep], True
    i, j = tree.query(new, predicate="dwithin", distance=tolerance)
    if family == "LineString":
        score = shapely.hausdorff_distance(new[i], cands[j])
    else:
        score = shapely.distance(new[i], cands[j])
    keep = score <= tolerance
    return i[keep], j[keep], score[keep], False


def match_geometries(new: np.ndarray, cands: np.ndarray, family: str, tolerance: float) -> list[tuple]:
    """For each new geometry (EPSG:4490): (outcome, best candidate index, score, [(candidate, score)…])
    with outcome "matched", "new", "ambiguous: …"."""
    n = len(new)
    out: list[tuple] = [("new", -1, None, []) for _ in range(n)]
    if not n or not len(cands):
        return out
    new_m, cands_m = to_metric(np.asarray(new, dtype=object)), to_metric(np.asarray(cands, dtype=object))
    i, j, score, higher = _scores(new_m, cands_m, family, tolerance)
    margin = IOU_MARGIN if higher else tolerance / 10
    good = (score >= IOU_MIN) if higher else np.ones(len(score), bool)
    order = np.lexsort((-score if higher else score, i))
    i, j, score, good = i[order], j[order], score[order], good[order]
    starts = np.r_[0, np.flatnonzero(np.diff(i)) + 1] if len(i) else np.zeros(0, int)
    claims: dict[int, list[int]] = {}  # candidate → features whose best it is
    for s, e in zip(starts, np.r_[starts[1:], len(i)]):
        f = int(i[s])
        others = [(int(j[k]), round(float(score[k]), 4)) for k in range(s, e)]
        if not good[s]:
            continue  # no candidate clears the bar: a new entity
        close = e - s > 1 and abs(score[s] - score[s + 1]) < margin
        if close:
            out[f] = ("ambiguous: two candidates within the margin", -1, None, others[:5])
        else:
            out[f] = ("matched", int(j[s]), round(float(score[s]), 4), others[:5])
            claims.setdefault(int(j[s]), []).append(f)
    for cand, feats in claims.items():
        if len(feats) < 2:
            continue
        ranked = sorted(feats, key=lambda f: -out[f][2] if higher else out[f][2])
        lead = abs(out[ranked[0]][2] - out[ranked[1]][2]) >= margin
        for f in ranked[1:] if lead else ranked:
            out[f] = ("ambiguous: another feature claims the same entity", -1, None, out[f][3])
    return out


__all__ = ["DISTANCE_M", "IOU_MARGIN", "IOU_MIN", "match_geometries", "to_metric"]
