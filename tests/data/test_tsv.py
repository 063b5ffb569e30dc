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
    assert tsv.label_names([e.label for e in plain]) == ["negative", "neutral", "positive"]
    assert tsv.label_names([e.label for e in tsv.read(tmp_path / "train.tsv")]) == ["0", "1"]
    # a spreadsheet's export: byte-order mark and CRLF; the header is still a header
    (tmp_path / "excel.tsv").write_bytes(b"\xef\xbb\xbfsentence\tlabel\r\nfine\tpos\r\n")
    assert [(e.text, e.label) for e in tsv.read(tmp_path / "excel.tsv")] == [("fine", "pos")]
    # a capitalised header is a header (not an example whose class is "Label"), in TSV and CSV
    (tmp_path / "caps.tsv").write_text("Text\tLabel\nfine\tpos\n")
    (tmp_path / "caps.csv").write_text("ID,Sentence,Label\n3,fine,pos\n")
    for name in ("caps.tsv", "caps.csv"):
        assert [(e.text, e.label, e.line) for e in tsv.read(tmp_path / name)] == [("fine", "pos", 2)], name


@pytest.mark.parametrize("content,message", [
    ("a\tb\tc\nx\t1\n", r"x.tsv:1: expected 'text<TAB>label'"),
    ("sentence\tlabel\nno tab here\n", r"x.tsv:2: expected 2 tab-separated columns like the header"),
    ("good\t1\nno tab here\n", r"x.tsv:2: expected 2 tab-separated columns, got 1"),
    ("sentence\tlabel\nok\t1\nbad\t \n", r"x.tsv:3: the label must be a class name, an integer id, a score or a list "
                                        r"of classes, got ' '"),
    ("sentence1\tsentence2\tlabel\na\t \t1\n", r"x.tsv:2: 'sentence2' must be a non-empty string, got ' '"),
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


def test_csv_and_json_lines_read_as_the_same_examples_as_tsv(tmp_path):
    (tmp_path / "train.tsv").write_text("text\tlabel\nI loved it, truly\tpos\nbad film\tneg\n")
    (tmp_path / "train.csv").write_text('id,text,label\n7,"I loved it, truly",pos\n8,bad film,neg\n')
    (tmp_path / "train.jsonl").write_text('{"sentence": "I loved it, truly", "label": "pos", "id": 7}\n\n'
                                          '{"sentence": "bad film", "label": "neg"}\n')
    expected = [(e.text, e.label) for e in tsv.read(tmp_path / "train.tsv")]
    for name in ("train.csv", "train.jsonl"):
        assert [(e.text, e.label) for e in tsv.read(tmp_path / name)] == expected, name
    (tmp_path / "semi.csv").write_text('id;Text;Label\n7;"I loved it, truly";pos\n8;bad film;neg\n')
    (tmp_path / "caps.jsonl").write_text('{"Sentence": "I loved it, truly", "LABEL": "pos"}\n'
                                         '{"Sentence": "bad film", "LABEL": "neg"}\n')
    for name, lines in (("semi.csv", [2, 3]), ("caps.jsonl", [1, 2])):  # a spreadsheet's ';' export; any case
        got = tsv.read(tmp_path / name)
        assert [(e.text, e.label) for e in got] == expected and [e.line for e in got] == lines, name
    (tmp_path / "multi.csv").write_text('text,label\n"two\nlines",1\n\nnext,0\n')  # a quoted field may hold a newline
    got = tsv.read(tmp_path / "multi.csv")  # a row is named by the line it starts on
    assert [(e.text, e.label, e.line) for e in got] == [("two\nlines", "1", 2), ("next", "0", 5)]
    (tmp_path / "test.jsonl").write_text('{"text": "unlabelled"}\n')  # no label key: an unlabelled split
    assert [(e.text, e.label) for e in tsv.read(tmp_path / "test.jsonl")] == [("unlabelled", "")]
    (tmp_path / "dev.csv").write_text("text,label\nok,pos\n")
    paths = tsv.split_paths(tmp_path, ("train", "validation", "test"))
    assert [paths[s].name for s in ("train", "validation", "test")] == ["train.tsv", "dev.csv", "test.jsonl"]
    (tmp_path / "train.tsv").unlink()  # `datasets`' Dataset.to_json("train.json") writes JSON lines too
    (tmp_path / "train.csv").unlink()
    (tmp_path / "train.jsonl").rename(tmp_path / "train.json")
    assert tsv.split_paths(tmp_path)["train"].name == "train.json"
    assert [(e.text, e.label) for e in tsv.read(tmp_path / "train.json")] == expected


@pytest.mark.parametrize("name,content,message", [
    ("x.csv", "body,label\nx,1\n", r"x.csv:1: no 'text' or 'sentence' column, nor a pair of texts \(sentence1/sentence2, premise/hypothesis, .*\); "
     r"the columns are \['body', 'label'\]"),
    ("x.csv", "text,label\nfine,1\nx\n", r"x.csv:3: expected 2 comma-separated columns"),
    ("x.csv", "text;label\nfine;1\nx,1\n", r"x.csv:3: expected 2 semicolon-separated columns"),
    ("x.csv", 'text,label\n"a\nb",1\n"c\nd",1,2\n', r"x.csv:4: expected 2 comma-separated columns"),
    ("x.csv", 'text,label\nfine,1\n"open,1\nmore\n', r"x.csv:3: expected 2 comma-separated columns"),  # unclosed
    ("x.csv", "text,label\nx,\n", r"x.csv:2: the label must be a class name, an integer id, a score or a list of "
                                  r"classes, got ''"),
    ("x.csv", "text,label\n", r"x.csv: no examples after the header"),
    ("x.jsonl", '{"text": "a", "label": 1}\nnot json\n', r"x.jsonl:2: not a JSON object"),
    ("x.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', r"x.jsonl:2: expected the keys of line 1"),
    ("x.jsonl", '{"text": "a", "label": null}\n', r"x.jsonl:1: the label must be .* got None"),
    ("x.jsonl", '{"text": "a", "label": {"a": 1}}\n', r"x.jsonl:1: the label must be .* got \{'a': 1\}"),
    ("x.jsonl", '{"text": "a", "labels": ["joy", true]}\n', r"x.jsonl:1: the labels list must hold class names, "
                                                           r"integer ids or scores, got True"),
    ("x.jsonl", '{"text": "a", "label": [1.5, NaN]}\n', r"x.jsonl:1: the label list must .* got nan"),
    ("x.jsonl", '{"text": "a", "labels": [" "]}\n', r"x.jsonl:1: the labels list must .* got ' '"),
    ("x.jsonl", '{"text": 3, "label": 1}\n', r"x.jsonl:1: 'text' must be a non-empty string, got 3"),
])
def test_bad_csv_and_json_lines_name_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        tsv.read(tmp_path / name)


def test_text_pairs_are_read_by_their_column_names_from_tsv_csv_and_json_lines(tmp_path):
    """GLUE's TSV (an index column, quotes that are text, not quoting), NLI's premise/hypothesis, QNLI's
    question/sentence: each example's two texts and label; a single-text file has no second text."""
    (tmp_path / "rte.tsv").write_text('index\tsentence1\tsentence2\tlabel\n0\t"Quoted" start\tA claim .\tentailment\n'
                                      '1\tOther text\t"Half\tnot_entailment\n')
    (tmp_path / "nli.jsonl").write_text('{"premise": "A man sleeps", "hypothesis": "Nobody sleeps", "label": 2}\n')
    (tmp_path / "qnli.csv").write_text('question,sentence,label\n"Who, then?",It was him .,entailment\n')
    (tmp_path / "test.tsv").write_text("index\tsentence1\tsentence2\n0\ta\tb\n")  # GLUE's unlabelled test
    assert [(e.text, e.text_pair, e.label, e.line) for e in tsv.read(tmp_path / "rte.tsv")] == [
        ('"Quoted" start', "A claim .", "entailment", 2), ("Other text", '"Half', "not_entailment", 3)]
    assert [(e.text, e.text_pair, e.label) for e in tsv.read(tmp_path / "nli.jsonl")] == [
        ("A man sleeps", "Nobody sleeps", "2")]
    assert [(e.text, e.text_pair, e.label) for e in tsv.read(tmp_path / "qnli.csv")] == [
        ("Who, then?", "It was him .", "entailment")]
    assert [(e.text, e.text_pair, e.label) for e in tsv.read(tmp_path / "test.tsv")] == [("a", "b", "")]
    (tmp_path / "one.tsv").write_text("sentence\tlabel\nfine\t1\n")
    assert [(e.text, e.text_pair) for e in tsv.read(tmp_path / "one.tsv")] == [("fine", "")]


def test_parquet_from_the_hub_reads_class_names_and_hidden_labels(tmp_path):
    """GLUE's SST-2 as the hub stores it: `label` a ClassLabel id (named by the file), -1 in the test split."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {"info": {"features": {"sentence": {"dtype": "string", "_type": "Value"},
                                  "label": {"names": ["negative", "positive"], "_type": "ClassLabel"},
                                  "idx": {"dtype": "int32", "_type": "Value"}}}}
    for split, labels in (("train", [1, 0]), ("test", [-1, -1])):
        table = pa.table({"sentence": ["a fine film", "dull"], "label": labels, "idx": [0, 1]})
        pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(meta)}),
                       tmp_path / f"{split}-00000-of-00001.parquet")
    assert [(e.text, e.label, e.line) for e in tsv.read(tmp_path / "train-00000-of-00001.parquet")] == [
        ("a fine film", "positive", 1), ("dull", "negative", 2)]
    assert [e.label for e in tsv.read(tmp_path / "test-00000-of-00001.parquet")] == ["", ""]
    assert tsv.split_paths(tmp_path, ("train", "test"))["train"].name == "train-00000-of-00001.parquet"
    (tmp_path / "train-00000-of-00001.parquet").rename(tmp_path / "train-00000-of-00002.parquet")
    table = pa.table({"sentence": ["so good"], "label": [1], "idx": [2]})
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(meta)}),
                   tmp_path / "train-00001-of-00002.parquet")
    train = tsv.split_paths(tmp_path, ("train",))["train"]  # the hub's two shards of one split: one path
    assert train.name == "train-*.parquet"
    assert [(e.text, e.label, e.line) for e in tsv.read(train)] == [
        ("a fine film", "positive", 1), ("dull", "negative", 2), ("so good", "positive", 3)]
    pq.write_table(pa.table({"sentence": ["a", "b"], "label": [0, 2]}).replace_schema_metadata(
        {"huggingface": json.dumps(meta)}), tmp_path / "x.parquet")
    with pytest.raises(DataError, match=r"x.parquet, row 2: label id 2 is not one of its 2 class names"):
        tsv.read(tmp_path / "x.parquet")
    pq.write_table(pa.table({"text": ["a", None], "label": [0, 1]}), tmp_path / "x.parquet")  # plain pandas output
    with pytest.raises(DataError, match=r"x.parquet, row 2: 'text' must be a non-empty string, got None"):
        tsv.read(tmp_path / "x.parquet")
