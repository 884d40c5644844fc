"""caption claims

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Leases that let several `labeler caption` workers split the work on one store: one row per
(model, settings, content hash) being captioned, until it expires or the drafts are written.

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "caption_claims",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("settings_key", sa.String(length=32), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_caption_claims_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["caption_runs.id"],
            name=op.f("fk_caption_claims_run_id_caption_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_caption_claims")),
        sa.UniqueConstraint(
            "model_id",
            "settings_key",
            "content_hash",
            name=op.f("uq_caption_claims_model_id_settings_key_content_hash"),
        ),
    )
    with op.batch_alter_table("caption_claims", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_caption_claims_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("caption_claims", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_caption_claims_expires_at"))

    op.drop_table("caption_claims")
