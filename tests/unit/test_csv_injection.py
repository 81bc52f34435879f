"""CSV cells that a spreadsheet would run as formulas are neutralised (OWASP CSV injection)."""

from __future__ import annotations

import csv
import io

from shared.csvstream import FormulaSafeWriter, neutralise_cell


def test_formula_triggers_get_a_leading_quote():
    assert [neutralise_cell(cell) for cell in ("=1+1", "+SUM(1+1)", "-2", "@SUM(1,1)", "\tx", "\rx")] == [
        "'=1+1", "'+SUM(1+1)", "'-2", "'@SUM(1,1)", "'\tx", "'\rx"]


def test_other_cells_are_unchanged():
    assert [neutralise_cell(cell) for cell in ("c0001", "a=b", "", None, -5.0, 3)] == ["c0001", "a=b", "", None, -5.0, 3]


def test_the_writer_neutralises_every_row():
    buffer = io.StringIO()
    writer = FormulaSafeWriter(buffer)
    writer.writerow(["customer_id", "value"])
    writer.writerows([["=1+1", -5.0], ["ok", 2]])
    assert list(csv.reader(io.StringIO(buffer.getvalue()))) == [["customer_id", "value"], ["'=1+1", "-5.0"],
                                                                 ["ok", "2"]]
