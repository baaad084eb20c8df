"""Binary glTF 2.0 (glb) with per-feature metadata: EXT_mesh_features (a feature id per vertex)
and EXT_structural_metadata (one schema, one property table per feature class).

Written directly from numpy arrays (no per-vertex Python): every attribute and property column
becomes one 8-byte-aligned bufferView of a single binary buffer.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import numpy as np

#: The metadata schema every tile's glb carries (the same in every tile).
SCHEMA: dict = {
    "id": "geotwin_cim",
    "name": "geotwin CIM",
    "version": "1.0.0",
    "classes": {
        "building": {
            "name": "Building (LOD1 prism from the buildings layer)",
            "properties": {
                "building_id": {"type": "STRING", "required": True},
                "parcel_id": {"type": "STRING"},
                "use": {"type": "STRING"},
                "height_m": {"type": "SCALAR", "componentType": "FLOAT32", "required": True},
                "floors": {"type": "SCALAR", "componentType": "INT16", "noData": -1},
                "base_height_m": {"type": "SCALAR", "componentType": "FLOAT32", "required": True,
                                  "description": "orthometric height of the ground under the building (DEM)"},
                "source": {"type": "STRING", "required": True},
            },
        },
        "block": {
            "name": "Block (buildings generalised for the far view; cim_builder.blocks)",
            "properties": {
                "block_id": {"type": "STRING", "required": True,
                             "description": "level/ix/iy of its quadtree cell, #n within it"},
                "building_count": {"type": "SCALAR", "componentType": "UINT32", "required": True},
                "mean_height_m": {"type": "SCALAR", "componentType": "FLOAT32", "required": True,
                                  "description": "area-weighted mean height of its buildings (landmarks excepted)"},
                "max_height_m": {"type": "SCALAR", "componentType": "FLOAT32", "required": True},
                "landmark_id": {"type": "STRING",
                                "description": "a landmark: the building drawn as its own prism (it rises more "
                                               "than the tile's geometric error above its block's median roof)"},
            },
        },
        "bim_element": {
            "name": "BIM element (IFC)",
            "properties": {
                "global_id": {"type": "STRING", "required": True},
                "ifc_class": {"type": "STRING", "required": True},
                "name": {"type": "STRING"},
                "storey": {"type": "STRING"},
                "storey_elevation_m": {"type": "SCALAR", "componentType": "FLOAT32", "noData": -9999.0},
                "material": {"type": "STRING"},
                "below_ground": {"type": "BOOLEAN", "required": True},
                "is_space": {"type": "BOOLEAN", "required": True},
                "model_id": {"type": "STRING", "required": True},
                # rooms (IfcSpace; cim_builder.indoor): the viewer's indoor mode, storey by storey
                "storey_index": {"type": "SCALAR", "componentType": "INT16", "noData": -1,
                                 "description": "0 = the model's lowest storey (by elevation)"},
                "long_name": {"type": "STRING"},
                "use": {"type": "STRING", "description": "a room's use: ObjectType, Pset_SpaceCommon.Category "
                                                         "or LongName"},
                "area_m2": {"type": "SCALAR", "componentType": "FLOAT32", "noData": -1.0,
                            "description": "a room's floor area: Qto NetFloorArea / GrossFloorArea, else its "
                                           "footprint's"},
                "height_m": {"type": "SCALAR", "componentType": "FLOAT32", "noData": -1.0,
                             "description": "a room's height (its mesh)"},
            },
        },
    },
}

_NUMPY = {"FLOAT32": np.float32, "FLOAT64": np.float64, "INT8": np.int8, "UINT8": np.uint8,
          "INT16": np.int16, "UINT16": np.uint16, "INT32": np.int32, "UINT32": np.uint32}
_GL = {np.dtype(np.float32): 5126, np.dtype(np.uint8): 5121, np.dtype(np.uint16): 5123,
       np.dtype(np.uint32): 5125, np.dtype(np.int16): 5122, np.dtype(np.int8): 5120}
_TYPE = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4"}
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963


@dataclass
class Primitive:
    positions: np.ndarray  # (n, 3) float32, glTF y-up
    normals: np.ndarray  # (n, 3) float32, unit length
    indices: np.ndarray  # (m,) triangle list
    feature_ids: np.ndarray  # (n,) per vertex, 0..feature_count-1
    feature_count: int
    property_table: int
    material: int
    colors: np.ndarray | None = None  # (n, 4) uint8 RGBA


@dataclass
class PropertyTable:
    class_name: str
    count: int
    columns: dict = field(default_factory=dict)  # property name → values (list / array)


class GlbWriter:
    def __init__(self, schema: dict | None = None) -> None:
        self.schema = schema or SCHEMA  # the metadata schema its property tables follow
        self.bin = bytearray()
        self.buffer_views: list[dict] = []
        self.accessors: list[dict] = []
        self.materials: list[dict] = []

    def material(self, rgba, *, name: str, blend: bool = False, double_sided: bool = False) -> int:
        m = {"name": name, "pbrMetallicRoughness": {"baseColorFactor": [float(c) for c in rgba],
                                                     "metallicFactor": 0.0, "roughnessFactor": 0.9}}
        if blend:
            m["alphaMode"] = "BLEND"
        if double_sided:
            m["doubleSided"] = True
        self.materials.append(m)
        return len(self.materials) - 1

    def view(self, data: bytes, target: int | None = None) -> int:
        pad = (-len(self.bin)) % 8
        self.bin.extend(b"\0" * pad)
        v = {"buffer": 0, "byteOffset": len(self.bin), "byteLength": len(data)}
        if target is not None:
            v["target"] = target
        self.bin.extend(data)
        self.buffer_views.append(v)
        return len(self.buffer_views) - 1

    def accessor(self, array: np.ndarray, target: int | None, *, minmax: bool = False,
                 normalized: bool = False) -> int:
        array = np.ascontiguousarray(array)
        ncomp = 1 if array.ndim == 1 else array.shape[1]
        acc = {"bufferView": self.view(array.tobytes(), target), "componentType": _GL[array.dtype],
               "count": int(array.shape[0]), "type": _TYPE[ncomp]}
        if normalized:
            acc["normalized"] = True
        if minmax:
            a2 = array.reshape(array.shape[0], ncomp)
            acc["min"] = [float(v) for v in a2.min(axis=0)]
            acc["max"] = [float(v) for v in a2.max(axis=0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def property_table(self, table: PropertyTable) -> dict:
        props = self.schema["classes"][table.class_name]["properties"]
        out: dict = {"class": table.class_name, "count": int(table.count), "properties": {}}
        for name, values in table.columns.items():
            spec = props[name]
            if spec["type"] == "STRING":
                blob, offsets = _encode_strings(values)
                if not blob:  # a bufferView may not be empty
                    if not spec.get("required"):
                        continue  # every value empty: the optional property is left out
                    blob = b"\0"
                out["properties"][name] = {
                    "values": self.view(blob),
                    "stringOffsets": self.view(offsets.tobytes()),
                    "stringOffsetType": "UINT32",
                }
            elif spec["type"] == "BOOLEAN":
                bits = np.packbits(np.asarray(values, bool), bitorder="little")
                out["properties"][name] = {"values": self.view(bits.tobytes())}
            else:
                arr = np.asarray(values, dtype=_NUMPY[spec["componentType"]])
                out["properties"][name] = {"values": self.view(arr.tobytes())}
        return out

    def write(self, primitives: list[Primitive], tables: list[PropertyTable]) -> bytes:
        prims = []
        for p in primitives:
            n = len(p.positions)
            idx = p.indices.astype(np.uint16 if n < 65536 else np.uint32)
            attrs = {
                "POSITION": self.accessor(p.positions.astype(np.float32), ARRAY_BUFFER, minmax=True),
                "NORMAL": self.accessor(p.normals.astype(np.float32), ARRAY_BUFFER),
                "_FEATURE_ID_0": self.accessor(p.feature_ids.astype(np.float32), ARRAY_BUFFER),
            }
            if p.colors is not None:
                attrs["COLOR_0"] = self.accessor(p.colors.astype(np.uint8), ARRAY_BUFFER, normalized=True)
            prims.append({
                "attributes": attrs,
                "indices": self.accessor(idx, ELEMENT_ARRAY_BUFFER),
                "material": p.material,
                "mode": 4,
                "extensions": {"EXT_mesh_features": {"featureIds": [
                    {"featureCount": int(p.feature_count), "attribute": 0, "propertyTable": p.property_table}]}},
            })
        property_tables = [self.property_table(t) for t in tables]
        doc = {
            "asset": {"version": "2.0", "generator": "geotwin cim_builder"},
            "extensionsUsed": ["EXT_mesh_features", "EXT_structural_metadata"],
            "extensions": {"EXT_structural_metadata": {"schema": self.schema, "propertyTables": property_tables}},
            "scene": 0,
            "scenes": [{"nodes": [0]}],
            "nodes": [{"mesh": 0}],
            "meshes": [{"primitives": prims}],
            "materials": self.materials,
            "accessors": self.accessors,
            "bufferViews": self.buffer_views,
            "buffers": [{"byteLength": len(self.bin)}],
        }
        return pack_glb(doc, bytes(self.bin))


def _encode_strings(values) -> tuple[bytes, np.ndarray]:
    """UTF-8 bytes of the values (None → "") one after the other, and their offsets (n + 1): the
    values joined by NUL and encoded in one call, the NULs found with numpy (no per-value encode)."""
    texts = ["" if v is None else str(v) for v in values]
    joined = "\0".join(texts)
    offsets = np.zeros(len(texts) + 1, np.uint32)
    if not texts:
        return b"", offsets
    if joined.count("\0") == max(len(texts) - 1, 0):
        raw = joined.encode("utf-8")
        ends = np.r_[np.flatnonzero(np.frombuffer(raw, np.uint8) == 0), len(raw)]
        lengths = np.diff(np.r_[-1, ends]) - 1  # each value's bytes, without its NUL
        np.cumsum(lengths, out=offsets[1:])
        return raw.replace(b"\0", b""), offsets
    encoded = [t.encode("utf-8") for t in texts]  # a value holds a NUL itself: one by one
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return b"".join(encoded), offsets


def pack_glb(doc: dict, binary: bytes) -> bytes:
    js = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    js += b" " * ((-len(js)) % 4)
    binary = binary + b"\0" * ((-len(binary)) % 4)
    total = 12 + 8 + len(js) + 8 + len(binary)
    return b"".join([struct.pack("<4sII", b"glTF", 2, total), struct.pack("<I4s", len(js), b"JSON"), js,
                     struct.pack("<I4s", len(binary), b"BIN\0"), binary])


def read_glb(data: bytes) -> tuple[dict, bytes]:
    """(JSON document, binary chunk) of a glb."""
    magic, version, total = struct.unpack_from("<4sII", data, 0)
    if magic != b"glTF" or version != 2:
        raise ValueError("not a glTF 2.0 binary")
    jlen, _ = struct.unpack_from("<I4s", data, 12)
    doc = json.loads(data[20:20 + jlen])
    off = 20 + jlen
    blen, _ = struct.unpack_from("<I4s", data, off)
    return doc, data[off + 8: off + 8 + blen]


def accessor_array(doc: dict, binary: bytes, index: int) -> np.ndarray:
    """An accessor's values as numpy (tightly packed views only, as this writer makes them)."""
    acc = doc["accessors"][index]
    view = doc["bufferViews"][acc["bufferView"]]
    dtype = {5126: np.float32, 5121: np.uint8, 5123: np.uint16, 5125: np.uint32, 5122: np.int16}[acc["componentType"]]
    ncomp = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    arr = np.frombuffer(binary, dtype=dtype, count=acc["count"] * ncomp, offset=start)
    return arr.reshape(acc["count"], ncomp) if ncomp > 1 else arr


def property_values(doc: dict, binary: bytes, table_index: int) -> dict[str, list]:
    """Decode a property table back into Python lists (for tests, checks and the API)."""
    ext = doc["extensions"]["EXT_structural_metadata"]
    table = ext["propertyTables"][table_index]
    schema = ext["schema"]["classes"][table["class"]]["properties"]
    n = table["count"]
    out: dict[str, list] = {}

    def view_bytes(i: int) -> bytes:
        v = doc["bufferViews"][i]
        return binary[v.get("byteOffset", 0): v.get("byteOffset", 0) + v["byteLength"]]

    for name, prop in table["properties"].items():
        spec = schema[name]
        if spec["type"] == "STRING":
            offsets = np.frombuffer(view_bytes(prop["stringOffsets"]), np.uint32)
            raw = view_bytes(prop["values"])
            out[name] = [raw[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n)]
        elif spec["type"] == "BOOLEAN":
            bits = np.unpackbits(np.frombuffer(view_bytes(prop["values"]), np.uint8), bitorder="little")
            out[name] = [bool(b) for b in bits[:n]]
        else:
            out[name] = np.frombuffer(view_bytes(prop["values"]), _NUMPY[spec["componentType"]])[:n].tolist()
    return out
