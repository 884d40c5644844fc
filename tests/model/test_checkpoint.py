from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from labeler.errors import ModelError
from labeler.model import checkpoint
from labeler.model.beam import beam_search
from labeler.model.checkpoint import load_checkpoint, save_checkpoint
from labeler.model.drafts import DecodeSettings
from labeler.model.vocab import Vocabulary

TRAINING = {
    "data": {"source": "flickr8k", "images": 6000},
    "epochs": 7,
    "best_epoch": 5,
    "val_loss": 2.875,
    "metrics": {"bleu4": 0.21, "cider": None},
    "notes": ["frozen backbone", ("tuple", 1)],
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model, tiny_vocab):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    digest = save_checkpoint(path, tiny_model, tiny_vocab, training=TRAINING)
    return path, digest


def variant(tmp_path, source: Path, data: bytes) -> Path:
    path = tmp_path / f"variant-{source.name}"
    path.write_bytes(data)
    return path


def test_round_trip_gives_identical_outputs(saved, tiny_model, tiny_vocab, tiny_images):
    path, digest = saved
    loaded = load_checkpoint(path)
    assert loaded.content_hash == digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.vocab == tiny_vocab and loaded.config == tiny_model.config
    assert loaded.preprocessing == tiny_model.config.preprocessing
    assert loaded.training == {**TRAINING, "notes": ["frozen backbone", ("tuple", 1)]}
    assert loaded.format_version == checkpoint.FORMAT_VERSION
    assert not loaded.model.training
    pixels = tiny_images.float() / 255.0
    captions = torch.tensor([tiny_vocab.encode("a dog runs", add_start_end=True)] * 6)
    settings = DecodeSettings(beam_size=3, max_len=10, n_best=3)
    outputs = []
    for model in (tiny_model, loaded.model):
        with torch.inference_mode():
            logits = model(pixels, captions, [5] * 6)
            state = model.init_state(model.encode(pixels))
            hyps = beam_search(
                model.step, state, 6, start_id=1, end_id=2, unk_id=3, settings=settings
            )
        outputs.append((logits, [[(h.token_ids, h.token_logprobs) for h in hs] for hs in hyps]))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert outputs[0][1] == outputs[1][1]


def test_same_model_same_hash_and_atomic_overwrite(saved, tmp_path, tiny_model, tiny_vocab):
    path, digest = saved
    again = tmp_path / "other-name.pt"
    assert save_checkpoint(again, tiny_model, tiny_vocab, training=TRAINING) == digest
    changed = save_checkpoint(again, tiny_model, tiny_vocab, training={**TRAINING, "epochs": 8})
    assert changed != digest and load_checkpoint(again).content_hash == changed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-name.pt"]  # no temp files left


def test_truncated_corrupt_and_random_files(saved, tmp_path):
    path, _ = saved
    data = path.read_bytes()
    truncated = variant(tmp_path, Path("truncated.pt"), data[: len(data) // 2])
    with pytest.raises(ModelError, match="is not a readable checkpoint"):
        load_checkpoint(truncated)
    flipped = bytearray(data)
    flipped[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8  # inside the weights
    with pytest.raises(ModelError, match="is corrupt: its record .* fails its checksum"):
        load_checkpoint(variant(tmp_path, Path("flipped.pt"), bytes(flipped)))
    with pytest.raises(ModelError, match="is not a readable checkpoint"):
        load_checkpoint(variant(tmp_path, Path("random.pt"), bytes(range(256)) * 40))
    with pytest.raises(ModelError, match="is not a readable checkpoint"):
        load_checkpoint(variant(tmp_path, Path("empty.pt"), b""))
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_foreign_files(tmp_path, tiny_model):
    plain = tmp_path / "state_dict.pt"
    torch.save(tiny_model.state_dict(), plain)
    with pytest.raises(ModelError, match="is not a labeler checkpoint"):
        load_checkpoint(plain)
    other = tmp_path / "other.pt"
    torch.save({"format": "something.else", "weights": torch.zeros(2)}, other)
    with pytest.raises(ModelError, match="is not a labeler checkpoint"):
        load_checkpoint(other)


class _Payload:
    """Unpickling this would create a file: loading must refuse it, not run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_loading_never_executes_code_from_the_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "format_version": 1, "x": _Payload(marker)}, path)
    with pytest.raises(ModelError, match="is not a readable checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def _resave(path: Path, out: Path, change) -> Path:
    data = torch.load(path, weights_only=True)
    change(data)
    torch.save(data, out)
    return out


def test_newer_version_and_inconsistent_contents(saved, tmp_path):
    path, _ = saved
    newer = _resave(path, tmp_path / "newer.pt", lambda d: d.update(format_version=2))
    with pytest.raises(ModelError, match="format version 2, newer than this labeler reads"):
        load_checkpoint(newer)
    missing = _resave(
        path, tmp_path / "missing.pt", lambda d: d["state_dict"].pop("decoder.out.bias")
    )
    with pytest.raises(ModelError, match="weights do not match its config"):
        load_checkpoint(missing)
    no_vocab = _resave(path, tmp_path / "novocab.pt", lambda d: d.pop("vocab"))
    with pytest.raises(ModelError, match="is incomplete"):
        load_checkpoint(no_vocab)
    small_vocab = _resave(path, tmp_path / "small.pt", lambda d: d["vocab"]["words"].pop())
    with pytest.raises(ModelError, match="is inconsistent"):
        load_checkpoint(small_vocab)


def test_save_rejects_what_could_not_be_loaded_back(tmp_path, tiny_model, tiny_vocab):
    with pytest.raises(ModelError, match=r"training.metrics.bleu must hold only .* got Tensor"):
        save_checkpoint(
            tmp_path / "m.pt",
            tiny_model,
            tiny_vocab,
            training={"metrics": {"bleu": torch.tensor(0.2)}},
        )
    with pytest.raises(ModelError, match="vocabulary has 5 words, the model expects"):
        save_checkpoint(tmp_path / "m.pt", tiny_model, Vocabulary(["x"]), training={})
    assert list(tmp_path.iterdir()) == []


def test_decoding_defaults_and_calibrator_are_optional_keys(
    saved, tmp_path, tiny_model, tiny_vocab
):
    path, _ = saved
    older = load_checkpoint(path)  # saved without them, as a checkpoint of an older labeler is
    assert older.decoding is None and older.calibrator is None
    assert "decoding" not in torch.load(path, weights_only=True)
    decoding = DecodeSettings(beam_size=2, max_len=9, n_best=2).to_dict()
    calibrator = {"format": "labeler.calibrator", "weights": [0.5, -1.0], "bias": 0.25}
    newer = tmp_path / "with-defaults.pt"
    save_checkpoint(newer, tiny_model, tiny_vocab, training=TRAINING, decoding=decoding,
                    calibrator=calibrator)  # fmt: skip
    loaded = load_checkpoint(newer)
    assert loaded.decoding == decoding and loaded.calibrator == calibrator
    with pytest.raises(ModelError, match="calibrator"):
        save_checkpoint(newer, tiny_model, tiny_vocab, training=TRAINING,
                        calibrator={"weights": torch.zeros(2)})  # fmt: skip
