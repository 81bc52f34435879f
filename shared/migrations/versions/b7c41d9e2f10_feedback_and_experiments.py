"""feedback events, served recommendations and experiments

Revision ID: b7c41d9e2f10
Revises: 0e2479261dd8
Create Date: 2026-12-02 15:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = 'b7c41d9e2f10'
down_revision = '0e2479261dd8'
branch_labels = None
depends_on = None

AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'feedback_events',
        sa.Column('id', AUTO_ID, autoincrement=True, nullable=False),
        sa.Column('event_id', sa.String(length=64), nullable=False),
        sa.Column('type', sa.String(length=16), nullable=False),
        sa.Column('recommendation_id', sa.String(length=64), nullable=True),
        sa.Column('customer_id', sa.String(length=64), nullable=True),
        sa.Column('session_id', sa.String(length=64), nullable=True),
        sa.Column('sku', sa.String(length=64), nullable=True),
        sa.Column('skus', sa.JSON(), nullable=True),
        sa.Column('occurred_at', sa.DateTime(), nullable=False),
        sa.Column('received_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('event_id'),
    )
    op.create_index('ix_feedback_events_occurred_at', 'feedback_events', ['occurred_at'])
    op.create_index('ix_feedback_events_recommendation_id', 'feedback_events', ['recommendation_id'])
    op.create_index('ix_feedback_events_customer_id', 'feedback_events', ['customer_id'])
    op.create_index('ix_feedback_events_session_id', 'feedback_events', ['session_id'])
    op.create_table(
        'served_recommendations',
        sa.Column('recommendation_id', sa.String(length=64), nullable=False),
        sa.Column('surface', sa.String(length=24), nullable=False),
        sa.Column('model_version', sa.String(length=64), nullable=True),
        sa.Column('variant', sa.String(length=64), nullable=False),
        sa.Column('experiment_id', sa.String(length=40), nullable=True),
        sa.Column('customer_id', sa.String(length=64), nullable=True),
        sa.Column('session_id', sa.String(length=64), nullable=True),
        sa.Column('served_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('recommendation_id'),
    )
    op.create_index('ix_served_recommendations_experiment_id', 'served_recommendations', ['experiment_id'])
    op.create_table(
        'experiments',
        sa.Column('experiment_id', sa.String(length=40), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('surface', sa.String(length=24), nullable=False),
        sa.Column('variants', sa.JSON(), nullable=False),
        sa.Column('control', sa.String(length=64), nullable=False),
        sa.Column('starts_at', sa.DateTime(), nullable=False),
        sa.Column('ends_at', sa.DateTime(), nullable=False),
        sa.Column('min_detectable_effect', sa.Float(), nullable=False),
        sa.Column('stopped_at', sa.DateTime(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('experiment_id'),
    )
    op.create_index('ix_experiments_surface', 'experiments', ['surface'])


def downgrade() -> None:
    op.drop_index('ix_experiments_surface', table_name='experiments')
    op.drop_table('experiments')
    op.drop_index('ix_served_recommendations_experiment_id', table_name='served_recommendations')
    op.drop_table('served_recommendations')
    for name in ('session_id', 'customer_id', 'recommendation_id', 'occurred_at'):
        op.drop_index(f'ix_feedback_events_{name}', table_name='feedback_events')
    op.drop_table('feedback_events')
