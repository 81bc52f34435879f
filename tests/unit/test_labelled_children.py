"""LabelledChildren hands out the metric's own children, so what it counts is what /metrics shows."""

from prometheus_client import CollectorRegistry, Counter, generate_latest

from shared.web import LabelledChildren


def test_children_are_the_metrics_own_and_count_in_its_samples():
    registry = CollectorRegistry()
    served = Counter("served_total", "Answers", ["surface", "variant"], registry=registry)
    by_surface = LabelledChildren(served)
    assert by_surface("cart", "current") is served.labels("cart", "current")
    assert by_surface("cart", "current") is by_surface("cart", "current")
    by_surface("cart", "current").inc()
    by_surface("cart", "popular").inc(2)
    served.labels("cart", "current").inc()
    text = generate_latest(registry).decode()
    assert 'served_total{surface="cart",variant="current"} 2.0' in text
    assert 'served_total{surface="cart",variant="popular"} 2.0' in text
