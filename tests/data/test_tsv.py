import pytest

from conftest import SHARED_DATA
from jaxbatch.data import tsv
from jaxbatch.errors import DataError


def test_read_layouts(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na fine film \t1\ndull \t0\n")
    (tmp_path / "test.tsv").write_text("index\tsentence\n0\tsomething\n")
    (tmp_path / "plain.tsv").write_text("great value\tpositive\nmeh\tneutral\n\nawful\tnegative")
    assert [(e.text, e.label) for e in tsv.read(tmp_path / "train.tsv")] == [("a fine film", "1"), ("dull", "0")]
    assert [(e.text, e.label) for e in tsv.read(tmp_path / "test.tsv")] == [("something", "")]
    plain = tsv.read(tmp_path / "plain.tsv")  # no header, class names, blank line, no final newline
    assert [(e.text, e.label) for e in plain] == [("great value", "positive"), ("meh", "neutral"), ("awful", "negative")]
    assert tsv.label_names(plain) == ["negative", "neutral", "positive"]
    assert tsv.label_names(tsv.read(tmp_path / "train.tsv")) == ["0", "1"]
    # a spreadsheet's export: byte-order mark and CRLF; the header is still a header
    (tmp_path / "excel.tsv").write_bytes(b"\xef\xbb\xbfsentence\tlabel\r\nfine\tpos\r\n")
    assert [(e.text, e.label) for e in tsv.read(tmp_path / "excel.tsv")] == [("fine", "pos")]


@pytest.mark.parametrize("content,message", [
    ("a\tb\tc\nx\t1\n", r"x.tsv:1: expected 'text<TAB>label'"),
    ("sentence\tlabel\nno tab here\n", r"x.tsv:2: expected 2 tab-separated columns, got 1"),
    ("sentence\tlabel\nok\t1\nbad\t \n", r"x.tsv:3: empty label"),
    ("sentence\tlabel\n", r"x.tsv: no examples after the header"),
])
def test_bad_tsv(tmp_path, content, message):
    (tmp_path / "x.tsv").write_text(content)
    with pytest.raises(DataError, match=message):
        tsv.read(tmp_path / "x.tsv")


@pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason="shared SST-2 copy not present")
def test_shared_sst2_counts():
    paths = tsv.split_paths(SHARED_DATA / "sst2")
    train = tsv.read(paths["train"])
    assert len(train) == 67349 and sum(e.label == "1" for e in train) == 37569
    assert len(tsv.read(paths["validation"])) == 872
    assert len(tsv.read(paths["test"])) == 1821
