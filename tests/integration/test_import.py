"""CSV import and demo seeding against real databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from services.admin.cli import main as segrec
from shared.extensions import db
from shared.ingest import canonical_order_hash, import_csv, order_content_hash
from shared.models import Customer, Event, Order, OrderLine, Product, Promotion

ORDER_HEADER = ["order_id", "customer_id", "placed_at", "sku", "quantity", "unit_price", "status"]


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    """A CSV file with a header row."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def line(order_id="o1", customer_id="c1", placed_at="2025-03-01T10:00:00Z", sku="tea-1", quantity="2",
         unit_price="30.0", status="paid") -> list[str]:
    """One order line row; override what a test varies."""
    return [order_id, customer_id, placed_at, sku, quantity, unit_price, status]


def orders_file(tmp_path: Path, rows: list[list], name="orders.csv") -> Path:
    return write_csv(tmp_path / name, ORDER_HEADER, rows)


def count(model) -> int:
    with db.session() as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


def fetch(model, key):
    with db.session() as session:
        return session.get(model, key)


def read_rejects(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def import_orders(path: Path, **kwargs):
    return import_csv("orders", path, db, progress=False, **kwargs)


def test_canonical_hash_is_the_rest_hash_on_awkward_input():
    placed = datetime(2025, 3, 1, 10, 0, 0, 123456)
    skus = ['tea "gold"', "茶-1", "back\\slash", "tab\there"]
    quantities = [1, 2, 100000, 3]
    prices = [30.0, 0.1 + 0.2, 1e7, 2.675]
    lines = [{"sku": s, "quantity": q, "unit_price": p} for s, q, p in zip(skus, quantities, prices)]
    fast = canonical_order_hash("客户 1", placed.isoformat(timespec="seconds"), skus, quantities,
                                [f"{price:.2f}" for price in prices])
    assert fast == order_content_hash("客户 1", placed, lines)


def test_orders_land_with_aggregates_and_placeholders(database_url, tmp_path):
    path = orders_file(tmp_path, [
        line("o1", "c1", "2025-03-01T10:00:00Z", "tea-1", "2", "30"),
        line("o1", "c1", "2025-03-01T10:00:00Z", "pot-1", "1", "99.5"),
        line("o2", "c1", "2025-03-01 18:00:00", "tea-1", "1", "30"),
        line("o3", "c1", "2025-04-02T09:00:00+08:00", "tea-1", "2", "30"),
        line("o4", "c2", "2025-04-03T09:00:00Z", "tea-1", "1", "30", "refunded"),
    ])
    summary = import_orders(path)
    assert (summary.rows, summary.accepted, summary.rejected) == (5, 5, 0)
    assert (summary.created, summary.updated, summary.unchanged) == (4, 0, 0)
    assert summary.rejects_path is None and not Path(f"{path}.rejects.csv").exists()
    assert count(Order) == 4 and count(OrderLine) == 5
    first = fetch(Customer, "c1")
    assert first.placeholder is True
    assert (first.paid_orders, first.purchase_days) == (3, 2)
    assert first.net_spend == pytest.approx(60 + 99.5 + 30 + 60)
    assert first.last_paid_at.isoformat() == "2025-04-02T01:00:00"  # converted to UTC
    refunded_only = fetch(Customer, "c2")
    assert (refunded_only.paid_orders, refunded_only.net_spend) == (0, 0)
    placeholder = fetch(Product, "pot-1")
    assert placeholder.placeholder is True and placeholder.active is False
    with db.session() as session:
        stored = session.get(Order, "o1")
        assert stored.total == pytest.approx(159.5)
        assert stored.content_hash == order_content_hash(
            "c1", datetime(2025, 3, 1, 10), [{"sku": "tea-1", "quantity": 2, "unit_price": 30.0},
                                             {"sku": "pot-1", "quantity": 1, "unit_price": 99.5}]
        )
        line_skus = session.execute(
            select(OrderLine.line_no, OrderLine.sku).where(OrderLine.order_id == "o1").order_by(OrderLine.line_no)
        ).all()
        assert [tuple(row) for row in line_skus] == [(1, "tea-1"), (2, "pot-1")]
    assert "4 created" in summary.describe() and "rows/s" in summary.describe()


def test_bad_rows_go_to_the_rejects_file_with_line_and_reason(database_url, tmp_path):
    # An order already stored: a file naming it with other lines conflicts.
    import_orders(orders_file(tmp_path, [line("stored", "c9", sku="tea-1")], name="first.csv"))
    path = orders_file(tmp_path, [
        line("ok", "c1"),                                              # line 2
        line("badqty", "c1", quantity="0"),                            # line 3
        line("badqty2", "c1", quantity="1.5"),                         # line 4
        line("baddate", "c1", placed_at="01/03/2025"),                 # line 5
        line("future", "c1", placed_at="2999-01-01T00:00:00Z"),        # line 6
        line("stored", "c9", sku="other-sku"),                         # line 7
        line("twoline", "c1", sku="a", quantity="1"),                  # line 8
        line("twoline", "c1", sku="b", unit_price="-2"),               # line 9
        line("badstatus", "c1", status="lost"),                        # line 10
        ["short", "row"],                                              # line 11
        line("x" * 65, "c1"),                                          # line 12
    ])
    summary = import_orders(path)
    assert summary.rows == 11 and summary.accepted == 1 and summary.rejected == 10
    assert summary.rejects_path == f"{path}.rejects.csv"
    rejects = {int(row["line"]): row for row in read_rejects(summary.rejects_path)}
    assert sorted(rejects) == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert "quantity" in rejects[3]["reason"] and "quantity" in rejects[4]["reason"]
    assert "placed_at" in rejects[5]["reason"] and "ISO 8601" in rejects[5]["reason"]
    assert "future" in rejects[6]["reason"]
    assert "conflict" in rejects[7]["reason"]
    # One bad line rejects its whole order: the good line says why.
    assert "line 9" in rejects[8]["reason"] and "unit_price" in rejects[9]["reason"]
    assert "status" in rejects[10]["reason"]
    assert "expected 7 fields" in rejects[11]["reason"]
    assert "order_id" in rejects[12]["reason"]
    # The original row is kept after line and reason, so it can be fixed and re-imported.
    assert rejects[3]["order_id"] == "badqty" and rejects[3]["quantity"] == "0"
    assert count(Order) == 2
    with db.session() as session:
        assert session.execute(select(OrderLine.sku).where(OrderLine.order_id == "stored")).scalars().all() == [
            "tea-1"
        ]


def test_importing_twice_changes_nothing_and_a_refund_updates(database_url, tmp_path):
    rows = [line(f"o{number}", f"c{number % 3}", sku=f"s{number % 4}") for number in range(20)]
    path = orders_file(tmp_path, rows)
    first = import_orders(path, chunk_rows=7)
    assert (first.created, first.unchanged) == (20, 0)
    with db.session() as session:
        stamps = dict(session.execute(select(Order.order_id, Order.updated_at)).all())
    second = import_orders(path, chunk_rows=7)
    assert (second.created, second.updated, second.unchanged, second.rejected) == (0, 0, 20, 0)
    with db.session() as session:
        assert dict(session.execute(select(Order.order_id, Order.updated_at)).all()) == stamps
    assert count(Order) == 20 and count(OrderLine) == 20
    spend_before = fetch(Customer, "c1").net_spend

    refund = orders_file(tmp_path, [line("o1", "c1", sku="s1", status="refunded")], name="refund.csv")
    summary = import_orders(refund)
    assert (summary.updated, summary.created) == (1, 0)
    assert fetch(Order, "o1").status == "refunded"
    assert fetch(Customer, "c1").net_spend == pytest.approx(spend_before - 60)
    back = orders_file(tmp_path, [line("o1", "c1", sku="s1", status="paid")], name="back.csv")
    summary = import_orders(back)
    assert summary.rejected == 1
    assert "cannot move" in read_rejects(summary.rejects_path)[0]["reason"]


def test_a_rest_resend_of_an_imported_order_is_a_no_op(database_url, tmp_path, segmentation_app, make_key):
    path = orders_file(tmp_path, [
        line("o1", "c1", "2025-03-01T10:00:00+08:00", "tea-1", "2", "30.10"),
        line("o1", "c1", "2025-03-01T10:00:00+08:00", "pot-1", "1", "99.999"),
    ])
    assert import_orders(path).created == 1
    record = {
        "order_id": "o1", "customer_id": "c1", "placed_at": "2025-03-01T10:00:00+08:00", "status": "paid",
        "lines": [{"sku": "tea-1", "quantity": 2, "unit_price": 30.10},
                  {"sku": "pot-1", "quantity": 1, "unit_price": 99.999}],
    }
    client = segmentation_app.test_client()
    response = client.post("/v1/orders", json=[record], headers=make_key("ingest:write"))
    assert response.status_code == 200, response.json
    assert response.json == {"accepted": 1, "created": 0, "updated": 0, "unchanged": 1, "rejected": []}
    assert count(OrderLine) == 2


def test_order_lines_on_non_adjacent_rows(database_url, tmp_path):
    # o1's lines must be adjacent. A later identical run is a harmless re-send; a later run with
    # other lines is rejected, pointing at the adjacency rule. A chunk boundary inside o3 is fine.
    path = orders_file(tmp_path, [
        line("o1", sku="a"),            # 2
        line("o1", sku="b"),            # 3
        line("o2", sku="a"),            # 4
        line("o1", sku="a"),            # 5  o1 again, with other lines than at 2-3: rejected
        line("o3", sku="a"),            # 6
        line("o3", sku="b"),            # 7
        line("o3", sku="c"),            # 8
        line("o2", sku="a"),            # 9  identical to o2 at line 4: unchanged
    ])
    summary = import_orders(path, chunk_rows=2)
    assert (summary.created, summary.unchanged, summary.rejected) == (3, 1, 1)
    rejects = read_rejects(summary.rejects_path)
    assert [row["line"] for row in rejects] == ["5"]
    assert "adjacent" in rejects[0]["reason"]
    with db.session() as session:
        lines = session.execute(select(OrderLine.sku).where(OrderLine.order_id == "o3")).scalars().all()
    assert sorted(lines) == ["a", "b", "c"]
    assert count(OrderLine) == 6


def test_disagreeing_lines_and_overlong_orders_are_rejected_whole(database_url, tmp_path):
    rows = [line("o1", "c1", sku="a"), line("o1", "c2", sku="b")]
    rows += [line("big", "c1", sku=f"s{index}") for index in range(501)]
    rows += [line("after", "c1")]
    summary = import_orders(orders_file(tmp_path, rows), chunk_rows=100)
    assert summary.rejected == 503 and summary.created == 1
    rejects = read_rejects(summary.rejects_path)
    assert "disagree on customer_id" in rejects[0]["reason"]
    assert all("more than 500 lines" in row["reason"] for row in rejects[2:])
    assert count(Order) == 1


def test_customers_and_products_are_upserted(database_url, tmp_path):
    import_orders(orders_file(tmp_path, [line("o1", "c1", sku="tea-1")]))
    customers = write_csv(tmp_path / "customers.csv", ["customer_id", "joined_at", "channel", "community_member",
                                                       "opted_out", "ignored"], [
        ["c1", "2024-01-01", "app", "yes", "0", "x"],
        ["c2", "", "", "", "", ""],
        ["c3", "not a date", "web", "maybe", "", ""],
        ["", "2024-01-01", "web", "", "", ""],
    ])
    summary = import_csv("customers", customers, db, progress=False)
    assert (summary.accepted, summary.rejected, summary.created, summary.updated) == (2, 2, 1, 1)
    reasons = [row["reason"] for row in read_rejects(summary.rejects_path)]
    assert "joined_at" in reasons[0] and "community_member" in reasons[0] and "customer_id" in reasons[1]
    stored = fetch(Customer, "c1")
    assert stored.placeholder is False and stored.channel == "app" and stored.community_member is True
    assert stored.paid_orders == 1  # the aggregates survive the upsert
    again = import_csv("customers", customers, db, progress=False)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 2)

    products = write_csv(tmp_path / "products.csv", ["category", "sku", "name", "price", "cost", "stock", "active",
                                                      "repeat_purchase"], [
        ["Tea", "tea-1", "Green tea", "12.5", "6", "40", "", "true"],
        ["Tea", "pot-1", "Teapot", "45", "", "", "false", ""],
        ["Tea", "bad-1", "Bad", "-1", "", "2.5", "", ""],
    ])
    summary = import_csv("products", products, db, progress=False)
    assert (summary.accepted, summary.rejected, summary.created, summary.updated) == (2, 1, 1, 1)
    tea = fetch(Product, "tea-1")
    assert tea.placeholder is False and tea.active is True and tea.repeat_purchase is True and tea.price == 12.5
    assert fetch(Product, "pot-1").active is False
    reason = read_rejects(summary.rejects_path)[0]["reason"]
    assert "price" in reason and "stock" in reason
    again = import_csv("products", products, db, progress=False)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 2)


def test_missing_required_column_stops_the_import(database_url, tmp_path):
    path = write_csv(tmp_path / "orders.csv", ["order_id", "customer_id", "sku"], [["o1", "c1", "a"]])
    with pytest.raises(ValueError, match="placed_at"):
        import_orders(path)


def test_import_command_prints_the_summary(database_url, tmp_path):
    path = orders_file(tmp_path, [line("o1"), line("o2", quantity="-1")])
    runner = CliRunner()
    result = runner.invoke(segrec, ["import", "orders", str(path), "--no-progress"], env={"DATABASE_URL": database_url})
    # A rejected row makes the exit status 1 (the good row is stored all the same) ...
    assert result.exit_code == 1, result.output
    assert "1 accepted, 1 rejected" in result.output and "rejects.csv" in result.output
    # ... unless the operator accepts rejects.
    again = runner.invoke(segrec, ["import", "orders", str(path), "--no-progress", "--allow-rejects"],
                          env={"DATABASE_URL": database_url})
    assert again.exit_code == 0, again.output
    assert "0 created" in again.output and "1 unchanged" in again.output


def test_demo_seed_command_and_if_empty(database_url):
    runner = CliRunner()
    env = {"DATABASE_URL": database_url}
    result = runner.invoke(segrec, ["demo", "seed", "--customers", "300", "--no-progress"], env=env)
    assert result.exit_code == 0, result.output
    assert "300 customers" in result.output
    assert count(Customer) == 300 and count(Order) > 300 and count(OrderLine) > 1500
    assert count(Product) > 0 and count(Event) > 0 and count(Promotion) == 3
    with db.session() as session:
        paid = session.execute(select(func.sum(Customer.paid_orders))).scalar_one()
        archetype = session.get(Customer, "C0000001").attributes
    assert paid > 0 and "demo_archetype" in (archetype if isinstance(archetype, dict) else json.loads(archetype))
    lines_before = count(OrderLine)
    skipped = runner.invoke(segrec, ["demo", "seed", "--customers", "300", "--no-progress", "--if-empty"], env=env)
    assert skipped.exit_code == 0 and "skipped" in skipped.output
    assert count(OrderLine) == lines_before


# ---- the column-wise checks against the row-by-row rules they replace ------------------------------


AWKWARD_QUANTITIES = ["1", "2", "100000", "100001", "0", "-1", "1.5", "", " 3 ", "007", "٣", "²", "1e3", "abc",
                      "99999999999999999999", "+4", "3_000"]
AWKWARD_PRICES = ["30", "30.0", "4.84", "0.005", "0", "-2", "1e3", "inf", "nan", " 12.5 ", "1_000.5", ".5", "5.",
                  "10000000", "10000000.01", "abc", "", "٣.5", "0.004999999999999999999", "12.345678", "99.999"]
AWKWARD_TIMES = ["2025-03-01T10:00:00Z", "2025-03-01 18:00:00", "2025-04-02T09:00:00+08:00", "2025-03-01T10:00:00.5",
                 "2024-02-29T00:00:00", "2025-02-29T00:00:00", "2025-13-01T00:00:00", "2025-03-01T24:00:00",
                 "2025-03-01T23:59:60", "0001-01-01T00:00:00+08:00", "0999-05-05T05:05:05", "20250301T100000",
                 "2025-03-01", "2025-W09-6", " 2025-03-01T10:00:00 ", "01/03/2025", "", "2999-01-01T00:00:00Z",
                 "2025-03-01T10:00:00+24:00", "2025-03-01T10:00:00-05:30", "1969-12-31T23:59:59.999999"]
AWKWARD_IDS = ['tea "gold"', "茶-1", "back\\slash", "tab\there", "new\nline", "plain-1", "x" * 64, "é"]


def test_column_quantity_check_matches_the_row_rule():
    import pyarrow as pa

    from shared.ingest.rules import parse_quantity_column, parse_whole_number
    from shared.limits import MAX_QUANTITY

    values, valid = parse_quantity_column(pa.array(AWKWARD_QUANTITIES))
    for text, value, ok in zip(AWKWARD_QUANTITIES, values.tolist(), valid.tolist()):
        expected = parse_whole_number(text)
        expected_ok = expected is not None and 1 <= expected <= MAX_QUANTITY
        assert ok == expected_ok, text
        if ok:
            assert value == expected, text


def test_column_price_checks_match_the_row_rule_and_the_copy_text_is_the_same_number():
    from decimal import Decimal

    import pyarrow as pa

    from shared.ingest.order_identity import two_decimal_texts
    from shared.ingest.rules import parse_number, parse_price_column, price_copy_texts
    from shared.limits import MAX_MONEY

    texts = pa.array(AWKWARD_PRICES)
    prices, plain = parse_price_column(texts)
    copy_texts = price_copy_texts(texts, prices, plain).to_pylist()
    two_decimals = two_decimal_texts(texts, prices).to_pylist()
    for index, text in enumerate(AWKWARD_PRICES):
        expected = parse_number(text)
        ok = bool(0 < prices[index] <= MAX_MONEY)
        assert ok == (expected is not None and 0 < expected <= MAX_MONEY), text
        if ok:
            assert prices[index] == expected, text
            assert two_decimals[index] == f"{expected:.2f}", text
            # PostgreSQL reads the COPY text as an exact decimal: it must be the float's value.
            assert Decimal(copy_texts[index]) == Decimal(repr(expected)), text
    # The padded fast path (every text plain with at most two decimals).
    simple = ["30", "30.5", "4.84", "0.10", "10000000"]
    simple_prices, _plain = parse_price_column(pa.array(simple))
    assert two_decimal_texts(pa.array(simple), simple_prices).to_pylist() == [f"{float(t):.2f}" for t in simple]


def test_column_time_check_matches_the_row_rule():
    import pyarrow as pa

    from shared.ingest.rules import EPOCH, MICROSECOND, DateParser, parse_timestamp_column
    from shared.limits import TimeRules

    micros, problems = parse_timestamp_column(pa.array(AWKWARD_TIMES), DateParser(TimeRules(future_skew_seconds=300)))
    reference = DateParser(TimeRules(future_skew_seconds=300))
    for index, text in enumerate(AWKWARD_TIMES):
        value, problem = reference.parse(text)
        assert problems.get(index) == problem, text
        if problem is None:
            assert EPOCH + int(micros[index]) * MICROSECOND == value, text


def test_column_status_and_id_checks_match_the_row_rules():
    import pyarrow as pa
    import pyarrow.compute as pc

    from shared.ingest.rules import status_column
    from shared.limits import ORDER_STATUSES

    raw = ["paid", " refunded ", "", "lost", "Paid", "cancelled"]
    statuses = status_column(pa.array(raw), len(raw)).to_pylist()
    assert statuses == [text.strip() or "paid" for text in raw]
    assert [status in ORDER_STATUSES for status in statuses] == [True, True, True, False, False, True]
    assert status_column(None, 2).to_pylist() == ["paid", "paid"]
    ids = ["", "a", "x" * 64, "x" * 65, "茶" * 64, "茶" * 65]
    assert pc.utf8_length(pa.array(ids)).to_pylist() == [len(value) for value in ids]


def test_column_hashes_and_totals_match_the_rest_functions():
    import numpy as np
    import pyarrow as pa

    from shared.ingest import order_total
    from shared.ingest.order_identity import order_hashes, order_totals
    from shared.ingest.rules import EPOCH, MICROSECOND

    skus = AWKWARD_IDS + ["tea-1", "tea-2", "tea-3"]
    quantities = np.array([1, 2, 100000, 3, 7, 1, 2, 3, 9, 1, 1], dtype=np.int64)
    price_texts = ["30", "0.1", "10000000", "2.675", "0.7", "99.999", "1.005", "4.84", "0.3", "12.5", "7"]
    prices = np.array([float(text) for text in price_texts])
    starts, ends = np.array([0, 4, 9]), np.array([4, 9, 11])
    customers = ["客户 1", 'c"2', "c3"]
    placed = [datetime(2025, 3, 1, 10, 0, 0, 123456), datetime(1969, 12, 31, 23, 59, 59, 999999),
              datetime(999, 1, 1)]
    micros = np.array([(value - EPOCH) // MICROSECOND for value in placed], dtype=np.int64)
    hashes = order_hashes(pa.array(customers), micros, pa.array(skus), quantities, prices, pa.array(price_texts),
                           starts, ends)
    totals = order_totals(quantities, prices, starts, ends)
    for order, (start, end) in enumerate(zip(starts, ends)):
        lines = [{"sku": skus[i], "quantity": int(quantities[i]), "unit_price": float(prices[i])}
                 for i in range(start, end)]
        assert hashes[order] == order_content_hash(customers[order], placed[order], lines)
        assert totals[order] == order_total(lines)


def test_quoted_crlf_and_ragged_files_keep_their_line_numbers(database_url, tmp_path, monkeypatch):
    # Quoted fields (one spanning two lines) and CRLF: read by the csv module, numbered as before.
    quoted = tmp_path / "quoted.csv"
    quoted.write_text(
        "order_id,customer_id,placed_at,sku,quantity,unit_price,status\r\n"
        '"q1","c1","2025-03-01T10:00:00Z","tea, green","2","30.0","paid"\r\n'
        '"q2","c1","2025-03-01T10:00:00Z","two\nlines","0","30.0","paid"\r\n'
        '"q3","c1","2025-03-01T10:00:00Z","tea","1","30.0","paid"\r\n'
        "\r\n"
        '"q4","c1","2025-03-01T10:00:00Z","tea","1","-1","paid"\r\n',
        encoding="utf-8", newline="",
    )
    summary = import_orders(quoted)
    assert (summary.created, summary.rejected) == (2, 2)
    assert [row["line"] for row in read_rejects(summary.rejects_path)] == ["3", "7"]
    with db.session() as session:
        assert session.get(OrderLine, ("q1", 1)).sku == "tea, green"
    # A plain CRLF file with a row of the wrong width well after the start: the rows before it are
    # read by pyarrow, the rest by the csv module, and every line number is still right.
    monkeypatch.setattr("shared.ingest.reading.ARROW_BLOCK_BYTES", 16_384)  # many blocks, so the switch is mid-file
    rows = [line(f"r{number}", sku=f"s{number % 5}") for number in range(3000)]
    rows.insert(2500, ["r-short", "c1"])
    ragged = orders_file(tmp_path, rows, name="ragged.csv")
    summary = import_orders(ragged, chunk_rows=1000)
    assert (summary.rows, summary.created, summary.rejected) == (3001, 3000, 1)
    assert read_rejects(summary.rejects_path)[0]["line"] == "2502"
    assert count(OrderLine) == 3002


def test_refresh_of_every_customer_matches_the_rest_refresh(database_url, tmp_path, monkeypatch):
    from shared.ingest import refresh_customer_aggregates

    monkeypatch.setattr("shared.ingest.importer.SMALL_IMPORT_CUSTOMERS", 0)  # take the "refresh everyone" path
    rows = [line(f"o{number}", f"c{number % 4}", f"2025-03-0{1 + number % 3}T10:00:00Z", sku=f"s{number % 3}",
                 unit_price=f"{10 + number}.5", status="refunded" if number % 5 == 0 else "paid")
            for number in range(30)]
    summary = import_orders(orders_file(tmp_path, rows))
    assert summary.aggregates_refreshed == "all customers (set-based)"
    columns = (Customer.customer_id, Customer.first_paid_at, Customer.last_paid_at, Customer.paid_orders,
               Customer.net_spend, Customer.purchase_days)
    with db.session() as session:
        imported = sorted(session.execute(select(*columns)).all())
    with db.session() as session:
        refresh_customer_aggregates(session, None)
    with db.session() as session:
        assert sorted(session.execute(select(*columns)).all()) == imported
    assert [row.paid_orders for row in imported] == [6, 6, 6, 6]  # 8 or 7 orders each, 2 or 1 refunded
