"""A trained model in use: `predict` agrees with `evaluate`, across meshes, and from an exported HF folder;
user datasets with their own tag sets and classes train end to end."""

import dataclasses
import json
import logging

import jax
import numpy as np
import pytest

from conftest import tiny_config
from jaxbatch import cli, config, evaluate, metrics, predict, run as run_lib, train
from jaxbatch.data import synthetic, tasks

MINILM_TOKENIZER = ["data.tokenizer=minilm-l6", "model.vocab_size=30522"]


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory):
    """A tiny NER model trained a little on the generated corpus (2x2x2 mesh), plus its dev sentences as a
    CoNLL test file."""
    root = tmp_path_factory.mktemp("ner")
    result = train.train(tiny_config("train.steps=40", "train.eval_every=0", "train.batch_size=32",
                                     "optim.learning_rate=3e-3", "data.seq_len=32", "mesh.data=2", "mesh.fsdp=2",
                                     "mesh.model=2", f"train.run_dir={root / 'run'}"))
    sentences = synthetic.ner_corpus(40, seed=7)  # names seen in training, so a tiny model tags some
    (root / "data").mkdir()
    (root / "data" / "test.txt").write_text("\n".join("".join(f"{w} {t}\n" for w, t in zip(*s)) for s in sentences))
    return root, result, sentences


def _tags_from_evaluate(restored, data_dir):
    spec = restored.run.spec
    data_cfg = dataclasses.replace(spec.data, name="conll", data_dir=str(data_dir))
    arrays = tasks.load_split(data_cfg, restored.tokenizer, "test")
    names = spec.data.labels.split(",")
    result = evaluate.evaluate(restored.run, restored.params, arrays, names, "token")
    return metrics.aligned_tags(result["predictions"], arrays["labels"], names)[1], result


def test_predict_equals_evaluate_on_any_mesh_and_from_an_export(ner_run, tmp_path, capsys):
    root, trained, sentences = ner_run
    sharded = run_lib.restore(root / "run", ["mesh.data=2", "mesh.fsdp=2", "mesh.model=2"])
    assert sharded.step == 40 and sharded.finished and sharded.run.mesh.shape["model"] == 2
    eval_tags, result = _tags_from_evaluate(sharded, root / "data")
    assert result["entity_f1"] > 0.3  # it learnt something, so agreement is not trivially all-O
    words = [predict.from_words(w) for w, _ in sentences]
    on_mesh = predict.predict(sharded, words)
    assert [r["tags"] for r in on_mesh] == eval_tags
    single = predict.predict(run_lib.restore(root / "run", devices=jax.devices()[:1]), words)
    assert [r["tags"] for r in single] == eval_tags
    for a, b in zip(single, on_mesh):
        assert [e["label"] for e in a["entities"]] == [e["label"] for e in b["entities"]]
        np.testing.assert_allclose([e["score"] for e in a["entities"]], [e["score"] for e in b["entities"]], atol=1e-5)
    assert cli.main(["export", str(root / "run"), str(tmp_path / "hf")]) == 0
    exported = predict.predict(run_lib.restore(tmp_path / "hf"), words)
    assert [r["tags"] for r in exported] == eval_tags
    # the CLI: CoNLL input, CoNLL and JSON output; evaluate prints the same report as training
    capsys.readouterr()
    assert cli.main(["predict", str(root / "run"), "--input", str(root / "data" / "test.txt"),
                     "--output-format", "conll"]) == 0
    blocks = capsys.readouterr().out.strip().split("\n\n")
    assert [[line.split()[1] for line in b.splitlines()] for b in blocks] == eval_tags
    assert cli.main(["predict", str(root / "run"), "--input", str(root / "data" / "test.txt")]) == 0
    lines = (root / "data" / "test.txt").read_text().splitlines()
    for r in (json.loads(x) for x in capsys.readouterr().out.splitlines()):  # each sentence's first line
        assert lines[r["line"] - 1].split()[0] == r["text"].split()[0]
        assert r["line"] == 1 or not lines[r["line"] - 2].strip()
    assert cli.main(["evaluate", str(root / "run"), "--data-dir", str(root / "data"), "--data-name", "conll"]) == 0
    out = capsys.readouterr().out
    assert f"entity F1 {result['entity_f1']:.4f}" in out and "micro avg" in out and "B-PER" in out


def test_a_long_input_is_predicted_a_chunk_at_a_time_as_at_once(ner_run, monkeypatch):
    """Only a chunk's arrays are held: chunks of 7 of the 40 sentences give the tags and scores of one pass, and a
    bad line in the last chunk is named before any chunk is predicted."""
    from jaxbatch.errors import DataError

    root, _, sentences = ner_run
    restored = run_lib.restore(root / "run")
    words = [predict.from_words(w) for w, _ in sentences]
    whole = predict.predict(restored, words)
    monkeypatch.setattr(predict, "CHUNK", 7)
    calls = []
    monkeypatch.setattr(predict, "_tag", lambda r, s, real=predict._tag: calls.append(len(s)) or real(r, s))
    chunked = predict.predict(restored, words)
    assert calls == [7] * 5 + [5] and [r["tags"] for r in chunked] == [r["tags"] for r in whole]
    for a, b in zip(chunked, whole):
        np.testing.assert_allclose([e["score"] for e in a["entities"]], [e["score"] for e in b["entities"]], atol=1e-5)
    calls.clear()
    with pytest.raises(DataError, match=":40: a pair of texts"):
        predict.predict(restored, words[:-1] + [dataclasses.replace(words[-1], line=40, pair=words[0])], "in.txt")
    assert calls == []


def test_a_text_file_is_read_a_chunk_at_a_time_at_each_pass(ner_run, tmp_path, monkeypatch):
    """predict's memory does not grow with its input: a text file's Sentences (~3 KB each: words and offsets) are
    built a chunk at a time, at each pass over the file (the whole input checked, then labelled); a pipe, which can
    be read once, is held as its lines and gives the same records."""
    import gc
    import os
    import threading
    import weakref

    root, _, sentences = ner_run
    restored = run_lib.restore(root / "run")
    text = "".join(" ".join(w) + "\n\n" for w, _ in sentences)  # 40 sentences, a blank line after each
    (tmp_path / "in.txt").write_text(text)
    lines = [predict.split_words(" ".join(w), 2 * i + 1) for i, (w, _) in enumerate(sentences)]
    whole = predict.predict(restored, lines)
    monkeypatch.setattr(predict, "CHUNK", 7)
    made, alive = [], []  # every Sentence built; the ones alive as each chunk is tagged

    def split_words(*args, real=predict.split_words):
        made.append(weakref.ref(sentence := real(*args)))
        return sentence

    def tag(restored, chunk, real=predict._tag):
        gc.collect()
        alive.append(sum(m() is not None for m in made))
        return real(restored, chunk)

    monkeypatch.setattr(predict, "split_words", split_words)
    monkeypatch.setattr(predict, "_tag", tag)
    got = predict.predict(restored, predict.read_sentences(tmp_path / "in.txt", "auto"))
    assert got == whole and len(made) == 2 * 40 and max(alive) <= 7 and len(alive) == 6
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_text(text))
    writer.start()
    from_pipe = predict.read_sentences(pipe, "auto")
    writer.join()
    assert predict.predict(restored, from_pipe) == whole


def test_predict_writes_each_chunk_as_soon_as_it_is_predicted(ner_run, capsys, monkeypatch):
    """`jaxbatch predict big.txt | head` sees records as chunks are done, not once the whole input is: each chunk's
    records are on stdout before the next chunk is tagged."""
    root = ner_run[0]
    monkeypatch.setattr(predict, "CHUNK", 7)
    written = []
    monkeypatch.setattr(predict, "_tag", lambda r, s, real=predict._tag:
                        written.append(capsys.readouterr().out.count("\n")) or real(r, s))
    capsys.readouterr()
    assert cli.main(["predict", str(root / "run"), "--input", str(root / "data" / "test.txt")]) == 0
    written.append(capsys.readouterr().out.count("\n"))
    assert written[0] == 0 and set(written[1:-1]) == {7} and 0 < written[-1] <= 7 and len(written) > 3


def test_json_lines_sentences_predict_and_evaluate_as_column_files_do(ner_run, tmp_path, capsys):
    """`datasets`-style JSON lines: `predict` reads word lists with or without tags, `evaluate` a tagged test
    file (class ids named by data.labels, in its order), and both agree with the column file's results."""
    root, _, sentences = ner_run
    restored = run_lib.restore(root / "run")
    eval_tags, result = _tags_from_evaluate(restored, root / "data")
    names = restored.run.spec.data.labels.split(",")
    d = tmp_path / "json"
    d.mkdir()
    (d / "test.json").write_text("".join(json.dumps({"tokens": w, "ner_tags": [names.index(t) for t in tags]}) + "\n"
                                         for w, tags in sentences))
    (d / "words.jsonl").write_text("".join(json.dumps({"words": w}) + "\n" for w, _ in sentences))
    capsys.readouterr()
    for name in ("test.json", "words.jsonl"):
        assert cli.main(["predict", str(root / "run"), "--input", str(d / name), "--output-format", "conll"]) == 0
        blocks = capsys.readouterr().out.strip().split("\n\n")
        assert [[line.split()[1] for line in b.splitlines()] for b in blocks] == eval_tags, name
    assert cli.main(["evaluate", str(root / "run"), "--data-dir", str(d), "--data-name", "conll"]) == 0
    assert f"entity F1 {result['entity_f1']:.4f}" in capsys.readouterr().out


def test_predict_text_lines_gives_spans_with_offsets(ner_run, capsys, monkeypatch):
    root, _, _ = ner_run
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("Anna Berg flew to Paris on Monday.\n\n  \nmarkets were quiet .\n"))
    assert cli.main(["predict", str(root / "run")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in records] == ["Anna Berg flew to Paris on Monday.", "markets were quiet ."]
    assert [r["line"] for r in records] == [1, 4]  # blank lines skipped, records still point at their lines
    assert len(records[0]["tags"]) == 8  # "Monday" and "." are separate words
    for r in records:
        for e in r["entities"]:
            assert r["text"][e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1
    assert cli.main(["predict", str(root / "none")]) == 2
    assert "no such run dir" in capsys.readouterr().err


@pytest.mark.parametrize("pieces,budget,expected", [
    ([1, 1, 1], 5, [(0, 3)]),  # fits: one window
    ([1] * 10, 4, [(0, 4), (2, 6), (4, 8), (6, 10)]),  # each starts half way through the one before
    ([2, 9, 1, 1], 4, [(0, 1), (1, 2), (2, 4)]),  # a word longer than the budget is a window of its own
])
def test_windows_cover_every_word_within_the_budget(pieces, budget, expected):
    assert predict.windows(np.array(pieces), budget) == expected


def test_evaluate_reads_what_it_says_it_reads(ner_run, tmp_path, capsys):
    """The run trained on generated data: without --data-dir its split is generated again (and the report says
    so); a folder with the generated kind is refused, not ignored; an exported token model meets a sequence
    dataset with an error, not a confusing tag error."""
    root, _, _ = ner_run
    assert cli.main(["evaluate", str(root / "run"), "--split", "validation"]) == 0
    assert capsys.readouterr().out.startswith("validation (256 examples, generated): ")
    assert cli.main(["evaluate", str(root / "run"), "--data-dir", str(root / "data")]) == 2
    assert "data.name=synthetic_ner is generated, not read from" in capsys.readouterr().err
    assert cli.main(["evaluate", str(root / "run"), "--data-dir", str(root / "data"), "--data-name", "tsv"]) == 2
    assert "is a token model but data.name=tsv is a sequence dataset" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [("train.batch_size=0", "train.batch_size must be > 0, got 0"),
                                               ("data.seq_len=-2", "data.seq_len must be > 0, got -2"),
                                               ("--step=999", "no checkpoint at step 999 (it has "),
                                               ("distributed.num_processes=2", "needs distributed.coordinator")])
def test_inference_settings_are_checked(ner_run, capsys, override, message):
    root, _, _ = ner_run
    assert cli.main(["predict", str(root / "run"), "--input", str(root / "data" / "test.txt"), override]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_pairs_of_texts_are_refused_by_a_token_classifier(ner_run, capsys, tmp_path):
    """A question file (or sentence pairs) given to a tagger labelled nothing: SQuAD records carry no words of
    their own, so each record came back with `tags: []`."""
    root, _, _ = ner_run
    (tmp_path / "q.jsonl").write_text('{"question": "Who lives in Paris?", "context": "John lives in Paris."}\n')
    assert cli.main(["predict", str(root / "run"), "--input", str(tmp_path / "q.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "q.jsonl:1: a pair of texts (question and context, or two sentences)" in err and err.count("\n") == 1
    (tmp_path / "plain.txt").write_text("Who lives in Paris?\n")  # and a question answering model wants pairs
    with pytest.raises(tasks.DataError, match=r"plain.txt:1: a question answering model reads 'question<TAB>context'"):
        predict._check_pairs("qa", [predict._paired(s) for s in predict.read_sentences(tmp_path / "plain.txt", "auto")],
                             "plain.txt")


def test_standard_input_is_read_as_files_are(ner_run, capsys, monkeypatch):
    """Bytes that are not UTF-8 on a pipe were decoded by Python into surrogates, which the tokenizer refused in
    a traceback; a byte-order mark is not text."""
    import io

    root, _, _ = ner_run
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"John lives\n\xff\n")))
    assert cli.main(["predict", str(root / "run")]) == 2
    assert capsys.readouterr().err.strip() == ("jaxbatch: DataError: stdin:2: not UTF-8 (byte 0xff at offset 11); "
                                               "re-encode the text as UTF-8")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("\ufeffJohn lives\n".encode())))
    assert cli.main(["predict", str(root / "run")]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "John lives"


def test_a_file_where_an_override_goes_is_named_before_stdin_is_read(ner_run, capsys, monkeypatch):
    """`jaxbatch predict RUN input.txt` (no --input) must not wait on the terminal for text."""
    root, _, _ = ner_run
    monkeypatch.setattr("sys.stdin", None)  # reading it would raise, not report
    assert cli.main(["predict", str(root / "run"), str(root / "data" / "test.txt")]) == 2
    err = capsys.readouterr().err
    assert "test.txt' is not key=value" in err and "--input" in err and err.count("\n") == 1, err
    assert cli.main(["predict", str(root / "run"), "model.hidden_size=8"]) == 2
    assert "'model.hidden_size=8': only mesh.*" in capsys.readouterr().err


def test_opening_a_run_for_inference_warns_of_nothing(ner_run, caplog):
    with caplog.at_level(logging.WARNING):
        run_lib.restore(ner_run[0] / "run")
    assert [r.getMessage() for r in caplog.records] == []  # orbax: "Given directory is read only", filtered


def test_a_sentence_longer_than_seq_len_is_labelled_word_by_word_from_windows(ner_run):
    """Each word's tag and score are the ones it gets when its most central window is predicted alone, and
    a word without word pieces (a zero-width space) is O without shifting its neighbours' tags."""
    root, _, sentences = ner_run
    restored = run_lib.restore(root / "run")
    words = [w for ws, _ in sentences[:12] for w in ws]
    pieces = predict._pieces(restored.tokenizer, [words])[0]
    spans = predict.windows(pieces, restored.run.spec.data.seq_len - 2)
    assert len(spans) > 3 and pieces.sum() > 2 * restored.run.spec.data.seq_len
    (record,) = predict.predict(restored, [predict.from_words(words)])
    alone = predict.predict(restored, [predict.from_words(words[a:b]) for a, b in spans])
    assert len(record["tags"]) == len(words)
    for i in range(len(words)):
        w = max(range(len(spans)), key=lambda k: (predict._context(i, *spans[k], len(words)) if
                                                  spans[k][0] <= i < spans[k][1] else -1, -k))
        assert record["tags"][i] == alone[w]["tags"][i - spans[w][0]], i
    for e in record["entities"]:
        assert record["text"][e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1
    plain, spaced = predict.predict(restored, [predict.from_words(sentences[0][0]),
                                               predict.from_words([sentences[0][0][0], "\u200b", *sentences[0][0][1:]])])
    assert spaced["tags"] == [plain["tags"][0], "O", *plain["tags"][1:]]


def test_custom_tags_and_three_classes_train_end_to_end(tmp_path, capsys):
    d = tmp_path / "drugs"
    d.mkdir()
    rng = np.random.default_rng(0)
    drugs, doses = ["aspirin", "ibuprofen", "metformin", "warfarin"], ["5 mg", "10 mg", "two tablets"]

    def sentence():
        drug, dose = rng.choice(drugs), rng.choice(doses).split()
        words = ["take", *dose, "of", drug, "daily"]
        tags = ["O", "B-DOSE", *["I-DOSE"] * (len(dose) - 1), "O", "B-DRUG", "O"]
        return "".join(f"{w} {t}\n" for w, t in zip(words, tags))

    for name, n in (("train.txt", 64), ("dev.txt", 16)):
        (d / name).write_text("\n".join(sentence() for _ in range(n)))
    result = train.train(tiny_config("data.name=conll", f"data.data_dir={d}", f"data.cache_dir={tmp_path / 'c'}",
                                     *MINILM_TOKENIZER, "train.steps=20", "train.eval_every=0", "train.batch_size=16",
                                     "optim.learning_rate=3e-3", "data.seq_len=16", f"train.run_dir={tmp_path / 'r'}"))
    report = result.summary["final_eval"]["entities"]
    assert set(report) >= {"DRUG", "DOSE"} and report["DRUG"]["support"] == 16
    assert result.summary["final_eval"]["entity_f1"] > 0.8
    assert result.spec.data.labels == "O,B-DOSE,I-DOSE,B-DRUG,I-DRUG"
    (d / "test.txt").write_text("take O\naspirin B-DRUG\nwith O\nsoup B-FOOD\n")  # a tag the model never saw
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "r"), "--data-dir", str(d)]) == 2
    assert "tag 'B-FOOD' is not in the label set" in capsys.readouterr().err  # ... and the hint below works
    assert cli.main(["evaluate", str(tmp_path / "r"), "--data-dir", str(d), "data.unknown_label=O"]) == 0
    assert "test (1 examples" in capsys.readouterr().out

    t = tmp_path / "reviews"
    t.mkdir()
    words = {"positive": ["great", "superb", "lovely"], "neutral": ["okay", "average", "fine"],
             "negative": ["awful", "bad", "dreadful"]}
    rows = lambda n: "".join(f"the film was {rng.choice(words[c])}\t{c}\n"  # noqa: E731
                             for c in rng.choice(list(words), n))
    (t / "train.tsv").write_text(rows(96))
    (t / "dev.tsv").write_text(rows(24))
    result = train.train(tiny_config("data.name=tsv", f"data.data_dir={t}", f"data.cache_dir={tmp_path / 'c'}",
                                     *MINILM_TOKENIZER, "train.steps=50", "train.eval_every=0", "train.batch_size=16",
                                     "optim.learning_rate=3e-3", "data.seq_len=16", f"train.run_dir={tmp_path / 's'}"))
    assert result.spec.model.task == "sequence" and result.spec.model.num_labels == 3
    assert result.summary["final_eval"]["accuracy"] > 0.9
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "s"), "--input", str(t / "dev.tsv")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["line"] for r in records] == list(range(1, 25))
    assert len(records) == 24 and all(set(r["probabilities"]) == {"negative", "neutral", "positive"} for r in records)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in records)
    gold = [line.split("\t")[1] for line in (t / "dev.tsv").read_text().splitlines()]
    assert np.mean([r["label"] == g for r, g in zip(records, gold)]) == pytest.approx(
        result.summary["final_eval"]["accuracy"])
    (t / "test.tsv").write_text("index\tsentence\n0\tthe film was great\n1\tthe film was bad\n")  # GLUE's hidden labels
    assert cli.main(["evaluate", str(tmp_path / "s"), "--split", "test"]) == 2  # not "loss 0, accuracy 0"
    err = capsys.readouterr().err
    assert f"{t / 'test.tsv'}: the test split has no labels, so there is nothing to score" in err, err


def test_plain_tags_part_of_speech_train_evaluate_and_predict_without_entities(tmp_path, capsys):
    """A tag set without entity prefixes (part of speech, as HF's run_ner --task_name pos) trains as tags per
    word: token accuracy and the per-tag report, no entity F1 (so checkpoint.best_metric cannot name it), and
    predict gives each word's tag and probability."""
    d = tmp_path / "pos"
    d.mkdir()
    rng = np.random.default_rng(1)
    lexicon = {"DT": ["the", "a"], "NN": ["dog", "cat", "film"], "VBZ": ["runs", "sleeps"], "JJ": ["big", "red"]}

    def sentence():
        tags = ["DT", "JJ", "NN", "VBZ"] if rng.random() < 0.5 else ["DT", "NN", "VBZ"]
        return "".join(f"{rng.choice(lexicon[t])}\tX\t{t}\n" for t in tags)

    for name, n in (("train.txt", 64), ("dev.txt", 16)):
        (d / name).write_text("\n".join(sentence() for _ in range(n)))
    overrides = ["data.name=conll", f"data.data_dir={d}", f"data.cache_dir={tmp_path / 'c'}", *MINILM_TOKENIZER,
                 "train.steps=20", "train.eval_every=0", "train.batch_size=16", "optim.learning_rate=3e-3",
                 "data.seq_len=16", f"train.run_dir={tmp_path / 'r'}"]
    with pytest.raises(config.ConfigError, match="checkpoint.best_metric='entity_f1' is not reported"):
        train.train(tiny_config(*overrides, "checkpoint.best_metric=entity_f1", f"train.run_dir={tmp_path / 'x'}"))
    result = train.train(tiny_config(*overrides))
    final = result.summary["final_eval"]
    assert result.spec.data.labels == "DT,JJ,NN,VBZ" and "entity_f1" not in final
    assert final["accuracy"] > 0.9 and final["tokens"]["NN"]["support"] == 16
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "r"), "--data-dir", str(d), "--split", "validation"]) == 0
    out = capsys.readouterr().out
    assert f"accuracy {final['accuracy']:.4f}" in out and "token-level" in out and "entity" not in out
    assert cli.main(["predict", str(tmp_path / "r"), "--input", str(d / "dev.txt")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    gold = [[line.split("\t")[2] for line in block.splitlines()] for block in (d / "dev.txt").read_text().split("\n\n")]
    assert len(records) == 16 and all("entities" not in r and len(r["scores"]) == len(r["tags"]) for r in records)
    assert np.mean([p == g for r, t in zip(records, gold) for p, g in zip(r["tags"], t)]) == pytest.approx(
        final["accuracy"])


def test_text_pairs_train_and_predict_as_evaluate_reads_them(tmp_path, capsys, monkeypatch):
    """A GLUE-style pair task (sentence1, sentence2): training reads both texts with their token types,
    predict gives each pair's probabilities exactly as evaluate's arrays do, from a file or from
    `first<TAB>second` lines; a single text among pairs, or splits that disagree, is one line."""
    import io

    d = tmp_path / "rte"
    d.mkdir()
    rng = np.random.default_rng(0)
    animals = ["cat", "dog", "bird", "fish"]
    rows = [(a, rng.choice(animals) if rng.random() < 0.5 else a) for a in rng.choice(animals, 40)]
    header = "index\tsentence1\tsentence2\tlabel\n"
    lines = [f"{i}\tthe {a} runs\ta {b} sleeps\t{'same' if a == b else 'other'}\n" for i, (a, b) in enumerate(rows)]
    (d / "train.tsv").write_text(header + "".join(lines[:32]))
    (d / "dev.tsv").write_text(header + "".join(lines[32:]))
    run_dir = tmp_path / "r"
    data = tasks.load(tiny_config("data.name=tsv", f"data.data_dir={d}", f"data.cache_dir={tmp_path / 'c'}",
                                  *MINILM_TOKENIZER).data, run_lib.tokenizer(tiny_config(*MINILM_TOKENIZER)))
    assert (data.train["token_type_ids"].sum(1) == 4).all()  # "a <animal> sleeps [SEP]", one piece each
    train.train(tiny_config("data.name=tsv", f"data.data_dir={d}", f"data.cache_dir={tmp_path / 'c'}",
                            *MINILM_TOKENIZER, "train.steps=2", "train.eval_every=0", "train.batch_size=8",
                            f"train.run_dir={run_dir}"))
    restored = run_lib.restore(run_dir)
    arrays = tasks.load_split(restored.run.spec.data, restored.tokenizer, "validation")
    _, expected = evaluate.outputs(restored.run, restored.params, arrays)
    capsys.readouterr()
    assert cli.main(["predict", str(run_dir), "--input", str(d / "dev.tsv")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["text"], r["text_pair"]) for r in records] == [
        (f"the {a} runs", f"a {b} sleeps") for a, b in rows[32:]]
    np.testing.assert_allclose([r["probabilities"]["same"] for r in records],
                               expected["probs"][:, 1], atol=2e-6)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"the {rows[32][0]} runs\ta {rows[32][1]} sleeps\n"))
    assert cli.main(["predict", str(run_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["probabilities"] == records[0]["probabilities"]
    monkeypatch.setattr("sys.stdin", io.StringIO("the cat runs\ta cat sleeps\nthe cat runs\n"))
    assert cli.main(["predict", str(run_dir)]) == 2
    assert "line 2: a single text among text pairs" in capsys.readouterr().err
    (d / "dev.tsv").write_text("sentence\tlabel\nthe cat runs\tsame\n")
    with pytest.raises(tasks.DataError, match=r"the train split\(s\) hold text pairs and the others single texts"):
        tasks.load(dataclasses.replace(restored.run.spec.data, cache_dir=str(tmp_path / "c")), restored.tokenizer)


def test_a_regression_task_trains_reports_correlations_and_predicts_scores(tmp_path, capsys):
    """STS-B's layout (pairs, a `score` column): the run trains a one-score head on the mean squared error,
    reports Pearson and Spearman (scipy's, on evaluate's own scores) instead of accuracy, keeps the best
    checkpoint by Pearson, and `predict` prints each pair's score as evaluate computes it."""
    from scipy import stats

    d = tmp_path / "sts"
    d.mkdir()
    rng = np.random.default_rng(0)
    animals = ["cat", "dog", "bird", "fish"]
    header = "index\tsentence1\tsentence2\tscore\n"
    pairs = [(a, rng.choice(animals)) for a in rng.choice(animals, 48)]
    lines = [f"{i}\tthe {a} runs\ta {b} sleeps\t{5.0 * (a == b) + rng.uniform(0, 0.5):.3f}\n"
             for i, (a, b) in enumerate(pairs)]
    (d / "train.tsv").write_text(header + "".join(lines[:32]))
    (d / "dev.tsv").write_text(header + "".join(lines[32:]))
    overrides = ["data.name=tsv", f"data.data_dir={d}", f"data.cache_dir={tmp_path / 'c'}", *MINILM_TOKENIZER,
                 "train.batch_size=8", "train.eval_every=3", f"train.run_dir={tmp_path / 'r'}"]
    with pytest.raises(run_lib.ConfigError, match="best_metric='accuracy' is not reported for this regression task"):
        train.train(tiny_config(*overrides, "train.steps=6", "checkpoint.best_metric=accuracy"))
    result = train.train(tiny_config(*overrides, "train.steps=6", "checkpoint.best_metric=pearson"))
    final = result.summary["final_eval"]
    assert result.spec.model.problem_type == "regression" and "accuracy" not in final
    restored = run_lib.restore(tmp_path / "r")
    best = max(result.summary["evals"], key=lambda e: e["pearson"])
    assert restored.step == best["step"]
    arrays = tasks.load_split(restored.run.spec.data, restored.tokenizer, "validation", "regression")
    got = evaluate.evaluate(restored.run, restored.params, arrays, [], "sequence")
    scores, gold = got["predictions"], arrays["labels"]
    assert got["pearson"] == pytest.approx(stats.pearsonr(scores, gold)[0], rel=1e-6)
    assert got["pearson"] == pytest.approx(best["pearson"], rel=1e-5)
    assert got["spearmanr"] == pytest.approx(stats.spearmanr(scores, gold)[0], rel=1e-6)
    assert got["loss"] == pytest.approx(float(np.mean((scores - gold) ** 2)), rel=1e-5)
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "r"), "--input", str(d / "dev.tsv")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(set(r) == {"line", "text", "text_pair", "score"} for r in records)
    np.testing.assert_allclose([r["score"] for r in records], scores, atol=2e-6)


def test_a_regression_of_several_outputs_trains_reports_each_and_predicts_scores(tmp_path, capsys):
    """JSON lines whose label lists two scores per text: the run trains a two-output head on the mean squared
    error over (text, output), reports each output's correlations and error (scipy's, on evaluate's own scores)
    and their mean, keeps the best checkpoint by the mean Pearson, `predict` prints each output's score as
    evaluate computes it, and `export` writes the head with its output names."""
    from scipy import stats

    d = tmp_path / "vad"
    d.mkdir()
    rng = np.random.default_rng(1)
    words = ["happy", "sad", "calm", "angry"]
    valence, arousal = {"happy": 4, "sad": 1, "calm": 3, "angry": 1}, {"happy": 3, "sad": 1, "calm": 0, "angry": 4}
    texts = [" ".join(rng.choice(words, 3)) for _ in range(48)]
    lines = [json.dumps({"text": t, "label": [round(np.mean([valence[w] for w in t.split()]) + rng.uniform(0, .3), 3),
                                              round(np.mean([arousal[w] for w in t.split()]) + rng.uniform(0, .3), 3)]})
             for t in texts]
    (d / "train.jsonl").write_text("\n".join(lines[:32]) + "\n")
    (d / "dev.jsonl").write_text("\n".join(lines[32:]) + "\n")
    overrides = ["data.name=jsonl", f"data.data_dir={d}", f"data.cache_dir={tmp_path / 'c'}", *MINILM_TOKENIZER,
                 "train.batch_size=8", "train.eval_every=3", f"train.run_dir={tmp_path / 'r'}",
                 "data.labels=valence,arousal", "train.steps=6", "checkpoint.best_metric=pearson"]
    result = train.train(tiny_config(*overrides))
    assert (result.spec.model.problem_type, result.spec.model.num_labels) == ("regression", 2)
    restored = run_lib.restore(tmp_path / "r")
    best = max(result.summary["evals"], key=lambda e: e["pearson"])
    assert restored.step == best["step"]
    arrays = tasks.load_split(restored.run.spec.data, restored.tokenizer, "validation", "regression")
    got = evaluate.evaluate(restored.run, restored.params, arrays, ["valence", "arousal"], "sequence")
    scores, gold = got["predictions"], arrays["labels"]
    assert scores.shape == gold.shape == (16, 2)
    for k, name in enumerate(["valence", "arousal"]):
        assert got["outputs"][name]["pearson"] == pytest.approx(stats.pearsonr(scores[:, k], gold[:, k])[0], rel=1e-6)
        assert got["outputs"][name]["mse"] == pytest.approx(float(np.mean((scores[:, k] - gold[:, k]) ** 2)), rel=1e-5)
    assert got["pearson"] == pytest.approx(np.mean([o["pearson"] for o in got["outputs"].values()]), rel=1e-9)
    assert got["pearson"] == pytest.approx(best["pearson"], rel=1e-5)
    assert got["loss"] == pytest.approx(float(np.mean((scores - gold) ** 2)), rel=1e-5)
    capsys.readouterr()
    assert cli.main(["predict", str(tmp_path / "r"), "--input", str(d / "dev.jsonl")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(set(r) == {"line", "text", "scores"} and list(r["scores"]) == ["valence", "arousal"] for r in records)
    np.testing.assert_allclose([list(r["scores"].values()) for r in records], scores, atol=2e-6)
    assert cli.main(["export", str(tmp_path / "r"), str(tmp_path / "hf")]) == 0
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (written["problem_type"], written["id2label"]) == ("regression", {"0": "valence", "1": "arousal"})


def test_a_multi_label_task_trains_reports_f1_and_predicts_label_sets(tmp_path, capsys):
    """GoEmotions' layout (JSON lines, a list of classes per text, [] for none): the run trains a sigmoid per
    class on HF's binary cross-entropy, reports per-(text, class) accuracy, micro/macro F1 and exact match as
    scikit-learn computes them from evaluate's own decisions, keeps the best checkpoint by macro F1, and
    `predict` prints each text's label set (the classes above probability 1/2) and every probability."""
    from sklearn.metrics import accuracy_score, f1_score

    d = tmp_path / "topics"
    d.mkdir()
    rng = np.random.default_rng(0)
    topics = {"food": ["bread", "soup"], "music": ["song", "band"], "sport": ["ball", "goal"]}

    def line():
        on = [t for t in topics if rng.random() < 0.45]
        words = ["the", "day", "was"] + [str(rng.choice(topics[t])) for t in on]
        rng.shuffle(words)
        return json.dumps({"text": " ".join(words), "labels": on}) + "\n"

    (d / "train.jsonl").write_text("".join(line() for _ in range(48)))
    (d / "dev.jsonl").write_text("".join(line() for _ in range(24)))
    run_dir = tmp_path / "r"
    overrides = ["data.name=jsonl", f"data.data_dir={d}", f"data.cache_dir={tmp_path / 'c'}", *MINILM_TOKENIZER,
                 "data.buckets=2", "optim.learning_rate=5e-3", "train.batch_size=8", "train.steps=30",
                 "train.eval_every=10", f"train.run_dir={run_dir}", "checkpoint.best_metric=macro_f1"]
    result = train.train(tiny_config(*overrides))
    assert result.spec.model.problem_type == "multi_label_classification" and result.data.label_names == list(topics)
    restored = run_lib.restore(run_dir)
    best = max(e["macro_f1"] for e in result.summary["evals"])
    assert best > 0.5  # it learned which words name which topics: the scores below are not all zeros
    assert restored.step in [e["step"] for e in result.summary["evals"] if e["macro_f1"] == best]
    arrays = tasks.load_split(restored.run.spec.data, restored.tokenizer, "validation", "multi_label_classification")
    got = evaluate.evaluate(restored.run, restored.params, arrays, list(topics), "sequence")
    preds, gold = got["predictions"], arrays["labels"].astype(int)
    assert got["macro_f1"] == pytest.approx(best, rel=1e-6)
    assert got["micro_f1"] == pytest.approx(f1_score(gold, preds, average="micro"), rel=1e-6)
    assert got["macro_f1"] == pytest.approx(f1_score(gold, preds, average="macro", zero_division=0), rel=1e-6)
    assert got["exact_match"] == pytest.approx(accuracy_score(gold, preds), rel=1e-6)
    assert got["accuracy"] == pytest.approx(float(np.mean(preds == gold)), rel=1e-6)
    capsys.readouterr()
    assert cli.main(["predict", str(run_dir), "--input", str(d / "dev.jsonl")]) == 0
    records = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert [r["labels"] for r in records] == [[t for t, y in zip(topics, row) if y] for row in preds]
    p = np.array([[r["probabilities"][t] for t in topics] for r in records])
    bce = -np.mean(gold * np.log(p) + (1 - gold) * np.log(1 - p))
    assert got["loss"] == pytest.approx(bce, rel=1e-4)


def test_a_masked_lm_fills_masks_as_transformers_fill_mask_pipeline_does(tmp_path, capsys, monkeypatch):
    """A BertForMaskedLM folder (random, its word-level tokenizer beside it): `jaxbatch predict` gives each
    mask's five likeliest tokens, their probabilities and filled-in sequences as transformers' fill-mask
    pipeline does, on one mesh and another; a line without a mask token is one error naming it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxbatch.models import bert

    words = [f"w{i}" for i in range(40)]
    tokenizer = bert.tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])
    torch.manual_seed(3)
    model = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64))
    with torch.no_grad():
        model.cls.predictions.bias.normal_()
    model.save_pretrained(tmp_path / "mlm")
    tokenizer.save_pretrained(tmp_path / "mlm")
    lines = ["w1 w2 [MASK] w4", "w7 [MASK] w9 w10 [MASK] w12 w13", "[MASK]"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    fill = transformers.pipeline("fill-mask", model=str(tmp_path / "mlm"), top_k=5)
    for mesh in ([], ["mesh.data=4", "mesh.model=2"]):
        assert cli.main(["predict", str(tmp_path / "mlm"), "--input", str(tmp_path / "in.txt"), *mesh]) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["line"] for r in records] == [1, 2, 3]
        for line, record in zip(lines, records):
            theirs = fill(line)
            theirs = [theirs] if isinstance(theirs[0], dict) else theirs  # one list per mask
            assert len(record["predictions"]) == len(theirs) == line.count("[MASK]")
            for ours, expected in zip(record["predictions"], theirs):
                assert [c["token"] for c in ours] == [c["token"] for c in expected]
                assert [c["token_str"] for c in ours] == [c["token_str"] for c in expected]
                assert [c["sequence"] for c in ours] == [c["sequence"] for c in expected]
                np.testing.assert_allclose([c["score"] for c in ours], [c["score"] for c in expected], atol=2e-6)
    (tmp_path / "none.txt").write_text("w1 w2\n\nw3 [MASK]\nw4\n")
    assert cli.main(["predict", str(tmp_path / "mlm"), "--input", str(tmp_path / "none.txt")]) == 2
    assert "line 1: has no [MASK] to fill" in capsys.readouterr().err
    monkeypatch.setattr(predict, "CHUNK", 2)  # a bad line in the third chunk: named before anything is written
    (tmp_path / "late.txt").write_text("w1 [MASK]\n" * 4 + "w2 w3\n")
    assert cli.main(["predict", str(tmp_path / "mlm"), "--input", str(tmp_path / "late.txt")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "line 5: has no [MASK] to fill" in err
