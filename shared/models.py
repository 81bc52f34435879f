"""SQLAlchemy 2 models: the shop's data, API keys, scoring runs and campaigns.

Timestamps are stored as naive UTC (SQLite has no time zones); inputs are converted on the way in.
Money is stored as NUMERIC but read as float: the analytics downstream is numpy.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Money = Numeric(14, 2, asdecimal=False)
# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
AutoId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base of every segrec table."""


class Customer(Base):
    """A shop customer with the running aggregates nightly scoring reads."""

    __tablename__ = "customers"

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    joined_at: Mapped[datetime | None] = mapped_column(DateTime)
    channel: Mapped[str | None] = mapped_column(String(64))
    community_member: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    attributes: Mapped[dict] = mapped_column(JSON, default=dict, nullable=False)
    # Created from an order for a customer we had not been sent yet.
    placeholder: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    # Running aggregates over paid orders, recomputed for the customers each ingest batch touches.
    first_paid_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_paid_at: Mapped[datetime | None] = mapped_column(DateTime)
    paid_orders: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    net_spend: Mapped[float] = mapped_column(Money, default=0, nullable=False)
    purchase_days: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class Product(Base):
    """A catalogue item."""

    __tablename__ = "products"

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    category: Mapped[str | None] = mapped_column(String(128))
    price: Mapped[float] = mapped_column(Money, nullable=False, default=0)
    cost: Mapped[float | None] = mapped_column(Money)
    stock: Mapped[int | None] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    repeat_purchase: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    # Created from an order line whose sku the catalogue sync has not sent yet.
    placeholder: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class Promotion(Base):
    """A spend-threshold or free-shipping promotion."""

    __tablename__ = "promotions"

    promotion_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    threshold: Mapped[float] = mapped_column(Money, nullable=False)
    discount: Mapped[float] = mapped_column(Money, nullable=False, default=0)
    starts_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    ends_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    category: Mapped[str | None] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class Order(Base):
    """An order; its lines are immutable once received, its status may move paid -> refunded/cancelled."""

    __tablename__ = "orders"

    order_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), ForeignKey("customers.customer_id"), nullable=False)
    placed_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    total: Mapped[float] = mapped_column(Money, nullable=False)
    # sha256 of customer, time and lines: tells a harmless re-send from a conflicting one.
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)

    __table_args__ = (
        Index("ix_orders_customer_placed", "customer_id", "placed_at"),
        Index("ix_orders_placed_at", "placed_at"),
    )


class OrderLine(Base):
    """One line of an order.

    No foreign key to orders: its check costs one index probe and row lock per line, which made a
    CSV import of a million lines three to four times slower. Lines are only ever written in the
    transaction that inserts their order (shared.ingest's order writer, used by REST, the CSV import and the
    demo shop), and code
    that deletes an order must delete its lines in the same transaction.
    """

    __tablename__ = "order_lines"

    order_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    line_no: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    sku: Mapped[str] = mapped_column(String(64), nullable=False)
    quantity: Mapped[int] = mapped_column(Integer, nullable=False)
    unit_price: Mapped[float] = mapped_column(Money, nullable=False)


class Event(Base):
    """A behavioural event (view, add to cart, community interaction, follow)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    # sha256 of the event's content (or the client's event_id): a retried batch never inserts twice.
    event_key: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    customer_id: Mapped[str] = mapped_column(String(64), nullable=False)
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    sku: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)

    __table_args__ = (Index("ix_events_customer_type_time", "customer_id", "type", "occurred_at"),)


class ApiKey(Base):
    """An API key: only its sha256 is stored; the key itself is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    key_prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    scopes: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class Run(Base):
    """A training run: scoring, CLV, recommendation models, evaluation and publish."""

    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    as_of: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    published_at: Mapped[datetime | None] = mapped_column(DateTime)
    steps: Mapped[list] = mapped_column(JSON, default=list, nullable=False)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict, nullable=False)
    reason: Mapped[str | None] = mapped_column(Text)
    trigger: Mapped[str] = mapped_column(String(32), nullable=False, default="manual")
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class Pointer(Base):
    """A named pointer, e.g. which run is the current published one."""

    __tablename__ = "pointers"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(64), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class CustomerScore(Base):
    """One customer's scores in one run: a segment list reads a single run, never a mix."""

    __tablename__ = "customer_scores"

    run_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    recency_days: Mapped[float | None] = mapped_column(Float)
    frequency: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    monetary: Mapped[float] = mapped_column(Float, nullable=False, default=0)
    r: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    f: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    m: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    rfm_segment: Mapped[str] = mapped_column(String(32), nullable=False)
    tier: Mapped[str] = mapped_column(String(16), nullable=False)
    tier_since: Mapped[datetime | None] = mapped_column(DateTime)
    tier_pending_since: Mapped[datetime | None] = mapped_column(DateTime)
    spend_to_next_tier: Mapped[float | None] = mapped_column(Float)
    lifecycle: Mapped[str] = mapped_column(String(24), nullable=False)
    community_layer: Mapped[str | None] = mapped_column(String(16))
    p_alive: Mapped[float | None] = mapped_column(Float)
    expected_orders_90d: Mapped[float | None] = mapped_column(Float)
    expected_value_365d: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        Index("ix_scores_run_segment", "run_id", "rfm_segment", "customer_id"),
        Index("ix_scores_run_tier", "run_id", "tier", "customer_id"),
        Index("ix_scores_run_lifecycle", "run_id", "lifecycle", "customer_id"),
        Index("ix_scores_run_layer", "run_id", "community_layer", "customer_id"),
    )


class TierHistory(Base):
    """A customer's tier changes, one row per change."""

    __tablename__ = "tier_history"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    from_tier: Mapped[str | None] = mapped_column(String(16))
    to_tier: Mapped[str] = mapped_column(String(16), nullable=False)
    changed_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    run_id: Mapped[str] = mapped_column(String(40), nullable=False)


class Campaign(Base):
    """A win-back campaign."""

    __tablename__ = "campaigns"
    # An Idempotency-Key belongs to the API key that sent it; it is released (set to NULL) once it expires.
    __table_args__ = (UniqueConstraint("api_key_id", "idempotency_key", name="uq_campaigns_api_key_idempotency_key"),)

    campaign_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    # The API key that created the campaign (NULL for campaigns created before keys were recorded).
    api_key_id: Mapped[int | None] = mapped_column(Integer)
    request_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    definition: Mapped[dict] = mapped_column(JSON, nullable=False)
    run_id: Mapped[str | None] = mapped_column(String(40))
    audience_size: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    treatment_size: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    control_size: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    skipped: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    launched_at: Mapped[datetime | None] = mapped_column(DateTime)
    # Pinned by the first build attempt (with launched_at), so a rebuild writes the same members.
    model_version: Mapped[str | None] = mapped_column(String(40))
    # Plain-words remark on a built campaign, e.g. "the audience matched nobody".
    note: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)


class CampaignMember(Base):
    """A member of a campaign, treated or held out."""

    __tablename__ = "campaign_members"

    campaign_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("campaigns.campaign_id", ondelete="CASCADE"), primary_key=True
    )
    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    group: Mapped[str] = mapped_column(String(16), nullable=False)
    rank: Mapped[int] = mapped_column(Integer, nullable=False)
    offer: Mapped[dict | None] = mapped_column(JSON)
    recommended_skus: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    contacted_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (
        Index("ix_campaign_members_customer", "customer_id", "contacted_at"),
        # Pages and webhook batches walk a campaign in rank order.
        Index("ix_campaign_members_rank", "campaign_id", "rank", unique=True),
    )


class CampaignWebhookDelivery(Base):
    """One batch of a campaign's treatment members POSTed to its webhook, with the delivery's outcome."""

    __tablename__ = "campaign_webhook_deliveries"

    campaign_id: Mapped[str] = mapped_column(
        String(40), ForeignKey("campaigns.campaign_id", ondelete="CASCADE"), primary_key=True
    )
    batch_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The batch is the treatment members with rank in [first_rank, last_rank].
    first_rank: Mapped[int] = mapped_column(Integer, nullable=False)
    last_rank: Mapped[int] = mapped_column(Integer, nullable=False)
    members: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime)


class RecommendationList(Base):
    """A copy of a model version's shared lists, so recommendations survive a Redis outage."""

    __tablename__ = "recommendation_lists"

    model_version: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(24), primary_key=True)
    list_key: Mapped[str] = mapped_column(String(160), primary_key=True)
    payload: Mapped[str] = mapped_column(Text, nullable=False)


class FeedbackEvent(Base):
    """What a storefront reported about a recommendation answer: an impression, a click or an add-to-cart.

    Stored once per event_id (the consumer inserts with ON CONFLICT DO NOTHING), so a re-sent or
    redelivered event never counts twice.
    """

    __tablename__ = "feedback_events"
    __table_args__ = (Index("ix_feedback_events_occurred_at", "occurred_at"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    recommendation_id: Mapped[str | None] = mapped_column(String(64), index=True)
    customer_id: Mapped[str | None] = mapped_column(String(64), index=True)
    session_id: Mapped[str | None] = mapped_column(String(64), index=True)
    sku: Mapped[str | None] = mapped_column(String(64))
    # Impressions: [{"sku": ..., "position": ...}, ...] as shown.
    skus: Mapped[list | None] = mapped_column(JSON)
    occurred_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    received_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class ServedRecommendation(Base):
    """One served answer: which surface, model version and experiment variant its recommendation_id came from."""

    __tablename__ = "served_recommendations"

    recommendation_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    surface: Mapped[str] = mapped_column(String(24), nullable=False)
    model_version: Mapped[str | None] = mapped_column(String(64))
    variant: Mapped[str] = mapped_column(String(64), nullable=False, default="current")
    experiment_id: Mapped[str | None] = mapped_column(String(40), index=True)
    customer_id: Mapped[str | None] = mapped_column(String(64))
    session_id: Mapped[str | None] = mapped_column(String(64))
    served_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class Experiment(Base):
    """An A/B test between recommenders on one surface: variants with traffic weights, between two dates."""

    __tablename__ = "experiments"

    experiment_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    surface: Mapped[str] = mapped_column(String(24), nullable=False, index=True)
    # [{"name": "current", "weight": 0.5}, ...]; the first is the control unless `control` says otherwise.
    variants: Mapped[list] = mapped_column(JSON, nullable=False)
    control: Mapped[str] = mapped_column(String(64), nullable=False)
    starts_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    ends_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    min_detectable_effect: Mapped[float] = mapped_column(Float, nullable=False)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
