"""Turning the console's query strings and forms into the API's request shapes (audience filters, campaigns)."""

from __future__ import annotations

from services.segmentation import segments

AUDIENCE_DIMENSIONS = ("tier", "lifecycle", "rfm_segment", "community_layer")
# Numeric filters the explorer offers: form field -> (audience field, operator).
AUDIENCE_RANGES = {
    "ev_min": ("expected_value_365d", "gte"),
    "ev_max": ("expected_value_365d", "lte"),
    "r": ("r", "eq"),
    "f": ("f", "eq"),
}


def _number(text: str | None) -> float | None:
    if text is None or not str(text).strip():
        return None
    try:
        return float(text)
    except ValueError:
        return None


def audience_filters(args) -> dict:
    """The audience filters of a query string (a MultiDict): lists of dimension values, numeric ranges."""
    filters: dict = {}
    for dimension in AUDIENCE_DIMENSIONS:
        known = segments.DIMENSIONS[dimension][1]
        values = [value for value in args.getlist(dimension) if value in known]
        if values:
            filters[dimension] = values
    for field_name, (target, operator) in AUDIENCE_RANGES.items():
        number = _number(args.get(field_name))
        if number is None:
            continue
        bounds = filters.setdefault(target, {})
        if operator == "eq":
            bounds.update(gte=number, lte=number)
        else:
            bounds[operator] = number
    return filters


def audience_query_string(args) -> list[tuple[str, str]]:
    """The explorer's own parameters (for CSV and paging links), without the cursor."""
    keep = (*AUDIENCE_DIMENSIONS, *AUDIENCE_RANGES)
    return [(name, value) for name in keep for value in args.getlist(name) if value != ""]


def win_back_body(form, audience: dict) -> dict:
    """The API's win-back request body from the console's form (validated by the API's schema after)."""
    body: dict = {"name": form.get("name") or None, "audience": audience}
    holdout = _number(form.get("holdout_percent"))
    if holdout is not None:
        body["holdout_fraction"] = round(holdout / 100.0, 6)
    cap = _number(form.get("frequency_cap_days"))
    if cap is not None:
        body["frequency_cap_days"] = int(cap)
    offer_kind = form.get("offer_kind") or ""
    if offer_kind:
        offer: dict = {"kind": offer_kind}
        value = _number(form.get("offer_value"))
        if value is not None:
            offer["value"] = value
        days = _number(form.get("offer_days"))
        if days is not None:
            offer["valid_days"] = int(days)
        body["offer"] = offer
    recommendations = _number(form.get("recommendations"))
    if recommendations is not None:
        body["recommendations"] = {"limit": int(recommendations)}
    return {name: value for name, value in body.items() if value is not None}
