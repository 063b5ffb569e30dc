"""Datasets through tfds (array_record, no TensorFlow) into tokenized arrays; bad input is named."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA, UD, hub_parquet
from jaxbatch import config, run as run_lib
from jaxbatch.data import files, tasks, text, tfds_builders
from jaxbatch.errors import DataError, WriteError


def _cfg(tmp_path, *overrides):
    return config.build(["model.preset=minilm-l6", "model.pretrained=minilm-l6", "data.seq_len=32",
                         f"data.cache_dir={tmp_path / 'cache'}", *overrides])


def _write_conll(d, dev_tag="B-LOC"):
    d.mkdir()
    (d / "train.txt").write_text("John B-PER\nlives O\nin O\nParis B-LOC\n\nAcme B-ORG\nCorp I-ORG\n")
    (d / "valid.txt").write_text(f"Oslo {dev_tag}\nis O\ncold O\n")
    return d


def test_local_conll_is_prepared_once_and_rebuilt_when_changed(tmp_path):
    d = _write_conll(tmp_path / "conll")
    cfg = _cfg(tmp_path, "data.name=conll2003", f"data.data_dir={d}")
    data = tasks.load(cfg.data, run_lib.tokenizer(cfg))
    assert data.label_names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    assert data.train["input_ids"].shape == (2, 32) and data.test is None
    builds = list((tmp_path / "cache" / "jaxbatch_conll").iterdir())
    assert len(builds) == 1
    tasks.load(cfg.data, run_lib.tokenizer(cfg))
    assert list((tmp_path / "cache" / "jaxbatch_conll").iterdir()) == builds
    (d / "valid.txt").write_text("Rome B-LOC\n")
    tasks.load(cfg.data, run_lib.tokenizer(cfg))
    assert len(list((tmp_path / "cache" / "jaxbatch_conll").iterdir())) == 2


def test_unknown_dev_label_errors_or_maps(tmp_path):
    """The error names the file and the line of the tag, past -DOCSTART- and blank lines."""
    d = _write_conll(tmp_path / "conll")
    (d / "valid.txt").write_text("-DOCSTART- O\n\nOslo B-LOC\nis O\n\n\nRome B-LOC\nand O\nBonn B-MISC\n")
    cfg = _cfg(tmp_path, "data.name=conll2003", f"data.data_dir={d}")
    with pytest.raises(DataError, match=rf"^{d / 'valid.txt'}:9: tag 'B-MISC' is not in the label set"):
        tasks.load(cfg.data, run_lib.tokenizer(cfg))
    cfg = _cfg(tmp_path, "data.name=conll2003", f"data.data_dir={d}", "data.unknown_label=O")
    data = tasks.load(cfg.data, run_lib.tokenizer(cfg))
    assert data.eval["labels"][1][3] == 0 and data.eval["labels"][1][1] == 1  # [CLS] Rome and Bonn


def test_bad_input_through_the_task_loader(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "train.txt").write_text("John B-PER\nlives O extra\n")
    (d / "valid.txt").write_text("x O\n")
    with pytest.raises(DataError, match=r"train.txt:2: 3 columns, but the file started with 2"):
        tasks.load(*_cfg2(tmp_path, d))
    with pytest.raises(DataError, match="does not exist"):
        tasks.load(*_cfg2(tmp_path, tmp_path / "missing"))
    with pytest.raises(config.ConfigError, match="data.name='imagenet' is unknown"):
        tasks.load(*_cfg2(tmp_path, d, "data.name=imagenet"))


def test_one_class_is_refused_unless_data_labels_lists_more(tmp_path):
    """A tag set of 'O' alone made a one-logit head whose predictions named no tag (an IndexError in evaluation);
    a classifier needs two classes, unless data.labels says the others are only absent from these files."""
    d = tmp_path / "plain"
    d.mkdir()
    (d / "train.txt").write_text("John O\nlives O\n\nAcme O\n")
    (d / "valid.txt").write_text("Oslo O\n")
    with pytest.raises(DataError, match=r"train.txt: every training example has the one tag 'O'; a classifier needs "
                                        r"two or more \(set data.labels"):
        tasks.load(*_cfg2(tmp_path, d))
    assert tasks.load(*_cfg2(tmp_path, d, "data.labels=O,B-PER,I-PER")).label_names == ["O", "B-PER", "I-PER"]
    with pytest.raises(DataError, match=r"train.jsonl: every training example has the one label 'pos'"):
        _jsonl_task(tmp_path, "reviews", [{"text": "good", "label": "pos"}] * 4, [{"text": "fine", "label": "pos"}])


def _jsonl_task(tmp_path, name: str, train: list[dict], dev: list[dict]):
    """A JSON lines dataset folder (train, dev and an unlabelled test split), its config and what it loads as."""
    d = tmp_path / name
    d.mkdir()
    for split, rows in (("train", train), ("dev", dev), ("test", [{"text": "hmm"}])):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(tmp_path, "data.name=jsonl", f"data.data_dir={d}")
    return d, cfg, tasks.load(cfg.data, run_lib.tokenizer(cfg))


def _cfg2(tmp_path, d, *extra):
    cfg = _cfg(tmp_path, "data.name=conll2003", f"data.data_dir={d}", *extra)
    return cfg.data, run_lib.tokenizer(cfg)


@pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason="shared SST-2 copy not present")
def test_shared_sst2_through_tfds(tmp_path):
    sources = tfds_builders.prepare("tsv", SHARED_DATA / "sst2", tmp_path / "cache")
    assert {k: len(v) for k, v in sources.items()} == {"train": 67349, "validation": 872, "test": 1821}


@pytest.mark.skipif(not (SHARED_DATA / "conll2003").is_dir(), reason="shared CoNLL-2003 copy not present")
def test_shared_conll_through_tfds_and_tokenizer(tmp_path):
    cfg = _cfg(tmp_path, "data.name=conll2003", f"data.data_dir={SHARED_DATA / 'conll2003'}", "data.seq_len=128")
    data = tasks.load(cfg.data, run_lib.tokenizer(cfg))
    assert len(data.train["labels"]) == 14041 and len(data.eval["labels"]) == 3250
    # every word's first piece carries its label, except the words cut by truncation (reported, not silent)
    assert (data.eval["labels"] != -100).sum() == 51362 - 19 and data.truncated == {"train": 1, "validation": 3}


def test_text_corpus_builder_splits_documents(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("\n\n".join(f"paragraph {i} of a.\nsecond line." for i in range(9)))
    (d / "b.txt").write_text("one more paragraph")
    sources = tfds_builders.prepare("text", d, tmp_path / "cache")
    docs = {split: [r["text"] for r in tfds_builders.read_all(src)] for split, src in sources.items()}
    assert len(docs["train"]) == 9 and len(docs["validation"]) == 1
    assert sorted(docs["train"] + docs["validation"])[0] == "one more paragraph"
    assert "paragraph 0 of a.\nsecond line." in docs["train"]
    (d / "c.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(DataError, match=r"c.txt:1: not UTF-8"):
        tfds_builders.prepare("text", d, tmp_path / "cache")


def test_json_lines_corpus_holds_one_document_per_line(tmp_path):
    """How Hugging Face datasets and crawls are dumped: `{"text": ...}` per line, other keys ignored; a
    document may hold blank lines. Read beside .txt files, in name order."""
    import json

    d = tmp_path / "corpus"
    d.mkdir()
    rows = [{"text": f"doc {i}\n\nits second paragraph", "url": f"u{i}"} for i in range(9)]
    (d / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:5]) + "\n\n" + json.dumps({"Text": ""}) + "\n")
    (d / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows[5:]))
    (d / "c.txt").write_text("a plain paragraph")
    sources = tfds_builders.prepare("text", d, tmp_path / "cache")
    docs = {split: [r["text"] for r in tfds_builders.read_all(src)] for split, src in sources.items()}
    assert sorted(docs["train"] + docs["validation"]) == sorted([r["text"] for r in rows] + ["a plain paragraph"])
    assert docs["validation"] == ["a plain paragraph"]  # the last tenth, in file name order
    for content, message in (('{"text": "ok"}\n[1, 2]\n', r"b.jsonl:2: not a JSON object"),
                             ('{"body": "x"}\n', r"b.jsonl:1: expected an object with a 'text' string, 'prompt' and "
                                                  r"'completion' strings, or 'messages', got keys \['body'\]"),
                             ('{"prompt": "x"}\n', r"b.jsonl:1: expected .* got keys \['prompt'\]"),
                             ('{"text": 3}\n', r"b.jsonl:1: expected an object with a 'text' string"),
                             ('{"text": "ok"}\n{oops\n', r"b.jsonl:2: not a JSON object")):
        (d / "b.jsonl").write_text(content)
        with pytest.raises(DataError, match=message):
            tfds_builders.prepare("text", d, tmp_path / "cache")


def test_parquet_shards_of_a_hub_corpus_are_read_as_documents(tmp_path):
    """The hub's corpora (TinyStories, wikitext) are Parquet shards of `{"text": ...}` per split: each row a
    document, the shards of a split in name order; an empty shard among several holds none; a bad row is named."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "corpus"
    d.mkdir()
    for shard in range(2):
        pq.write_table(pa.table({"text": [f"story {shard}.{i}\n\nThe end." for i in range(5)]}),
                       d / f"train-0000{shard}-of-00003.parquet")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), d / "train-00002-of-00003.parquet")
    pq.write_table(pa.table({"text": ["held out"]}), d / "validation-00000-of-00001.parquet")
    sources = tfds_builders.prepare("text", d, tmp_path / "cache")
    docs = {split: [r["text"] for r in tfds_builders.read_all(src)] for split, src in sources.items()}
    assert docs == {"train": [f"story {s}.{i}\n\nThe end." for s in range(2) for i in range(5)],
                    "validation": ["held out"]}
    pq.write_table(pa.table({"text": ["fine", None]}), d / "validation-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"validation-00000-of-00001.parquet, row 2: expected an object with a 'text' "
                                        r"string"):
        tfds_builders.prepare("text", d, tmp_path / "cache")


def test_a_corpus_folders_files_named_for_splits_are_those_splits(tmp_path):
    """train/valid/test files (wikitext, a hub dump, run_clm's train and validation files) keep their splits, as
    `load_dataset` reads a folder: a validation or test document is never trained on. Without a validation file
    the training files' last tenth is held out; a file naming no split beside named ones is refused."""
    from jaxbatch import config

    d = tmp_path / "wiki"
    d.mkdir()
    for name, n in (("wiki.train.txt", 20), ("wiki.valid.txt", 3), ("wiki.test.txt", 4)):
        (d / name).write_text("\n\n".join(f"{name} paragraph {i}" for i in range(n)))
    sources = tfds_builders.prepare("text", d, tmp_path / "cache")
    docs = {split: [r["text"] for r in tfds_builders.read_all(src)] for split, src in sources.items()}
    assert {split: len(texts) for split, texts in docs.items()} == {"train": 20, "validation": 3, "test": 4}
    assert all(t.startswith(f"wiki.{name}.txt") for split, name in (("train", "train"), ("validation", "valid"),
                                                                    ("test", "test")) for t in docs[split])
    data_cfg = config.build(["data.name=text", f"data.data_dir={d}", f"data.cache_dir={tmp_path / 'cache'}",
                             "data.seq_len=8"]).data
    tokenizer = text.CharTokenizer.from_texts(docs["train"] + docs["test"] + ["\n"])
    rows = tasks.load_split(data_cfg, tokenizer, "test")
    read = "".join(tokenizer.chars[i] for i in np.where(rows["segment_ids"] > 0, rows["input_ids"], 0).ravel())
    assert read.count("wiki.tes") == 4 and "train" not in read and "valid" not in read
    with pytest.raises(DataError, match=r"characters \['e', 's'\] are not in the character vocabulary of 24"):
        tasks.load_split(data_cfg, text.CharTokenizer.from_texts(docs["train"] + ["\n"]), "test")
    (d / "wiki.valid.txt").unlink()
    (d / "wiki.test.txt").rename(d / "eval.txt")
    sources = tfds_builders.prepare("text", d, tmp_path / "cache")
    docs = {split: [r["text"] for r in tfds_builders.read_all(src)] for split, src in sources.items()}
    assert (len(docs["train"]), len(docs["validation"]), len(docs["test"])) == (18, 2, 4)
    (d / "notes.txt").write_text("a stray file")
    with pytest.raises(DataError, match=r"notes.txt name no split while eval.txt, wiki.train.txt do"):
        tfds_builders.prepare("text", d, tmp_path / "cache")
    (d / "notes.txt").unlink()
    (d / "wiki.train.txt").unlink()
    with pytest.raises(DataError, match=r"has no train split in .*wiki: a corpus is split into train and validation, "
                                        r"or by its files' names"):
        tasks.load_split(data_cfg, tokenizer, "train")
    assert text.split_files(d / "eval.txt") == {"": [d / "eval.txt"]}  # a file named directly is one corpus


def test_an_empty_file_in_a_corpus_folder_holds_no_documents(tmp_path):
    """A folder of .txt files may hold an empty one (as Hugging Face's text loader reads it); a corpus with no
    text at all, or a single empty file, is still an error naming it."""
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("\n\n".join(f"paragraph {i}" for i in range(10)))
    (d / "b.txt").write_text("")
    (d / "c.txt").write_text(" \n\n ")
    sources = tfds_builders.prepare("text", d, tmp_path / "cache")
    assert sum(len(tfds_builders.read_all(src)) for src in sources.values()) == 10
    (d / "a.txt").write_text("")
    with pytest.raises(DataError, match=r"corpus \(3 files\): no text"):
        tfds_builders.prepare("text", d, tmp_path / "cache")
    with pytest.raises(DataError, match=r"b.txt: file is empty"):
        tfds_builders.prepare("text", d / "b.txt", tmp_path / "cache")


def test_prepared_data_that_meets_a_full_disk_is_one_error_naming_the_folder(tmp_path, monkeypatch):
    """array_record's writer reports a full disk as a RuntimeError: one line naming data.cache_dir's folder and
    what to do; a source file that cannot be read is not reported as a write."""
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("\n\n".join(f"paragraph {i}" for i in range(10)))

    def fail(error):
        def prepare(self, *args, **kwargs):
            raise error
        monkeypatch.setattr(tfds_builders.TextLocal, "download_and_prepare", prepare)

    fail(RuntimeError('Failed to finalize writing of split "train": write() failed: No space left on device; '
                      'writing x/jaxbatch_text-train.array_record-00000-of-00001; at byte 2097152'))
    with pytest.raises(WriteError, match=r"cache: cannot write the prepared data \(No space left on device\); free "
                                         r"space there or set data.cache_dir"):
        tfds_builders.prepare("text", d, tmp_path / "cache")
    fail(PermissionError(13, "Permission denied", str(d / "a.txt")))
    with pytest.raises(PermissionError):
        tfds_builders.prepare("text", d, tmp_path / "cache")


def test_text_corpus_of_one_document_splits_its_characters(tmp_path):
    """One book without blank lines (or too few documents to hold a tenth out) splits as nanoGPT does: the
    last 10% of the characters, at a line break, with nothing lost or repeated."""
    lines = [f"line {i:03d} of the only document" for i in range(200)]
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "book.txt").write_text("\n".join(lines))
    sources = tfds_builders.prepare("text", d, tmp_path / "cache")
    docs = {split: [r["text"] for r in tfds_builders.read_all(src)] for split, src in sources.items()}
    assert docs["train"] == ["\n".join(lines[:180])] and docs["validation"] == ["\n".join(lines[180:])]
    plain = lambda *texts: [("", t) for t in texts]  # noqa: E731  (prompt, text) documents without prompts
    assert text.split(plain("x" * 60, "y" * 40)) == {"train": plain("x" * 60, "y" * 30), "validation": plain("y" * 10)}
    assert text.split(plain("x" * 45, "y" * 5)) == {"train": plain("x" * 45), "validation": plain("y" * 5)}
    with pytest.raises(DataError, match="1 characters is too small to split"):
        text.split(plain("x"))


@pytest.mark.skipif(not (SHARED_DATA / "tinyshakespeare").is_dir(), reason="shared tiny shakespeare not present")
def test_tiny_shakespeare_through_tfds(tmp_path):
    sources = tfds_builders.prepare("text", SHARED_DATA / "tinyshakespeare", tmp_path / "cache")
    text = "\n\n".join(r["text"] for s in ("train", "validation") for r in tfds_builders.read_all(sources[s]))
    assert len(set(text)) == 65 and len(text) > 1_000_000


class _Records:
    """What tfds.data_source returns per split: random access with __getitems__."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitems__(self, idx):
        return [self.rows[i] for i in idx]


def test_tfds_catalog_text_corpora_pack_their_documents():
    """`lm1b`, `tiny_shakespeare` and `tfds:NAME` read TFDS' catalog (mocked here: offline): one record per
    document, the test split as validation when there is none, only data.max_train documents read."""
    import numpy as np
    import tensorflow_datasets as tfds

    from jaxbatch.data import packing

    asked = []

    def source(builder, split=None, **kw):
        docs = lambda s: _Records([{"text": f"{s} document {i}: to be or not to be".encode()} for i in range(40)])  # noqa: E731
        asked.append(builder.name)
        return docs(split) if split else {s: docs(s) for s in ("train", "test")}

    with tfds.testing.mock_data(as_data_source_fn=source):
        cfg = config.build(["model.preset=gpt-tiny", "data.name=tfds:lm1b", "data.seq_len=16", "data.max_train=5"])
        data = tasks.load(cfg.data, None)
        assert asked == ["lm1b"]
        ids = lambda s, n: [data.tokenizer.encode(f"{s} document {i}: to be or not to be\n\n") for i in range(n)]  # noqa: E731
        for got, want in ((data.train, packing.pack(ids("train", 5), 16)), (data.eval, packing.pack(ids("test", 40), 16))):
            assert set(got) == set(want)
            for k in want:
                np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        capped = tasks.load(config.build(["model.preset=gpt-tiny", "data.name=tfds:lm1b", "data.seq_len=16",
                                          "data.max_train=5", "data.max_eval=7"]).data, None)
        want = packing.pack([capped.tokenizer.encode(f"test document {i}: to be or not to be\n\n") for i in range(7)],
                            16)  # only the first 7 validation documents (HF's max_eval_samples)
        for k in want:
            np.testing.assert_array_equal(capped.eval[k], want[k], err_msg=k)
        assert tasks.dataset(config.build(["data.name=lm1b"]).data).catalog == "lm1b"
        with pytest.raises(config.ConfigError, match="tfds:NAME"):
            tasks.dataset(config.build(["data.name=nope"]).data)


def test_custom_tag_set_and_n_class_tsv(tmp_path):
    d = tmp_path / "drugs"
    d.mkdir()
    (d / "train.txt").write_text("take B-DOSE\n5mg I-DOSE\nof O\naspirin B-DRUG\n\nibuprofen B-DRUG\nhelps O\n")
    (d / "dev.txt").write_text("aspirin B-DRUG\n")
    cfg = _cfg(tmp_path, "data.name=conll", f"data.data_dir={d}")
    data = tasks.load(cfg.data, run_lib.tokenizer(cfg))
    assert data.task == "token" and data.label_names == ["O", "B-DOSE", "I-DOSE", "B-DRUG", "I-DRUG"]
    t = tmp_path / "reviews"
    t.mkdir()
    (t / "train.tsv").write_text("great\tpositive\nfine\tneutral\nbad\tnegative\n")
    (t / "dev.tsv").write_text("text\tlabel\nok\tneutral\nawful\t0\n")  # a header, and a label given by id
    cfg = _cfg(tmp_path, "data.name=tsv", f"data.data_dir={t}")
    data = tasks.load(cfg.data, run_lib.tokenizer(cfg))
    assert data.task == "sequence" and data.label_names == ["negative", "neutral", "positive"]
    assert data.train["labels"].tolist() == [2, 1, 0] and data.eval["labels"].tolist() == [1, 0]
    cfg = _cfg(tmp_path, "data.name=tsv", f"data.data_dir={t}", "data.max_eval=1")
    assert tasks.load(cfg.data, run_lib.tokenizer(cfg)).eval["labels"].tolist() == [1]
    cfg = _cfg(tmp_path, "data.name=tsv", f"data.data_dir={t}", "data.labels=positive,neutral,negative")
    assert tasks.load(cfg.data, run_lib.tokenizer(cfg)).train["labels"].tolist() == [0, 1, 2]
    (t / "train.tsv").unlink()  # the same examples as CSV and JSON lines, with ids as labels in JSON
    (t / "train.csv").write_text("text,label\ngreat,positive\nfine,neutral\nbad,negative\n")
    (t / "dev.tsv").unlink()
    (t / "dev.jsonl").write_text('{"text": "ok", "label": "neutral"}\n{"text": "awful", "label": 0}\n')
    for name in ("csv", "jsonl"):
        cfg = _cfg(tmp_path, f"data.name={name}", f"data.data_dir={t}")
        data = tasks.load(cfg.data, run_lib.tokenizer(cfg))
        assert data.label_names == ["negative", "neutral", "positive"], name
        assert data.train["labels"].tolist() == [2, 1, 0] and data.eval["labels"].tolist() == [1, 0], name
    (t / "dev.jsonl").unlink()
    cfg = _cfg(tmp_path, "data.name=tsv", f"data.data_dir={t}", "data.labels=positive,neutral,negative")
    (t / "dev.tsv").write_text("text\tlabel\ngood\tpositive\n\nmeh\tmixed\n")  # the file's line, not the example's
    with pytest.raises(DataError, match=rf"^{t / 'dev.tsv'}:4: label 'mixed' is neither one of"):
        tasks.load(cfg.data, run_lib.tokenizer(cfg))
    (t / "dev.tsv").unlink()
    (t / "dev.csv").write_text('text\n"a long,\nreview"\nfine\n')  # a record's line: the one it starts on
    with pytest.raises(DataError, match=rf"^{t / 'dev.csv'}:2: no label \(a validation file needs a label column"):
        tasks.load(cfg.data, run_lib.tokenizer(cfg))
    with pytest.raises(config.ConfigError, match="data.name=tsv reads your files: set data.data_dir"):
        tasks.load(_cfg(tmp_path, "data.name=tsv").data, None)


def test_a_first_build_says_one_line_and_no_bars_when_progress_is_off(tmp_path, capfd):
    d = _write_conll(tmp_path / "conll")
    cfg = _cfg(tmp_path, "data.name=conll2003", f"data.data_dir={d}")
    capfd.readouterr()
    with tfds_builders.progress_bars(False):
        tasks.load(cfg.data, run_lib.tokenizer(cfg))
    out, err = capfd.readouterr()
    assert out.startswith(f"data: preparing {d / 'train.txt'}, {d / 'valid.txt'} as array_record in ")
    assert out.count("\n") == 1 and "Unknown size" not in out
    assert "examples" not in err and "custom data configuration" not in err, err


def test_prompt_completion_lines_train_on_completions_only(tmp_path):
    """TRL's prompt/completion JSON lines (mixed with plain text documents): the loss is taken on each
    completion (and its end, a blank line for characters) only, in training and validation alike."""
    import json

    d = tmp_path / "sft"
    d.mkdir()
    pairs = [(f"Q: {a}+{b}=?\nA:", f" {a + b}") for a in range(4) for b in range(3)]
    lines = [json.dumps({"prompt": p, "completion": c}) for p, c in pairs] + [json.dumps({"text": "plain doc"})]
    (d / "train.jsonl").write_text("\n".join(lines))
    cfg = config.build(["model.preset=gpt-tiny", "data.name=text", f"data.data_dir={d}", "data.seq_len=256",
                        f"data.cache_dir={tmp_path / 'cache'}"])
    data = tasks.load(cfg.data, None)
    tok = data.tokenizer
    arrays = {"train": data.train, "validation": data.eval}
    labelled = {s: [tok.decode([t]) for t in a["labels"].ravel() if t != -100] for s, a in arrays.items()}
    # 13 documents, 12 train and 1 validation by document order: the plain one is validation; one row each
    assert data.train["labels"].shape == (1, 256)
    assert "".join(labelled["validation"]) == "lain doc\n\n"
    train_targets = "".join(labelled["train"])
    assert train_targets == "".join(c + "\n\n" for _, c in pairs)  # no prompt character is a target
    assert int((data.train["segment_ids"] > 0).sum()) >= sum(len(p + c) + 2 for p, c in pairs)
    few = tmp_path / "few"
    few.mkdir()
    (few / "a.jsonl").write_text("\n".join(lines[:3]))
    with pytest.raises(DataError, match="3 prompt/completion or chat example.s. are too few to split"):
        tfds_builders.prepare("text", few, tmp_path / "cache")


def test_a_subword_prompt_and_completion_are_encoded_apart_with_one_bos_and_an_eos():
    """With a tokenizer that adds BOS (LLaMA's do), the prompt gets it and the completion does not; EOS ends
    the completion; the prompt's length is what packing leaves out of the loss."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokenizers.processors import TemplateProcessing

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "what", "is", "up", "nothing", "much"])}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    core.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                               unk_token="<unk>")
    ids, trained, _ = tasks._lm_encode(tok)("what is up", " nothing much")
    assert (ids, trained) == ([1, 3, 4, 5, 6, 7, 2], [False] * 4 + [True] * 3)
    assert tasks._lm_encode(tok)("", "nothing much") == ([1, 6, 7, 2], [True] * 4, 0)


def test_chat_messages_train_on_the_answer_as_the_chat_template_renders_it(tmp_path):
    """TRL's conversational format: the tokenizer's chat template renders the history (with the generation
    prompt) and the answer; only the answer and its end-of-turn are targets. Without a template: one line."""
    import json

    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    words = ["<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "hi", "hello", "be", "brief", "bye"]
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<|end|>",
                                               additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"])
    tok.chat_template = ("{% for m in messages %}<|{{ m.role }}|> {{ m.content }} <|end|> {% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    ids, trained, _ = tasks._lm_encode(tok)(history, "hello")
    assert tok.convert_ids_to_tokens(ids) == ["<|system|>", "be", "brief", "<|end|>", "<|user|>", "hi", "<|end|>",
                                              "<|assistant|>", "hello", "<|end|>"] and trained == [False] * 8 + [True] * 2
    d = tmp_path / "chat"
    d.mkdir()
    chats = [{"messages": [*history, {"role": "assistant", "content": "hello" if i % 2 else "bye"}], "id": i}
             for i in range(10)]
    (d / "a.jsonl").write_text("\n".join(json.dumps(c) for c in chats))
    cfg = config.build(["model.preset=llama-tiny", "data.name=text", f"data.data_dir={d}", "data.seq_len=128",
                        f"data.cache_dir={tmp_path / 'cache'}"])
    data = tasks.load(cfg.data, tok)
    targets = [t for t in data.train["labels"].ravel() if t != -100]
    assert tok.convert_ids_to_tokens(targets) == [w for i in range(9) for w in ("hello" if i % 2 else "bye", "<|end|>")]
    with pytest.raises(DataError, match="chat examples .* need a tokenizer with a chat template"):
        tasks.load(cfg.data, None)
    with pytest.raises(DataError, match="chat examples .* need a tokenizer with a chat template"):
        tasks.load_split(cfg.data, text.CharTokenizer("abc"), "validation")  # evaluate with a char-level run
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(DataError, match=r"chat template refused a conversation \(.*roles must alternate\); roles "
                                        r"\['system', 'user', 'assistant'\]"):
        tasks.load(cfg.data, tok)
    (d / "a.jsonl").write_text(json.dumps({"messages": history}))
    with pytest.raises(DataError, match=r"a.jsonl:1: a conversation must end with the assistant's answer"):
        tfds_builders.prepare("text", d, tmp_path / "cache")


class _Written:
    """A corpus split given as its documents (what tasks._Corpus reads from a prepared data source)."""

    def __init__(self, docs):
        self.docs = docs

    def key(self):
        return ["written", repr(self.docs)]

    def chunks(self):
        yield list(enumerate(self.docs))


def _chat_tokenizer(words: list[str], template: str):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    words = ["<unk>", "<|user|>", "<|assistant|>", "<|end|>", *words]
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<|end|>",
                                               additional_special_tokens=["<|user|>", "<|assistant|>"])
    tok.chat_template = template
    return tok


def test_every_assistant_turn_of_a_chat_is_trained_and_a_rewritten_one_only_read(caplog):
    """Several turns: each assistant answer and its end of turn are targets, user turns and generation
    prompts are not (TRL's assistant_only_loss). A template that renders an earlier answer differently once
    the conversation goes on (as Qwen3's drops reasoning) leaves that turn as context and says how many."""
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "how"}, {"role": "assistant", "content": "fine"},
            {"role": "user", "content": "bye"}]
    plain = ("{% for m in messages %}<|{{ m.role }}|> {{ m.content }} <|end|> {% endfor %}"
             "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    tok = _chat_tokenizer(["hi", "hello", "how", "fine", "bye", "later", "think"], plain)
    ids, trained, context_turns = tasks._lm_encode(tok)(chat, "later")
    assert [t for t, keep in zip(tok.convert_ids_to_tokens(ids), trained) if keep] == [
        "hello", "<|end|>", "fine", "<|end|>", "later", "<|end|>"] and context_turns == 0
    assert tok.convert_ids_to_tokens(ids)[:4] == ["<|user|>", "hi", "<|end|>", "<|assistant|>"]
    rewrites = ("{% for m in messages %}<|{{ m.role }}|> {% if m.role == 'assistant' and loop.last %}think {% endif %}"
                "{{ m.content }} <|end|> {% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}")
    tok.chat_template = rewrites
    ids, trained, context_turns = tasks._lm_encode(tok)(chat, "later")
    assert [t for t, keep in zip(tok.convert_ids_to_tokens(ids), trained) if keep] == [
        "think", "later", "<|end|>"] and context_turns == 2
    for _ in range(2):  # tokenized, then read back from the token cache: told each time
        caplog.clear()
        with caplog.at_level("WARNING", logger="jaxbatch.data.tasks"):
            rows = tasks._packed(_Written([(chat, "later")] * 3), tok, seq_len=64)
        assert "6 earlier assistant turn(s) are not trained, only read" in caplog.text
    targets = [t for t in rows["labels"].ravel() if t != -100]
    assert tok.convert_ids_to_tokens(targets) == ["think", "later", "<|end|>"] * 3


def test_scores_make_a_regression_task_as_run_glue_reads_a_float_column(tmp_path):
    """GLUE STS-B's layout (`score` column, pairs): numbers with a decimal point are regression targets
    (float32, NaN unlabelled); whole numbers stay class ids unless model.problem_type=regression says so; a
    class list (data.labels) always classifies; a label that is no number is one line naming file and line."""
    t = tmp_path / "sts"
    t.mkdir()
    header = "index\tgenre\tsentence1\tsentence2\tscore\n"
    (t / "train.tsv").write_text(header + "0\tmain\ta cat\ta cat\t5.000\n1\tmain\ta cat\ta dog\t1.25\n")
    (t / "dev.tsv").write_text(header + "0\tmain\ta dog\ta dog\t1.25\n")
    (t / "test.tsv").write_text("index\tsentence1\tsentence2\n0\ta cow\ta cat\n")  # GLUE's hidden labels
    cfg = _cfg(tmp_path, "data.name=tsv", f"data.data_dir={t}")
    data = tasks.load(cfg.data, run_lib.tokenizer(cfg))
    assert data.problem_type == "regression" and data.label_names == [] and data.train["labels"].dtype == "float32"
    assert data.train["labels"].tolist() == [5.0, 1.25] and data.eval["labels"].tolist() == [1.25]
    assert np.isnan(data.test["labels"]).all() and not data.test_labelled
    spec = run_lib.resolve(cfg, task=data.task, label_names=data.label_names, problem_type=data.problem_type)
    assert (spec.model.problem_type, spec.model.num_labels, spec.data.labels) == ("regression", 1, "")
    assert tasks.load_split(spec.data, run_lib.tokenizer(cfg), "validation", "regression")["labels"].dtype == "float32"
    for name in ("classification", "single_label_classification"):  # the scores as class names
        data = tasks.load(cfg.data, run_lib.tokenizer(cfg), name)
        assert data.problem_type == "" and data.label_names == ["1.25", "5.000"]
    (t / "train.tsv").write_text(header + "0\tmain\ta cat\ta cat\t5\n1\tmain\ta cat\ta dog\t1\n")
    (t / "dev.tsv").write_text(header + "0\tmain\ta dog\ta dog\t4\n")
    assert tasks.load(cfg.data, run_lib.tokenizer(cfg)).problem_type == ""  # ids: classes, as run_glue's int column
    (t / "test.tsv").write_text(header + "0\tmain\ta cow\ta cat\t2.5\n")
    with pytest.raises(DataError, match=r"test.tsv:2: label '2.5' is neither .* or model.problem_type=regression"):
        tasks.load(cfg.data, run_lib.tokenizer(cfg))
    (t / "test.tsv").unlink()
    data = tasks.load(cfg.data, run_lib.tokenizer(cfg), "regression")
    assert data.problem_type == "regression" and data.train["labels"].tolist() == [5.0, 1.0]
    cfg_named = _cfg(tmp_path, "data.name=tsv", f"data.data_dir={t}", "data.labels=a,b,c,d,e,f")
    assert tasks.load(cfg_named.data, run_lib.tokenizer(cfg)).problem_type == ""
    (t / "dev.tsv").write_text(header + "0\tmain\ta dog\ta dog\t4.8\n1\tmain\ta\tb\thigh\n")
    with pytest.raises(DataError, match=rf"^{t / 'dev.tsv'}:3: label 'high' is not a finite number"):
        tasks.load(cfg.data, run_lib.tokenizer(cfg), "regression")
    for bad, message in ((["model.problem_type=ordinal"], "model.problem_type must be classification .* or regression"),
                         (["model.problem_type=regression", "data.name=conll2003"], "not a token task"),
                         (["model.problem_type=multi_label_classification", "data.name=conll2003"], "not a token task"),
                         (["model.problem_type=regression", "data.name=sst2", "model.label_smoothing=0.1"],
                          "a regression head has no such target"),
                         (["model.problem_type=multi_label_classification", "data.name=sst2",
                           "model.label_smoothing=0.1"], "a multi_label_classification head has no such target")):
        shaped = config.build(["model.preset=tiny", *bad])
        with pytest.raises(config.ConfigError, match=message):
            config.validate(run_lib.resolve(shaped, task=tasks.dataset_task(shaped.data)), 8)
    with pytest.raises(config.ConfigError, match=r"may not contain ','.*multi_label_classification reads a label 'a,b' "
                                                 r"as the classes a and b"):
        run_lib.resolve(cfg, task="sequence", label_names=["joy,anger", "fear"])


def test_lists_of_scores_make_a_regression_of_several_outputs(tmp_path):
    """JSON lines whose label is a list of numbers, some not whole-looking, make a regression with that many
    outputs (HF's problem_type=regression with num_labels > 1): float32 (examples, outputs), NaN rows for an
    unlabelled split; data.labels names the outputs (else 0..K-1). Lists of whole numbers stay class ids unless
    model.problem_type=regression says so; an example with another number of scores is one line naming file and
    line."""
    d, cfg, data = _jsonl_task(tmp_path, "vad", [{"text": "so happy", "label": [0.5, 1, 2]},
                                                 {"text": "grr", "label": [1.5, -1, 0.25]}],
                               [{"text": "yay", "label": [1, 2, 3.5]}])
    assert (data.problem_type, data.label_names) == ("regression", ["0", "1", "2"])
    assert data.train["labels"].dtype == np.float32
    assert data.train["labels"].tolist() == [[0.5, 1, 2], [1.5, -1, 0.25]] and data.eval["labels"].tolist() == [[1, 2, 3.5]]
    assert np.isnan(data.test["labels"]).all() and data.test["labels"].shape == (1, 3) and not data.test_labelled
    spec = run_lib.resolve(cfg, task=data.task, label_names=data.label_names, problem_type=data.problem_type)
    assert (spec.model.problem_type, spec.model.num_labels, spec.data.labels) == ("regression", 3, "0,1,2")
    config.validate(spec, 1)
    got = tasks.load_split(spec.data, run_lib.tokenizer(cfg), "validation", spec.model.problem_type)
    np.testing.assert_array_equal(got["labels"], data.eval["labels"])
    named = _cfg(tmp_path, "data.name=jsonl", f"data.data_dir={d}", "data.labels=valence,arousal,dominance")
    assert tasks.load(named.data, run_lib.tokenizer(cfg)).label_names == ["valence", "arousal", "dominance"]
    two = _cfg(tmp_path, "data.name=jsonl", f"data.data_dir={d}", "data.labels=valence,arousal")
    with pytest.raises(DataError, match=rf"^{d / 'train.jsonl'}:1: label .* gives 3 score\(s\); the regression head "
                                        r"has 2 output\(s\)"):
        tasks.load(two.data, run_lib.tokenizer(cfg))
    (d / "dev.jsonl").write_text('{"text": "yay", "label": [1.5, 2]}\n')
    with pytest.raises(DataError, match=rf"^{d / 'dev.jsonl'}:1: label .* gives 2 score\(s\); the regression head "
                                        r"has 3 output\(s\)"):
        tasks.load(cfg.data, run_lib.tokenizer(cfg))
    (d / "train.jsonl").write_text('{"text": "a", "label": [1, 2]}\n{"text": "b", "label": [0, 1]}\n')
    (d / "dev.jsonl").write_text('{"text": "c", "label": [2, 1]}\n')
    assert tasks.load(cfg.data, run_lib.tokenizer(cfg)).problem_type == "multi_label_classification"  # ids
    data = tasks.load(cfg.data, run_lib.tokenizer(cfg), "regression")
    assert (data.label_names, data.train["labels"].tolist()) == (["0", "1"], [[1, 2], [0, 1]])


def test_lists_of_classes_make_a_multi_label_task(tmp_path):
    """GoEmotions' layout (JSON lines, `labels` a list of names or ids, [] for none) makes a multi-label head as
    HF's run_classification reads a list column: per example a 0/1 float32 per class of the training split's
    classes (sorted; ids in numeric order), NaN rows for an unlabelled test split. Comma-separated classes in a
    CSV read so when model.problem_type says; a class outside the set is one line naming file and line."""
    train = [{"text": "so happy and scared", "labels": ["joy", "fear"]}, {"text": "fine", "labels": []},
             {"text": "grr", "labels": ["anger"]}]
    d, cfg, data = _jsonl_task(tmp_path, "emotions", train,
                               [{"text": "yay", "labels": ["joy"]}, {"text": "eek", "labels": ["fear", "joy"]}])
    assert (data.problem_type, data.label_names) == ("multi_label_classification", ["anger", "fear", "joy"])
    assert data.train["labels"].dtype == np.float32
    assert data.train["labels"].tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 0]]
    assert data.eval["labels"].tolist() == [[0, 0, 1], [0, 1, 1]]
    assert np.isnan(data.test["labels"]).all() and data.test["labels"].shape == (1, 3) and not data.test_labelled
    spec = run_lib.resolve(cfg, task=data.task, label_names=data.label_names, problem_type=data.problem_type)
    assert (spec.model.problem_type, spec.model.num_labels, spec.data.labels) == (
        "multi_label_classification", 3, "anger,fear,joy")
    config.validate(spec, 1)
    got = tasks.load_split(spec.data, run_lib.tokenizer(cfg), "validation", spec.model.problem_type)
    np.testing.assert_array_equal(got["labels"], data.eval["labels"])

    (d / "dev.jsonl").write_text('{"text": "yay", "labels": [2]}\n{"text": "eek", "labels": ["love"]}\n')
    with pytest.raises(DataError, match=rf"^{d / 'dev.jsonl'}:2: class 'love' is neither one of \['anger', 'fear', "
                                        r"'joy'\] nor an id below 3"):
        tasks.load(cfg.data, run_lib.tokenizer(cfg))
    with pytest.raises(DataError, match=rf"^{d / 'train.jsonl'}:1: label \['joy', 'fear'\] is a list, which a "
                                        r"multi-label head .* or a regression with several outputs .* reads"):
        tasks.load(cfg.data, run_lib.tokenizer(cfg), "classification")
    (d / "train.jsonl").write_text('{"text": "fine", "labels": []}\n')
    with pytest.raises(DataError, match="no training example names a class"):
        tasks.load(cfg.data, run_lib.tokenizer(cfg))

    for f in d.iterdir():
        f.unlink()
    (d / "train.csv").write_text('text,label\nso happy and scared,"joy, fear"\ngrr,anger\n')
    (d / "dev.csv").write_text("text,label\nyay,anger\n")
    csv_cfg = _cfg(tmp_path, "data.name=csv", f"data.data_dir={d}")
    data = tasks.load(csv_cfg.data, run_lib.tokenizer(cfg), "multi_label_classification")
    assert data.label_names == ["anger", "fear", "joy"] and data.train["labels"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert tasks.load(csv_cfg.data, run_lib.tokenizer(cfg)).label_names == ["anger", "joy, fear"]  # one class each


def test_json_lines_ner_files_with_class_id_tags(tmp_path):
    """`datasets`' conll2003 dump (JSON lines, tags as class ids) loads as the same arrays as the column files
    holding the same sentences; the ids are named by data.labels or by the preset's own id order."""
    d = _write_conll(tmp_path / "columns")
    ids = {name: i for i, name in enumerate(("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC",
                                             "I-MISC"))}
    j = tmp_path / "json"
    j.mkdir()
    for split, sentences in (("train", [("John lives in Paris", "B-PER O O B-LOC"), ("Acme Corp", "B-ORG I-ORG")]),
                             ("validation", [("Oslo is cold", "B-LOC O O")])):
        rows = [{"id": "0", "tokens": ["-DOCSTART-"], "ner_tags": [0]}] + [
            {"id": str(n + 1), "tokens": w.split(), "ner_tags": [ids[t] for t in tags.split()]}
            for n, (w, tags) in enumerate(sentences)]
        (j / f"{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    want = tasks.load(*_cfg2(tmp_path, d))
    got = tasks.load(*_cfg2(tmp_path, j))  # data.name=conll2003 names ids in `datasets`' (and TFDS') order
    assert got.label_names == want.label_names == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    for split in ("train", "eval"):
        for k in want.train:
            np.testing.assert_array_equal(getattr(got, split)[k], getattr(want, split)[k], err_msg=f"{split} {k}")
    with pytest.raises(config.ConfigError, match=rf"^{j / 'train.json'}:2: the tags are class ids; set data.labels "
                                                 r"to their names in id order \(for `datasets`' conll2003: "
                                                 r"data.labels=O,B-PER,I-PER,"):
        tasks.load(*_cfg2(tmp_path, j, "data.name=conll"))
    named = tasks.load(*_cfg2(tmp_path, j, "data.name=conll", "data.labels=" + ",".join(ids)))
    assert named.label_names == list(ids)  # the label set as listed, so ids and head rows agree
    assert named.train["labels"][0][1] == ids["B-PER"]  # [CLS] John
    # conll2003's ids are its own, whatever a run's label set (evaluate passes the trained run's as data.labels)
    again = tasks.load(*_cfg2(tmp_path, j, "data.labels=" + ",".join(want.label_names)))
    np.testing.assert_array_equal(again.eval["labels"], want.eval["labels"])
    with pytest.raises(DataError, match=rf"^{j / 'train.json'}:2: tag id 5 has no name: data.labels names ids 0 "
                                        r"to 3"):
        tasks.load(*_cfg2(tmp_path, j, "data.name=conll", "data.labels=O,B-PER,I-PER,B-ORG"))
    # IOBES names: ids named in that order, the label set gains their IOB2 after them (a name's position stays
    # its id); a dev tag outside it names its line only
    iobes = ("O", "S-PER", "B-LOC", "E-LOC", "S-LOC", "I-LOC")
    (j / "train.json").write_text(json.dumps({"tokens": ["Jo", "in", "New", "York"], "ner_tags": [1, 0, 2, 3]}) + "\n")
    (j / "validation.json").write_text(json.dumps({"tokens": ["Oslo", "Bob"], "tags": ["S-LOC", "S-ORG"]}) + "\n")
    with pytest.raises(DataError, match=rf"^{j / 'validation.json'}:1: tag 'B-ORG' is not in the label set"):
        tasks.load(*_cfg2(tmp_path, j, "data.name=conll", "data.labels=" + ",".join(iobes)))
    (j / "validation.json").write_text(json.dumps({"tokens": ["Oslo", "Bob"], "tags": ["S-LOC", "S-PER"]}) + "\n")
    data = tasks.load(*_cfg2(tmp_path, j, "data.name=conll", "data.labels=" + ",".join(iobes)))
    assert data.label_names == [*iobes, "B-PER"]
    assert data.train["labels"][0][:5].tolist() == [-100, 6, 0, 2, 5]  # [CLS] Jo in New York (IOB2)


def test_tfds_catalog_presets_conll2003_and_sst2(tmp_path):
    """conll2003 and sst2 without data.data_dir read TFDS' catalog (mocked here: offline): conll2003's NER tags are
    ClassLabel ids (named from its features) and its validation split is called dev; SST-2's labels are ids."""
    import tensorflow_datasets as tfds

    rows = {"conll2003": {s: [{"tokens": np.array([b"John", b"flew"]), "ner": np.array([1, 0]),
                               "pos": np.array([0, 1])}] for s in ("train", "dev", "test")},
            "glue": {s: [{"sentence": b"a fine film", "label": -1 if s == "test" else 1, "idx": 0}]
                     for s in ("train", "validation", "test")}}

    def source(builder, split=None, **kw):
        made = {}
        for s, r in rows[builder.name].items():
            made[s] = _Records(r)
            made[s].dataset_info = builder.info
        return made[split] if split else made

    with tfds.testing.mock_data(as_data_source_fn=source):
        data = tasks.load(*_cfg2(tmp_path, "", "data.name=conll2003"))
        assert data.label_names == ["O", "B-PER", "I-PER"]
        assert data.eval["labels"][0][:3].tolist() == [-100, 1, 0] and data.test["labels"][0][1] == 1
        data = tasks.load(*_cfg2(tmp_path, "", "data.name=sst2"))
        assert data.label_names == ["negative", "positive"] and data.train["labels"].tolist() == [1]
        assert data.test["labels"].tolist() == [-100]
    with pytest.raises(DataError, match=r"tensorflow-datasets \S+ has no catalog dataset 'nosuch'; set data.data_dir"):
        tfds_builders.from_catalog("nosuch", tmp_path)


def test_tfds_catalog_offline_fails_in_seconds_with_one_line(tmp_path, monkeypatch):
    """Offline (no name resolves), a catalog download tries DOWNLOAD_TRIES times, not TFDS' 10 with doubling waits
    (3.4 minutes on the dev box); the message names the host and says what to do; TFDS' own setting is restored."""
    import socket
    import time

    from tensorflow_datasets.core.download import downloader

    tries = []

    def offline(host, *args, **kwargs):
        tries.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    start = time.monotonic()
    with pytest.raises(DataError, match=r"'conll2003' could not be prepared \(ConnectionError: .*data\.deepai\.org.*"
                                        r"offline, set data.data_dir to your files' folder instead"):
        tfds_builders.from_catalog("conll2003", tmp_path)
    assert time.monotonic() - start < 20
    assert tries.count("data.deepai.org") == 1 + tfds_builders.DOWNLOAD_TRIES and downloader.MAX_RETRIES == 10


def test_conllu_part_of_speech_loads_with_its_tag_set(tmp_path):
    """UD's files by their names; plain UPOS tags sorted as the label set; a dev tag outside it names the
    sentence's first line (ranges and comments make a word's own line unknowable from its position)."""
    d = tmp_path / "ud"
    d.mkdir()
    (d / "en_ewt-ud-train.conllu").write_text(UD)
    (d / "en_ewt-ud-dev.conllu").write_text(UD.replace("\tPUNCT\t", "\tSYM\t"))
    with pytest.raises(DataError, match=rf"^{d / 'en_ewt-ud-dev.conllu'}:4: tag 'SYM' is not in the label set "
                                        r"\['AUX', 'INTJ', 'PART', 'PUNCT', 'VERB'\]$"):
        tasks.load(*_cfg2(tmp_path, d, "data.name=conll"))
    (d / "en_ewt-ud-dev.conllu").write_text(UD)
    data = tasks.load(*_cfg2(tmp_path, d, "data.name=conll"))
    assert data.label_names == ["AUX", "INTJ", "PART", "PUNCT", "VERB"]
    assert data.eval["labels"][0][:2].tolist() == [-100, 0]  # [CLS] Do


def test_parquet_ner_from_the_hub_loads_and_names_rows(tmp_path):
    """The hub's Parquet shards load as the same arrays as column files; a dev tag outside the label set names
    the file's row; predict takes a Parquet file of word lists as sentences to tag."""
    from jaxbatch import predict

    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    d = _write_conll(tmp_path / "columns")
    hub = tmp_path / "hub"
    hub_parquet(hub / "train-00000-of-00001.parquet", {
        "tokens": [["John", "lives", "in", "Paris"], ["Acme", "Corp"]], "ner_tags": [[1, 0, 0, 5], [3, 4]]},
        {"ner_tags": names})
    hub_parquet(hub / "validation-00000-of-00001.parquet",
                {"tokens": [["Oslo", "is", "cold"]], "ner_tags": [[5, 0, 0]]}, {"ner_tags": names})
    want, got = tasks.load(*_cfg2(tmp_path, d, "data.name=conll")), tasks.load(*_cfg2(tmp_path, hub, "data.name=conll"))
    assert got.label_names == names  # the file's own class order, as `datasets` has it (so an export's id2label)
    to_want = np.array([want.label_names.index(n) for n in names])
    for split in ("train", "eval"):
        mine, theirs = getattr(got, split), getattr(want, split)
        for k in theirs:
            np.testing.assert_array_equal(mine[k] if k != "labels" else np.where(
                mine[k] >= 0, to_want[np.maximum(mine[k], 0)], mine[k]), theirs[k], err_msg=k)
    hub_parquet(hub / "validation-00000-of-00001.parquet", {"tokens": [["Oslo"], ["Bob", "Jr"]],
                                                           "ner_tags": [[5], [0, 7]]}, {"ner_tags": names + ["B-X"]})
    with pytest.raises(DataError, match=r"validation-00000-of-00001.parquet, row 2: tag 'B-X' is not in the label set"):
        tasks.load(*_cfg2(tmp_path, hub, "data.name=conll"))
    assert [s.words for s in predict.read_sentences(hub / "validation-00000-of-00001.parquet", "auto")] == [
        ["Oslo"], ["Bob", "Jr"]]


def test_parquet_text_pairs_keep_the_files_class_order(tmp_path):
    """GLUE's MRPC as the hub stores it: pairs, ClassLabel ids named in the file's order (not sorted), so an
    export's id2label is the dataset's; -1 in the test split is unlabelled."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {"info": {"features": {"label": {"names": ["not_equivalent", "equivalent"], "_type": "ClassLabel"}}}}
    d = tmp_path / "mrpc"
    d.mkdir()
    for split, labels in (("train", [1, 0, 1]), ("validation", [0]), ("test", [-1])):
        table = pa.table({"sentence1": ["a b"] * len(labels), "sentence2": ["a c"] * len(labels), "label": labels})
        pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(meta)}),
                       d / f"{split}-00000-of-00001.parquet")
    data = tasks.load(*_cfg2(tmp_path, d, "data.name=tsv"))
    assert data.label_names == ["not_equivalent", "equivalent"]
    assert data.train["labels"].tolist() == [1, 0, 1] and data.test["labels"].tolist() == [-100]
    assert not data.test_labelled


def test_a_split_in_several_hub_shards_reads_as_one_file(tmp_path):
    """`train-00000-of-00002.parquet` and `-00001-of-00002` are one split: rows in shard order; messages name the
    shard and its own row; an incomplete set of shards is refused."""
    names = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    d = _write_conll(tmp_path / "columns")
    hub = tmp_path / "hub"
    hub_parquet(hub / "train-00000-of-00002.parquet", {"tokens": [["John", "lives", "in", "Paris"]],
                                                       "ner_tags": [[1, 0, 0, 5]]}, {"ner_tags": names})
    hub_parquet(hub / "train-00001-of-00002.parquet", {"tokens": [["Acme", "Corp"]], "ner_tags": [[3, 4]]},
                {"ner_tags": names})
    hub_parquet(hub / "validation" / "0000.parquet", {"tokens": [["Oslo", "is"]], "ner_tags": [[5, 0]]},
                {"ner_tags": names})
    hub_parquet(hub / "validation" / "0001.parquet", {"tokens": [["cold"]], "ner_tags": [[0]]}, {"ner_tags": names})
    got = tasks.load(*_cfg2(tmp_path, hub, "data.name=conll", "data.labels=" + ",".join(names)))
    want = tasks.load(*_cfg2(tmp_path, d, "data.name=conll", "data.labels=" + ",".join(names)))
    np.testing.assert_array_equal(got.train["labels"], want.train["labels"])
    assert got.eval["input_ids"].shape[0] == 2  # validation's two shards: two sentences
    hub_parquet(hub / "train-00001-of-00002.parquet", {"tokens": [["Acme", "Corp"]], "ner_tags": [[3, 9]]},
                {"ner_tags": names})
    with pytest.raises(DataError, match=r"train-00001-of-00002.parquet, row 1: 'ner_tags' holds an id past its 7 "
                                        r"class names"):
        tasks.load(*_cfg2(tmp_path, hub, "data.name=conll"))
    files._SHARD_ROWS.clear()  # a split read by an earlier run: the shards' footers say where its rows are
    assert files.place(hub / "train-*.parquet", 2) == f"{hub / 'train-00001-of-00002.parquet'}, row 1"
    assert files.place(hub / "train-*.parquet", 1) == f"{hub / 'train-00000-of-00002.parquet'}, row 1"
    (hub / "train-00001-of-00002.parquet").rename(hub / "train-00001-of-00003.parquet")
    with pytest.raises(DataError, match=r"2 train files match train-\*.parquet \(train-00000-of-00002.parquet, "
                                        r"train-00001-of-00003.parquet\); keep one file, or one whole set of shards"):
        tasks.load(*_cfg2(tmp_path, hub, "data.name=conll"))


def test_prepared_data_goes_where_the_cache_goes(tmp_path, monkeypatch):
    """Without data.cache_dir, files are prepared under $JAXBATCH_CACHE/tfds (moving the cache off a small home
    folder moves them too); $JAXBATCH_DATA_DIR wins; JAXBATCH_CACHE=off still needs a place for them."""
    monkeypatch.delenv("JAXBATCH_DATA_DIR", raising=False)
    monkeypatch.setenv("JAXBATCH_CACHE", str(tmp_path / "cache"))
    d = _write_conll(tmp_path / "conll")
    cfg = config.build(["model.preset=minilm-l6", "model.pretrained=minilm-l6", "data.seq_len=32",
                        "data.name=conll2003", f"data.data_dir={d}"])
    assert tasks.load(cfg.data, run_lib.tokenizer(cfg)).train["input_ids"].shape == (2, 32)
    assert len(list((tmp_path / "cache" / "tfds" / "jaxbatch_conll").iterdir())) == 1
    monkeypatch.setenv("JAXBATCH_DATA_DIR", str(tmp_path / "data"))
    assert tfds_builders.default_data_dir() == tmp_path / "data"
    monkeypatch.delenv("JAXBATCH_DATA_DIR")
    monkeypatch.setenv("JAXBATCH_CACHE", "off")
    assert tfds_builders.default_data_dir() == Path.home() / ".cache" / "jaxbatch" / "tfds"


def test_documents_encoded_a_chunk_at_a_time_are_encoded_as_one_at_a_time():
    """The tokenizer's batch encoding of plain texts and of texts after a prompt (without the special tokens) gives
    the ids and targets of encoding each document alone, chats among them, whatever the chunk."""
    from conftest import bpe_tokenizer

    tok = bpe_tokenizer(["hello there world, how are you", "fine thanks"], bos=True)
    tok.chat_template = ("{% for m in messages %}<{{ m.role }}> {{ m.content }} {% endfor %}"
                         "{% if add_generation_prompt %}<assistant> {% endif %}")
    docs = [("", "hello there"), ("how are", " you"), ([{"role": "user", "content": "hi"}], "fine"), ("", "x"),
            ("", "world")] * 3
    alone = [tasks._lm_encode(tok)(p, d) for p, d in docs]
    assert alone[0][0][0] == tok.bos_token_id and alone[1][0].count(tok.bos_token_id) == 1  # only the prompt's
    for chunk in (1, 2, 4, 1000):
        assert list(tasks._encoded(docs, tok, chunk=chunk)) == alone, chunk


def test_documents_read_in_shuffled_chunks_are_laid_in_file_order():
    """A local build stores its records shuffled; rows built a chunk of them at a time follow the documents' places
    in the file, for a causal and a masked LM alike (with the masked LM's cut lines counted once)."""
    from conftest import bpe_tokenizer

    from jaxbatch.data import masking

    docs = [("", f"document {i}: " + "to be or not to be " * (i % 5 + 1)) for i in range(50)]
    tok = bpe_tokenizer([d for _, d in docs])
    order = np.random.default_rng(0).permutation(50)
    shuffled = [[(int(i), docs[i]) for i in order[a:a + 7]] for a in range(0, 50, 7)]
    in_order = [list(enumerate(docs))]
    got, want = tasks._pack(shuffled, tok), tasks._pack(in_order, tok)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    tok.mask_token = "<|endoftext|>"  # any id serves as the mask here
    for whole_words in (False, True):
        how = masking.Masking(0.15, tok.mask_token_id, len(tok), (tok.eos_token_id,), whole_words=whole_words)
        for line_by_line in (False, True):
            got, cut = tasks._encoder_stream(shuffled, tok, 8, how, line_by_line)
            want, cut_in_order = tasks._encoder_stream(in_order, tok, 8, how, line_by_line)
            assert cut == cut_in_order and cut == 50 * line_by_line
            assert list(got) == ["tokens", "begins", *[masking.WORD_STARTS] * whole_words]
            for k in want:
                np.testing.assert_array_equal(got[k], want[k], err_msg=k)
