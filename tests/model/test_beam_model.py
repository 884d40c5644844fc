"""Beam search on a real (random, seeded) Show and Tell model."""

from __future__ import annotations

import math

import pytest
import torch

from labeler.model.beam import beam_search
from labeler.model.drafts import DecodeSettings


def search(model, vocab, features, settings):
    with torch.inference_mode():
        state = model.init_state(model.encode(features))
        return beam_search(
            model.step,
            state,
            features.size(0),
            start_id=vocab.start_id,
            end_id=vocab.end_id,
            unk_id=vocab.unk_id,
            settings=settings,
            banned_ids=(vocab.pad_id, vocab.start_id),
        )


@pytest.fixture(scope="module")
def features(tiny_features):
    return tiny_features  # (6, 512): the decoder runs on cached-style backbone features


SETTINGS = [
    DecodeSettings(beam_size=1, max_len=12),
    DecodeSettings(beam_size=3, max_len=12, n_best=3),
    DecodeSettings(beam_size=4, max_len=6, n_best=4, length_penalty=0.7, block_repeat_ngram=3),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["greedy", "beam3", "beam4-lp-ngram"])
def test_batched_equals_one_image_at_a_time(tiny_model, tiny_vocab, features, settings):
    together = search(tiny_model, tiny_vocab, features, settings)
    for i, hyps in enumerate(together):
        [alone] = search(tiny_model, tiny_vocab, features[i : i + 1], settings)
        assert [h.token_ids for h in hyps] == [h.token_ids for h in alone]
        assert [h.finished for h in hyps] == [h.finished for h in alone]
        for a, b in zip(hyps, alone, strict=True):
            assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)


def test_the_random_model_is_a_fair_test(tiny_model, tiny_vocab, features):
    """Guard for the tests here: images get different captions, some finish and some do not."""
    hyps = search(
        tiny_model, tiny_vocab, features, DecodeSettings(beam_size=3, max_len=12, n_best=3)
    )
    assert len({tuple(h[0].token_ids) for h in hyps}) >= 3
    flags = {h.finished for image in hyps for h in image}
    assert flags == {True, False}


def test_greedy_is_the_argmax_chain(tiny_model, tiny_vocab, features):
    [[hyp]] = search(tiny_model, tiny_vocab, features[:1], DecodeSettings(beam_size=1, max_len=12))
    with torch.inference_mode():
        state = tiny_model.init_state(tiny_model.encode(features[:1]))
        token, words = torch.tensor([tiny_vocab.start_id]), []
        for _ in range(12):
            log_probs, state = tiny_model.step(token, state)
            log_probs[0, [tiny_vocab.pad_id, tiny_vocab.start_id]] = -math.inf
            if not words:  # min_len 1
                log_probs[0, tiny_vocab.end_id] = -math.inf
            token = log_probs.argmax(dim=1)
            if token.item() == tiny_vocab.end_id:
                break
            words.append(token.item())
    assert hyp.token_ids == words


def test_log_likelihood_is_what_teacher_forcing_gives(tiny_model, tiny_vocab, features):
    """Each token log-prob equals the model's for that caption; the sum is the log-likelihood."""
    results = search(
        tiny_model, tiny_vocab, features, DecodeSettings(beam_size=3, max_len=10, n_best=3)
    )
    for i, hyps in enumerate(results):
        for h in hyps:
            ids = [tiny_vocab.start_id, *h.token_ids] + ([tiny_vocab.end_id] if h.finished else [])
            captions = torch.tensor([ids])
            with torch.inference_mode():
                forced = tiny_model.token_log_probs(features[i : i + 1], captions, [len(ids)])
            assert len(h.token_logprobs) == len(ids) - 1
            assert h.token_logprobs == pytest.approx(forced[0].tolist(), abs=1e-4)
            assert h.log_likelihood == math.fsum(h.token_logprobs)
            assert h.log_likelihood == pytest.approx(forced.sum().item(), abs=1e-4)


def test_n_best_sorted_and_distinct(tiny_model, tiny_vocab, features):
    settings = DecodeSettings(beam_size=5, max_len=8, n_best=5, length_penalty=0.5)
    for hyps in search(tiny_model, tiny_vocab, features, settings):
        assert len({tuple(h.token_ids) for h in hyps}) == len(hyps)
        finished = [h.score for h in hyps if h.finished]
        unfinished = [h.score for h in hyps if not h.finished]
        assert finished == sorted(finished, reverse=True)
        assert unfinished == sorted(unfinished, reverse=True)
        assert [h.finished for h in hyps] == sorted((h.finished for h in hyps), reverse=True)
