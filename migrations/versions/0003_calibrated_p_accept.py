"""calibrated p_accept

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

`calibrators`: the versions of each model's calibrator (the checkpoint's, fitted on its
validation split, and those `labeler calibrate` fits on reviews). On `captions`: `p_accept`, the
calibrated probability that a reviewer accepts the draft unchanged (existing drafts get their
confidence, which stands in when there is no calibrator), `calibrator_id` (NULL: confidence stood
in) and the index the default sort walks.

SQLite rebuilds `captions` to add the foreign key and NOT NULL (batch mode), and with foreign keys
on, dropping the old table sets every `reviews.caption_id` to NULL (ON DELETE SET NULL fires for
the implicit delete; the pragma cannot be turned off inside the upgrade's transaction). So the
links are kept aside in a temporary table and put back.

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "calibrators",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("settings_key", sa.String(length=32), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("auroc", sa.Float(), nullable=True),
        sa.Column("ece", sa.Float(), nullable=True),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "source IN ('validation', 'reviews')", name=op.f("ck_calibrators_source")
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["models.id"],
            name=op.f("fk_calibrators_model_id_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calibrators")),
        sa.UniqueConstraint("model_id", "version", name=op.f("uq_calibrators_model_id_version")),
    )
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("captions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("p_accept", sa.Float(), nullable=True))
    op.execute("UPDATE captions SET p_accept = confidence")
    if sqlite:
        op.execute(
            "CREATE TEMP TABLE labeler_review_links AS "
            "SELECT id, caption_id FROM reviews WHERE caption_id IS NOT NULL"
        )
    with op.batch_alter_table("captions", schema=None) as batch_op:
        batch_op.alter_column("p_accept", existing_type=sa.Float(), nullable=False)
        batch_op.add_column(sa.Column("calibrator_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_captions_calibrator_id_calibrators"),
            "calibrators",
            ["calibrator_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index(
            batch_op.f("ix_captions_model_id_settings_key_rank_p_accept"),
            ["model_id", "settings_key", "rank", "p_accept"],
            unique=False,
        )
    if sqlite:
        op.execute(
            "UPDATE reviews SET caption_id = (SELECT l.caption_id FROM labeler_review_links l "
            "WHERE l.id = reviews.id) WHERE id IN (SELECT id FROM labeler_review_links)"
        )
        op.execute("DROP TABLE labeler_review_links")


def downgrade() -> None:
    """Downgrade schema."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute(
            "CREATE TEMP TABLE labeler_review_links AS "
            "SELECT id, caption_id FROM reviews WHERE caption_id IS NOT NULL"
        )
    with op.batch_alter_table("captions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_captions_model_id_settings_key_rank_p_accept"))
        batch_op.drop_constraint(
            batch_op.f("fk_captions_calibrator_id_calibrators"), type_="foreignkey"
        )
        batch_op.drop_column("calibrator_id")
        batch_op.drop_column("p_accept")
    if sqlite:
        op.execute(
            "UPDATE reviews SET caption_id = (SELECT l.caption_id FROM labeler_review_links l "
            "WHERE l.id = reviews.id) WHERE id IN (SELECT id FROM labeler_review_links)"
        )
        op.execute("DROP TABLE labeler_review_links")
    op.drop_table("calibrators")
