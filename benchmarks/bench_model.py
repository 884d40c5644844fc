"""Benchmark: batched beam search against one image at a time, and decoder against encoder time.

Builds Show and Tell with random weights (nothing is downloaded) and times, in alternating rounds
on the same already-decoded image tensors, keeping each method's best round:
  encoder   backbone + projection for the whole batch
  batched   beam search for the whole batch at once (init state + every step)
  per-image the same beam search run once per image, as the reference implementations do
Ratios are the result; absolute times on a shared machine are noise. A random model rarely emits
the end token, so every caption runs to max_len: the decoder's worst case.

Goals: batched >= 5x faster than per-image; decoder <= 1/4 of the encoder's time.

    python benchmarks/bench_model.py           # resnet50, vocab 10000, hidden 512, beam 3, batch 32
    python benchmarks/bench_model.py --quick   # resnet18, vocab 2000, batch 8: a smoke run whose
                                               # ratios are not the goals' (smaller batch, encoder)
    python benchmarks/bench_model.py --threads 0 --batch 64 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

import torch  # noqa: E402

from labeler.model.beam import beam_search  # noqa: E402
from labeler.model.drafts import DecodeSettings  # noqa: E402
from labeler.model.show_tell import ModelConfig, ShowAndTell  # noqa: E402

START, END, UNK, PAD = 1, 2, 3, 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--vocab", type=int, default=10_000, help="vocabulary size")
    p.add_argument("--hidden", type=int, default=512, help="LSTM hidden size")
    p.add_argument("--embed", type=int, default=512, help="embedding size")
    p.add_argument("--beam", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--size", type=int, default=224, help="image side in pixels")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; best one counts")
    # One thread by default: on a machine whose cores are busy with other work, torch's OpenMP
    # threads wait on each other and small ops (a decoding step) get many times slower, which
    # would measure the contention rather than the code.
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: every usable core)")
    p.add_argument("--quick", action="store_true", help="resnet18, vocab 2000, batch 8, 2 rounds")
    args = p.parse_args(argv)
    if args.quick:
        args.backbone, args.vocab, args.batch, args.rounds = "resnet18", 2000, 8, 2
    return args


def decode(model: ShowAndTell, embedding: torch.Tensor, settings: DecodeSettings):
    state = model.init_state(embedding)
    return beam_search(
        model.step,
        state,
        embedding.size(0),
        start_id=START,
        end_id=END,
        unk_id=UNK,
        settings=settings,
        banned_ids=(PAD, START),
    )


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def one_at_a_time(model, embedding, settings):
    return [decode(model, embedding[i : i + 1], settings)[0] for i in range(embedding.size(0))]


def measure(model, images, settings, rounds):
    """Best time of each method over alternating rounds, and the last round's captions."""
    best = {"encoder": float("inf"), "batched": float("inf"), "per-image": float("inf")}
    with torch.inference_mode():
        decode(model, model.encode(images[:2]), settings)  # warm-up: allocate, pick kernels
        for _ in range(rounds):
            t, embedding = timed(model.encode, images)
            best["encoder"] = min(best["encoder"], t)
            t, together = timed(decode, model, embedding, settings)
            best["batched"] = min(best["batched"], t)
            t, alone = timed(one_at_a_time, model, embedding, settings)
            best["per-image"] = min(best["per-image"], t)
    return best, together, alone


def main(argv=None) -> None:
    args = parse_args(argv)
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = ModelConfig(
        backbone=args.backbone,
        embed_size=args.embed,
        hidden_size=args.hidden,
        vocab_size=args.vocab,
    )
    model = ShowAndTell(config).eval()
    images = torch.randn(args.batch, 3, args.size, args.size)
    settings = DecodeSettings(beam_size=args.beam, max_len=args.max_len)
    best, together, alone = measure(model, images, settings, args.rounds)
    ids = [[[h.token_ids for h in hs] for hs in run] for run in (together, alone)]
    steps = max(len(h.token_ids) + h.finished for hs in together for h in hs)
    print(
        f"{args.backbone}, vocab {args.vocab}, hidden {args.hidden}, beam {args.beam}, "
        f"batch {args.batch}, {args.size}px, max_len {args.max_len} ({steps} steps run), "
        f"{threads} threads, best of {args.rounds} rounds"
    )
    for name, seconds in best.items():
        print(f"  {name:<10} {seconds:8.3f} s  {args.batch / seconds:8.1f} images/s")
    speedup = best["per-image"] / best["batched"]
    share = best["batched"] / best["encoder"]
    print(f"  batched vs per-image: {speedup:.1f}x faster (goal >= 5x)")
    print(f"  decoder / encoder:    {share:.2f} (goal <= 0.25)")
    print(f"  batched and per-image captions identical: {'yes' if ids[0] == ids[1] else 'NO'}")


if __name__ == "__main__":
    main()
