import pytest

from conftest import SHARED_DATA
from jaxbatch.data import conll
from jaxbatch.errors import DataError


@pytest.mark.parametrize("iob1,iob2", [
    (["I-PER", "I-PER", "O"], ["B-PER", "I-PER", "O"]),
    (["I-PER", "B-PER", "I-PER"], ["B-PER", "B-PER", "I-PER"]),  # B- between adjacent same-type entities
    (["I-LOC", "I-ORG", "I-ORG"], ["B-LOC", "B-ORG", "I-ORG"]),  # type change starts an entity
    (["O", "I-MISC", "O", "I-MISC"], ["O", "B-MISC", "O", "B-MISC"]),
    (["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),  # IOB2 input unchanged
])
def test_iob1_to_iob2(iob1, iob2):
    assert conll.iob1_to_iob2(iob1) == iob2
    assert conll.iob1_to_iob2(iob2) == iob2


def test_read_handles_docstart_anywhere_two_columns_and_no_final_newline(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("-DOCSTART- O\n\nJohn I-PER\nSmith I-PER\nflew O\n-DOCSTART- O\nto O\nParis I-LOC")
    sents = conll.read(f)
    assert [s.words for s in sents] == [["John", "Smith", "flew"], ["to", "Paris"]]
    assert [s.tags for s in sents] == [["B-PER", "I-PER", "O"], ["O", "B-LOC"]]
    f.write_bytes(b"\xef\xbb\xbf-DOCSTART- -X- -X- O\r\n\r\nEU NNP B-NP B-ORG\r\n")  # byte-order mark, CRLF
    assert [(s.words, s.tags) for s in conll.read(f)] == [(["EU"], ["B-ORG"])]


@pytest.mark.parametrize("content,message", [
    ("EU NNP B-NP\n", r"x.txt:1: expected 4 columns .* got 3"),
    ("EU NNP B-NP I-ORG\nrejects VBZ\n", r"x.txt:2: 2 columns, but the file started with 4"),
    ("EU NNP B-NP ORG\n", r"x.txt:1: tag 'ORG' is not O, B-TYPE or I-TYPE"),
    ("", r"x.txt: file is empty"),
    ("-DOCSTART- -X- O O\n\n", r"x.txt: no sentences"),
])
def test_bad_files_name_file_and_line(tmp_path, content, message):
    f = tmp_path / "x.txt"
    f.write_text(content)
    with pytest.raises(DataError, match=message):
        conll.read(f)


def test_wrong_encoding_and_missing_paths(tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes("Müller I-PER\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"x.txt:1: not UTF-8"):
        conll.read(f)
    with pytest.raises(DataError, match="does not exist"):
        conll.split_paths(tmp_path / "nope")
    with pytest.raises(DataError, match="no train file"):
        conll.split_paths(tmp_path)


@pytest.mark.skipif(not (SHARED_DATA / "conll2003").is_dir(), reason="shared CoNLL-2003 copy not present")
def test_shared_conll_counts():
    paths = conll.split_paths(SHARED_DATA / "conll2003")
    train, dev = conll.read(paths["train"]), conll.read(paths["validation"])
    assert (len(train), sum(len(s.words) for s in train)) == (14041, 203621)
    assert (len(dev), sum(len(s.words) for s in dev)) == (3250, 51362)
    assert conll.label_names(train) == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert all(t[0] != "I" or i and s.tags[i - 1][2:] == t[2:] for s in train for i, t in enumerate(s.tags))
