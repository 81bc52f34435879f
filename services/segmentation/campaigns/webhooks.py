"""Webhook delivery of a campaign's treatment members: address checks, signed batches, retries."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import certifi
import urllib3
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.segmentation.campaigns.members import find_campaign, recommendation_id_of
from shared.errors import InvalidRequest
from shared.extensions import db
from shared.ingest import utcnow
from shared.models import Campaign, CampaignMember, CampaignWebhookDelivery

log = logging.getLogger("segrec.webhooks")

# HTTP statuses after which a webhook delivery is worth trying again.
RETRYABLE_STATUSES = {408, 425, 429, 500, 502, 503, 504}
MAX_WEBHOOK_BACKOFF_SECONDS = 3600


class WebhookRetry(Exception):
    """A webhook batch failed in a way worth retrying after `countdown` seconds."""

    def __init__(self, countdown: float, message: str) -> None:
        super().__init__(message)
        self.countdown = countdown


def forbidden_networks(setting: str | Iterable[str]) -> list:
    """Parse a list of networks (comma-separated CIDRs, or a list of them)."""
    parts = setting.split(",") if isinstance(setting, str) else list(setting)
    return [ipaddress.ip_network(part.strip(), strict=False) for part in parts if part.strip()]


@dataclass(frozen=True)
class WebhookPolicy:
    """Where webhooks may go: globally routable addresses, minus `forbidden`, plus the operator's `allowed`."""

    forbidden: tuple = ()
    allowed: tuple = ()

    @classmethod
    def from_config(cls, config: dict) -> WebhookPolicy:
        """WEBHOOK_FORBIDDEN_NETWORKS and WEBHOOK_ALLOWED_NETWORKS of the configuration."""
        return cls(tuple(forbidden_networks(config["WEBHOOK_FORBIDDEN_NETWORKS"])),
                   tuple(forbidden_networks(config.get("WEBHOOK_ALLOWED_NETWORKS", ""))))


@dataclass(frozen=True)
class WebhookTarget:
    """A checked webhook URL and the one address a delivery connects to."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


# IPv6 prefixes that carry an IPv4 address in their last 32 bits: IPv4-compatible (::a.b.c.d) and NAT64.
_IPV4_CARRYING_PREFIXES = (
    ipaddress.ip_network("::/96"),
    ipaddress.ip_network("64:ff9b::/96"),
    ipaddress.ip_network("64:ff9b:1::/48"),
)


def embedded_addresses(ip) -> list:
    """The address itself and every IPv4 address an IPv6 form wraps (mapped, compatible, 6to4, NAT64, Teredo)."""
    found = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            found.append(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            found.append(ip.sixtofour)
        if ip.teredo is not None:
            found.extend(ip.teredo)
        if any(ip in prefix for prefix in _IPV4_CARRYING_PREFIXES):
            found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _is_public(ip) -> bool:
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified or ip.is_loopback
                                 or ip.is_link_local or ip.is_private)


def _any_in(addresses: list, networks) -> bool:
    """True when one of the addresses lies in one of the networks (of its own IP version)."""
    for address in addresses:
        for network in networks:
            if address.version == network.version and address in network:
                return True
    return False


def address_is_allowed(address: str, policy: WebhookPolicy) -> bool:
    """True when a delivery may connect to `address` under `policy` (every embedded IPv4 form checked too)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    candidates = embedded_addresses(ip)
    if _any_in(candidates, policy.forbidden):
        return False
    if any(ip in network for network in policy.allowed if ip.version == network.version):
        return True
    return all(_is_public(candidate) for candidate in candidates)


def _url_parts(url: str):
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
    return parts, port or (443 if parts.scheme == "https" else 80)


def check_webhook_url(url: str, policy: WebhookPolicy, resolve: Callable = socket.getaddrinfo) -> WebhookTarget:
    """Check an http(s) URL: every address its host resolves to must be allowed; returns the address to use."""
    parts, port = _url_parts(url)
    try:
        infos = resolve(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as error:
        raise InvalidRequest(f"the webhook host '{parts.hostname}' does not resolve",
                             {"webhook_url": ["the host name does not resolve"]}) from error
    addresses = [info[4][0] for info in infos]
    blocked = sorted({address for address in addresses if not address_is_allowed(address, policy)})
    if blocked or not addresses:
        raise InvalidRequest(
            f"the webhook host '{parts.hostname}' resolves to an address this server does not deliver to",
            {"webhook_url": ["webhooks go to globally routable addresses only "
                             "(no loopback, private, shared, link-local, multicast or reserved ranges)"]},
        )
    return WebhookTarget(url=url, scheme=parts.scheme, host=parts.hostname, port=port, address=addresses[0])


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
             "recommended_skus": member.recommended_skus,
             "recommendation_id": recommendation_id_of(campaign.campaign_id, member.customer_id,
                                                       member.recommended_skus)}
            for member in members
        ],
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _retry_after_seconds(headers) -> float:
    value = headers.get("Retry-After", "")
    try:
        return float(value)
    except ValueError:
        return 0.0


class DeliveryError(Exception):
    """A delivery that got no HTTP answer; `status_class` says what kind of failure, never the raw error."""

    def __init__(self, status_class: str) -> None:
        super().__init__(status_class)
        self.status_class = status_class


def _status_class_of(error: Exception) -> str:
    """'timeout', 'connect_error', 'tls_error' or 'protocol_error': what a caller may see of a network failure."""
    # urllib3's NewConnectionError (refused, unreachable) subclasses ConnectTimeoutError: test it first.
    if isinstance(error, (urllib3.exceptions.NewConnectionError, ConnectionRefusedError)):
        return "connect_error"
    if isinstance(error, (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.ReadTimeoutError,
                          TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(error, urllib3.exceptions.SSLError):
        return "tls_error"
    if isinstance(error, (urllib3.exceptions.NewConnectionError, ConnectionError)):
        return "connect_error"
    return "protocol_error"


def http_status_class(status_code: int) -> str:
    """'http_2xx' ... 'http_5xx' for an answer's status."""
    return f"http_{status_code // 100}xx"


def post_to_checked_address(target: WebhookTarget, body: bytes, headers: dict, timeout: float):
    """POST to the address that was checked (no second DNS lookup), with the URL's Host header and TLS name.

    Redirects are not followed: a redirect could lead anywhere after the address check. Returns
    (status code, response headers); raises DeliveryError when no answer came.
    """
    parts = urlsplit(target.url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default_port = 443 if target.scheme == "https" else 80
    host_header = target.host if ":" not in target.host else f"[{target.host}]"
    if target.port != default_port:
        host_header = f"{host_header}:{target.port}"
    pool_options = {"host": target.address, "port": target.port, "retries": False, "maxsize": 1,
                    "timeout": urllib3.Timeout(connect=timeout, read=timeout)}
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(**pool_options, server_hostname=target.host,
                                           assert_hostname=target.host, cert_reqs="CERT_REQUIRED",
                                           ca_certs=certifi.where())
    else:
        pool = urllib3.HTTPConnectionPool(**pool_options)
    try:
        response = pool.urlopen("POST", path, body=body, headers={**headers, "Host": host_header},
                                redirect=False, retries=False, assert_same_host=False)
        return response.status, response.headers
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise DeliveryError(_status_class_of(error)) from error
    finally:
        pool.close()


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
        _record_delivery(campaign_id, batch_no, status="failed", attempts=attempts, last_error="not_configured")
        return "failed"
    try:
        # Checked again at delivery (the host may resolve elsewhere now), and the connection goes to the
        # address checked here, so a DNS answer that changes in between (rebinding) is never used.
        target = check_webhook_url(url, WebhookPolicy.from_config(config))
    except InvalidRequest:
        _record_delivery(campaign_id, batch_no, status="failed", attempts=attempts, last_error="address_refused")
        return "failed"
    headers = {
        "Content-Type": "application/json",
        "X-Segrec-Signature": sign_body(body, secret),
        # Deliveries are at least once: the receiver drops a batch it has already seen by this id.
        "X-Segrec-Delivery": f"{campaign_id}:{batch_no}",
    }
    status_code = None
    retry_after = 0.0
    try:
        status_code, response_headers = post_to_checked_address(
            target, body, headers, float(config["WEBHOOK_TIMEOUT_SECONDS"]))
        retry_after = _retry_after_seconds(response_headers)
        status_class = http_status_class(status_code)
    except DeliveryError as error:
        status_class = error.status_class
    if status_code is not None and 200 <= status_code < 300:
        _record_delivery(campaign_id, batch_no, status="delivered", attempts=attempts, last_status_code=status_code,
                         last_error=None, delivered_at=utcnow())
        return "delivered"
    retryable = status_code is None or status_code in RETRYABLE_STATUSES
    if not retryable or attempts >= int(config["WEBHOOK_MAX_ATTEMPTS"]):
        _record_delivery(campaign_id, batch_no, status="failed", attempts=attempts, last_status_code=status_code,
                         last_error=status_class)
        return "failed"
    _record_delivery(campaign_id, batch_no, status="retrying", attempts=attempts, last_status_code=status_code,
                     last_error=status_class)
    backoff = float(config["WEBHOOK_RETRY_BACKOFF_SECONDS"]) * 2 ** (attempts - 1)
    raise WebhookRetry(min(max(backoff, retry_after), MAX_WEBHOOK_BACKOFF_SECONDS), status_class)


def give_up_webhook(campaign_id: str, batch_no: int, reason: str) -> None:
    """The delivery task stopped retrying: the batch is failed with the reason."""
    # The reason (an exception's text) goes to the worker's log, not to the API's delivery records.
    log.warning("webhook batch %s:%s given up: %s", campaign_id, batch_no, reason)
    _record_delivery(campaign_id, batch_no, status="failed", last_error="gave_up")
