"""Win-back campaigns: creation under an idempotency key, the member build, member lists, webhooks, uplift report.

No Flask here: views parse and dump, Celery tasks (services/segmentation/tasks.py) pass campaign ids.

A campaign is created in status `building` with its definition (the request with defaults resolved) and the
scoring run it reads pinned. The build then:
1. pins the launch time and the recommendation model version (first attempt only, so a rebuild writes the same
   rows), and deletes whatever members an earlier, interrupted attempt left;
2. reads the audience from the pinned run, ranked by expected value, with each customer's opt-out flag and
   whether another campaign contacted them within the frequency cap (one SQL statement);
3. leaves out opted-out, global-control and frequency-capped customers, and splits the rest into treatment and
   control by hashing (campaign id, customer id): a rebuild assigns the same groups;
4. gives each treatment member the offer and a personal list read from the published model (MGET in chunks);
5. inserts the members in chunks and marks the campaign ready (or failed, with the reason and no members).
Builds run one at a time (a Redis lock), so each one sees the contacts of every earlier one.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import requests
from redis.exceptions import LockError
from sqlalchemy import and_, case, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.recommend.store import Catalogue, ListReader, customer_payloads, decode_customer_lists
from services.segmentation.segments import DIMENSIONS, NUMERIC_FIELDS, _audience_conditions, audience_statement
from services.segmentation.segments import require_current_run
from shared.csvstream import stream_rows_as_csv
from shared.cursors import decode_cursor, encode_cursor
from shared.errors import BadCursor, Conflict, DomainError, InvalidRequest, NotFound, Unavailable
from shared.extensions import db, redis_store
from shared.ingest import utcnow
from shared.models import Campaign, CampaignMember, CampaignWebhookDelivery, Customer, CustomerScore, Order

log = logging.getLogger("segrec.campaigns")

GROUPS = ("treatment", "control")
# Each skipped customer is counted under the first reason that applies, in this order.
SKIP_REASONS = ("opted_out", "global_control", "frequency_capped")
DEFAULT_AUDIENCE = {"lifecycle": ["dormant"]}
OFFER_KINDS = ("percent_off", "amount_off", "free_shipping")
MAX_HOLDOUT_FRACTION = 0.9
MAX_IDEMPOTENCY_KEY_LENGTH = 128
# Two-sided 95 %: the normal quantile 1.959964.
Z_95 = 1.959963984540054
CSV_COLUMNS = (
    "customer_id", "group", "rank", "offer_kind", "offer_value", "offer_valid_days", "offer_expires_at",
    "recommended_skus", "contacted_at",
)
# HTTP statuses after which a webhook delivery is worth trying again.
RETRYABLE_STATUSES = {408, 425, 429, 500, 502, 503, 504}
MAX_WEBHOOK_BACKOFF_SECONDS = 3600


class MissingIdempotencyKey(DomainError):
    """POST /v1/campaigns/win-back without a usable Idempotency-Key header."""

    status = 400
    code = "idempotency_key_required"


class BuildInProgress(Exception):
    """Another build held the campaign build lock for longer than this one would wait; try again later."""


class WebhookRetry(Exception):
    """A webhook batch failed in a way worth retrying after `countdown` seconds."""

    def __init__(self, countdown: float, message: str) -> None:
        super().__init__(message)
        self.countdown = countdown


# ---- pure pieces: hashing, selection, statistics -------------------------------------------------


def unit_hash(*parts: str) -> float:
    """A number in [0, 1) from sha256 of the parts: uniform, and the same in every process and on every machine."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def holdout_group(campaign_id: str, customer_id: str, holdout_fraction: float) -> str:
    """'control' for a deterministic share `holdout_fraction` of a campaign's members, else 'treatment'."""
    if unit_hash("holdout", campaign_id, customer_id) < holdout_fraction:
        return "control"
    return "treatment"


def in_global_control(customer_id: str, fraction: float, salt: str) -> bool:
    """True for the fixed share `fraction` of all customers that no campaign contacts (raising it only adds)."""
    if fraction <= 0:
        return False
    return unit_hash("global-control", salt, customer_id) < fraction


def request_hash(body: dict) -> str:
    """sha256 of the parsed request as canonical JSON: tells a retried request from a different one."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Candidate:
    """An audience customer, in rank order, with what may leave them out."""

    customer_id: str
    tier: str | None
    opted_out: bool
    frequency_capped: bool


@dataclass
class Selection:
    """The members (customer id, group, tier) in rank order and the skipped counts by reason."""

    members: list[tuple[str, str, str | None]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))

    @property
    def audience_size(self) -> int:
        return len(self.members) + sum(self.skipped.values())


def select_members(candidates: Iterable[Candidate], campaign_id: str, holdout_fraction: float,
                   global_control_fraction: float, global_control_salt: str) -> Selection:
    """Leave out opted-out, global-control and frequency-capped customers; split the rest by hash."""
    selection = Selection()
    for candidate in candidates:
        if candidate.opted_out:
            selection.skipped["opted_out"] += 1
        elif in_global_control(candidate.customer_id, global_control_fraction, global_control_salt):
            selection.skipped["global_control"] += 1
        elif candidate.frequency_capped:
            selection.skipped["frequency_capped"] += 1
        else:
            group = holdout_group(campaign_id, candidate.customer_id, holdout_fraction)
            selection.members.append((candidate.customer_id, group, candidate.tier))
    return selection


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    proportion = successes / trials
    denominator = 1 + z * z / trials
    centre = (proportion + z * z / (2 * trials)) / denominator
    half_width = z / denominator * math.sqrt(proportion * (1 - proportion) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def newcombe_interval(successes_a: int, trials_a: int, successes_b: int, trials_b: int,
                      z: float = Z_95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (his method 10, from two Wilson intervals) for rate_a - rate_b."""
    rate_a = successes_a / trials_a if trials_a else 0.0
    rate_b = successes_b / trials_b if trials_b else 0.0
    low_a, high_a = wilson_interval(successes_a, trials_a, z)
    low_b, high_b = wilson_interval(successes_b, trials_b, z)
    difference = rate_a - rate_b
    lower = difference - math.sqrt((rate_a - low_a) ** 2 + (high_b - rate_b) ** 2)
    upper = difference + math.sqrt((high_a - rate_a) ** 2 + (rate_b - low_b) ** 2)
    return lower, upper


@dataclass(frozen=True)
class GroupTotals:
    """What one group of a campaign did since launch."""

    members: int
    converters: int
    orders: int
    revenue: float

    def as_dict(self) -> dict:
        return {
            "members": self.members,
            "converters": self.converters,
            "conversion_rate": self.converters / self.members if self.members else None,
            "orders": self.orders,
            "revenue": round(self.revenue, 2),
            "revenue_per_member": round(self.revenue / self.members, 4) if self.members else None,
        }


def uplift_summary(treatment: GroupTotals, control: GroupTotals, min_members: int, min_converters: int) -> dict:
    """Conversion uplift of treatment over control with a 95 % Newcombe interval, and a verdict in plain words."""
    small_groups = [
        name for name, totals in (("treatment", treatment), ("control", control))
        if totals.members < min_members or totals.converters < min_converters
    ]
    uplift: dict = {
        "conversion_uplift": None,
        "ci95_low": None,
        "ci95_high": None,
        "ci_method": "newcombe-wilson",
        "relative_uplift": None,
        "revenue_per_member_uplift": None,
    }
    if treatment.members and control.members:
        treatment_rate = treatment.converters / treatment.members
        control_rate = control.converters / control.members
        low, high = newcombe_interval(treatment.converters, treatment.members, control.converters, control.members)
        uplift.update(
            conversion_uplift=treatment_rate - control_rate,
            ci95_low=low,
            ci95_high=high,
            relative_uplift=(treatment_rate - control_rate) / control_rate if control_rate > 0 else None,
            revenue_per_member_uplift=round(treatment.revenue / treatment.members
                                            - control.revenue / control.members, 4),
        )
    if control.members == 0:
        verdict = "insufficient_data"
        conclusion = "There is no control group, so the campaign's uplift cannot be measured."
    elif small_groups:
        verdict = "insufficient_data"
        conclusion = (
            f"Too few members or converters in the {' and '.join(small_groups)} group to conclude anything "
            f"(each group needs at least {min_members} members and {min_converters} converters)."
        )
    elif uplift["ci95_low"] > 0:
        verdict = "significant_positive"
        conclusion = (f"Treatment converted better than control: +{uplift['conversion_uplift']:.2%} "
                      f"(95 % CI {uplift['ci95_low']:.2%} to {uplift['ci95_high']:.2%}).")
    elif uplift["ci95_high"] < 0:
        verdict = "significant_negative"
        conclusion = (f"Treatment converted worse than control: {uplift['conversion_uplift']:.2%} "
                      f"(95 % CI {uplift['ci95_low']:.2%} to {uplift['ci95_high']:.2%}).")
    else:
        verdict = "not_significant"
        conclusion = (f"Not significant: the 95 % interval of the uplift ({uplift['ci95_low']:.2%} to "
                      f"{uplift['ci95_high']:.2%}) includes zero.")
    return {**uplift, "verdict": verdict, "conclusion": conclusion}


# ---- webhook addresses -----------------------------------------------------------------------------


def forbidden_networks(setting: str | Iterable[str]) -> list:
    """Parse WEBHOOK_FORBIDDEN_NETWORKS (comma-separated CIDRs, or a list of them)."""
    parts = setting.split(",") if isinstance(setting, str) else list(setting)
    return [ipaddress.ip_network(part.strip(), strict=False) for part in parts if part.strip()]


def _address_is_forbidden(address: str, networks: list) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    candidates = [ip]
    # ::ffff:127.0.0.1 reaches 127.0.0.1: check the IPv4 address it maps too.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    return any(candidate in network for candidate in candidates for network in networks
               if candidate.version == network.version)


def check_webhook_url(url: str, networks: list, resolve: Callable = socket.getaddrinfo) -> str:
    """The URL if it is http(s) and every address its host resolves to is outside the forbidden networks."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise InvalidRequest("the webhook URL is malformed", {"webhook_url": [str(error)]}) from error
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest("the webhook URL must be http or https", {"webhook_url": ["use http:// or https://"]})
    if not parts.hostname:
        raise InvalidRequest("the webhook URL has no host", {"webhook_url": ["give a host name"]})
    if parts.username or parts.password:
        raise InvalidRequest("the webhook URL must not carry credentials",
                             {"webhook_url": ["remove user:password@; deliveries are signed instead"]})
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = {info[4][0] for info in resolve(parts.hostname, port, type=socket.SOCK_STREAM)}
    except (socket.gaierror, UnicodeError) as error:
        raise InvalidRequest(f"the webhook host '{parts.hostname}' does not resolve",
                             {"webhook_url": [str(error)[:200]]}) from error
    blocked = sorted(address for address in addresses if _address_is_forbidden(address, networks))
    if blocked or not addresses:
        raise InvalidRequest(
            f"the webhook host '{parts.hostname}' resolves into a forbidden address range",
            {"webhook_url": [f"{address} is in a range this server does not deliver to" for address in blocked]},
        )
    return url


def sign_body(body: bytes, secret: str) -> str:
    """The X-Segrec-Signature header value: 'sha256=' and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# ---- creation ------------------------------------------------------------------------------------


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
    _audience_conditions(filters)


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
        check_webhook_url(webhook_url, forbidden_networks(config["WEBHOOK_FORBIDDEN_NETWORKS"]))
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


def create_win_back(session: Session, config: dict, idempotency_key: str | None, request: dict) -> CreateOutcome:
    """Create a campaign in status 'building' (or answer with the one this key and body already created)."""
    key = _checked_key(idempotency_key)
    body_hash = request_hash(request)
    existing = session.execute(select(Campaign).where(Campaign.idempotency_key == key)).scalar_one_or_none()
    if existing is not None:
        return _replay(session, existing, body_hash)
    definition = resolve_definition(request, config)
    campaign = Campaign(
        campaign_id=f"cmp-{uuid.uuid4().hex}",
        idempotency_key=key,
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
        existing = session.execute(select(Campaign).where(Campaign.idempotency_key == key)).scalar_one()
        return _replay(session, existing, body_hash)
    log.info("campaign created", extra={"campaign_id": campaign.campaign_id})
    return CreateOutcome(campaign_to_dict(session, campaign), created=True, needs_build=True)


# ---- reading a campaign --------------------------------------------------------------------------


def _webhook_summary(session: Session, campaign: Campaign) -> dict | None:
    url = (campaign.definition or {}).get("webhook_url")
    if url is None:
        return None
    deliveries = session.execute(
        select(CampaignWebhookDelivery)
        .where(CampaignWebhookDelivery.campaign_id == campaign.campaign_id)
        .order_by(CampaignWebhookDelivery.batch_no)
    ).scalars().all()
    by_status: dict[str, int] = {}
    for delivery in deliveries:
        by_status[delivery.status] = by_status.get(delivery.status, 0) + 1
    return {
        "url": url,
        "batches": len(deliveries),
        "by_status": by_status,
        "deliveries": [
            {
                "batch": delivery.batch_no,
                "members": delivery.members,
                "status": delivery.status,
                "attempts": delivery.attempts,
                "last_status_code": delivery.last_status_code,
                "last_error": delivery.last_error,
                "delivered_at": delivery.delivered_at,
            }
            for delivery in deliveries
        ],
    }


def campaign_to_dict(session: Session, campaign: Campaign) -> dict:
    """A campaign as the API shows it."""
    return {
        "campaign_id": campaign.campaign_id,
        "name": campaign.name,
        "status": campaign.status,
        "run_id": campaign.run_id,
        "model_version": campaign.model_version,
        "created_at": campaign.created_at,
        "launched_at": campaign.launched_at,
        "finished_at": campaign.finished_at,
        "audience_size": campaign.audience_size,
        "treatment_size": campaign.treatment_size,
        "control_size": campaign.control_size,
        "skipped": {reason: int((campaign.skipped or {}).get(reason, 0)) for reason in SKIP_REASONS},
        "note": campaign.note,
        "reason": campaign.reason,
        "definition": campaign.definition,
        "webhook": _webhook_summary(session, campaign),
    }


def _campaign(session: Session, campaign_id: str) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    return campaign


def get_campaign(session: Session, campaign_id: str) -> dict:
    """One campaign: status, sizes, skipped by reason, webhook deliveries."""
    return campaign_to_dict(session, _campaign(session, campaign_id))


def _ready_campaign(session: Session, campaign_id: str) -> Campaign:
    campaign = _campaign(session, campaign_id)
    if campaign.status == "building":
        raise Conflict(f"campaign {campaign_id} is still building; poll GET /v1/campaigns/{campaign_id}",
                       {"status": "building"})
    if campaign.status == "failed":
        raise Conflict(f"campaign {campaign_id} failed: {campaign.reason}", {"status": "failed"})
    return campaign


def member_to_dict(member: CampaignMember) -> dict:
    """A member as the API shows it."""
    return {
        "customer_id": member.customer_id,
        "group": member.group,
        "rank": member.rank,
        "offer": member.offer,
        "recommended_skus": member.recommended_skus,
        "contacted_at": member.contacted_at,
    }


def member_page(session: Session, campaign_id: str, limit: int, cursor: str | None, group: str | None) -> dict:
    """One page of a ready campaign's members in rank order, optionally one group only."""
    _ready_campaign(session, campaign_id)
    kind = f"campaign-members:{campaign_id}:{group or 'all'}"
    payload = decode_cursor(cursor)
    after_rank = 0
    if payload is not None:
        if payload.get("kind") != kind or not isinstance(payload.get("after"), int):
            raise BadCursor("this cursor belongs to another list", {"cursor": ["does not match this list"]})
        after_rank = payload["after"]
    statement = select(CampaignMember).where(CampaignMember.campaign_id == campaign_id,
                                             CampaignMember.rank > after_rank)
    if group is not None:
        statement = statement.where(CampaignMember.group == group)
    rows = session.execute(statement.order_by(CampaignMember.rank).limit(limit + 1)).scalars().all()
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor({"kind": kind, "after": rows[-1].rank})
    return {"campaign_id": campaign_id, "items": [member_to_dict(row) for row in rows], "next_cursor": next_cursor}


def _csv_row(row) -> tuple:
    offer = row.offer or {}
    return (
        row.customer_id, row.group, row.rank, offer.get("kind", ""), offer.get("value", ""),
        offer.get("valid_days", ""), offer.get("expires_at", ""), " ".join(row.recommended_skus or []),
        row.contacted_at.isoformat() + "Z" if row.contacted_at else "",
    )


def stream_members_csv(session: Session, campaign_id: str, group: str | None,
                       batch_rows: int = 5000) -> Iterator[str]:
    """A ready campaign's members as CSV text chunks in rank order (server-side cursor; memory stays flat)."""
    _ready_campaign(session, campaign_id)
    statement = (
        select(CampaignMember.customer_id, CampaignMember.group, CampaignMember.rank, CampaignMember.offer,
               CampaignMember.recommended_skus, CampaignMember.contacted_at)
        .where(CampaignMember.campaign_id == campaign_id)
        .order_by(CampaignMember.rank)
        .execution_options(stream_results=True, yield_per=batch_rows)
    )
    if group is not None:
        statement = statement.where(CampaignMember.group == group)
    result = session.execute(statement)
    return stream_rows_as_csv(session, result, CSV_COLUMNS, f"campaign {campaign_id}", batch_rows,
                              to_row=_csv_row, logger=log)


# ---- the build -----------------------------------------------------------------------------------


def build_lock(config: dict):
    """One Redis lock for every campaign build: builds run one at a time.

    Two campaigns built at once could each contact a customer before the other's frequency cap sees it;
    serialised, each build sees every earlier build's contacts. A duplicate task of the same campaign waits,
    then finds it ready. The lock expires after the build's time limit, should its worker die.
    """
    return redis_store.client.lock(
        redis_store.key("campaign-build"),
        timeout=int(config["CAMPAIGN_BUILD_TIME_LIMIT"]) + 60,
        blocking_timeout=float(config["CAMPAIGN_BUILD_LOCK_WAIT_SECONDS"]),
        sleep=0.2,
    )


@dataclass
class BuildResult:
    """What a build did (or found already done)."""

    campaign_id: str
    status: str
    audience_size: int = 0
    treatment_size: int = 0
    control_size: int = 0
    webhook_batches: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _pin_and_reset(campaign_id: str, now: datetime | None) -> Campaign | None:
    """Pin launch time and model version on the first attempt; drop what an interrupted attempt wrote."""
    with db.session() as session:
        campaign = _campaign(session, campaign_id)
        if campaign.status != "building":
            return None
        if campaign.launched_at is None:
            campaign.launched_at = now or utcnow()
            version, _fallback = ListReader().version()
            campaign.model_version = version
        session.execute(delete(CampaignWebhookDelivery).where(CampaignWebhookDelivery.campaign_id == campaign_id))
        session.execute(delete(CampaignMember).where(CampaignMember.campaign_id == campaign_id))
        return campaign


def audience_candidates(session: Session, campaign: Campaign) -> list[Candidate]:
    """The campaign's audience in rank order (expected value, high first), with opt-out and frequency-cap flags."""
    definition = campaign.definition
    statement = audience_statement(campaign.run_id, definition["audience"])
    statement = statement.add_columns(CustomerScore.tier, Customer.opted_out).outerjoin(
        Customer, Customer.customer_id == CustomerScore.customer_id
    )
    cap_days = int(definition["frequency_cap_days"])
    if cap_days > 0:
        cutoff = campaign.launched_at - timedelta(days=cap_days)
        # Only treatment members were contacted; a control member of another campaign may be contacted now.
        recently_contacted = (
            select(CampaignMember.customer_id)
            .where(
                CampaignMember.customer_id == CustomerScore.customer_id,
                CampaignMember.group == "treatment",
                CampaignMember.contacted_at > cutoff,
                CampaignMember.campaign_id != campaign.campaign_id,
            )
            .exists()
        )
        statement = statement.add_columns(recently_contacted.label("frequency_capped"))
    statement = statement.order_by(CustomerScore.expected_value_365d.desc().nulls_last(), CustomerScore.customer_id)
    candidates = []
    for row in session.execute(statement):
        capped = bool(row[3]) if cap_days > 0 else False
        candidates.append(Candidate(row[0], row[1], bool(row[2]), capped))
    return candidates


class PersonalLists:
    """Picks each treatment member's skus from one model version: for-you first, then tier-popular, then popular.

    The for-you lists already put buy-again of repeat items first and leave out non-repeat items bought;
    every pick must be sellable (active and in stock) in the model's catalogue.
    """

    def __init__(self, catalogue: Catalogue | None, limit: int) -> None:
        self.catalogue = catalogue
        self.limit = limit
        self._fallbacks: dict[str, list[int]] = {}
        if catalogue is not None:
            self.sellable = catalogue.sellable.tolist()
            self.popular = [int(item) for item in catalogue.popular_items]

    def _fallback(self, tier: str | None) -> list[int]:
        key = tier or ""
        cached = self._fallbacks.get(key)
        if cached is None:
            ranked = [*self.catalogue.tier_popular.get(key, []), *self.popular]
            cached = [item for item in dict.fromkeys(ranked) if self.sellable[item]]
            self._fallbacks[key] = cached
        return cached

    def pick(self, payload: bytes | None, tier: str | None) -> list[str]:
        """The member's skus, best first, at most `limit` (payload: the model's packed per-customer lists)."""
        if self.catalogue is None or self.limit == 0:
            return []
        for_you: list[int] = []
        bought: set[int] = set()
        if payload:
            lists = decode_customer_lists(payload)
            for_you = lists.for_you.tolist()
            bought = set(lists.bought.tolist())
            tier = tier or lists.tier
        picks: list[int] = []
        for item in for_you:
            if self.sellable[item] and item not in bought and item not in picks:
                picks.append(item)
                if len(picks) >= self.limit:
                    break
        if len(picks) < self.limit:
            for item in self._fallback(tier):
                if item not in bought and item not in picks:
                    picks.append(item)
                    if len(picks) >= self.limit:
                        break
        return [self.catalogue.skus[item] for item in picks]


def personal_recommendations(version: str | None, members: list[tuple[str, str | None]], limit: int,
                             chunk: int) -> list[list[str]]:
    """Each (customer id, tier)'s skus, reading the for-you lists in one round trip per `chunk` customers."""
    catalogue = ListReader().catalogue(version) if version else None
    lists = PersonalLists(catalogue, limit)
    if catalogue is None or limit == 0:
        return [[] for _ in members]
    picks: list[list[str]] = []
    for start in range(0, len(members), chunk):
        part = members[start:start + chunk]
        # A Redis failure raises here: the task retries rather than building a campaign without lists.
        payloads = customer_payloads(version, [customer_id for customer_id, _tier in part])
        for (_customer_id, tier), payload in zip(part, payloads):
            picks.append(lists.pick(payload, tier))
    return picks


def _offer_for(definition: dict, launched_at: datetime) -> dict | None:
    offer = definition.get("offer")
    if offer is None:
        return None
    expires_at = launched_at + timedelta(days=int(offer["valid_days"]))
    return {**offer, "expires_at": expires_at.isoformat(timespec="seconds") + "Z"}


def _build_note(campaign: Campaign, selection: Selection) -> str | None:
    notes = []
    if selection.audience_size == 0:
        notes.append(f"the audience matched no customer in run {campaign.run_id}: the campaign has no members")
    elif not selection.members:
        notes.append("every customer in the audience was skipped (see skipped): the campaign has no members")
    if campaign.model_version is None and any(group == "treatment" for _c, group, _t in selection.members):
        notes.append("no recommendation model was published: members have no recommended skus")
    return "; ".join(notes) or None


def _insert_members(campaign: Campaign, selection: Selection, recommended: dict[str, list[str]],
                    chunk: int) -> None:
    offer = _offer_for(campaign.definition, campaign.launched_at)
    table = CampaignMember.__table__
    for start in range(0, len(selection.members), chunk):
        rows = []
        for position, (customer_id, group, _tier) in enumerate(selection.members[start:start + chunk], start + 1):
            treated = group == "treatment"
            rows.append({
                "campaign_id": campaign.campaign_id,
                "customer_id": customer_id,
                "group": group,
                "rank": position,
                "offer": offer if treated else None,
                "recommended_skus": recommended.get(customer_id, []) if treated else [],
                # The frequency cap of later campaigns reads this: only treated members were contacted.
                "contacted_at": campaign.launched_at if treated else None,
            })
        # One transaction per chunk keeps lock time short; an interrupted build is redone from scratch.
        with db.session() as session:
            session.execute(insert(table), rows)


def _finish(campaign: Campaign, selection: Selection, batch_size: int) -> BuildResult:
    with db.session() as session:
        counts = dict(session.execute(
            select(CampaignMember.group, func.count())
            .where(CampaignMember.campaign_id == campaign.campaign_id)
            .group_by(CampaignMember.group)
        ).all())
        batches: list[int] = []
        if campaign.definition.get("webhook_url") and counts.get("treatment"):
            ranks = session.execute(
                select(CampaignMember.rank)
                .where(CampaignMember.campaign_id == campaign.campaign_id, CampaignMember.group == "treatment")
                .order_by(CampaignMember.rank)
            ).scalars().all()
            now = utcnow()
            rows = []
            for batch_no, start in enumerate(range(0, len(ranks), batch_size), 1):
                part = ranks[start:start + batch_size]
                rows.append({"campaign_id": campaign.campaign_id, "batch_no": batch_no, "first_rank": part[0],
                             "last_rank": part[-1], "members": len(part), "status": "pending", "attempts": 0,
                             "created_at": now, "updated_at": now})
                batches.append(batch_no)
            session.execute(insert(CampaignWebhookDelivery.__table__), rows)
        finished = session.execute(
            update(Campaign)
            .where(Campaign.campaign_id == campaign.campaign_id, Campaign.status == "building")
            .values(
                status="ready",
                audience_size=selection.audience_size,
                treatment_size=int(counts.get("treatment", 0)),
                control_size=int(counts.get("control", 0)),
                skipped=dict(selection.skipped),
                note=_build_note(campaign, selection),
                finished_at=utcnow(),
            )
        )
        if finished.rowcount == 0:
            # Marked failed meanwhile (time limit): leave it failed and keep none of this attempt's work.
            session.rollback()
            return BuildResult(campaign.campaign_id, "failed")
    return BuildResult(campaign.campaign_id, "ready", selection.audience_size, int(counts.get("treatment", 0)),
                       int(counts.get("control", 0)), batches)


def build_campaign(campaign_id: str, config: dict, now: datetime | None = None) -> BuildResult:
    """Build a campaign's members (idempotent: a ready or failed campaign is left as it is)."""
    lock = build_lock(config)
    if not lock.acquire():
        raise BuildInProgress(f"another campaign build held the lock for over "
                              f"{config['CAMPAIGN_BUILD_LOCK_WAIT_SECONDS']} s")
    try:
        return _build_locked(campaign_id, config, now)
    finally:
        try:
            lock.release()
        except LockError:
            log.warning("the campaign build lock expired before campaign %s finished building", campaign_id)


def _build_locked(campaign_id: str, config: dict, now: datetime | None) -> BuildResult:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    campaign = _pin_and_reset(campaign_id, now)
    if campaign is None:
        with db.session() as session:
            stored = _campaign(session, campaign_id)
            return BuildResult(campaign_id, stored.status, stored.audience_size, stored.treatment_size,
                               stored.control_size)
    with db.session() as session:
        candidates = audience_candidates(session, campaign)
    timings["audience"] = time.perf_counter() - started

    step = time.perf_counter()
    selection = select_members(candidates, campaign_id, float(campaign.definition["holdout_fraction"]),
                               float(config["GLOBAL_CONTROL_FRACTION"]), str(config["GLOBAL_CONTROL_SALT"]))
    del candidates
    timings["assign"] = time.perf_counter() - step

    step = time.perf_counter()
    treated = [(customer_id, tier) for customer_id, group, tier in selection.members if group == "treatment"]
    lists = personal_recommendations(campaign.model_version, treated,
                                     int(campaign.definition["recommendations"]["limit"]),
                                     int(config["CAMPAIGN_RECS_MGET_CHUNK"]))
    recommended = {customer_id: skus for (customer_id, _tier), skus in zip(treated, lists)}
    timings["recommend"] = time.perf_counter() - step

    step = time.perf_counter()
    _insert_members(campaign, selection, recommended, int(config["CAMPAIGN_BUILD_CHUNK"]))
    timings["insert"] = time.perf_counter() - step

    step = time.perf_counter()
    result = _finish(campaign, selection, int(config["WEBHOOK_BATCH_SIZE"]))
    timings["finish"] = time.perf_counter() - step
    timings["total"] = time.perf_counter() - started
    result.seconds = {name: round(value, 3) for name, value in timings.items()}
    log.info("campaign %s built: %s", campaign_id, result)
    return result


def mark_failed(campaign_id: str, reason: str) -> None:
    """A build gave up: status failed with the reason, and no members (they would count against frequency caps)."""
    with db.session() as session:
        failed = session.execute(
            update(Campaign)
            .where(Campaign.campaign_id == campaign_id, Campaign.status == "building")
            .values(status="failed", reason=reason[:2000], finished_at=utcnow())
        )
        if failed.rowcount:
            session.execute(delete(CampaignMember).where(CampaignMember.campaign_id == campaign_id))
            session.execute(delete(CampaignWebhookDelivery).where(CampaignWebhookDelivery.campaign_id == campaign_id))
    log.error("campaign %s failed: %s", campaign_id, reason)


# ---- webhook delivery ----------------------------------------------------------------------------


def _record_delivery(campaign_id: str, batch_no: int, **values) -> None:
    with db.session() as session:
        session.execute(
            update(CampaignWebhookDelivery)
            .where(CampaignWebhookDelivery.campaign_id == campaign_id, CampaignWebhookDelivery.batch_no == batch_no)
            .values(updated_at=utcnow(), **values)
        )


def webhook_body(session: Session, campaign: Campaign, delivery: CampaignWebhookDelivery, batches: int) -> bytes:
    """The JSON a batch POSTs: the same bytes on every attempt, so a receiver can compare retries."""
    members = session.execute(
        select(CampaignMember)
        .where(CampaignMember.campaign_id == campaign.campaign_id, CampaignMember.group == "treatment",
               CampaignMember.rank.between(delivery.first_rank, delivery.last_rank))
        .order_by(CampaignMember.rank)
    ).scalars().all()
    payload = {
        "campaign_id": campaign.campaign_id,
        "name": campaign.name,
        "batch": delivery.batch_no,
        "batches": batches,
        "launched_at": campaign.launched_at.isoformat(timespec="seconds") + "Z",
        "members": [
            {"customer_id": member.customer_id, "rank": member.rank, "offer": member.offer,
             "recommended_skus": member.recommended_skus}
            for member in members
        ],
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _retry_after_seconds(response: requests.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return float(value)
    except ValueError:
        return 0.0


def deliver_webhook_batch(campaign_id: str, batch_no: int, config: dict) -> str:
    """POST one batch, signed; record the outcome. Raises WebhookRetry when a later attempt may succeed."""
    with db.session() as session:
        delivery = session.get(CampaignWebhookDelivery, (campaign_id, batch_no))
        if delivery is None or delivery.status in ("delivered", "failed"):
            return delivery.status if delivery is not None else "missing"
        campaign = _campaign(session, campaign_id)
        batches = session.execute(
            select(func.count()).where(CampaignWebhookDelivery.campaign_id == campaign_id)
        ).scalar_one()
        body = webhook_body(session, campaign, delivery, batches)
        attempts = delivery.attempts + 1
    url = campaign.definition["webhook_url"]
    secret = os.environ.get("WEBHOOK_SECRET")
    if not secret:
        _record_delivery(campaign_id, batch_no, status="failed", attempts=attempts,
                         last_error="WEBHOOK_SECRET is not set on the worker")
        return "failed"
    try:
        # Checked again at delivery: the host may resolve elsewhere now than when the campaign was created.
        check_webhook_url(url, forbidden_networks(config["WEBHOOK_FORBIDDEN_NETWORKS"]))
    except InvalidRequest as error:
        _record_delivery(campaign_id, batch_no, status="failed", attempts=attempts, last_error=error.message)
        return "failed"
    headers = {
        "Content-Type": "application/json",
        "X-Segrec-Signature": sign_body(body, secret),
        # Deliveries are at least once: the receiver drops a batch it has already seen by this id.
        "X-Segrec-Delivery": f"{campaign_id}:{batch_no}",
    }
    error_text = None
    status_code = None
    retry_after = 0.0
    try:
        # No redirects: a redirect could point into a forbidden range after the address check.
        response = requests.post(url, data=body, headers=headers, timeout=float(config["WEBHOOK_TIMEOUT_SECONDS"]),
                                 allow_redirects=False)
        status_code = response.status_code
        retry_after = _retry_after_seconds(response)
    except requests.RequestException as error:
        error_text = f"{type(error).__name__}: {error}"[:500]
    if status_code is not None and 200 <= status_code < 300:
        _record_delivery(campaign_id, batch_no, status="delivered", attempts=attempts, last_status_code=status_code,
                         last_error=None, delivered_at=utcnow())
        return "delivered"
    retryable = status_code is None or status_code in RETRYABLE_STATUSES
    if status_code is not None:
        error_text = f"the receiver answered HTTP {status_code}"
    if not retryable or attempts >= int(config["WEBHOOK_MAX_ATTEMPTS"]):
        _record_delivery(campaign_id, batch_no, status="failed", attempts=attempts, last_status_code=status_code,
                         last_error=error_text)
        return "failed"
    _record_delivery(campaign_id, batch_no, status="retrying", attempts=attempts, last_status_code=status_code,
                     last_error=error_text)
    backoff = float(config["WEBHOOK_RETRY_BACKOFF_SECONDS"]) * 2 ** (attempts - 1)
    raise WebhookRetry(min(max(backoff, retry_after), MAX_WEBHOOK_BACKOFF_SECONDS), error_text or "retry")


def give_up_webhook(campaign_id: str, batch_no: int, reason: str) -> None:
    """The delivery task stopped retrying: the batch is failed with the reason."""
    _record_delivery(campaign_id, batch_no, status="failed", last_error=reason[:2000])


# ---- report --------------------------------------------------------------------------------------


def _group_totals(session: Session, campaign: Campaign) -> dict[str, GroupTotals]:
    """Per group: members, converters, paid orders and revenue since launch, in two SQL aggregates."""
    per_member = (
        select(
            CampaignMember.group.label("member_group"),
            CampaignMember.customer_id,
            func.count(Order.order_id).label("orders"),
            func.coalesce(func.sum(Order.total), 0).label("revenue"),
        )
        .select_from(CampaignMember)
        .outerjoin(Order, and_(Order.customer_id == CampaignMember.customer_id, Order.status == "paid",
                               Order.placed_at >= campaign.launched_at))
        .where(CampaignMember.campaign_id == campaign.campaign_id)
        .group_by(CampaignMember.group, CampaignMember.customer_id)
        .subquery()
    )
    rows = session.execute(
        select(
            per_member.c.member_group,
            func.count(),
            func.sum(case((per_member.c.orders > 0, 1), else_=0)),
            func.sum(per_member.c.orders),
            func.sum(per_member.c.revenue),
        ).group_by(per_member.c.member_group)
    ).all()
    totals = {group: GroupTotals(0, 0, 0, 0.0) for group in GROUPS}
    for group, members, converters, orders, revenue in rows:
        totals[group] = GroupTotals(int(members), int(converters or 0), int(orders or 0), float(revenue or 0))
    return totals


def campaign_report(session: Session, campaign_id: str, config: dict) -> dict:
    """Orders and revenue since launch, treatment vs control, and the conversion uplift with its 95 % interval."""
    campaign = _ready_campaign(session, campaign_id)
    totals = _group_totals(session, campaign)
    summary = uplift_summary(totals["treatment"], totals["control"], int(config["CAMPAIGN_REPORT_MIN_MEMBERS"]),
                             int(config["CAMPAIGN_REPORT_MIN_CONVERTERS"]))
    return {
        "campaign_id": campaign_id,
        "launched_at": campaign.launched_at,
        "as_of": utcnow(),
        "treatment": totals["treatment"].as_dict(),
        "control": totals["control"].as_dict(),
        "uplift": summary,
    }
