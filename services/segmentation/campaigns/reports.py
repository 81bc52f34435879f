"""A campaign's report: orders and revenue since launch, treatment vs control, and the conversion uplift."""

from __future__ import annotations

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from services.segmentation.campaigns.assignment import GROUPS
from services.segmentation.campaigns.members import ready_campaign
from shared.ingest import utcnow
from shared.models import Campaign, CampaignMember, Order
from shared.statistics import GroupTotals, uplift_summary


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
    campaign = ready_campaign(session, campaign_id)
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
