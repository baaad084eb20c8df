"""Text-encoding detection for shapefiles (.cpg / raw .dbf bytes) and CSV files.

Chinese shapefiles are very often written in GBK without a ``.cpg`` sidecar; GDAL then falls back
to the DBF language-driver byte (usually 0, i.e. ISO-8859-1) and returns mojibake. The rule used
here: if the text bytes (field names and character fields) are valid UTF-8 the file is UTF-8,
otherwise it is GB18030 (a strict superset of GBK / GB2312 / CP936).
"""

from __future__ import annotations

import codecs
import struct

import numpy as np

UTF8 = "UTF-8"
GB18030 = "GB18030"

#: .cpg values that name a Chinese code page; decoded with GB18030, their superset.
_CHINESE_CODEPAGES = {"GBK", "GB2312", "CP936", "936", "MS936", "ANSI936", "GB18030", "54936", "EUC-CN"}

#: How many DBF records to look at (enough to see non-ASCII text, fast on big files).
DBF_SAMPLE_RECORDS = 100_000
#: How many bytes of a CSV file to look at.
_MAX_CSV_BYTES = 8 * 1024 * 1024


#: Python codec names → spellings both Python and GDAL (CPLRecode / iconv) understand.
_CANONICAL = {
    "utf-8": UTF8,
    "gb18030": GB18030,
    "gbk": "GBK",
    "gb2312": "GB2312",
    "big5": "BIG5",
    "big5hkscs": "BIG5-HKSCS",
    "iso8859-1": "ISO-8859-1",
    "latin-1": "ISO-8859-1",
    "ascii": "ASCII",
    "utf-16": "UTF-16",
}


def canonical_encoding(name: str) -> str | None:
    """A name for ``name`` that Python and GDAL share ("latin-1" → "ISO-8859-1"), None if unknown."""
    try:
        py = codecs.lookup(name.strip()).name
    except LookupError:
        return None
    return _CANONICAL.get(py, py.upper())


def normalise_codepage(cpg_text: str) -> str | None:
    """The Python codec for the content of a ``.cpg`` file, or None if it is not understood."""
    value = cpg_text.strip().strip("\x00").strip()
    if not value:
        return None
    key = value.upper().replace(" ", "").replace("_", "-")
    if key.startswith("ANSI") and key[4:].isdigit():
        key = key[4:]
    if key in _CHINESE_CODEPAGES:
        return GB18030
    if key in {"UTF8", "UTF-8", "65001"}:
        return UTF8
    if key.isdigit():
        key = {"88591": "latin-1", "437": "cp437"}.get(key, "cp" + key)
    return canonical_encoding(key)


def classify_text_bytes(data: bytes) -> str:
    """UTF-8 if ``data`` is (essentially) valid UTF-8, else GB18030.

    A few invalid sequences among many valid multi-byte characters are tolerated: writers that
    cut text fields at a byte width leave a broken last character now and then.
    """
    if not data or max(data) < 0x80:
        return UTF8
    try:
        data.decode("utf-8")
        return UTF8
    except UnicodeDecodeError:
        pass
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    good = len(text) - len(text.encode("ascii", errors="ignore")) - bad  # valid non-ASCII characters
    return UTF8 if bad * 20 < good else GB18030


def dbf_text_bytes(dbf: bytes, max_records: int = DBF_SAMPLE_RECORDS) -> bytes:
    """The raw bytes of the field names and character fields of a DBF file.

    Cells are separated by a space so that a broken character in one cell does not pair with the
    next. Raises ValueError if the header is not a DBF header.
    """
    if len(dbf) < 32:
        raise ValueError("file too short for a DBF header")
    n_records, header_len, record_len = struct.unpack("<IHH", dbf[4:12])
    if header_len < 33 or record_len < 1:
        raise ValueError("not a DBF header")
    names: list[bytes] = []
    char_fields: list[tuple[int, int]] = []  # (offset in record, length)
    offset = 1  # the deletion flag
    pos = 32
    while pos + 32 <= min(header_len, len(dbf)) and dbf[pos] != 0x0D:
        desc = dbf[pos : pos + 32]
        names.append(desc[:11].split(b"\x00", 1)[0])
        ftype = chr(desc[11])
        flen = desc[16]
        if ftype == "C":
            flen += desc[17] << 8  # Clipper-style long character fields
        if ftype in "CV":
            char_fields.append((offset, flen))
        offset += flen
        pos += 32
    parts = [b" ".join(names)]
    n = min(n_records, max_records, max(0, (len(dbf) - header_len) // record_len))
    if n and char_fields:
        body = np.frombuffer(dbf, dtype=np.uint8, count=n * record_len, offset=header_len)
        records = body.reshape(n, record_len)
        for off, flen in char_fields:
            cells = records[:, off : off + flen]
            if not (cells >= 0x80).any():
                continue
            padded = np.empty((n, flen + 1), dtype=np.uint8)
            padded[:, :flen] = cells
            padded[:, flen] = 0x20
            parts.append(padded.tobytes())
    return b" ".join(parts)


def detect_dbf_encoding(dbf: bytes) -> str:
    """UTF-8 or GB18030 for the content of a .dbf file (see module doc)."""
    return classify_text_bytes(dbf_text_bytes(dbf))


def detect_csv_encoding(head: bytes) -> str:
    """UTF-8 or GB18030 for the first bytes of a CSV file.

    Raises ValueError for UTF-16 / UTF-32 files (a byte-order mark), which GDAL cannot read.
    """
    if head.startswith(codecs.BOM_UTF8):
        return UTF8
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ValueError("UTF-16")
    return classify_text_bytes(head[:_MAX_CSV_BYTES])
