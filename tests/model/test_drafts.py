from __future__ import annotations

import math
import subprocess
import sys

import pytest

from labeler.errors import InputError
from labeler.model.drafts import DecodeSettings, Draft, ImageDrafts, has_repeated_ngram


def test_settings_key_is_pinned_short_and_changes_with_any_field():
    # Pinned: the key is part of every stored draft's identity, so it must never drift.
    assert DecodeSettings().key() == "2827c9cc0219"
    assert DecodeSettings().to_dict() == {
        "beam_size": 3,
        "max_len": 20,
        "min_len": 1,
        "length_penalty": 0.0,
        "n_best": 1,
        "block_repeat_ngram": 0,
        "block_unk": False,
    }
    variants = [
        DecodeSettings(beam_size=5),
        DecodeSettings(max_len=16),
        DecodeSettings(min_len=2),
        DecodeSettings(length_penalty=0.7),
        DecodeSettings(n_best=3),
        DecodeSettings(block_repeat_ngram=3),
        DecodeSettings(block_unk=True),
    ]
    keys = {DecodeSettings().key(), *(v.key() for v in variants)}
    assert len(keys) == 8
    assert DecodeSettings(beam_size=5).key() == DecodeSettings(beam_size=5).key()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beam_size": 0},
        {"max_len": 0},
        {"min_len": -1},
        {"length_penalty": -0.5},
        {"n_best": 4},
        {"n_best": 0},
        {"block_repeat_ngram": -1},
    ],
)
def test_settings_reject_bad_values(kwargs):
    with pytest.raises(InputError, match="invalid decoding settings"):
        DecodeSettings(**kwargs)


def test_draft_build_derives_totals_and_flags():
    logprobs = [math.log(0.5), math.log(0.25), math.log(0.5)]
    draft = Draft.build(["a", "dog"], [4, 5], logprobs, finished=True, score=-1.0, unk_id=3)
    assert draft.text == "a dog"
    assert draft.num_tokens == 3
    assert draft.log_likelihood == pytest.approx(math.log(1 / 16))
    assert draft.confidence == pytest.approx((1 / 16) ** (1 / 3))
    assert not draft.repeated_ngram and not draft.has_unknown
    unfinished = Draft.build(
        ["a", "<unk>"], [4, 3], logprobs[:2], finished=False, score=0, unk_id=3
    )
    assert unfinished.num_tokens == 2 and unfinished.has_unknown and not unfinished.finished
    with pytest.raises(ValueError):
        Draft.build(["a"], [4], logprobs, finished=True, score=0.0, unk_id=3)


def test_repeated_ngram_flag_definition():
    assert has_repeated_ngram(["a", "dog", "dog", "runs"])  # a word twice in a row
    assert has_repeated_ngram(
        ["a", "man", "on", "a", "bike", "on", "a", "bike"]
    )  # "on a bike" twice
    bigrams_only = ["a", "man", "on", "a", "bike", "and", "a", "woman", "on", "a", "horse"]
    assert not has_repeated_ngram(bigrams_only)
    assert not has_repeated_ngram([])


def test_image_drafts_best():
    d = Draft.build(["a"], [4], [-0.1, -0.2], finished=True, score=-0.3, unk_id=3)
    assert ImageDrafts(drafts=[d], margin=None).best is d


def test_drafts_module_does_not_import_torch():
    code = "import sys, labeler.model.drafts, labeler.model.vocab; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_overridden_keeps_what_is_not_given_and_n_best_follows_a_smaller_beam():
    base = DecodeSettings(beam_size=3, max_len=22, n_best=2)
    assert base.overridden() == base
    assert base.overridden(max_len=None, beam_size=None) == base
    assert base.overridden(max_len=9) == DecodeSettings(beam_size=3, max_len=9, n_best=2)
    assert base.overridden(beam_size=1) == DecodeSettings(beam_size=1, max_len=22, n_best=1)
    assert base.overridden(beam_size=5).n_best == 2
    with pytest.raises(InputError, match="n-best"):
        base.overridden(beam_size=1, n_best=2)
