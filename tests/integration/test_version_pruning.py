"""Publishing keeps the current and previous versions' lists (and those of runs under way), in Redis and the database."""

from __future__ import annotations

from sqlalchemy import select

from services.pipeline.retrain import retrain_now
from services.recommend.store import list_key
from services.recommend.training import publish_version, redis_versions, write_lists
from shared.extensions import db, redis_store
from shared.models import RecommendationList
from tests.factories import AS_OF


def database_versions() -> set[str]:
    with db.session() as session:
        return set(session.execute(select(RecommendationList.model_version).distinct()).scalars())


def test_publish_keeps_current_and_previous_versions_only(segmentation_app, shop):
    second = retrain_now(segmentation_app.config, as_of=AS_OF)
    assert second.status == "published", second.reason
    # A sku named like the catalogue key must not pass for a version of its own.
    write_lists(second.run_id, {"nb": {"catalogue": "[]"}})
    assert redis_versions() >= {shop.run_id, second.run_id}

    third = retrain_now(segmentation_app.config, as_of=AS_OF)
    assert third.status == "published", third.reason

    assert redis_versions() == {second.run_id, third.run_id}
    assert database_versions() == {second.run_id, third.run_id}
    assert not list(redis_store.client.scan_iter(match=list_key(shop.run_id, "*")))
    # The previous version is whole: a rollback finds its lists.
    assert redis_store.client.get(list_key(second.run_id, "nb", "catalogue")) == b"[]"


def test_a_staged_version_of_a_run_under_way_survives_a_publish(segmentation_app, shop):
    from shared import runs

    staged = runs.create_run(AS_OF, "manual")
    runs.update_run(staged.run_id, status="running")
    write_lists(staged.run_id, {"catalogue": {"-": "{}"}, "nb": {"PHN-1": "[]"}})

    publish_version(shop.run_id)  # e.g. a rollback while the nightly run stages

    assert staged.run_id in redis_versions()
    assert staged.run_id in database_versions()
