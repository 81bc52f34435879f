"""Reading campaigns: one campaign as the API shows it, its members page by page or as CSV."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.segmentation.campaigns.assignment import SKIP_REASONS
from shared.csvstream import stream_rows_as_csv
from shared.cursors import decode_cursor, encode_cursor
from shared.errors import BadCursor, Conflict, NotFound
from shared.models import Campaign, CampaignMember, CampaignWebhookDelivery

log = logging.getLogger("segrec.campaigns")

CSV_COLUMNS = (
    "customer_id", "group", "rank", "offer_kind", "offer_value", "offer_valid_days", "offer_expires_at",
    "recommended_skus", "contacted_at", "recommendation_id",
)
# Names the recommendation ids of campaign members (uuid5), so a rebuilt campaign gives every member the same id.
CAMPAIGN_RECOMMENDATIONS = uuid.UUID("6f1d3c52-8f0e-4d5b-9a57-2b8e0c4e7a10")


def member_recommendation_id(campaign_id: str, customer_id: str) -> str:
    """The recommendation_id of a treated member's recommended skus, for feedback on surface "campaign".

    Derived, not stored: the same for every rebuild and every reader (API pages, CSV, webhooks).
    """
    return uuid.uuid5(CAMPAIGN_RECOMMENDATIONS, f"{campaign_id}/{customer_id}").hex


def recommendation_id_of(campaign_id: str, customer_id: str, recommended_skus: list | None) -> str | None:
    """A member's recommendation_id as pages, CSV and webhooks show it: None without recommended skus."""
    return member_recommendation_id(campaign_id, customer_id) if recommended_skus else None


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


def find_campaign(session: Session, campaign_id: str) -> Campaign:
    """One campaign or NotFound."""
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"no campaign {campaign_id}")
    return campaign


def get_campaign(session: Session, campaign_id: str) -> dict:
    """One campaign: status, sizes, skipped by reason, webhook deliveries."""
    return campaign_to_dict(session, find_campaign(session, campaign_id))


def ready_campaign(session: Session, campaign_id: str) -> Campaign:
    """One campaign whose build has finished; Conflict while it builds or when it failed."""
    campaign = find_campaign(session, campaign_id)
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
        "recommendation_id": recommendation_id_of(member.campaign_id, member.customer_id, member.recommended_skus),
    }


def member_page(session: Session, campaign_id: str, limit: int, cursor: str | None, group: str | None) -> dict:
    """One page of a ready campaign's members in rank order, optionally one group only."""
    ready_campaign(session, campaign_id)
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
        recommendation_id_of(row.campaign_id, row.customer_id, row.recommended_skus) or "",
    )


def stream_members_csv(session: Session, campaign_id: str, group: str | None,
                       batch_rows: int = 5000) -> Iterator[str]:
    """A ready campaign's members as CSV text chunks in rank order (server-side cursor; memory stays flat)."""
    ready_campaign(session, campaign_id)
    statement = (
        select(CampaignMember.customer_id, CampaignMember.group, CampaignMember.rank, CampaignMember.offer,
               CampaignMember.recommended_skus, CampaignMember.contacted_at, CampaignMember.campaign_id)
        .where(CampaignMember.campaign_id == campaign_id)
        .order_by(CampaignMember.rank)
        .execution_options(stream_results=True, yield_per=batch_rows)
    )
    if group is not None:
        statement = statement.where(CampaignMember.group == group)
    result = session.execute(statement)
    return stream_rows_as_csv(session, result, CSV_COLUMNS, f"campaign {campaign_id}", batch_rows,
                              to_row=_csv_row, logger=log)
