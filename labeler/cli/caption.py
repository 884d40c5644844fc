"""`labeler caption`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from labeler.cli.app import (
    BeamOption,
    BlockRepeatsOption,
    BlockUnkOption,
    DbOption,
    JsonOption,
    LengthPenaltyOption,
    MaxLenOption,
    MinLenOption,
    NBestOption,
    app,
    console,
    decoding_for,
    err_console,
    open_store_for,
    print_json,
    progress,
)  # fmt: skip


@app.command("caption")
def caption_cli(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model checkpoint file.")],
    dataset: Annotated[
        list[str] | None, typer.Option(help="Only this dataset (repeatable); default: all.")
    ] = None,
    beam: BeamOption = None,
    max_len: MaxLenOption = None,
    min_len: MinLenOption = None,
    length_penalty: LengthPenaltyOption = None,
    n_best: NBestOption = None,
    block_repeats: BlockRepeatsOption = None,
    block_unk: BlockUnkOption = None,
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 32,
    procs: Annotated[
        int | None,
        typer.Option(
            help="Model processes on a CPU, each decoding its own batches (default: "
            "one per core, up to 8); 0 runs the model in this process."
        ),
    ] = None,  # fmt: skip
    workers: Annotated[
        int | None,
        typer.Option(
            help="With the model in this process (a GPU, or --procs 0): loader "
            "processes decoding images; 0 decodes inline."
        ),
    ] = None,  # fmt: skip
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    engine: Annotated[
        str,
        typer.Option(
            help="local: this machine; ray: Ray actors on a cluster (pip install "
            "'labeler[ray]'), one model each, on GPUs when the cluster has them."
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="With --engine ray: the cluster (default: $RAY_ADDRESS, else a local "
            "Ray on this machine)."
        ),
    ] = None,  # fmt: skip
    ray_actors: Annotated[
        int | None,
        typer.Option(
            help="With --engine ray: copies of the model (default: one per GPU of the "
            "cluster, else one per CPU)."
        ),
    ] = None,  # fmt: skip
    limit: Annotated[int | None, typer.Option(help="Stop after about this many images.")] = None,
    recaption: Annotated[
        bool, typer.Option(help="Redo images that already have drafts from this model.")
    ] = False,
    lease: Annotated[
        float,
        typer.Option(
            help="Seconds this worker's claims outlive it where its death cannot be seen (another "
            "host on SQLite); renewed every quarter of it while it runs. A worker killed on this "
            "host, or on PostgreSQL, frees its claims at once; others' claims keep their lease."
        ),
    ] = 60.0,  # caption.DEFAULT_LEASE_S
    db: DbOption = None,
    json_output: JsonOption = False,
) -> None:
    """Draft captions for every readable image that has none from this model and settings.

    Safe to interrupt (Ctrl-C finishes the current batch) and to run in several processes or
    machines on one store: each image is captioned once; a killed worker's images are taken over
    at once, and a worker left waiting for another's says whom it waits for and until when.
    Decoding options not given take the model's own defaults (saved in the checkpoint by labeler
    train).
    """
    from labeler.caption.engines import open_model
    from labeler.caption.job import caption_images
    from labeler.caption.ray_engine import options_for

    ray = options_for(engine, address=ray_address, actors=ray_actors, device=device)
    store = open_store_for(db)
    # built only if it runs here
    captioner = open_model(model, device=device, procs=procs, remote=ray is not None)
    settings = decoding_for(
        captioner, beam=beam, max_len=max_len, min_len=min_len, length_penalty=length_penalty,
        n_best=n_best, block_repeats=block_repeats, block_unk=block_unk,
    )  # fmt: skip
    with progress("Captioning", json_output) as report, _StopOnInterrupt() as stop:
        result = caption_images(
            store, captioner, settings=settings, datasets=dataset, batch_size=batch_size,
            workers=workers, procs=procs, limit=limit, recaption=recaption, lease_s=lease,
            ray=ray, should_stop=stop.requested, progress=_Progress(report),
        )  # fmt: skip
    if json_output:
        print_json(_caption_json(result))
    else:
        _render_caption(result)
    if result.images and result.unfinished == result.images:
        err_console.print(
            f"Warning: every draft used all {settings.max_len} decoding steps without ending, so "
            f"they are cut short; give a larger --max-len.", markup=False, soft_wrap=True,
        )  # fmt: skip


class _Progress:
    """The bar's count and note; a wait for other workers also gets a line on stderr when it
    begins or the workers change, with a terminal or without, `--json` or not (stdout stays
    the JSON), saying whom it waits for and until when."""

    def __init__(self, report) -> None:  # type: ignore[no-untyped-def]
        self.report = report
        self.said: tuple[str, ...] = ()

    def __call__(self, p) -> None:  # type: ignore[no-untyped-def]  # caption.CaptionProgress
        note = f"{p.failed} failed"
        if p.waiting is not None:
            until = p.waiting.until.astimezone().strftime("%H:%M:%S")
            note = f"waiting for {', '.join(p.waiting.holders)} (claims until {until})"
            if p.waiting.holders != self.said:
                err_console.print(_waiting_line(p.waiting), markup=False, soft_wrap=True)
        self.said = p.waiting.holders if p.waiting is not None else ()
        self.report(p.done, note, p.total)


def _waiting_line(wait) -> str:  # type: ignore[no-untyped-def]  # caption.Wait
    until = wait.until.astimezone().isoformat(timespec="seconds")
    several = len(wait.holders) > 1
    has, runs = ("they have", "they run") if several else ("it has", "it runs")
    return (
        f"Waiting for {', '.join(wait.holders)} to finish the last {wait.contents} content(s) "
        f"{has} claimed: claimed until {until}, renewed while {runs} (Ctrl-C stops waiting)."
    )


class _StopOnInterrupt:
    """The first Ctrl-C asks the job to stop after its current batch; the second aborts."""

    def __enter__(self):  # type: ignore[no-untyped-def]
        import signal

        self._asked = False
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # type: ignore[no-untyped-def]
        if self._asked:
            raise KeyboardInterrupt
        self._asked = True
        # Straight to the file descriptor: the signal may land anywhere, even inside an import
        # rich is making for a print, which a rich print here would re-enter half-done.
        os.write(2, b"Stopping after the current batch (Ctrl-C again to abort now)...\n")

    def requested(self) -> bool:
        return self._asked

    def __exit__(self, *exc: object) -> None:
        import signal

        signal.signal(signal.SIGINT, self._previous)


def _caption_json(result) -> dict:  # type: ignore[no-untyped-def]
    return {
        "run_id": result.run_id, "model": result.model, "settings_key": result.settings_key,
        **result.counts(), "interrupted": result.interrupted,
        "waits": [w.to_dict() for w in result.waits],
        "elapsed_s": round(result.elapsed_s, 3), "timings": result.timings,
    }  # fmt: skip


def _ray_line(timings: dict) -> str:  # type: ignore[type-arg]
    """The Ray engine, its actors and the time per stage (decode and model summed over the
    actors; waiting for them and writing the store, on the driver)."""
    where = f"{timings['actors']} actor(s) on {timings['nodes']} node(s), {timings['device']}"
    stages = ", ".join(
        f"{name} {timings[key]:.1f} s"
        for name, key in (("start", "start_s"), ("decode", "decode_s"), ("model", "model_s"),
                          ("waiting for the actors", "wait_s"), ("store", "store_s"))
        if key in timings
    )  # fmt: skip
    return f"Engine ray ({timings.get('address') or 'local'}): {where}; {stages}."


def _render_caption(result) -> None:  # type: ignore[no-untyped-def]
    rate = result.images / result.elapsed_s if result.elapsed_s else 0.0
    means = [f"{m:.3f}" if m is not None else "-"
             for m in (result.mean_p_accept, result.mean_confidence)]  # fmt: skip
    table = Table("images", "unique contents", "copied", "failed", "flagged", "mean p_accept",
                  "mean confidence",
                  title=f"Run {result.run_id}: {result.model} ({result.settings_key})")  # fmt: skip
    table.add_row(str(result.images), str(result.contents), str(result.copied),
                  str(sum(result.failed.values())), str(result.flagged), *means)  # fmt: skip
    console.print(table)
    for reason, n in result.failed.most_common():
        console.print(f"  failed {n}: {reason}", markup=False)
    console.print(f"{result.elapsed_s:.1f} s, {rate:.1f} images/s")
    if result.timings.get("engine") == "ray":
        console.print(_ray_line(result.timings), markup=False)
    if result.waits:
        workers = ", ".join(sorted({h for w in result.waits for h in w.holders}))
        console.print(f"Waited {result.timings['waited_s']:.1f} s for {workers}.", markup=False)
    if result.interrupted:
        console.print("Interrupted: the drafts written so far are kept; run the same command "
                      "again to finish.")  # fmt: skip
