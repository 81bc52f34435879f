"""`segrec bootstrap`: what a fresh deployment needs once, safe to run at every start.

- an admin key when no active one exists (its key is returned once, for the caller to print);
- the first retrain when no run is published yet and there are orders to learn from.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from shared.auth import create_key
from shared.models import ApiKey, Order

BOOTSTRAP_ADMIN_NAME = "bootstrap-admin"


@dataclass
class AdminKeyOutcome:
    """The admin key created (raw key shown once), or the id of the active one that made it unnecessary."""

    created: bool
    key_id: int
    raw_key: str | None = None


def ensure_admin_key(database) -> AdminKeyOutcome:
    """Create an admin key named bootstrap-admin unless an active admin key exists."""
    with database.session() as session:
        for row in session.execute(select(ApiKey).where(ApiKey.revoked_at.is_(None)).order_by(ApiKey.id)).scalars():
            if "admin" in row.scopes.split(","):
                return AdminKeyOutcome(created=False, key_id=row.id)
        row, raw_key = create_key(session, BOOTSTRAP_ADMIN_NAME, ["admin"])
        return AdminKeyOutcome(created=True, key_id=row.id, raw_key=raw_key)


def has_orders(database) -> bool:
    """True when at least one order is stored (a retrain on an empty shop has nothing to learn)."""
    with database.session() as session:
        return session.execute(select(Order.order_id).limit(1)).first() is not None
