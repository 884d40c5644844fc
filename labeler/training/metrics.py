"""Caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr, computed as the field computes them.

The numbers come from pycocoevalcap's scorers, called one by one rather than through its
COCOEvalCap, which also runs SPICE (a parser download on first use) and prints as it goes. Java is
needed twice: for the PTB tokenizer and for METEOR. Without Java, captions are tokenised by
`simple_tokenize` (lower case, punctuation dropped, which is what the PTB step does to ordinary
captions) and METEOR is skipped and reported in `Scores.skipped`: an evaluation without METEOR is
more useful than none.

The PTB tokenizer jar is run here (same jar, flags and punctuation list as pycocoevalcap's
PTBTokenizer) because that wrapper writes its temporary file into site-packages and lets the jar
print to our stderr. METEOR runs through pycocoevalcap's own Meteor class, but its Java process is
closed here as soon as scoring ends, and killed by a watchdog if it stops answering: the wrapper
only closes it in `__del__`, and a jar that stops answering would otherwise hang the caller.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer import ptbtokenizer

from labeler.errors import InputError

PTB_JAR = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
PTB_TIMEOUT_S = 600


@dataclass
class ImageScores:
    bleu_4: float
    cider: float
    rouge_l: float
    meteor: float | None  # None when METEOR was skipped


@dataclass
class Scores:
    bleu_1: float
    bleu_2: float
    bleu_3: float
    bleu_4: float
    rouge_l: float
    cider: float  # pycocoevalcap's CIDEr-D, the number COCO reports (not divided by 10)
    meteor: float | None  # None when skipped; the reason is in `skipped`
    num_images: int
    tokenizer: str  # "ptb" or "simple"
    per_image: dict[Hashable, ImageScores] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why, e.g. "java not found"
    notes: list[str] = field(default_factory=list)  # e.g. why the PTB tokenizer was not used

    def summary(self) -> dict[str, float]:
        """The corpus scores under the names papers use, leaving out skipped metrics."""
        names = {
            "BLEU-1": self.bleu_1,
            "BLEU-2": self.bleu_2,
            "BLEU-3": self.bleu_3,
            "BLEU-4": self.bleu_4,
            "METEOR": self.meteor,
            "ROUGE-L": self.rouge_l,
            "CIDEr": self.cider,
        }
        return {name: value for name, value in names.items() if value is not None}


class _ScorerFailed(Exception):
    """A Java helper failed; the message says why, and the metric is skipped rather than fatal."""


def find_java() -> str | None:
    """The `java` executable, or None when there is none that runs (tests monkeypatch this).

    Running `java -version` catches stubs that exist but cannot run, like macOS's /usr/bin/java
    without a JDK installed.
    """
    java = shutil.which("java")
    if java is None:
        return None
    try:
        subprocess.run([java, "-version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return java


def score_captions(
    references: Mapping[Hashable, Sequence[str]],
    hypotheses: Mapping[Hashable, str],
    *,
    use_java: bool = True,
    meteor_timeout: float | None = None,
) -> Scores:
    """Score one hypothesis per image against that image's references.

    Only images with a hypothesis are scored; each must have references. `use_java=False` skips
    what needs Java as if it were missing. `meteor_timeout` (seconds) bounds the METEOR run;
    by default 120 s plus 50 ms an image.
    """
    keys = _checked_keys(references, hypotheses)
    java = find_java() if use_java else None
    gts, res, tokenizer, notes = _tokenized(references, hypotheses, keys, java)
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    cider, cider_each = Cider().compute_score(gts, res)
    skipped: dict[str, str] = {}
    meteor, meteor_each = None, [None] * len(keys)
    if java is None:
        skipped["METEOR"] = "java not found" if use_java else "java not used"
    else:
        timeout = 120 + 0.05 * len(keys) if meteor_timeout is None else meteor_timeout
        try:
            meteor, meteor_each = _meteor(gts, res, timeout)
        except _ScorerFailed as err:
            skipped["METEOR"] = str(err)
    per_image = {
        key: ImageScores(
            float(bleu_each[3][i]),
            float(cider_each[i]),
            float(rouge_each[i]),
            None if meteor_each[i] is None else float(meteor_each[i]),
        )
        for i, key in enumerate(keys)
    }
    bleu_1, bleu_2, bleu_3, bleu_4 = map(float, bleu)
    return Scores(
        bleu_1=bleu_1,
        bleu_2=bleu_2,
        bleu_3=bleu_3,
        bleu_4=bleu_4,
        rouge_l=float(rouge),
        cider=float(cider),
        meteor=meteor,
        num_images=len(keys),
        tokenizer=tokenizer,
        per_image=per_image,
        skipped=skipped,
        notes=notes,
    )


def _checked_keys(
    references: Mapping[Hashable, Sequence[str]], hypotheses: Mapping[Hashable, str]
) -> list[Hashable]:
    if not hypotheses:
        raise InputError("no captions to score")
    unreferenced = [key for key in hypotheses if not references.get(key)]
    if unreferenced:
        raise InputError(
            f"{len(unreferenced)} captions have no reference captions (e.g. {unreferenced[0]!r})"
        )
    for key, text in hypotheses.items():
        refs = references[key]
        if not isinstance(text, str):
            raise InputError(f"the caption for {key!r} is not a string: {text!r}")
        if isinstance(refs, str) or not all(isinstance(ref, str) for ref in refs):
            raise InputError(f"the references for {key!r} are not a list of strings: {refs!r}")
    return list(hypotheses)


def _tokenized(
    references: Mapping[Hashable, Sequence[str]],
    hypotheses: Mapping[Hashable, str],
    keys: list[Hashable],
    java: str | None,
) -> tuple[dict[Hashable, list[str]], dict[Hashable, list[str]], str, list[str]]:
    """(gts, res, tokenizer name, notes) in the shapes the scorers take: key -> list of str."""
    texts = [hypotheses[key] for key in keys]
    counts = [len(references[key]) for key in keys]
    for key in keys:
        texts.extend(references[key])
    tokenizer, notes = "simple", []
    if java is not None:
        try:
            tokens, tokenizer = ptb_tokenize(texts, java), "ptb"
        except _ScorerFailed as err:
            notes.append(f"PTB tokenizer failed, used the simple tokenizer: {err}")
    if tokenizer == "simple":
        tokens = [simple_tokenize(text) for text in texts]
    res = {key: [tokens[i]] for i, key in enumerate(keys)}
    gts, start = {}, len(keys)
    for key, count in zip(keys, counts, strict=True):
        gts[key] = tokens[start : start + count]
        start += count
    return gts, res, tokenizer, notes


def ptb_tokenize(texts: list[str], java: str) -> list[str]:
    """Tokenise like pycocoevalcap's PTBTokenizer: one output line per caption, lower case,
    punctuation tokens dropped."""
    # Any Unicode line break would split a caption in two for the jar, so flatten whitespace.
    lines = [" ".join(str(text).split()) for text in texts]
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as f:
        f.write("\n".join(lines) + "\n")
    cmd = [
        java,
        "-cp",
        str(PTB_JAR),
        "edu.stanford.nlp.process.PTBTokenizer",
        "-preserveLines",
        "-lowerCase",
        "-encoding",
        "utf-8",
        f.name,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=PTB_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as err:
        raise _ScorerFailed(str(err)) from None
    finally:
        os.unlink(f.name)
    out = done.stdout.decode("utf-8", errors="replace").split("\n")
    if done.returncode != 0 or len(out) != len(lines) + 1:
        detail = done.stderr.decode("utf-8", errors="replace").strip()[-300:]
        raise _ScorerFailed(
            f"exit code {done.returncode}, {len(out) - 1} lines for "
            f"{len(lines)} captions {detail}".strip()
        )
    drop = set(ptbtokenizer.PUNCTUATIONS)
    return [" ".join(w for w in line.split() if w not in drop) for line in out[:-1]]


# Punctuation, except hyphens inside words and "." or "," inside numbers ("3.5", "1,000").
_NOT_WORD = re.compile(r"[^\w\s'.,-]|_|(?<!\w)-|-(?!\w)|(?<!\d)[.,]|[.,](?!\d)")
_CLITIC = re.compile(r"(n't|'s|'re|'ve|'ll|'d|'m)\b")
_CLITICS = {"n't", "'s", "'re", "'ve", "'ll", "'d", "'m"}


def simple_tokenize(text: str) -> str:
    """A Python stand-in for the PTB step: lower case, punctuation dropped, clitics split off
    ("man's" -> "man 's") and hyphenated words kept whole, as the PTB tokenizer does."""
    text = _CLITIC.sub(r" \1", _NOT_WORD.sub(" ", text.lower()))
    words = (w if w in _CLITICS else w.strip("'") for w in text.split())
    return " ".join(w for w in words if w)


def _meteor(
    gts: dict[Hashable, list[str]], res: dict[Hashable, list[str]], timeout: float
) -> tuple[float, list[float]]:
    """pycocoevalcap's METEOR with its Java process always closed, and killed after `timeout`."""
    # METEOR's protocol separates fields with "|||"; the wrapper cleans hypotheses only.
    gts = {k: [" ".join(r.replace("|", " ").split()) for r in refs] for k, refs in gts.items()}
    try:
        scorer = Meteor()
    except OSError as err:
        raise _ScorerFailed(f"could not start METEOR: {err}") from None
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        scorer.meteor_p.kill()  # the blocked readline then sees end of file

    watchdog = threading.Timer(timeout, stop)
    watchdog.start()
    try:
        score, scores = scorer.compute_score(gts, res)
    except (OSError, ValueError) as err:  # a dead jar: broken pipe, or an empty line to parse
        if timed_out.is_set():
            raise _ScorerFailed(f"METEOR timed out after {timeout:g} s") from None
        raise _ScorerFailed(f"METEOR failed: {_close(scorer) or err}") from None
    finally:
        watchdog.cancel()
        watchdog.join()  # so no thread still holds the scorer when this returns
        _close(scorer)
    return float(score), [float(s) for s in scores]


def _close(scorer: Meteor) -> str:
    """End METEOR's process and return the tail of what it wrote to stderr."""
    process = scorer.meteor_p
    if process.stdin and not process.stdin.closed:
        with contextlib.suppress(OSError):  # the jar died with unread input in the pipe
            process.stdin.close()
    process.kill()
    process.wait()
    tail = ""
    for stream in (process.stdout, process.stderr):
        if stream and not stream.closed:
            if stream is process.stderr:
                tail = stream.read().decode("utf-8", errors="replace").strip()[-300:]
            stream.close()
    # compute_score holds the wrapper's lock when it fails; its __del__ takes the same lock,
    # so it would block the garbage collector forever.
    if scorer.lock.locked():
        scorer.lock.release()
    return tail
