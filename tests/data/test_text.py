"""Character-level text (data/text.py): the tokenizer a char-level run saves reads back in transformers."""

import pytest
from transformers import AutoTokenizer

from jaxbatch.data import text


def test_a_saved_char_tokenizer_is_an_hf_tokenizer_with_the_same_ids(tmp_path):
    sample = "First Citizen:\nBefore we proceed, hear me speak.\n\n  Ünïcödé ☃ \t tabs\r\n"
    tok = text.CharTokenizer.from_texts([sample])
    tok.save_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    ids = hf(sample, add_special_tokens=False).input_ids
    assert len(hf) == len(tok) and ids == tok.encode(sample)
    assert hf.decode(ids) == sample == tok.decode(ids)
    assert text.CharTokenizer.load(tmp_path).chars == tok.chars
    with pytest.raises(Exception):  # a character outside the vocabulary is refused, never dropped
        hf("xyz", add_special_tokens=False)


def test_a_corpus_is_split_a_file_at_a_time_as_one_list_would_be(tmp_path, monkeypatch):
    """A corpus of several files is counted a file at a time, then each split reads only the files its documents
    lie in, a file at a time (never the whole corpus in memory), giving `split`'s documents of the whole list."""
    for f in range(3):
        (tmp_path / f"part{f}.txt").write_text("\n\n".join(f"file {f} document {d}" for d in range(10)))
    read = []
    real = text._file_docs
    monkeypatch.setattr(text, "_file_docs", lambda path, empty_ok=True: read.append(path.name) or real(path, empty_ok))
    got = text.splits(text.split_files(tmp_path))
    assert read == ["part0.txt", "part1.txt", "part2.txt"]  # counted
    read.clear()
    assert next(got["train"]) == ("", "file 0 document 0") and read == ["part0.txt"]
    validation = list(got["validation"])  # the last 3 of 30 documents: only the last file is read
    assert validation == [("", f"file 2 document {d}") for d in (7, 8, 9)] and read == ["part0.txt", "part2.txt"]
    everything = [doc for f in range(3) for doc in real(tmp_path / f"part{f}.txt")]
    assert [("", "file 0 document 0"), *got["train"]] == text.split(everything)["train"]


def test_documents_read_a_piece_at_a_time_are_the_whole_texts_paragraphs():
    """Blank-line separated documents found a piece at a time (a .txt file read 16 MB at a time) are those of the
    whole text, wherever the pieces are cut (through "\\r\\n", between the two newlines of a separator, in a run of
    blank lines): 3,000 random texts."""
    import random

    rng = random.Random(0)
    alphabet = ["a", "b", " ", "\n", "\r", "\r\n", "\n\n", "é"]
    for _ in range(3000):
        whole = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        want = [("", d.strip()) for d in whole.replace("\r\n", "\n").split("\n\n") if d.strip()]
        cuts = sorted(rng.sample(range(len(whole) + 1), min(len(whole) + 1, rng.randint(0, 6))))
        pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)])]
        assert list(text._paragraphs(iter(pieces))) == want, (whole, pieces)
