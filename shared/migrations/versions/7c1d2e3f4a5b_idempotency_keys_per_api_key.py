"""Idempotency keys scoped to the API key that sent them (campaigns.api_key_id) and releasable on expiry.

Revision ID: 7c1d2e3f4a5b
Revises: b7c41d9e2f10
Create Date: 2026-12-02 15:55:00
"""

import sqlalchemy as sa
from alembic import op

revision = "7c1d2e3f4a5b"
down_revision = "b7c41d9e2f10"
branch_labels = None
depends_on = None

# The initial schema left the unique constraint unnamed: name it on reflection so SQLite's batch copy can drop it.
NAMING = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
NEW_UNIQUE = "uq_campaigns_api_key_idempotency_key"


def _old_unique_name() -> str:
    return "uq_campaigns_idempotency_key" if op.get_bind().dialect.name == "sqlite" else "campaigns_idempotency_key_key"


def upgrade() -> None:
    with op.batch_alter_table("campaigns", naming_convention=NAMING) as batch:
        batch.drop_constraint(_old_unique_name(), type_="unique")
        batch.add_column(sa.Column("api_key_id", sa.Integer(), nullable=True))
        batch.alter_column("idempotency_key", existing_type=sa.String(length=128), nullable=True)
        batch.create_unique_constraint(NEW_UNIQUE, ["api_key_id", "idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("campaigns", naming_convention=NAMING) as batch:
        batch.drop_constraint(NEW_UNIQUE, type_="unique")
        batch.drop_column("api_key_id")
        batch.alter_column("idempotency_key", existing_type=sa.String(length=128), nullable=False)
        batch.create_unique_constraint("uq_campaigns_idempotency_key", ["idempotency_key"])
