"""What operators watch: every metric the Grafana dashboard and the alert rules use is exported, the
fallback counter counts fallbacks, and every answer carries a request id (errors in their envelope too)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC_NAME = re.compile(r"\bsegrec_[a-z0-9_]+\b")


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "segrec.json").read_text(encoding="utf-8"))
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def exported_names(metrics_text: str) -> set[str]:
    """Sample names in a Prometheus text exposition."""
    names = set()
    for row in metrics_text.splitlines():
        if row and not row.startswith("#"):
            names.add(re.split(r"[{ ]", row, maxsplit=1)[0])
    return names


def test_dashboard_and_alerts_load_with_what_the_issue_asks_for():
    dashboard = json.loads((DEPLOY / "grafana" / "segrec.json").read_text(encoding="utf-8"))
    titles = [panel["title"] for panel in dashboard["panels"]]
    assert titles == [
        "Request rate by service and endpoint", "Error rate (5xx) by service", "p50 latency by endpoint",
        "p99 latency by endpoint", "Fallback rate (share of recommendation answers)", "Fallbacks by kind",
        "Model age", "Training runs ended (last 24 h) by outcome",
        "Run duration (mean of runs ended in the last 24 h) by outcome", "Celery queue length",
    ]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    alerts = {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}
    assert sorted(alerts) == ["SegrecFallbackRateHigh", "SegrecLatencyP99High", "SegrecModelStale",
                              "SegrecQueueBacklog", "SegrecRunFailed"]
    assert "> 36 * 3600" in alerts["SegrecModelStale"]
    assert alerts["SegrecFallbackRateHigh"].strip().endswith("> 0.05")
    assert alerts["SegrecLatencyP99High"].strip().endswith("> 0.05")


def test_every_metric_of_the_dashboard_and_alerts_is_exported(segmentation_app, recommend_app, shop, make_key):
    storefront = make_key("recs:read")
    recommend = recommend_app.test_client()
    assert recommend.get("/v1/items/PHN-1/bought-together", headers=storefront).status_code == 200
    assert recommend.get("/v1/items/NOT-YET-SYNCED/bought-together", headers=storefront).status_code == 200
    segmentation = segmentation_app.test_client()
    assert segmentation.get("/readyz").status_code == 200
    exported = exported_names(recommend.get("/metrics").get_data(as_text=True))
    exported |= exported_names(segmentation.get("/metrics").get_data(as_text=True))
    used = {name for expr in dashboard_expressions() + alert_expressions() for name in METRIC_NAME.findall(expr)}
    assert used >= {"segrec_http_request_seconds_bucket", "segrec_recommendation_fallbacks_total",
                    "segrec_recommendations_total", "segrec_current_model_age_seconds",
                    "segrec_run_duration_seconds_count", "segrec_celery_queue_length"}
    assert used - exported == set()


def test_fallbacks_are_counted_where_they_are_served(recommend_app, shop, make_key):
    storefront = make_key("recs:read")
    client = recommend_app.test_client()

    def counted(name, labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    fallbacks_before = counted("segrec_recommendation_fallbacks_total", {"fallback": "popular:unknown_item"})
    answers_before = counted("segrec_recommendations_total", {"kind": "bought_together"})
    client.get("/v1/items/PHN-1/bought-together", headers=storefront)
    client.get("/v1/items/NOT-YET-SYNCED/bought-together", headers=storefront)
    client.get("/v1/items/NOT-YET-SYNCED/bought-together", headers=storefront)
    assert counted("segrec_recommendation_fallbacks_total", {"fallback": "popular:unknown_item"}) \
        - fallbacks_before == 2
    assert counted("segrec_recommendations_total", {"kind": "bought_together"}) - answers_before == 3


@pytest.mark.parametrize("offered, kept", [("req-abc.123:4", True), ("", False), ("no spaces allowed", False),
                                           ("x" * 129, False)])
def test_request_id_is_kept_or_generated_and_returned(recommend_app, database_url, offered, kept):
    client = recommend_app.test_client()
    headers = {"X-Request-ID": offered} if offered else {}
    healthy = client.get("/healthz", headers=headers)
    if kept:
        assert healthy.headers["X-Request-ID"] == offered
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", healthy.headers["X-Request-ID"])
    # Errors carry the same id in their envelope.
    refused = client.get("/v1/popular", headers=headers)
    assert refused.status_code == 401
    assert refused.json["error"]["request_id"] == refused.headers["X-Request-ID"]
    if kept:
        assert refused.json["error"]["request_id"] == offered


def test_queue_length_is_read_from_the_broker_at_scrape_time(segmentation_app, redis_url, redis_prefix):
    import redis

    client = redis.Redis.from_url(redis_url)
    queue = segmentation_app.config["CELERY_QUEUE"]
    # kombu's Redis transport: the default priority's list, and one of the other priority levels.
    client.lpush(f"{redis_prefix}:celery:{queue}", "task-1", "task-2")
    client.lpush(f"{redis_prefix}:celery:{queue}\x06\x163", "task-3")
    metrics = segmentation_app.test_client().get("/metrics").get_data(as_text=True)
    assert f'segrec_celery_queue_length{{queue="{queue}"}} 3.0' in metrics
