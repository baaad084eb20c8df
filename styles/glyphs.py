"""Glyph PBFs (the MapLibre / Mapbox ``glyphs.proto``, package ``llmr.glyphs``): ranges, reading,
and combining a comma-separated font stack.

The files themselves are made at set-up time by ``fontnik`` (npm, Mapbox's SDF glyph generator,
shipped with a prebuilt linux-x64 binary) from Debian's Noto Sans TTFs: one folder per font
named after the font (``Noto Sans Regular``), one ``{start}-{end}.pbf`` per 256 code points,
0–65535, so every range MapLibre can ask for exists (a range the font lacks is a valid PBF with
no glyphs — a 404 would make MapLibre drop every label of the tile).

A request for ``Font A,Font B`` (a style whose ``text-font`` lists fallbacks) gets one PBF
whose glyphs come from the first font that has each code point — what Mapbox's
``glyph-pbf-composite`` does — named after the whole stack.
"""

from __future__ import annotations

import re
from functools import lru_cache

RANGE_RE = re.compile(r"^(\d{1,5})-(\d{1,5})$")
#: Each SDF bitmap has a 3 px border around the glyph's own width x height.
BORDER = 3


class RangeError(ValueError):
    pass


def parse_range(text: str) -> tuple[int, int]:
    """``"0-255"`` → (0, 255); only the 256-aligned ranges MapLibre asks for."""
    m = RANGE_RE.match(text)
    if not m:
        raise RangeError(f"glyph range {text!r} is not START-END (e.g. 0-255)")
    start, end = int(m.group(1)), int(m.group(2))
    if start % 256 or end != start + 255 or end > 65535:
        raise RangeError(f"glyph range {text!r}: ranges are 256 code points from a multiple of 256, "
                         "0-255 … 65280-65535")
    return start, end


@lru_cache(maxsize=1)
def message_class():
    """The ``llmr.glyphs.glyphs`` message class, built from the schema of ``glyphs.proto``."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="geotwin_glyphs.proto", package="llmr.glyphs", syntax="proto2")

    def msg(name, fields):
        m = fd.message_type.add(name=name)
        for number, fname, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
        return m

    REQ, OPT, REP = F.LABEL_REQUIRED, F.LABEL_OPTIONAL, F.LABEL_REPEATED
    msg("glyph", [(1, "id", F.TYPE_UINT32, REQ, None), (2, "bitmap", F.TYPE_BYTES, OPT, None),
                  (3, "width", F.TYPE_UINT32, REQ, None), (4, "height", F.TYPE_UINT32, REQ, None),
                  (5, "left", F.TYPE_SINT32, REQ, None), (6, "top", F.TYPE_SINT32, REQ, None),
                  (7, "advance", F.TYPE_UINT32, REQ, None)])
    msg("fontstack", [(1, "name", F.TYPE_STRING, REQ, None), (2, "range", F.TYPE_STRING, REQ, None),
                      (3, "glyphs", F.TYPE_MESSAGE, REP, ".llmr.glyphs.glyph")])
    top = msg("glyphs", [(1, "stacks", F.TYPE_MESSAGE, REP, ".llmr.glyphs.fontstack")])
    top.extension_range.add(start=16, end=8192)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("llmr.glyphs.glyphs"))


def decode(data: bytes):
    msg = message_class()()
    msg.ParseFromString(data)
    return msg


def combine(parts: list[bytes], name: str, range_text: str) -> bytes:
    """One PBF for a font stack: for each code point the glyph of the first part that has it."""
    cls = message_class()
    out = cls()
    stack = out.stacks.add(name=name, range=range_text)
    seen: set[int] = set()
    for data in parts:
        for fs in decode(data).stacks:
            for g in fs.glyphs:
                if g.id not in seen:
                    seen.add(g.id)
                    stack.glyphs.add().CopyFrom(g)
    glyphs = sorted(stack.glyphs, key=lambda g: g.id)
    del stack.glyphs[:]
    for g in glyphs:
        stack.glyphs.add().CopyFrom(g)
    return out.SerializeToString()
