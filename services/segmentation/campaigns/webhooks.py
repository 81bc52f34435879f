"""Webhook delivery of a campaign's treatment members: address checks, signed batches, retries."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import requests
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.segmentation.campaigns.members import find_campaign
from shared.errors import InvalidRequest
from shared.extensions import db
from shared.ingest import utcnow
from shared.models import Campaign, CampaignMember, CampaignWebhookDelivery

# HTTP statuses after which a webhook delivery is worth trying again.
RETRYABLE_STATUSES = {408, 425, 429, 500, 502, 503, 504}
MAX_WEBHOOK_BACKOFF_SECONDS = 3600


class WebhookRetry(Exception):
    """A webhook batch failed in a way worth retrying after `countdown` seconds."""

    def __init__(self, countdown: float, message: str) -> None:
        super().__init__(message)
        self.countdown = countdown


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
        campaign = find_campaign(session, campaign_id)
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
