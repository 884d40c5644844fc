import gc
import os
import subprocess
import sys
import threading

import psutil
import pytest
from pycocoevalcap.meteor.meteor import Meteor

import labeler.training.metrics as metrics
from labeler.errors import InputError
from labeler.training.metrics import ptb_tokenize, score_captions, simple_tokenize

JAVA = metrics.find_java()
# Off CI a machine without Java skips the real-Java tests; on CI (which has Java) they must run.
needs_java = pytest.mark.skipif(
    JAVA is None and not os.environ.get("CI"), reason="java not installed"
)

REFERENCES = {
    "red": [
        "A large red circle to the left of a small blue square.",
        "a small blue square to the right of a big red circle",
    ],
    "star": ["a yellow star above a green cross", "a green cross below a yellow star"],
    "dog": ["A brown dog runs on the grass."],
}
SAME = {
    "red": "a large red circle to the left of a small blue square",
    "star": "a yellow star above a green cross",
}
DIFFERENT = {"red": "two people walking", "star": "an old wooden boat"}


def child_processes() -> list[str]:
    """'pid status' of this process's live or zombie children that the test started:
    children from before it (a fork server other tests left running) are not its doing."""
    return [child for child in _children() if child.split()[0] not in _BEFORE]


_BEFORE: set[str] = set()


@pytest.fixture(autouse=True, scope="module")
def _children_before():
    _BEFORE.update(child.split()[0] for child in _children())


def _children() -> list[str]:
    """This process's children as "pid status" (psutil: on every system, not only where /proc
    exists, so the test cannot pass vacuously)."""
    found = []
    for child in psutil.Process().children():
        try:
            found.append(f"{child.pid} {child.status()}")
        except psutil.NoSuchProcess:
            continue
    return found


def test_a_draft_identical_to_its_reference_scores_one():
    scores = score_captions(REFERENCES, SAME, use_java=False)
    assert [scores.bleu_1, scores.bleu_2, scores.bleu_3, scores.bleu_4] == pytest.approx(
        [1, 1, 1, 1], abs=1e-6
    )
    assert scores.rouge_l == pytest.approx(1)
    assert scores.cider > 0
    assert scores.per_image["red"].bleu_4 == pytest.approx(1, abs=1e-6)
    assert scores.num_images == 2 and scores.tokenizer == "simple"


def test_a_completely_different_draft_scores_about_zero():
    scores = score_captions(REFERENCES, DIFFERENT, use_java=False)
    assert scores.bleu_1 == pytest.approx(0, abs=1e-6)
    assert scores.bleu_4 == pytest.approx(0, abs=1e-6)
    assert scores.rouge_l == 0 and scores.cider == 0


def test_meteor_is_skipped_and_said_to_be_when_java_is_missing(monkeypatch):
    monkeypatch.setattr(metrics, "find_java", lambda: None)
    scores = score_captions(REFERENCES, SAME)
    assert scores.skipped == {"METEOR": "java not found"}
    assert scores.meteor is None and scores.per_image["red"].meteor is None
    assert scores.tokenizer == "simple"
    assert list(scores.summary()) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"]


def test_bad_inputs_are_input_errors():
    with pytest.raises(InputError, match="no captions to score"):
        score_captions(REFERENCES, {})
    with pytest.raises(InputError, match="1 captions have no reference captions.*'cat'"):
        score_captions(REFERENCES, {"red": "a", "cat": "a cat"}, use_java=False)
    with pytest.raises(InputError, match="not a string"):
        score_captions(REFERENCES, {"red": ["a", "b"]}, use_java=False)
    with pytest.raises(InputError, match="not a list of strings"):
        score_captions({"red": "a red circle"}, {"red": "a red circle"}, use_java=False)


def test_an_empty_draft_scores_zero_without_crashing():
    scores = score_captions(REFERENCES, {"red": "", "star": "..."}, use_java=False)
    assert scores.bleu_4 == pytest.approx(0, abs=1e-6) and scores.rouge_l == 0


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A man's dog, running!", "a man 's dog running"),
        ("Black-and-white photo -- of a CAT.", "black-and-white photo of a cat"),
        ("Don't stop: 3.5 kg; 1,000 birds?", "do n't stop 3.5 kg 1,000 birds"),
        ("the dogs' toys", "the dogs toys"),
    ],
)
def test_simple_tokenizer(text, tokens):
    assert simple_tokenize(text) == tokens


@pytest.fixture(scope="module")
def with_java():
    """One run with METEOR: its jar takes seconds to start, so the tests share it."""
    if JAVA is None and not os.environ.get("CI"):
        pytest.skip("java not installed")
    references = REFERENCES | {"blank": ["a cat ||| on a mat"]}
    hypotheses = {"red": SAME["red"], "star": DIFFERENT["star"], "dog": "a dog runs", "blank": ""}
    return score_captions(references, hypotheses)


@needs_java
def test_with_java_all_seven_scores_come_from_the_reference_tools(with_java):
    assert with_java.skipped == {} and with_java.tokenizer == "ptb"
    assert list(with_java.summary()) == [
        "BLEU-1",
        "BLEU-2",
        "BLEU-3",
        "BLEU-4",
        "METEOR",
        "ROUGE-L",
        "CIDEr",
    ]
    same, different = with_java.per_image["red"], with_java.per_image["star"]
    assert same.bleu_4 == pytest.approx(1, abs=1e-6) and same.rouge_l == pytest.approx(1)
    assert same.meteor > 0.9 and same.cider > 0
    assert different.bleu_4 < 1e-6 and different.meteor < 0.05 and different.cider == 0
    assert 0 < with_java.per_image["dog"].meteor < same.meteor
    assert with_java.per_image["blank"].meteor == 0


@needs_java
def test_meteor_leaves_no_process_behind(with_java):
    assert with_java.meteor is not None
    assert child_processes() == []


@needs_java
def test_the_fallback_tokenizer_agrees_with_ptb_on_ordinary_captions():
    captions = [text for refs in REFERENCES.values() for text in refs] + [
        "A man's hat, on a dog.",
        "Two black-and-white cats; sleeping!",
        "Don't cross the road",
    ]
    assert ptb_tokenize(captions, JAVA) == [simple_tokenize(c) for c in captions]


class FakeMeteor(Meteor):
    """Meteor's protocol code around a process that never answers, or dies at once."""

    script = "import time; time.sleep(60)"
    instances: list["FakeMeteor"] = []

    def __init__(self):
        self.instances.append(self)
        self.meteor_p = subprocess.Popen(
            [sys.executable, "-c", self.script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lock = threading.Lock()


class DyingMeteor(FakeMeteor):
    script = "import sys; sys.stderr.write('Error: could not reserve 2G'); sys.exit(1)"


def assert_closed(scorer: Meteor) -> None:
    assert scorer.meteor_p.returncode is not None  # killed and reaped: no zombie
    # The wrapper's __del__ takes this lock; compute_score still held it when it failed.
    assert not scorer.lock.locked()
    gc.collect()
    assert child_processes() == []


@needs_java
def test_a_meteor_that_stops_answering_is_killed_and_skipped(monkeypatch):
    monkeypatch.setattr(metrics, "Meteor", FakeMeteor)
    scores = score_captions(REFERENCES, SAME, meteor_timeout=1)
    assert scores.skipped == {"METEOR": "METEOR timed out after 1 s"}
    assert scores.bleu_4 == pytest.approx(1, abs=1e-6)
    assert_closed(FakeMeteor.instances.pop())


@needs_java
def test_a_meteor_that_dies_is_skipped_with_its_error(monkeypatch):
    monkeypatch.setattr(metrics, "Meteor", DyingMeteor)
    scores = score_captions(REFERENCES, SAME)
    assert scores.skipped["METEOR"] == "METEOR failed: Error: could not reserve 2G"
    assert_closed(FakeMeteor.instances.pop())
