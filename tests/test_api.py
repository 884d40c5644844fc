"""The Python API as a notebook user calls it: `import labeler`, open a store, run the steps,
and get the drafts as a DataFrame or streamed records."""

from __future__ import annotations

import subprocess
import sys

import imagefactory as make
import pandas as pd
import pytest
from captionkit import tiny_checkpoint

import labeler
from labeler.errors import InputError, StoreError

IMAGES = 6


@pytest.fixture
def drafted(store_url, tmp_path):
    make.write_many(tmp_path / "photos", IMAGES, size=(48, 40))
    model = tiny_checkpoint(tmp_path / "tiny.pt")
    store = labeler.open_store(store_url)
    scanned = store.scan("photos", tmp_path / "photos", workers=1)
    assert scanned.by_status["ok"] == IMAGES
    result = store.caption(model, beam_size=3, max_len=8, n_best=2, procs=0, workers=0,
                           batch_size=4)  # fmt: skip
    assert result.images == IMAGES
    yield store
    store.close()


def test_drafts_come_as_a_dataframe_worst_p_accept_first(drafted):
    frame = drafted.drafts().to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert len(frame) == IMAGES
    assert list(frame.columns) == list(labeler.api.COLUMNS)
    assert frame["p_accept"].is_monotonic_increasing
    assert frame["text"].str.len().min() > 0
    assert frame["review_outcome"].isna().all()
    middle = float(frame["p_accept"].median())
    fewer = drafted.drafts(max_p_accept=middle).to_pandas()
    assert 0 < len(fewer) < IMAGES and (fewer["p_accept"] <= middle).all()


def test_records_stream_the_same_drafts_with_their_alternatives(drafted):
    frame = drafted.drafts(n_best=2, sort="path").to_pandas()
    records = list(drafted.drafts(n_best=2, sort="path").records())
    assert [r["path"] for r in records] == list(frame["path"]) == sorted(frame["path"])
    assert [r["caption_id"] for r in records] == list(frame["caption_id"])
    assert all(len(r["alternatives"]) == 1 for r in records)
    assert records[0]["alternatives"][0]["rank"] == 1
    rows = list(drafted.drafts(sort="path"))
    assert [row.text for row in rows] == [r["text"] for r in records]


def test_export_import_and_stats_round_trip(drafted, tmp_path):
    exported = drafted.export(tmp_path / "drafts.csv", format="csv")
    assert exported.count == IMAGES
    frame = pd.read_csv(tmp_path / "drafts.csv", keep_default_na=False)
    frame["outcome"] = ["accepted"] * 3 + ["rejected"] * (IMAGES - 3)
    frame.to_csv(tmp_path / "reviewed.csv", index=False)
    imported = drafted.import_reviews(tmp_path / "reviewed.csv", reviewer="ana")
    assert imported.added == IMAGES
    accepted = drafted.drafts(review=["accepted"]).to_pandas()
    assert len(accepted) == 3 and set(accepted["reviewer"]) == {"ana"}
    assert len(drafted.drafts(review=["unreviewed"]).to_pandas()) == 0
    stats = drafted.stats()
    assert stats.outcomes == {"accepted": 3, "rejected": IMAGES - 3}
    listed = drafted.datasets()
    assert [(d["name"], d["images"]) for d in listed] == [("photos", {"ok": IMAGES})]


def test_errors_are_the_librarys_one_line_errors(tmp_path, store_url):
    with pytest.raises(StoreError, match="no store at"):
        labeler.open_store(tmp_path / "absent.db", create=False)
    store = labeler.open_store(store_url)
    with pytest.raises(InputError, match="no drafts"):
        store.drafts().to_pandas()
    with pytest.raises(InputError, match="between 0 and 1"):
        store.drafts(max_p_accept=2)
    store.close()


def test_import_labeler_stays_light():
    heavy = "{'torch', 'pandas', 'sqlalchemy'}"
    code = f"import sys, labeler; print(sorted({heavy} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
