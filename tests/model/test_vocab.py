from __future__ import annotations

import pytest

from labeler.errors import ModelError
from labeler.model.vocab import SPECIALS, Vocabulary


def test_tokenize_lowercases_splits_punctuation_keeps_inner_apostrophes_and_hyphens():
    text = "A Dog's red T-shirt, on the café's NAÏVE (old) bench!"
    assert Vocabulary.tokenize(text) == [
        "a",
        "dog's",
        "red",
        "t-shirt",
        ",",
        "on",
        "the",
        "café's",
        "naïve",
        "(",
        "old",
        ")",
        "bench",
        "!",
    ]


def test_tokenize_non_ascii_scripts_and_normalisation():
    decomposed = "cafe\u0301"  # e + combining acute: the same word as "café" once NFC-normalised
    assert Vocabulary.tokenize(decomposed) == Vocabulary.tokenize("café") == ["café"]
    assert Vocabulary.tokenize("Ein Hund läuft über die Straße") == [
        "ein",
        "hund",
        "läuft",
        "über",
        "die",
        "straße",
    ]
    assert Vocabulary.tokenize("小狗 在 草地上。") == ["小狗", "在", "草地上", "。"]
    assert Vocabulary.tokenize("  \t\n ") == []


def test_build_orders_by_count_then_alphabet_with_min_count_and_max_size():
    captions = ["a dog. a cat.", "a dog runs", "zebra"]
    vocab = Vocabulary.build(captions)
    assert vocab.itos == [*SPECIALS, "a", ".", "dog", "cat", "runs", "zebra"]
    assert Vocabulary.build(captions, min_count=2).itos == [*SPECIALS, "a", ".", "dog"]
    assert Vocabulary.build(captions, max_size=6).itos == [*SPECIALS, "a", "."]
    assert [vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id] == [0, 1, 2, 3]


def test_encode_decode_round_trip_with_punctuation_and_non_ascii():
    caption = "Ein Hund läuft über die Straße, naïvely; the dog's café!"
    vocab = Vocabulary.build([caption])
    ids = vocab.encode(caption, add_start_end=True)
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert vocab.unk_id not in ids
    assert vocab.decode(ids) == Vocabulary.tokenize(caption)
    assert Vocabulary.detokenize(vocab.decode(ids)) == (
        "ein hund läuft über die straße, naïvely; the dog's café!"
    )


def test_unknown_words_and_decode_stops_at_end():
    vocab = Vocabulary.build(["a dog"])
    assert vocab.encode("a purple dog") == [vocab.stoi["a"], vocab.unk_id, vocab.stoi["dog"]]
    ids = [vocab.start_id, vocab.stoi["a"], vocab.pad_id, vocab.end_id, vocab.stoi["dog"]]
    assert vocab.decode(ids) == ["a"]
    assert vocab.decode(vocab.encode("a purple dog")) == ["a", "<unk>", "dog"]


def test_detokenize_attaches_punctuation():
    assert Vocabulary.detokenize(["a", "dog", "(", "brown", ")", ",", "runs", "."]) == (
        "a dog (brown), runs."
    )
    assert Vocabulary.detokenize(["a", "dog"]) == "a dog"


def test_to_dict_from_dict_round_trip_and_validation():
    vocab = Vocabulary.build(["Straße café, dog"])
    data = vocab.to_dict()
    assert data == {"specials": list(SPECIALS), "words": [",", "café", "dog", "straße"]}
    assert Vocabulary.from_dict(data) == vocab
    with pytest.raises(ModelError, match="special tokens"):
        Vocabulary.from_dict({"specials": ["<pad>"], "words": []})
    with pytest.raises(ModelError, match="list of strings"):
        Vocabulary.from_dict({"specials": list(SPECIALS), "words": [1, 2]})
    with pytest.raises(ModelError, match="duplicate"):
        Vocabulary(["dog", "dog"])
