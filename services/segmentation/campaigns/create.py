"""Creating a win-back campaign under an idempotency key: the request resolved into a definition, validated."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.segmentation.campaigns.members import campaign_to_dict
from services.segmentation.campaigns.webhooks import WebhookPolicy, check_webhook_url
from services.segmentation.segments import DIMENSIONS, NUMERIC_FIELDS, audience_conditions, require_current_run
from shared.errors import Conflict, DomainError, InvalidRequest, Unavailable
from shared.ingest import utcnow
from shared.models import Campaign

log = logging.getLogger("segrec.campaigns")

DEFAULT_AUDIENCE = {"lifecycle": ["dormant"]}
OFFER_KINDS = ("percent_off", "amount_off", "free_shipping")
MAX_HOLDOUT_FRACTION = 0.9
MAX_IDEMPOTENCY_KEY_LENGTH = 128


class MissingIdempotencyKey(DomainError):
    """POST /v1/campaigns/win-back without a usable Idempotency-Key header."""

    status = 400
    code = "idempotency_key_required"


def request_hash(body: dict) -> str:
    """sha256 of the parsed request as canonical JSON: tells a retried request from a different one."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class CreateOutcome:
    """The campaign as the API shows it, whether this request created it, and whether to queue its build."""

    campaign: dict
    created: bool
    needs_build: bool


def _checked_key(idempotency_key: str | None) -> str:
    key = (idempotency_key or "").strip()
    if not key:
        raise MissingIdempotencyKey(
            "send an Idempotency-Key header (e.g. a UUID): a retried request with the same key and body "
            "answers with the same campaign", {"Idempotency-Key": ["required"]})
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable():
        raise MissingIdempotencyKey("the Idempotency-Key header must be 1 to 128 printable characters",
                                    {"Idempotency-Key": ["1 to 128 printable characters"]})
    return key


def validate_audience(filters: dict) -> None:
    """Dimensions take a list of values, numbers take a range; unknown fields and values are refused."""
    for field_name, wanted in filters.items():
        if field_name in NUMERIC_FIELDS and not isinstance(wanted, dict):
            raise InvalidRequest(f"{field_name} takes a range such as {{\"gte\": 500}}",
                                 {field_name: ["a range object with gte, gt, lte or lt"]})
        if field_name in DIMENSIONS and not isinstance(wanted, list):
            raise InvalidRequest(f"{field_name} takes a list of values", {field_name: ["a list of values"]})
    audience_conditions(filters)


def resolve_definition(request: dict, config: dict) -> dict:
    """The request with the configured defaults filled in, validated (audience, holdout, webhook)."""
    audience = request.get("audience")
    if audience is None:
        audience = dict(DEFAULT_AUDIENCE)
    validate_audience(audience)
    holdout_fraction = request.get("holdout_fraction")
    if holdout_fraction is None:
        holdout_fraction = float(config["CAMPAIGN_DEFAULT_HOLDOUT_FRACTION"])
    if not 0 <= holdout_fraction <= MAX_HOLDOUT_FRACTION:
        raise InvalidRequest(f"holdout_fraction must be between 0 and {MAX_HOLDOUT_FRACTION}",
                             {"holdout_fraction": [f"between 0 and {MAX_HOLDOUT_FRACTION}"]})
    offer = request.get("offer")
    if offer is not None:
        offer = {
            "kind": offer["kind"],
            "value": float(offer.get("value") or 0.0),
            "valid_days": offer.get("valid_days") or int(config["CAMPAIGN_DEFAULT_OFFER_DAYS"]),
        }
    recommendations = request.get("recommendations") or {}
    limit = recommendations.get("limit")
    if limit is None:
        limit = int(config["CAMPAIGN_DEFAULT_RECOMMENDATIONS"])
    frequency_cap_days = request.get("frequency_cap_days")
    if frequency_cap_days is None:
        frequency_cap_days = int(config["CAMPAIGN_DEFAULT_FREQUENCY_CAP_DAYS"])
    webhook_url = request.get("webhook_url")
    if webhook_url is not None:
        check_webhook_url(webhook_url, WebhookPolicy.from_config(config))
        if not os.environ.get("WEBHOOK_SECRET"):
            raise Unavailable("webhook delivery is not configured on this server (WEBHOOK_SECRET is not set)")
    return {
        "name": request.get("name") or f"win-back {utcnow():%Y-%m-%d}",
        "audience": audience,
        "holdout_fraction": holdout_fraction,
        "offer": offer,
        "recommendations": {"limit": limit},
        "frequency_cap_days": frequency_cap_days,
        "webhook_url": webhook_url,
    }


def _replay(session: Session, campaign: Campaign, body_hash: str) -> CreateOutcome:
    if campaign.request_hash != body_hash:
        raise Conflict(
            "this Idempotency-Key was already used with a different request body",
            {"Idempotency-Key": ["use a new key for a different campaign"], "campaign_id": campaign.campaign_id},
        )
    # A build that could not be queued the first time (broker down) is queued again by the client's retry.
    return CreateOutcome(campaign_to_dict(session, campaign), created=False, needs_build=campaign.status == "building")


def _reserved_campaign(session: Session, key: str, api_key_id: int | None, config: dict) -> Campaign | None:
    """The campaign this API key created under `key`, unless the key has expired (then it is released)."""
    owner = Campaign.api_key_id.is_(None) if api_key_id is None else Campaign.api_key_id == api_key_id
    existing = session.execute(
        select(Campaign).where(Campaign.idempotency_key == key, owner)
    ).scalar_one_or_none()
    if existing is None:
        return None
    kept_for = timedelta(hours=float(config["IDEMPOTENCY_KEY_TTL_HOURS"]))
    if existing.created_at + kept_for > utcnow():
        return existing
    # Expired: the old campaign stays, but the key no longer points at it and may create a new one.
    existing.idempotency_key = None
    session.flush()
    return None


def create_win_back(session: Session, config: dict, idempotency_key: str | None, request: dict,
                    api_key_id: int | None = None) -> CreateOutcome:
    """Create a campaign in status 'building' (or answer with the one this key and body already created).

    Idempotency keys belong to the API key that sent them (another API key's identical key creates its own
    campaign) and are kept for IDEMPOTENCY_KEY_TTL_HOURS.
    """
    key = _checked_key(idempotency_key)
    body_hash = request_hash(request)
    existing = _reserved_campaign(session, key, api_key_id, config)
    if existing is not None:
        return _replay(session, existing, body_hash)
    definition = resolve_definition(request, config)
    campaign = Campaign(
        campaign_id=f"cmp-{uuid.uuid4().hex}",
        idempotency_key=key,
        api_key_id=api_key_id,
        request_hash=body_hash,
        name=definition["name"],
        status="building",
        definition=definition,
        run_id=require_current_run(session),
        skipped={},
        created_at=utcnow(),
    )
    session.add(campaign)
    try:
        session.flush()
    except IntegrityError:
        # A concurrent request with the same key won the insert: answer as its retry.
        session.rollback()
        existing = _reserved_campaign(session, key, api_key_id, config)
        if existing is None:
            raise
        return _replay(session, existing, body_hash)
    log.info("campaign created", extra={"campaign_id": campaign.campaign_id})
    return CreateOutcome(campaign_to_dict(session, campaign), created=True, needs_build=True)
