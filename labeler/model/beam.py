"""Batched beam search over a `step` callable: every image's beams advance in one tensor op.

The search knows nothing about the model. `step(tokens (B*K,), state) -> (log_probs (B*K, V),
state)` is all it calls; `state` is any tuple/list/dict of tensors whose first dimension is B*K
(or B for the initial state), and the search reorders it along that dimension. All of its own
state is shaped (batch, beam, ...), and nothing loops over images inside the step loop.

The algorithm, per image (the tests hold a plain per-image reference of exactly this):
- At each step every live hypothesis is extended by every token; tokens that are not allowed
  (banned ids, the unknown token when blocked, the end token before `min_len` words, a token that
  would repeat an n-gram when blocking) get log-probability -inf: masking, not branching. The
  other log-probabilities are the model's own and are not renormalised.
- The 2K best candidates are drawn by cumulative log-likelihood, so that even if the top K all
  end, K live ones remain (end tokens cannot starve the beam). An end candidate that ranks within
  the top K leaves the beam as a finished hypothesis, the way it would have taken a beam slot;
  the best K candidates that do not end become the live beams.
- Finished hypotheses are kept in a pool of the K best by ranking score. With the length penalty
  off, the score is the log-likelihood; with alpha > 0 it is GNMT's (Wu et al., 2016)
      score = log_likelihood / ((5 + num_tokens) / 6) ** alpha,
  applied where a hypothesis finishes (`_penalty`); num_tokens counts the end token. Live beams
  are ranked by raw log-likelihood, which is what they would be divided by anyway.
- An image is done when its pool is full and no live beam can still beat its worst entry: log-
  probabilities are <= 0, so a live beam's best reachable score is its log-likelihood divided
  by the largest penalty, at max_len tokens. The loop ends when every image is done, or after
  max_len steps; early stopping never changes the result.
- Hypotheses that never emitted the end token are returned, flagged unfinished, after the
  finished ones when fewer than K finished (possibly all of them): no image is left without an
  answer (the popular tutorial crashes here).

At the first step all K beams hold the same (empty) hypothesis; only beam 0 starts with
log-likelihood 0 and the others with -inf, or the beam would fill with K copies of one caption.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from labeler.model.drafts import DecodeSettings

Step = Callable[[torch.Tensor, object], tuple[torch.Tensor, object]]
NEG_INF = float("-inf")


@dataclass(frozen=True)
class Hypothesis:
    token_ids: list[int]  # the words, without start and end tokens
    token_logprobs: list[float]  # one per word, then the end token's when finished
    score: float  # the ranking score the search used
    finished: bool  # emitted the end token

    @property
    def log_likelihood(self) -> float:
        return math.fsum(self.token_logprobs)


def beam_search(
    step: Step,
    init_state,
    batch_size: int,
    *,
    start_id: int,
    end_id: int,
    unk_id: int | None = None,
    settings: DecodeSettings = DecodeSettings(),
    banned_ids: Iterable[int] = (),
    device: torch.device | str | None = None,
) -> list[list[Hypothesis]]:
    """For each image, up to `beam_size` hypotheses, best first: finished ones by score, then
    unfinished ones by log-likelihood. Callers keep `settings.n_best` of them; the next one
    says how close the runner-up came. `banned_ids` (pad, start) are never generated. The
    search runs on `device`, by default the initial state's.
    """
    B, K, L, alpha = batch_size, settings.beam_size, settings.max_len, settings.length_penalty
    device = device or _state_device(init_state)
    state = _map_state(lambda s: s.repeat_interleave(K, dim=0), init_state)  # (B*K, ...)
    live = _Live.start(B, K, L, start_id, device)
    pool = _Pool(B, K, L, device)
    banned = [*banned_ids, *([unk_id] if settings.block_unk and unk_id is not None else [])]
    masks = None
    for t in range(L):
        log_probs, state = step(live.tokens, state)  # (B*K, V)
        if masks is None:
            masks = _token_masks(log_probs.size(-1), banned, end_id, device)
        log_probs = _mask(log_probs, live.seqs, t, settings, masks[t < settings.min_len])
        cand = _Candidates.draw(live, log_probs.view(B, K, -1), t)  # the 2K best, (B, 2K, ...)
        is_end = cand.tok == end_id  # (B, 2K)
        rank = torch.arange(is_end.size(1), device=device)  # (2K,)
        finishing = is_end & (rank < K) & (cand.lp > NEG_INF)  # (B, 2K)
        # Ranking score of a finished hypothesis: its log-likelihood over the GNMT length
        # penalty of its t words + end token (1.0 when alpha is 0, i.e. off).
        score = torch.where(finishing, cand.lp / _penalty(t + 1, alpha), NEG_INF)  # (B, 2K)
        pool.add(score, cand.seqs, cand.tlps, num_words=t)
        live, rows = _Live.survivors(cand, is_end, K, t + 1)
        state = _map_state(lambda s, r=rows: s.index_select(0, r), state)  # (B*K, ...)
        if _all_done(live, pool, _penalty(L, alpha)):
            break
    return _collect(pool, live, alpha)


def _penalty(num_tokens: int, alpha: float) -> float:
    """GNMT length penalty ((5 + |Y|) / 6) ** alpha; 1.0 (no penalty) when alpha is 0."""
    return ((5.0 + num_tokens) / 6.0) ** alpha


def _token_masks(V: int, banned: list[int], end_id: int, device) -> tuple[torch.Tensor, ...]:
    """(V,) masks of the tokens never allowed: [0] from min_len words on, [1] before (+ end)."""
    blocked = torch.zeros(V, dtype=torch.bool, device=device)
    blocked[torch.tensor(banned, dtype=torch.long, device=device)] = True
    before_min = blocked.clone()
    before_min[end_id] = True
    return blocked, before_min


def _mask(log_probs, seqs, t: int, settings: DecodeSettings, blocked) -> torch.Tensor:
    """log_probs (N, V) with disallowed next tokens at -inf; seqs (B, K, L), t words filled."""
    log_probs = log_probs.float().masked_fill(blocked, NEG_INF)  # (V,) broadcast over (N, V)
    n = settings.block_repeat_ngram
    if n and t >= n:
        words = seqs.view(-1, seqs.size(2))[:, :t]  # (N, t)
        log_probs = log_probs.masked_fill(_repeat_mask(words, n, log_probs.size(1)), NEG_INF)
    return log_probs


def _all_done(live: _Live, pool: _Pool, largest_penalty: float) -> bool:
    """No image's live beams can still beat the worst of its full pool (or it has none left)."""
    best_live = live.lp.max(dim=1).values  # (B,)
    worst_kept = pool.score[:, -1]  # (B,) -inf until the pool is full
    done = (best_live == NEG_INF) | (best_live / largest_penalty <= worst_kept)
    return bool(done.all())


def _repeat_mask(seqs: torch.Tensor, n: int, V: int) -> torch.Tensor:
    """(N, V) True where the token would complete an n-gram that already occurs in seqs (N, t)."""
    windows = seqs.unfold(1, n, 1)  # (N, t-n+1, n): every n-gram so far
    prefix = seqs[:, seqs.size(1) - (n - 1) :]  # (N, n-1): the last n-1 words
    match = (windows[:, :, :-1] == prefix.unsqueeze(1)).all(dim=2)  # (N, t-n+1)
    hits = torch.zeros(seqs.size(0), V, device=seqs.device)  # (N, V)
    hits.scatter_add_(1, windows[:, :, -1], match.float())  # duplicates add up, never overwrite
    return hits > 0


def _gather_beams(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, K, L), idx (B, M) -> x[b, idx[b, m]] as (B, M, L)."""
    return x.gather(1, idx.unsqueeze(2).expand(-1, -1, x.size(2)))


def _state_device(state) -> torch.device:
    found = []
    _map_state(found.append, state)
    return found[0].device if found else torch.device("cpu")


def _map_state(fn, state):
    """Apply fn to every tensor in a nested tuple/list/dict state."""
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(_map_state(fn, s) for s in state)
    if isinstance(state, dict):
        return {k: _map_state(fn, v) for k, v in state.items()}
    return state


class _Pool:
    """The K best finished hypotheses per image, sorted by score, -inf where empty."""

    def __init__(self, B: int, K: int, L: int, device) -> None:
        self.score = torch.full((B, K), NEG_INF, device=device)  # (B, K)
        self.num_words = torch.zeros((B, K), dtype=torch.long, device=device)  # (B, K)
        self.seqs = torch.zeros((B, K, L), dtype=torch.long, device=device)  # (B, K, L)
        self.tlps = torch.zeros((B, K, L), device=device)  # (B, K, L) words then end token

    def add(self, score, seqs, tlps, *, num_words: int) -> None:
        """Merge candidates score (B, M), seqs and tlps (B, M, L); -inf scores are not added."""
        K = self.score.size(1)
        words = torch.full_like(score, num_words, dtype=torch.long)  # (B, M)
        self.score, best = torch.cat([self.score, score], dim=1).topk(K, dim=1)  # (B, K)
        self.num_words = torch.cat([self.num_words, words], dim=1).gather(1, best)
        self.seqs = _gather_beams(torch.cat([self.seqs, seqs], dim=1), best)
        self.tlps = _gather_beams(torch.cat([self.tlps, tlps], dim=1), best)


@dataclass
class _Candidates:
    """The 2K best one-token extensions of the live beams, best first."""

    lp: torch.Tensor  # (B, 2K) cumulative log-likelihood
    src: torch.Tensor  # (B, 2K) the live beam each extends
    tok: torch.Tensor  # (B, 2K) the token it adds
    seqs: torch.Tensor  # (B, 2K, L) words, the new token at position t
    tlps: torch.Tensor  # (B, 2K, L) their log-probs

    @classmethod
    def draw(cls, live: _Live, log_probs: torch.Tensor, t: int) -> _Candidates:
        """live beams (B, K), masked log_probs (B, K, V) -> the 2K best extensions."""
        B, K, V = log_probs.shape
        cand = (live.lp.unsqueeze(2) + log_probs).view(B, K * V)  # (B, K*V)
        lp, idx = cand.topk(min(2 * K, K * V), dim=1)  # (B, 2K), sorted best first
        src, tok = idx // V, idx % V  # (B, 2K)
        seqs, tlps = _gather_beams(live.seqs, src), _gather_beams(live.tlps, src)  # (B, 2K, L)
        seqs[:, :, t] = tok
        tlps[:, :, t] = log_probs.view(B, K * V).gather(1, idx)
        return cls(lp, src, tok, seqs, tlps)


@dataclass
class _Live:
    """The live (unfinished) beams, in rank order; dead slots have lp -inf."""

    lp: torch.Tensor  # (B, K) cumulative log-likelihood
    seqs: torch.Tensor  # (B, K, L) words so far, `steps` of them
    tlps: torch.Tensor  # (B, K, L) their log-probs
    tokens: torch.Tensor  # (B*K,) each beam's last token: the next step's input
    steps: int

    @classmethod
    def start(cls, B: int, K: int, L: int, start_id: int, device) -> _Live:
        # The K beams start identical: only beam 0 is live, or the beam would hold K copies.
        lp = torch.full((B, K), NEG_INF, device=device)  # (B, K)
        lp[:, 0] = 0.0
        seqs = torch.zeros((B, K, L), dtype=torch.long, device=device)  # (B, K, L)
        tokens = torch.full((B * K,), start_id, dtype=torch.long, device=device)  # (B*K,)
        return cls(lp, seqs, torch.zeros((B, K, L), device=device), tokens, 0)

    @classmethod
    def survivors(cls, cand: _Candidates, is_end, K: int, steps: int) -> tuple[_Live, torch.Tensor]:
        """The K best candidates that do not end, and the state rows (B*K,) they continue."""
        keep = torch.argsort(is_end.to(torch.int8), dim=1, stable=True)[:, :K]  # (B, K)
        lp = cand.lp.gather(1, keep).masked_fill(is_end.gather(1, keep), NEG_INF)  # (B, K)
        B = keep.size(0)
        rows = torch.arange(B, device=keep.device).unsqueeze(1) * K + cand.src.gather(1, keep)
        live = cls(
            lp,
            _gather_beams(cand.seqs, keep),  # (B, K, L)
            _gather_beams(cand.tlps, keep),  # (B, K, L)
            cand.tok.gather(1, keep).view(-1),  # (B*K,)
            steps,
        )
        return live, rows.view(-1)  # rows: (B*K,)


def _collect(pool: _Pool, live: _Live, alpha: float) -> list[list[Hypothesis]]:
    """Tensors -> per-image lists: finished by score, then unfinished to fill up to K."""
    K, n, denom = live.lp.size(1), live.steps, _penalty(live.steps, alpha)
    out = []
    pooled = zip(
        pool.score.tolist(),
        pool.num_words.tolist(),
        pool.seqs.tolist(),
        pool.tlps.tolist(),
        strict=True,
    )
    alive = zip(live.lp.tolist(), live.seqs.tolist(), live.tlps.tolist(), strict=True)
    for (p_score, p_words, p_seqs, p_tlps), (b_lp, b_seqs, b_tlps) in zip(
        pooled, alive, strict=True
    ):
        hyps = [
            Hypothesis(seq[:w], tlps[: w + 1], score, True)
            for score, w, seq, tlps in zip(p_score, p_words, p_seqs, p_tlps, strict=True)
            if score > NEG_INF
        ]
        for lp, seq, tlps in zip(b_lp, b_seqs, b_tlps, strict=True):  # in rank order
            if len(hyps) == K or lp == NEG_INF:
                break
            hyps.append(Hypothesis(seq[:n], tlps[:n], lp / denom, False))
        out.append(hyps)
    return out
