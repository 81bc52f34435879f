"""The console's pure parts: catalogues complete and compiled, audience forms, chart options, cart parsing."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from werkzeug.datastructures import MultiDict

from services.segmentation.console import charts
from services.segmentation.console.forms import audience_filters, win_back_body
from services.segmentation.console.recommendations import parse_cart

CONSOLE = Path(__file__).resolve().parents[2] / "services" / "segmentation" / "console"
METHODS = [("**.py", "python"), ("templates/**.html", "jinja2")]


def source_messages() -> set[str]:
    keywords = {**DEFAULT_KEYWORDS, "lazy_gettext": None}
    return {message[2] for message in extract_from_dir(str(CONSOLE), METHODS, keywords=keywords)
            if isinstance(message[2], str)}


def catalogue(locale: str) -> dict[str, str]:
    with open(CONSOLE / "translations" / locale / "LC_MESSAGES" / "messages.po", "rb") as handle:
        return {message.id: message.string for message in read_po(handle) if message.id}


def test_every_console_string_has_a_chinese_and_an_english_translation():
    messages = source_messages()
    assert len(messages) > 150
    for locale in ("zh", "en"):
        translated = {key: value for key, value in catalogue(locale).items() if value}
        assert messages - set(translated) == set(), locale


def test_committed_mo_files_match_their_po_files():
    for locale in ("zh", "en"):
        with open(CONSOLE / "translations" / locale / "LC_MESSAGES" / "messages.mo", "rb") as handle:
            compiled = {message.id: message.string for message in read_mo(handle) if message.id}
        assert compiled == catalogue(locale), f"run `make translations` ({locale})"


def test_audience_filters_from_a_query_string():
    args = MultiDict([("tier", "gold"), ("tier", "silver"), ("tier", "nonsense"), ("lifecycle", "dormant"),
                      ("ev_min", "100"), ("ev_max", ""), ("r", "5"), ("f", "x")])
    assert audience_filters(args) == {
        "tier": ["gold", "silver"], "lifecycle": ["dormant"],
        "expected_value_365d": {"gte": 100.0}, "r": {"gte": 5.0, "lte": 5.0},
    }


def test_win_back_body_from_the_form():
    form = MultiDict({"name": "", "holdout_percent": "20", "frequency_cap_days": "7", "offer_kind": "percent_off",
                      "offer_value": "15", "offer_days": "10", "recommendations": "3"})
    assert win_back_body(form, {"lifecycle": ["dormant"]}) == {
        "audience": {"lifecycle": ["dormant"]}, "holdout_fraction": 0.2, "frequency_cap_days": 7,
        "offer": {"kind": "percent_off", "value": 15.0, "valid_days": 10}, "recommendations": {"limit": 3},
    }


def test_rf_heatmap_cells_carry_their_grid_position_and_label():
    option = charts.rf_heatmap([{"r": 5, "f": 1, "customers": 12, "avg_monetary": 99.6}], ("F", "R"), 5,
                               {"avg": "avg", "customers": "Customers"})
    cell = option["series"][0]["data"][0]
    assert cell["value"] == [0, 4, 12]
    assert (cell["r"], cell["f"]) == (5, 1)
    assert cell["label"]["formatter"] == "12\navg 100"
    assert option["visualMap"]["max"] == 12


def test_sankey_keeps_the_two_runs_apart():
    option = charts.sankey_chart([{"from": "gold", "to": "gold", "customers": 3},
                                  {"from": "gold", "to": "silver", "customers": 1}], str.upper, ("(a)", "(b)"))
    series = option["series"][0]
    assert [node["name"] for node in series["data"]] == ["gold (a)", "gold (b)", "silver (b)"]
    assert series["data"][2]["label"]["formatter"] == "SILVER"
    assert series["links"][1] == {"source": "gold (a)", "target": "silver (b)", "value": 1,
                                  "from_value": "gold", "to_value": "silver"}


def test_interval_chart_in_percent_with_boxes_from_low_to_high():
    option = charts.interval_chart(["T", "C"], [0.25, None], [(0.1, 0.4), (None, None)],
                                   {"point": "p", "interval": "i"})
    boxes, points = option["series"][0]["data"], option["series"][1]["data"]
    assert boxes == [[10.0, 40.0, 10.0, 40.0], "-"]
    assert points == [25.0, None]


def test_cart_lines_typed_one_per_line():
    assert parse_cart("TEA-1 2\n\nPHN-1\nCUP-1 x") == [
        {"sku": "TEA-1", "quantity": 2}, {"sku": "PHN-1", "quantity": 1}, {"sku": "CUP-1", "quantity": 1}]


def test_audience_counted_from_the_cube_or_not_at_all():
    from services.segmentation.console.aggregates import count_from_cube

    cube = [["gold", "active", "Champions", None, 5, 5, 7], ["gold", "dormant", "Lost", "potential", 1, 2, 3],
            ["silver", "dormant", "Lost", None, 1, 1, 11]]
    assert count_from_cube(cube, {}) == 21
    assert count_from_cube(cube, {"tier": ["gold"]}) == 10
    assert count_from_cube(cube, {"tier": ["gold", "silver"], "lifecycle": ["dormant"]}) == 14
    assert count_from_cube(cube, {"r": {"gte": 1, "lte": 1}, "f": {"gte": 2, "lte": 2}}) == 3
    assert count_from_cube(cube, {"community_layer": ["potential"]}) == 3
    assert count_from_cube(cube, {"expected_value_365d": {"gte": 10}}) is None
    assert count_from_cube(cube, {"r": {"gt": 1}}) is None
