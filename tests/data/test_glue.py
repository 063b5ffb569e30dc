import pytest

from conftest import SHARED_DATA
from jaxbatch.data import glue
from jaxbatch.data.files import DataError


def test_read_train_and_test_layouts(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\na fine film \t1\ndull \t0\n")
    (tmp_path / "test.tsv").write_text("index\tsentence\n0\tsomething\n")
    assert [(e.text, e.label) for e in glue.read(tmp_path / "train.tsv")] == [("a fine film", 1), ("dull", 0)]
    assert [(e.text, e.label) for e in glue.read(tmp_path / "test.tsv")] == [("something", -1)]


@pytest.mark.parametrize("content,message", [
    ("text\tlabel\nx\t1\n", r"x.tsv:1: header"),
    ("sentence\tlabel\nno tab here\n", r"x.tsv:2: expected 2 tab-separated columns, got 1"),
    ("sentence\tlabel\nok\t1\nbad\tpositive\n", r"x.tsv:3: label 'positive' is not 0 or 1"),
    ("sentence\tlabel\n", r"x.tsv: no examples"),
])
def test_bad_tsv(tmp_path, content, message):
    (tmp_path / "x.tsv").write_text(content)
    with pytest.raises(DataError, match=message):
        glue.read(tmp_path / "x.tsv")


@pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason="shared SST-2 copy not present")
def test_shared_sst2_counts():
    paths = glue.split_paths(SHARED_DATA / "sst2")
    train = glue.read(paths["train"])
    assert len(train) == 67349 and sum(e.label for e in train) == 37569
    assert len(glue.read(paths["validation"])) == 872
    assert len(glue.read(paths["test"])) == 1821
