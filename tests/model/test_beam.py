"""Beam search against a hand-written next-word table: exact sequences and probabilities.

The table (probabilities of the next token given the words so far; any prefix not listed ends):

    ()      a .5   b .3   c .2
    a       b .5   c .4   </s> .1
    b       </s> .7   c .3
    c       </s> .9   a .1
    a b     c .8   </s> .2
    a c     </s> .6   b .4
    b c     </s> .55  a .45
    c a     </s> 1
    a b c   </s> .9   a .1
    a c b   c .7   </s> .3

Every complete caption and its probability: b .21, c .18, a b c .18, a c .12, a c b c .056,
a .05, a b .05, b c .0495, b c a .0405, a c b .024, c a .02, a b c a .02 (they sum to 1).
Greedy takes a, b, c, </s> (.18) and misses b (.21); beam 2 finds it. With beam 3, "c </s>"
(.18) is drawn at the second step but ranks 4th, outside the beam, so it never finishes: the
search keeps end candidates only when they rank within the beam width, like fairseq and HF.
max_len counts steps (words plus the end token), so with max_len 1 nothing can finish.
"""

from __future__ import annotations

import math

import pytest
import torch

from labeler.model.beam import beam_search
from labeler.model.drafts import DecodeSettings

ID = {"<pad>": 0, "<start>": 1, "</s>": 2, "<unk>": 3, "a": 4, "b": 5, "c": 6}
WORD = {i: w for w, i in ID.items()}
V = len(ID)

TABLE = {
    "": {"a": 0.5, "b": 0.3, "c": 0.2},
    "a": {"b": 0.5, "c": 0.4, "</s>": 0.1},
    "b": {"</s>": 0.7, "c": 0.3},
    "c": {"</s>": 0.9, "a": 0.1},
    "a b": {"c": 0.8, "</s>": 0.2},
    "a c": {"</s>": 0.6, "b": 0.4},
    "b c": {"</s>": 0.55, "a": 0.45},
    "c a": {"</s>": 1.0},
    "a b c": {"</s>": 0.9, "a": 0.1},
    "a c b": {"c": 0.7, "</s>": 0.3},
}


def table_search(tables, settings, *, calls=None):
    """Beam search where image i draws its next words from tables[i]."""

    def step(tokens, state):
        history = torch.cat([state, tokens.unsqueeze(1)], dim=1)  # (N, t + 2): image, <start>, ...
        rows = []
        for image, _start, *words in history.tolist():
            probs = tables[image].get(" ".join(WORD[w] for w in words), {"</s>": 1.0})
            row = torch.full((V,), float("-inf"))
            for word, p in probs.items():
                row[ID[word]] = math.log(p)
            rows.append(row)
        if calls is not None:
            calls.append(len(rows))
        return torch.stack(rows), history

    init = torch.arange(len(tables)).unsqueeze(1)  # (B, 1): the state starts with the image index
    return beam_search(
        step,
        init,
        len(tables),
        start_id=1,
        end_id=2,
        unk_id=3,
        settings=settings,
        banned_ids=(0, 1),
    )


def render(hyps):
    """Hypotheses -> [(caption, [token probabilities])], '</s>' marking finished ones."""
    out = []
    for h in hyps:
        words = [WORD[i] for i in h.token_ids] + (["</s>"] if h.finished else [])
        out.append((" ".join(words), [round(math.exp(x), 6) for x in h.token_logprobs]))
    return out


EXPECTED = {
    (1, 1): [("a", [0.5])],
    (1, 2): [("a b", [0.5, 0.5])],
    (1, 3): [("a b c", [0.5, 0.5, 0.8])],
    (1, 4): [("a b c </s>", [0.5, 0.5, 0.8, 0.9])],
    (2, 1): [("a", [0.5]), ("b", [0.3])],
    (2, 2): [("b </s>", [0.3, 0.7]), ("a b", [0.5, 0.5])],
    (2, 3): [("b </s>", [0.3, 0.7]), ("a c </s>", [0.5, 0.4, 0.6])],
    (2, 4): [("b </s>", [0.3, 0.7]), ("a b c </s>", [0.5, 0.5, 0.8, 0.9])],
    (3, 1): [("a", [0.5]), ("b", [0.3]), ("c", [0.2])],
    (3, 2): [("b </s>", [0.3, 0.7]), ("a b", [0.5, 0.5]), ("a c", [0.5, 0.4])],
    (3, 3): [("b </s>", [0.3, 0.7]), ("a c </s>", [0.5, 0.4, 0.6]), ("a b c", [0.5, 0.5, 0.8])],
    (3, 4): [
        ("b </s>", [0.3, 0.7]),
        ("a b c </s>", [0.5, 0.5, 0.8, 0.9]),
        ("a c </s>", [0.5, 0.4, 0.6]),
    ],
}


@pytest.mark.parametrize(("beam", "max_len"), sorted(EXPECTED))
def test_table_exact_sequences_and_probabilities(beam, max_len):
    [hyps] = table_search([TABLE], DecodeSettings(beam_size=beam, max_len=max_len, n_best=beam))
    assert render(hyps) == EXPECTED[beam, max_len]
    for h, (caption, probs) in zip(hyps, EXPECTED[beam, max_len], strict=True):
        assert h.finished == caption.endswith("</s>")
        assert h.log_likelihood == pytest.approx(sum(math.log(p) for p in probs), abs=1e-6)
        assert h.score == pytest.approx(h.log_likelihood, abs=1e-5)  # no length penalty


def test_table_nothing_finished_returns_unfinished_flagged():
    [hyps] = table_search([TABLE], DecodeSettings(beam_size=3, max_len=1, n_best=3))
    assert [h.finished for h in hyps] == [False, False, False]
    assert [h.log_likelihood for h in hyps] == pytest.approx([math.log(x) for x in (0.5, 0.3, 0.2)])


def test_table_early_stop_same_result_fewer_steps():
    """Past 4 steps no live beam can beat the finished ones: stop, with the same answer."""
    for beam in (1, 2, 3):
        calls = []
        [hyps] = table_search(
            [TABLE], DecodeSettings(beam_size=beam, max_len=12, n_best=beam), calls=calls
        )
        assert render(hyps) == EXPECTED[beam, 4]
        assert len(calls) == 4


def test_table_length_penalty_lets_the_longer_caption_win():
    plain = DecodeSettings(beam_size=2, max_len=4, n_best=2)
    gnmt = DecodeSettings(beam_size=2, max_len=4, n_best=2, length_penalty=1.0)
    [short_first] = table_search([TABLE], plain)
    [long_first] = table_search([TABLE], gnmt)
    assert [c for c, _ in render(short_first)] == ["b </s>", "a b c </s>"]
    assert [c for c, _ in render(long_first)] == ["a b c </s>", "b </s>"]
    # score = log_likelihood / ((5 + num_tokens) / 6) ** alpha, num_tokens counting </s>
    assert long_first[0].score == pytest.approx(math.log(0.18) / (9 / 6), abs=1e-6)
    assert long_first[1].score == pytest.approx(math.log(0.21) / (7 / 6), abs=1e-6)
    assert long_first[0].log_likelihood == pytest.approx(math.log(0.18), abs=1e-6)


def test_table_min_len_blocks_early_end():
    [hyps] = table_search([TABLE], DecodeSettings(beam_size=2, max_len=4, n_best=2, min_len=2))
    assert render(hyps) == [("a b c </s>", [0.5, 0.5, 0.8, 0.9]), ("a c </s>", [0.5, 0.4, 0.6])]


STUTTER = {  # "a b a b" is likely; its second "a b" repeats a bigram
    "": {"a": 1.0},
    "a": {"b": 0.9, "</s>": 0.1},
    "a b": {"a": 0.9, "</s>": 0.1},
    "a b a": {"b": 0.9, "</s>": 0.1},
}
UNKNOWN = {"": {"<unk>": 0.6, "a": 0.4}}


def test_table_repeated_ngram_and_unknown_blocking():
    settings = DecodeSettings(beam_size=1, max_len=5)
    free = table_search([STUTTER, UNKNOWN], settings)
    blocked = table_search(
        [STUTTER, UNKNOWN],
        DecodeSettings(beam_size=1, max_len=5, block_repeat_ngram=2, block_unk=True),
    )
    assert render(free[0]) == [("a b a b </s>", [1.0, 0.9, 0.9, 0.9, 1.0])]
    assert render(free[1]) == [("<unk> </s>", [0.6, 1.0])]
    # blocked tokens are removed, not renormalised: the model's own probabilities are kept
    assert render(blocked[0]) == [("a b a </s>", [1.0, 0.9, 0.9, 0.1])]
    assert render(blocked[1]) == [("a </s>", [0.4, 1.0])]


def test_table_batch_equals_one_at_a_time():
    settings = DecodeSettings(beam_size=3, max_len=4, n_best=3)
    tables = [TABLE, STUTTER, UNKNOWN, TABLE]
    batched = table_search(tables, settings)
    alone = [table_search([t], settings)[0] for t in tables]
    assert [render(h) for h in batched] == [render(h) for h in alone]
