"""Meshes of the underground, vectorised: pipes as cylinders (12 sides) or boxes (W×H sections)
along their axis, manholes as vertical shafts, and the metadata schema of the underground tiles.

Every function takes arrays with one row per object and builds every vertex of every object
with numpy broadcasting (no per-object Python loop). Positions are in a tile's east-north-up
frame (metres, float64 until written); the caller turns them into glTF y-up.

A pipe's cross-section is perpendicular to its axis for a cylinder; a box keeps vertical sides
(its section spans the horizontal normal of the axis and the local up), so that its top is
``height / 2`` above the axis at every point, as the survey measures it. A cylinder's vertical
extent is ``r·cos(slope)``: for a drain at 1 % that is 0.005 % less than r. Wall thickness is
ignored: the surveyed diameter / section is drawn as the outer surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Sides of a pipe's or a shaft's cylinder.
SIDES = 12
#: Manhole shaft radius (m); 0.7 m for wells deeper than DEEP_WELL_M.
SHAFT_RADIUS, DEEP_SHAFT_RADIUS, DEEP_WELL_M = 0.5, 0.7, 3.0

#: Customary map colours of the pipe types (CJJ 61 / GB/T 50348 usage), by type code.
TYPE_COLOURS = {"JS": "#1f5fd6", "PS": "#8b5a2b", "YS": "#a0522d", "WS": "#6b3e1f", "RQ": "#d63ad6",
                "RL": "#f28c28", "DL": "#e02020", "TX": "#2ca02c", "GY": "#202020"}
UNKNOWN_COLOUR = "#808080"
#: Basements and other underground structures: translucent grey.
STRUCTURE_RGBA = (0.62, 0.62, 0.64, 0.45)

_RING = 2 * np.pi * np.arange(SIDES) / SIDES
_COS, _SIN = np.cos(_RING), np.sin(_RING)

#: The metadata schema of the underground tiles (contract §6 of issue 17). One class, one property
#: table per glb: CesiumJS reads a single property table per model (the first primitive's feature ID
#: set names it), so pipes, manholes and structures share a table, told apart by ``kind``; a
#: property that does not apply to a kind holds its noData value ("" for strings).
KINDS = ("pipe_segment", "manhole", "underground_structure")
NO_Z = -9999.0
SCHEMA: dict = {
    "id": "geotwin_underground",
    "name": "geotwin underground",
    "version": "2.0.0",
    "classes": {
        "underground_element": {
            "name": "Underground element: pipe segment (layer pipe_segments), manhole shaft (pipe_points with a "
                    "well) or underground structure (layer basements)",
            "properties": {
                "kind": {"type": "STRING", "required": True,
                         "description": "pipe_segment | manhole | underground_structure"},
                "id": {"type": "STRING", "required": True,
                       "description": "the feature id in its layer (<TYPECODE>-<survey id>, basement_id)"},
                "type": {"type": "STRING", "description": "给水, 排水, 雨水, 污水, 燃气 … (pipes, manholes)"},
                "type_code": {"type": "STRING"},
                "diameter_mm": {"type": "SCALAR", "componentType": "FLOAT32", "noData": -1.0},
                "width_mm": {"type": "SCALAR", "componentType": "FLOAT32", "noData": -1.0},
                "height_mm": {"type": "SCALAR", "componentType": "FLOAT32", "noData": -1.0},
                "material": {"type": "STRING"},
                "start_axis_z": {"type": "SCALAR", "componentType": "FLOAT32", "noData": NO_Z,
                                 "description": "orthometric elevation of the pipe's axis at its start (m)"},
                "end_axis_z": {"type": "SCALAR", "componentType": "FLOAT32", "noData": NO_Z},
                "ground_z": {"type": "SCALAR", "componentType": "FLOAT32", "noData": NO_Z,
                             "description": "orthometric ground elevation at a manhole's cover (m)"},
                "bottom_z": {"type": "SCALAR", "componentType": "FLOAT32", "noData": NO_Z,
                             "description": "orthometric elevation of a manhole shaft's bottom (m)"},
                "basement_id": {"type": "STRING"},
                "building_id": {"type": "STRING"},
                "use": {"type": "STRING"},
                "levels": {"type": "SCALAR", "componentType": "INT16", "noData": -1},
                "depth_m": {"type": "SCALAR", "componentType": "FLOAT32", "noData": -1.0,
                            "description": "an underground structure's depth below the ground (m)"},
                "entity": {"type": "STRING", "description": "geographic entity code"},
            },
        },
    },
}
CLASS = "underground_element"


def one_table(parts: list[tuple[str, int, dict]]) -> tuple[dict, list[int]]:
    """The columns of several kinds' features as ONE property table (schema SCHEMA): each part
    (kind, count, columns) after the previous ones, a column a part lacks filled with its noData.
    Returns (columns, each part's first feature id)."""
    props = SCHEMA["classes"][CLASS]["properties"]
    offsets, total = [], 0
    for _, count, _ in parts:
        offsets.append(total)
        total += count
    columns: dict = {}
    for name, spec in props.items():
        pieces = []
        for kind, count, cols in parts:
            if name == "kind":
                pieces.append(np.full(count, kind, dtype=object))
            elif name in cols:
                pieces.append(np.asarray(cols[name], dtype=object if spec["type"] == "STRING" else None))
            elif spec["type"] == "STRING":
                pieces.append(np.full(count, "", dtype=object))
            else:
                pieces.append(np.full(count, spec.get("noData", 0)))
        if pieces:
            joined = np.concatenate(pieces)
            columns[name] = joined.tolist() if spec["type"] == "STRING" else joined
    return columns, offsets


def rgba(hex_colour: str, alpha: int = 255) -> np.ndarray:
    """"#rrggbb" → uint8 RGBA."""
    h = hex_colour.lstrip("#")
    return np.array([int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), alpha], np.uint8)


def type_colours(type_codes: np.ndarray) -> np.ndarray:
    """uint8 RGBA (n, 4) of each type code (grey for an unknown one)."""
    codes = np.asarray(type_codes, dtype=object)
    uniq, inverse = np.unique(codes.astype(str), return_inverse=True)
    table = np.array([rgba(TYPE_COLOURS.get(c, UNKNOWN_COLOUR)) for c in uniq], np.uint8).reshape(-1, 4)
    return table[inverse.reshape(-1)]


@dataclass
class Mesh:
    """Triangles of many objects: ENU positions (float64), unit normals, indices and the object
    (row of the input arrays) of every vertex."""

    positions: np.ndarray  # (V, 3)
    normals: np.ndarray  # (V, 3)
    indices: np.ndarray  # (T*3,)
    owner: np.ndarray  # (V,)

    @staticmethod
    def concat(meshes: list[Mesh], owner_offsets: list[int] | None = None) -> Mesh:
        offsets = np.cumsum([0] + [len(m.positions) for m in meshes])
        owner_offsets = owner_offsets or [0] * len(meshes)
        return Mesh(np.concatenate([m.positions for m in meshes]), np.concatenate([m.normals for m in meshes]),
                    np.concatenate([m.indices + o for m, o in zip(meshes, offsets)]),
                    np.concatenate([m.owner + oo for m, oo in zip(meshes, owner_offsets)]))


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.cross of (..., 3) vectors, the same products and differences in the same order (the
    same bits) without its per-call overhead (it is called a few times per tile)."""
    a, b = np.broadcast_arrays(a, b)
    out = np.empty(a.shape, np.result_type(a, b))
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    np.subtract(a1 * b2, a2 * b1, out=out[..., 0])
    np.subtract(a2 * b0, a0 * b2, out=out[..., 1])
    np.subtract(a0 * b1, a1 * b0, out=out[..., 2])
    return out


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


def axis_frames(a: np.ndarray, b: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per axis a→b: its unit direction d, the horizontal unit normal u (⊥ d and ⊥ up; for a
    vertical axis the frame's east, projected) and v = d × u, so that (u, v, d) is right-handed."""
    d = _unit(b - a)
    u = _cross(d, up)
    norm = np.linalg.norm(u, axis=1)
    vertical = norm < 1e-9
    if vertical.any():  # a shaft: any horizontal direction will do; east, made ⊥ d
        east = np.zeros((int(vertical.sum()), 3))
        east[:, 0] = 1.0
        dv = d[vertical]
        u[vertical] = east - dv * np.sum(east * dv, axis=1, keepdims=True)
        norm = np.linalg.norm(u, axis=1)
    u = u / norm[:, None]
    return d, u, _cross(d, u)


def sweep(a: np.ndarray, b: np.ndarray, offsets: np.ndarray, *, radial: np.ndarray | None = None) -> Mesh:
    """Prisms along axes a→b (n, 3) with the cross-section ``offsets`` (n, k, 3): k corners around
    the axis, counter-clockwise seen from b (right-handed about a→b), the same at both ends.

    With ``radial`` (n, k, 3: the unit direction of each corner from the axis) the surface is
    smooth — a cylinder: one vertex per corner and end, ``radial`` as its normal, and the end
    caps are fans over the same ring vertices (a cap 0.1–0.7 m across shaded like the pipe's
    side, for half the vertices: pipes meet end to end, their caps are rarely seen). Without it
    the sides are flat (4 vertices each, the face normal) and the caps have vertices of their
    own with the flat normal."""
    n, k = offsets.shape[:2]
    f = np.arange(1, k - 1)
    nxt = np.roll(np.arange(k), -1)
    if radial is not None:
        per_object = 2 * k
        positions = np.empty((n, per_object, 3))
        np.add(a[:, None, :], offsets, out=positions[:, :k])
        np.add(b[:, None, :], offsets, out=positions[:, k:])
        normals = np.empty((n, per_object, 3))
        normals[:, :k] = radial
        normals[:, k:] = radial
        j = np.arange(k)
        # (A_j, A_j+1, B_j+1), (A_j, B_j+1, B_j): outward for a right-handed ring
        side_tri = np.stack([j, nxt, k + nxt, j, k + nxt, k + j], axis=1).reshape(-1)
        caps = np.concatenate([np.stack([np.zeros_like(f), f + 1, f], axis=1),  # facing -d
                               k + np.stack([np.zeros_like(f), f, f + 1], axis=1)]).reshape(-1)  # facing +d
    else:
        d = _unit(b - a)
        ring_a = a[:, None, :] + offsets  # (n, k, 3)
        ring_b = b[:, None, :] + offsets
        side_pos = np.stack([ring_a, ring_a[:, nxt], ring_b[:, nxt], ring_b], axis=2).reshape(n, 4 * k, 3)
        face = _unit(_cross(offsets[:, nxt] - offsets, d[:, None, :]))  # (n, k, 3) outward
        cap_normal = _unit(_cross(offsets[:, 1] - offsets[:, 0], offsets[:, 2] - offsets[:, 0]))  # ≈ +d
        positions = np.concatenate([side_pos, ring_a, ring_b], axis=1)
        normals = np.concatenate([np.repeat(face, 4, axis=1), np.repeat(-cap_normal[:, None, :], k, axis=1),
                                  np.repeat(cap_normal[:, None, :], k, axis=1)], axis=1)
        side_tri = (4 * np.arange(k)[:, None] + np.array([0, 1, 2, 0, 2, 3])).reshape(-1)
        caps = 4 * k + np.concatenate([np.stack([np.zeros_like(f), f + 1, f], axis=1),
                                       k + np.stack([np.zeros_like(f), f, f + 1], axis=1)]).reshape(-1)
        per_object = 6 * k
    local_tri = np.concatenate([side_tri, caps]).astype(np.int32)
    indices = (np.arange(n, dtype=np.int32)[:, None] * per_object + local_tri[None, :]).reshape(-1)
    owner = np.repeat(np.arange(n, dtype=np.int32), per_object)
    return Mesh(positions.reshape(-1, 3), normals.reshape(-1, 3), indices, owner)


def cylinders(a: np.ndarray, b: np.ndarray, radius: np.ndarray, up: np.ndarray) -> Mesh:
    """Cylinders of ``radius`` (n,) from a to b (n, 3); ``up`` (n, 3) the local vertical."""
    _, u, v = axis_frames(a, b, up)
    radial = _COS[None, :, None] * u[:, None, :] + _SIN[None, :, None] * v[:, None, :]
    return sweep(a, b, radius[:, None, None] * radial, radial=radial)


def boxes(a: np.ndarray, b: np.ndarray, width: np.ndarray, height: np.ndarray, up: np.ndarray) -> Mesh:
    """Boxes W×H (n,) along a→b with vertical sides: the section spans the horizontal normal of
    the axis (±W/2) and the local up (±H/2)."""
    d, u, v = axis_frames(a, b, up)
    w, h = width[:, None] / 2, height[:, None] / 2
    upn = _unit(up)
    # a vertical box has no vertical sides to keep: its section is then ⊥ the axis
    q = np.where((np.abs(np.sum(d * upn, axis=1)) > 1 - 1e-9)[:, None], v, upn)
    offsets = np.stack([w * u - h * q, w * u + h * q, -w * u + h * q, -w * u - h * q], axis=1)
    # corners counter-clockwise about d (right-handed), whatever the axis' orientation
    turn = np.sum(_cross(offsets[:, 0], offsets[:, 1]) * d, axis=1)
    offsets[turn < 0] = offsets[turn < 0][:, ::-1]
    return sweep(a, b, offsets)


def shafts(top: np.ndarray, bottom: np.ndarray, radius: np.ndarray, up: np.ndarray) -> Mesh:
    """Vertical manhole shafts from ``bottom`` to ``top`` (n, 3)."""
    return cylinders(bottom, top, radius, up)


def shaft_radius(well_depth: np.ndarray) -> np.ndarray:
    """0.5 m, or 0.7 m for wells deeper than 3 m (depth = ground − bottom)."""
    return np.where(np.asarray(well_depth, float) > DEEP_WELL_M, DEEP_SHAFT_RADIUS, SHAFT_RADIUS)


def to_gltf(enu: np.ndarray) -> np.ndarray:
    """ENU (n, 3) → glTF y-up (e, u, -n), float32."""
    out = np.empty((len(enu), 3), np.float32)
    out[:, 0] = enu[:, 0]
    out[:, 1] = enu[:, 2]
    out[:, 2] = -enu[:, 1]
    return out
