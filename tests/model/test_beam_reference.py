"""Batched beam search against a plain per-image reference and against brute-force enumeration.

The "model" is a random next-token distribution for every prefix, seeded by the prefix, so the
same prefix always gets the same distribution in the batched search, the reference and the
enumeration.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from labeler.model.beam import beam_search
from labeler.model.drafts import DecodeSettings

PAD, START, END, UNK = 0, 1, 2, 3
NEG_INF = float("-inf")


def random_logprobs(seed: int, words: tuple[int, ...], V: int) -> list[float]:
    g = torch.Generator().manual_seed(hash((seed, words)) % (2**31))
    return torch.log_softmax(torch.randn(V, generator=g) * 2.0, dim=0).tolist()


def batched(seeds, V, settings, banned=(PAD, START)):
    def step(tokens, state):
        history = torch.cat([state, tokens.unsqueeze(1)], dim=1)  # (N, t + 2)
        rows = [random_logprobs(seed, tuple(words), V) for seed, _start, *words in history.tolist()]
        return torch.tensor(rows), history

    init = torch.tensor(seeds).unsqueeze(1)  # (B, 1)
    hyps = beam_search(
        step,
        init,
        len(seeds),
        start_id=START,
        end_id=END,
        unk_id=UNK,
        settings=settings,
        banned_ids=banned,
    )
    return [
        [(tuple(h.token_ids), h.finished, h.token_logprobs, h.score) for h in hs] for hs in hyps
    ]


def _allowed(words, w, t, s: DecodeSettings, banned) -> bool:
    if w in banned or (s.block_unk and w == UNK) or (w == END and t < s.min_len):
        return False
    n = s.block_repeat_ngram
    if n and w != END and len(words) >= n:
        grams = {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
        return (*words[len(words) - n + 1 :], w) not in grams
    return True


def reference(seed, V, s: DecodeSettings, banned=(PAD, START)):
    """The algorithm in beam.py's docstring, one image, plain Python lists."""
    K, L, alpha = s.beam_size, s.max_len, s.length_penalty
    live = [((), 0.0, ())]  # (words, log-likelihood, token log-probs)
    pool = []  # (score, words, token log-probs)
    for t in range(L):
        cands = []
        for words, ll, tlps in live:
            for w, x in enumerate(random_logprobs(seed, words, V)):
                if _allowed(words, w, t, s, banned) and x > NEG_INF:
                    cands.append((ll + x, words + (w,), tlps + (x,)))
        cands.sort(key=lambda c: -c[0])
        live = []
        for rank, (ll, words, tlps) in enumerate(cands[: 2 * K]):
            if words[-1] == END:
                if rank < K:
                    pool.append((ll / ((5 + t + 1) / 6) ** alpha, words[:-1], tlps))
            elif len(live) < K:
                live.append((words, ll, tlps))
        pool = sorted(pool, key=lambda p: -p[0])[:K]
    out = [(words, True, list(tlps), score) for score, words, tlps in pool]
    for words, ll, tlps in live[: K - len(out)]:
        out.append((words, False, list(tlps), ll / ((5 + L) / 6) ** alpha))
    return out


def assert_same(got, want):
    assert [(w, f) for w, f, _, _ in got] == [(w, f) for w, f, _, _ in want]
    for (_, _, g_lp, g_score), (_, _, w_lp, w_score) in zip(got, want, strict=True):
        assert g_lp == pytest.approx(w_lp, abs=1e-5)
        assert g_score == pytest.approx(w_score, abs=1e-4)


def test_batched_equals_reference_on_random_settings():
    rng = random.Random(7)
    for trial in range(40):
        V = rng.choice([5, 7, 9])
        beam = rng.randint(1, 4)
        settings = DecodeSettings(
            beam_size=beam,
            max_len=rng.randint(1, 6),
            min_len=rng.randint(0, 2),
            length_penalty=rng.choice([0.0, 0.6, 1.5]),
            n_best=rng.randint(1, beam),
            block_repeat_ngram=rng.choice([0, 0, 1, 2]),
            block_unk=rng.random() < 0.5,
        )
        seeds = [trial * 10 + i for i in range(rng.randint(1, 4))]
        got = batched(seeds, V, settings)
        for seed, image_hyps in zip(seeds, got, strict=True):
            assert_same(image_hyps, reference(seed, V, settings))


def enumerate_all(seed, V, max_len, alpha, words=(4, 5)):
    """Every caption the search could return with a beam wide enough to never prune."""
    finished, unfinished = [], []
    for n in range(1, max_len + 1):
        for seq in itertools.product(words, repeat=n):
            tlps = [random_logprobs(seed, seq[:i], V)[w] for i, w in enumerate(seq)]
            if n == max_len:
                unfinished.append((seq, False, tlps, sum(tlps) / ((5 + n) / 6) ** alpha))
            else:
                tlps.append(random_logprobs(seed, seq, V)[END])
                finished.append((seq, True, tlps, sum(tlps) / ((5 + n + 1) / 6) ** alpha))
    return sorted(finished, key=lambda h: -h[3]) + sorted(unfinished, key=lambda h: -h[3])


@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_wide_beam_equals_brute_force_enumeration(alpha):
    """Vocabulary {a, b} + end, 4 steps: 14 finished and 16 unfinished captions, all kept."""
    V = 6
    settings = DecodeSettings(beam_size=64, max_len=4, n_best=64, length_penalty=alpha)
    seeds = [11, 12, 13]
    got = batched(seeds, V, settings, banned=(PAD, START, UNK))
    for seed, image_hyps in zip(seeds, got, strict=True):
        want = enumerate_all(seed, V, 4, alpha)
        assert len(want) == 30
        assert_same(image_hyps, want)
