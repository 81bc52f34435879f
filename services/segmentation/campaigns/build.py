"""The member build of a campaign.

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

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from redis.exceptions import LockError
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from services.recommend.store import Catalogue, ListReader, customer_payloads, decode_customer_lists
from services.segmentation.campaigns.assignment import Candidate, Selection, select_members
from services.segmentation.campaigns.members import find_campaign, member_recommendation_id
from services.segmentation.segments import audience_statement
from shared.extensions import db, redis_store
from shared.ingest import insert_ignoring_duplicates, utcnow
from shared.models import (
    Campaign,
    CampaignMember,
    CampaignWebhookDelivery,
    Customer,
    CustomerScore,
    ServedRecommendation,
)

log = logging.getLogger("segrec.campaigns")


class BuildInProgress(Exception):
    """Another build held the campaign build lock for longer than this one would wait; try again later."""


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
        campaign = find_campaign(session, campaign_id)
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
    """Write the members, and the served record of each treated member's recommended skus (surface campaign)."""
    offer = _offer_for(campaign.definition, campaign.launched_at)
    table = CampaignMember.__table__
    for start in range(0, len(selection.members), chunk):
        rows, served = [], []
        for position, (customer_id, group, _tier) in enumerate(selection.members[start:start + chunk], start + 1):
            treated = group == "treatment"
            skus = recommended.get(customer_id, []) if treated else []
            rows.append({
                "campaign_id": campaign.campaign_id,
                "customer_id": customer_id,
                "group": group,
                "rank": position,
                "offer": offer if treated else None,
                "recommended_skus": skus,
                # The frequency cap of later campaigns reads this: only treated members were contacted.
                "contacted_at": campaign.launched_at if treated else None,
            })
            if skus:
                served.append(_served_record(campaign, customer_id))
        # One transaction per chunk keeps lock time short; an interrupted build is redone from scratch, and
        # its served records (ids derived from campaign and customer) are then already there.
        with db.session() as session:
            session.execute(insert(table), rows)
            insert_ignoring_duplicates(session, ServedRecommendation.__table__, served, ["recommendation_id"])


def _served_record(campaign: Campaign, customer_id: str) -> dict:
    """A treated member's recommendations as a served answer: feedback on them is attributed to surface campaign."""
    return {
        "recommendation_id": member_recommendation_id(campaign.campaign_id, customer_id),
        "surface": "campaign",
        "model_version": campaign.model_version,
        "variant": "current",
        "experiment_id": None,
        "customer_id": customer_id,
        "session_id": None,
        "served_at": campaign.launched_at,
    }


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
            stored = find_campaign(session, campaign_id)
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
