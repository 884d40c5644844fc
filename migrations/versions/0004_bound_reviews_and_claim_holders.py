"""reviews bound to drafts, claim holders, abandoned runs

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

On `reviews`: `draft_text`, the text of the draft a review judged (a review counts for that draft
and for any draft of the image with the same text; existing reviews get their draft's text, or
for an acceptance whose draft is gone its own text), and `external_id` / `external_updated_at`,
the review tool's identity of the review (a Label Studio annotation) and its update time, unique
so that one annotation is one review whichever file brought it.

On `caption_claims` and `caption_runs`: who holds them (host, pid and the process's start time),
so that the claims of a worker that died are freed at once; a run found dead is `abandoned`.

SQLite rebuilds `caption_runs` to change its status check (batch mode); dropping the old table
would set `captions.run_id` and `caption_claims.run_id` to NULL (ON DELETE SET NULL fires for the
implicit delete, as 0003 explains), so those links are kept aside and put back.

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = "status IN ('running', 'completed', 'interrupted', 'failed')"
NEW_STATUSES = "status IN ('running', 'completed', 'interrupted', 'failed', 'abandoned')"
RUN_LINKS = ("captions", "caption_claims")


def _keep_run_links() -> None:
    for table in RUN_LINKS:
        op.execute(
            f"CREATE TEMP TABLE labeler_{table}_runs AS "
            f"SELECT id, run_id FROM {table} WHERE run_id IS NOT NULL"
        )


def _restore_run_links() -> None:
    for table in RUN_LINKS:
        op.execute(
            f"UPDATE {table} SET run_id = (SELECT l.run_id FROM labeler_{table}_runs l "
            f"WHERE l.id = {table}.id) WHERE id IN (SELECT id FROM labeler_{table}_runs)"
        )
        op.execute(f"DROP TABLE labeler_{table}_runs")


def _run_statuses(old: str, new: str) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        _keep_run_links()
    with op.batch_alter_table("caption_runs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_caption_runs_status"), type_="check")
        batch_op.create_check_constraint(batch_op.f("ck_caption_runs_status"), sa.text(new))
    if sqlite:
        _restore_run_links()


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column("reviews", sa.Column("draft_text", sa.Text(), nullable=True))
    op.add_column("reviews", sa.Column("external_id", sa.String(length=200), nullable=True))
    op.add_column(
        "reviews", sa.Column("external_updated_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(op.f("ix_reviews_external_id"), "reviews", ["external_id"], unique=True)
    op.execute(
        "UPDATE reviews SET draft_text = (SELECT c.text FROM captions c "
        "WHERE c.id = reviews.caption_id) WHERE caption_id IS NOT NULL"
    )
    op.execute(
        "UPDATE reviews SET draft_text = text WHERE draft_text IS NULL AND outcome = 'accepted'"
    )
    op.add_column("caption_claims", sa.Column("host", sa.String(length=255), nullable=True))
    op.add_column("caption_claims", sa.Column("pid", sa.Integer(), nullable=True))
    op.add_column("caption_claims", sa.Column("process_started", sa.Float(), nullable=True))
    op.add_column("caption_runs", sa.Column("process_started", sa.Float(), nullable=True))
    _run_statuses(OLD_STATUSES, NEW_STATUSES)


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("UPDATE caption_runs SET status = 'failed' WHERE status = 'abandoned'")
    _run_statuses(NEW_STATUSES, OLD_STATUSES)
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        _keep_run_links()
    with op.batch_alter_table("caption_runs", schema=None) as batch_op:
        batch_op.drop_column("process_started")
    with op.batch_alter_table("caption_claims", schema=None) as batch_op:
        batch_op.drop_column("process_started")
        batch_op.drop_column("pid")
        batch_op.drop_column("host")
    if sqlite:
        _restore_run_links()
    op.drop_index(op.f("ix_reviews_external_id"), table_name="reviews")
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.drop_column("external_updated_at")
        batch_op.drop_column("external_id")
        batch_op.drop_column("draft_text")
