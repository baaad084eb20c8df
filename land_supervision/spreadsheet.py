"""Cells for spreadsheets: every CSV and XLSX the server writes passes its cells through
``neutralise`` (the findings exports in ``runs.py``: ``GET /supervision/runs/{id}/findings?f=csv|xlsx``,
``geotwin supervise run|export --out``).

Formula injection (OWASP "CSV Injection"): a spreadsheet reads a cell that starts with ``=``, ``+``,
``-`` or ``@`` — also after a tab or carriage return — as a formula, so a parcel id, street name or
note typed through the API would run in the officer's spreadsheet (openpyxl itself stores a
string starting with ``=`` as a formula). OWASP's rule: such a cell gets a leading single quote,
which spreadsheets show as text. Numbers stay numbers (a negative number is no formula); the
text ``"-12"`` is text and is neutralised like any other. CSV writers also quote every text field
(``CSV_QUOTING``), so a separator or quote inside a value cannot start a new cell.
"""

from __future__ import annotations

import csv
import re

#: first characters that make a spreadsheet read a cell as a formula (OWASP; line feed as well)
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n")

#: CSV: text quoted, numbers not (``None`` is written as an empty quoted field)
CSV_QUOTING = csv.QUOTE_NONNUMERIC

# characters XML 1.0 cannot hold (openpyxl refuses them with IllegalCharacterError)
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def neutralise(value):
    """``value`` as it may go into a spreadsheet cell: a string starting with a formula trigger
    gets a leading ``'``; anything else (numbers, None, booleans, other text) is returned as it is."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def xlsx_cell(value):
    """``neutralise`` for an XLSX cell, and characters XML cannot hold replaced by U+FFFD (openpyxl
    would refuse the whole workbook for one such character in one value)."""
    value = neutralise(value)
    if isinstance(value, str):
        value = _XML_ILLEGAL.sub("\ufffd", value)
    return value


def csv_cell(value):
    """``neutralise`` for a CSV cell; booleans as text (``True`` / ``False``), so that every
    unquoted field of the file is a number."""
    if isinstance(value, bool):
        return str(value)
    return neutralise(value)
