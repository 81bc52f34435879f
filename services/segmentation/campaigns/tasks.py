"""Celery tasks of campaigns: thin wrappers that pass campaign ids and call the campaigns package.

build (members, then one delivery task per webhook batch) -> deliver_webhook. Both are declared with
`segrec_task` (acknowledged late, so a task whose worker dies is redelivered; transient database or Redis
errors retried with backoff); both are idempotent (a build redoes an interrupted attempt from scratch and
leaves a ready campaign alone; a delivered batch is not sent again).
"""

from __future__ import annotations

import logging

import redis
from kombu.exceptions import OperationalError as BrokerError

from services.pipeline.celery_app import SegrecTask, segrec_config, segrec_task
from services.segmentation.campaigns import build as campaign_build
from services.segmentation.campaigns import webhooks
from shared.errors import Unavailable

log = logging.getLogger("segrec.campaigns.tasks")

# Fallback limits; enqueue_build passes the configured CAMPAIGN_BUILD_TIME_LIMIT with each message.
BUILD_TIME_LIMIT = 900
BUILD_SOFT_MARGIN = 30
# Receiver failures are bounded by WEBHOOK_MAX_ATTEMPTS in the delivery row; this bounds outages of our own.
WEBHOOK_TASK_RETRIES = 50


class CampaignBuildTask(SegrecTask):
    """Marks the campaign failed, with the reason, once the build has given up (retries spent or a real error)."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        campaign_id = args[0] if args else kwargs.get("campaign_id")
        try:
            campaign_build.mark_failed(campaign_id, f"{type(exc).__name__}: {exc}")
        except Exception:  # the database may be what failed; the log keeps the reason
            log.exception("could not mark campaign %s failed", campaign_id)


@segrec_task(
    "segrec.campaigns.build",
    base=CampaignBuildTask,
    time_limit=BUILD_TIME_LIMIT,
    soft_time_limit=BUILD_TIME_LIMIT - BUILD_SOFT_MARGIN,
)
def build(self, campaign_id: str) -> dict:
    """Build a campaign's members, then queue its webhook batches."""
    config = segrec_config()
    try:
        result = campaign_build.build_campaign(campaign_id, config)
    except campaign_build.BuildInProgress as busy:
        # Builds run one at a time (frequency caps): wait for the others, for up to an hour or so.
        raise self.retry(countdown=30, max_retries=30, exc=busy)
    for batch_no in result.webhook_batches:
        deliver_webhook.apply_async((campaign_id, batch_no), queue=config["CELERY_QUEUE"])
    return {"campaign_id": campaign_id, "status": result.status, "seconds": result.seconds}


class WebhookDeliveryTask(SegrecTask):
    """Marks the batch failed once its task gives up (retries spent on database or Redis outages, or a bug)."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        campaign_id, batch_no = args[0], args[1]
        try:
            webhooks.give_up_webhook(campaign_id, batch_no, f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("could not mark webhook batch %s/%s failed", campaign_id, batch_no)


@segrec_task(
    "segrec.campaigns.deliver_webhook",
    base=WebhookDeliveryTask,
    max_retries=WEBHOOK_TASK_RETRIES,
    time_limit=120,
    soft_time_limit=90,
)
def deliver_webhook(self, campaign_id: str, batch_no: int) -> str:
    """POST one batch of members to the campaign's webhook; retry with backoff while the receiver is failing."""
    try:
        return webhooks.deliver_webhook_batch(campaign_id, batch_no, segrec_config())
    except webhooks.WebhookRetry as retry:
        # The attempt count lives in the delivery row, which decides when to stop (WEBHOOK_MAX_ATTEMPTS).
        raise self.retry(countdown=retry.countdown)


def enqueue_build(campaign_id: str, config: dict) -> None:
    """Queue a campaign's build; 503 when the broker is unreachable (the client retries with the same key)."""
    limit = int(config["CAMPAIGN_BUILD_TIME_LIMIT"])
    try:
        build.apply_async(
            (campaign_id,),
            queue=config["CELERY_QUEUE"],
            time_limit=limit,
            soft_time_limit=max(1, limit - BUILD_SOFT_MARGIN),
        )
    except (BrokerError, redis.RedisError) as error:
        raise Unavailable(
            "the campaign is saved but its build could not be queued; retry with the same Idempotency-Key",
            {"campaign_id": campaign_id},
        ) from error
