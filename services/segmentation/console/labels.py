"""Translated names of the values ops see: tiers, lifecycle stages, community layers, RFM segments, steps."""

from __future__ import annotations

from flask_babel import gettext, lazy_gettext

VALUE_LABELS = {
    "tier": {
        "regular": lazy_gettext("Regular"), "silver": lazy_gettext("Silver"), "gold": lazy_gettext("Gold"),
        "black": lazy_gettext("Black"),
    },
    "lifecycle": {
        "new": lazy_gettext("New"), "first_order_only": lazy_gettext("First order only"),
        "active": lazy_gettext("Active"), "dormant": lazy_gettext("Dormant"), "churned": lazy_gettext("Churned"),
        "prospect": lazy_gettext("Prospect"),
    },
    "community_layer": {
        "potential": lazy_gettext("Potential"), "active": lazy_gettext("Active"),
        "high_value": lazy_gettext("High value"), "": lazy_gettext("Not in the community"),
    },
    "rfm_segment": {
        "Champions": lazy_gettext("Champions"), "Loyal": lazy_gettext("Loyal"),
        "Potential Loyalist": lazy_gettext("Potential Loyalist"), "New": lazy_gettext("New customers"),
        "Promising": lazy_gettext("Promising"), "Need Attention": lazy_gettext("Need Attention"),
        "About to Sleep": lazy_gettext("About to Sleep"), "At Risk": lazy_gettext("At Risk"),
        "Can't Lose Them": lazy_gettext("Can't Lose Them"), "Hibernating": lazy_gettext("Hibernating"),
        "Lost": lazy_gettext("Lost"),
    },
}

DIMENSION_LABELS = {
    "tier": lazy_gettext("Tier"),
    "lifecycle": lazy_gettext("Lifecycle"),
    "community_layer": lazy_gettext("Community layer"),
    "rfm_segment": lazy_gettext("RFM segment"),
}

STATUS_LABELS = {
    "building": lazy_gettext("Building"), "ready": lazy_gettext("Ready"), "failed": lazy_gettext("Failed"),
    "queued": lazy_gettext("Queued"), "running": lazy_gettext("Running"), "published": lazy_gettext("Published"),
    "rejected": lazy_gettext("Rejected"), "succeeded": lazy_gettext("Succeeded"), "skipped": lazy_gettext("Skipped"),
    "delivered": lazy_gettext("Delivered"), "pending": lazy_gettext("Pending"),
}

VERDICT_LABELS = {
    "significant_positive": lazy_gettext("Treatment converted better than control (significant at 95 %)."),
    "significant_negative": lazy_gettext("Treatment converted worse than control (significant at 95 %)."),
    "not_significant": lazy_gettext("Not significant: the uplift's interval (95 %) includes zero."),
    "insufficient_data": lazy_gettext("Too little data to conclude anything yet."),
}


def value_label(dimension: str, value) -> str:
    """The translated name of a dimension's value (the raw value when it has none)."""
    key = "" if value is None else str(value)
    label = VALUE_LABELS.get(dimension, {}).get(key)
    return str(label) if label is not None else key


def status_label(status: str | None) -> str:
    """A translated status word."""
    label = STATUS_LABELS.get(status or "")
    return str(label) if label is not None else (status or "")


def verdict_label(verdict: str) -> str:
    """The plain verdict of a campaign report in the page's language."""
    label = VERDICT_LABELS.get(verdict)
    return str(label) if label is not None else gettext("Unknown verdict")
