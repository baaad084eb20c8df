"""The spreadsheet-cell rule against formula injection (issue 12, item 2): OWASP's leading quote
for text starting with = + - @ tab CR; numbers stay numbers. The exports themselves are read back
in tests/integration/test_supervision_exports.py."""

from land_supervision.spreadsheet import FORMULA_TRIGGERS, csv_cell, neutralise, xlsx_cell


def test_neutralise_is_owasp_and_keeps_numbers():
    for v in ("=1", "+1", "-1", "@a", "\tx", "\rx"):
        assert neutralise(v) == "'" + v
    assert neutralise("-12") == "'-12"  # text stays text
    for v in (-12, -0.5, 3, 1e9, None, True, "", "P-1", "测试街道", "'=already"):
        assert neutralise(v) == v and type(neutralise(v)) is type(v)
    assert set("=+-@\t\r") <= set(FORMULA_TRIGGERS)


def test_csv_and_xlsx_cells():
    assert csv_cell(True) == "True" and csv_cell(-3.5) == -3.5 and csv_cell("@x") == "'@x"
    assert xlsx_cell("=a\x01b") == "'=a\ufffdb" and xlsx_cell(7) == 7 and xlsx_cell(None) is None
