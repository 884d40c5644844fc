"""Dataset names from the user are resolved in one place (store/images.py): every command that
takes --dataset (and `datasets move NAME`) refuses an unknown one with the same line."""

from __future__ import annotations

import csv

import imagefactory as make
import pytest
from captionkit import tiny_checkpoint
from typer.testing import CliRunner

from labeler.cli import app
from labeler.errors import InputError
from labeler.files.scan import scan
from labeler.review.export import export_drafts
from labeler.review.importer import import_reviews
from labeler.store import images as image_store
from labeler.store.models import Caption, CaptionRun, Image, Model

UNKNOWN = "Error: no dataset named typo; see `labeler datasets`"
runner = CliRunner()


def one_line_error(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def reviewed(store, tmp_path):
    """A store with one dataset, `photos`, its drafts written straight in (the caption job has
    tests of its own) and every draft accepted by an imported review; (the store, the file)."""
    make.write_many(tmp_path / "photos", 3, size=(48, 40))
    scan(store, [tmp_path / "photos"], workers=0)
    with store.write() as session:
        model = Model(content_hash="ab" * 32, name="tiny", family="show-tell")
        session.add(model)
        session.flush()
        session.add(CaptionRun(model_id=model.id, settings_key="k", settings={},
                               status="completed"))  # fmt: skip
        for image in session.query(Image).all():
            session.add(Caption(image_id=image.id, model_id=model.id, settings_key="k", rank=0,
                                text="a red square", log_likelihood=-1.0, num_tokens=3,
                                confidence=0.7, score=-1.0, token_logprobs=[-0.3] * 3,
                                margin=0.1, finished=True, repeated_ngram=False,
                                has_unknown=False))  # fmt: skip
    export_drafts(store, "csv", tmp_path / "reviewed.csv")
    with (tmp_path / "reviewed.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["outcome"] = "accepted"
    with (tmp_path / "reviewed.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert import_reviews(store, tmp_path / "reviewed.csv").added == 3
    return store, tmp_path / "reviewed.csv"


def test_train_from_the_store_names_an_unknown_dataset(reviewed, tmp_path):
    store, _ = reviewed
    args = ["train", "--from-store", "--dataset", "typo", "-o", str(tmp_path / "m.pt")]
    assert one_line_error([*args, "--db", store.url]) == UNKNOWN
    assert not (tmp_path / "m.pt").exists()


def test_every_command_names_an_unknown_dataset_the_same_way(reviewed, tmp_path):
    store, review_file = reviewed
    commands = {
        "export": ["export", "-f", "csv", "-o", str(tmp_path / "out.csv")],
        "stats": ["stats"],
        "report": ["report", "-o", str(tmp_path / "report")],
        "import": ["import", str(review_file)],
        "evaluate": ["evaluate", "--store", "--out", str(tmp_path / "eval")],
    }
    said = {
        name: one_line_error([*args, "--dataset", "typo", "--db", store.url])
        for name, args in commands.items()
    }
    said["datasets move"] = one_line_error(
        ["datasets", "move", "typo", str(tmp_path), "--db", store.url]
    )
    assert said == dict.fromkeys([*commands, "datasets move"], UNKNOWN)
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "report").exists()


def test_caption_names_an_unknown_dataset(reviewed, tmp_path):
    store, _ = reviewed
    checkpoint = tiny_checkpoint(tmp_path / "tiny.pt")
    args = ["caption", "--model", str(checkpoint), "--procs", "0", "--workers", "0"]
    line = one_line_error([*args, "--device", "cpu", "--dataset", "typo", "--db", store.url])
    assert line == UNKNOWN


def test_the_look_up_keeps_the_order_given_and_names_every_unknown_dataset(store, tmp_path):
    for name in ("b", "a"):
        scan(store, [make.rgb_png(tmp_path / name, "x.png").parent], dataset=name, workers=0)
    with store.session() as session:
        ids = image_store.dataset_ids(session, ["a", "b"])
        assert list(ids) == ["a", "b"]
        roots = image_store.dataset_roots(session, ["a"])
        assert roots == {ids["a"]: bytes(tmp_path / "a")}
        assert image_store.dataset_roots(session) == {
            ids["a"]: bytes(tmp_path / "a"), ids["b"]: bytes(tmp_path / "b"),
        }  # fmt: skip
        assert image_store.named_dataset(session, "b").id == ids["b"]
        with pytest.raises(InputError) as raised:
            image_store.dataset_ids(session, ["x", "a", "y"])
        assert str(raised.value) == "no dataset named x, y; see `labeler datasets`"
        with pytest.raises(InputError) as raised:
            image_store.named_dataset(session, "x")
        assert str(raised.value) == "no dataset named x; see `labeler datasets`"
