"""A text corpus is tokenized once: later loads memory-map the same rows; anything the rows depend on makes a new
entry; a broken entry is built again; an unwritable cache costs only the time."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import bpe_tokenizer, subprocess_env
from jaxbatch import config
from jaxbatch.data import pipeline, tasks, tfds_builders, token_cache

TEXT = "\n\n".join(f"document {i}: {'to be or not to be, that is the question ' * (i % 7 + 1)}" for i in range(60))


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXBATCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.txt").write_text(TEXT)
    (tmp_path / "corpus" / "valid.txt").write_text(TEXT[:400])
    return tmp_path


def _load(tmp_path, tokenizer=None, *overrides):
    cfg = config.build(["model.preset=gpt-tiny", "data.name=text", f"data.data_dir={tmp_path / 'corpus'}",
                        f"data.cache_dir={tmp_path / 'tfds'}", "data.seq_len=32", *overrides])
    return tasks.load(cfg.data, tokenizer)


def _entries(tmp_path) -> list[Path]:
    tokens = tmp_path / "cache" / "tokens" if (tmp_path / "cache").is_dir() else tmp_path / "tokens"
    return sorted(tokens.iterdir())


def _read_fails(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("documents read again")

    monkeypatch.setattr(tfds_builders, "read_all", fail)
    monkeypatch.setattr(tfds_builders, "read_chunks", fail)


def _equal(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_corpus_is_tokenized_once_and_memory_mapped_after(corpus, monkeypatch):
    tok = bpe_tokenizer([TEXT])
    first = _load(corpus, tok)
    assert len(_entries(corpus)) == 2  # train and validation
    monkeypatch.setenv("JAXBATCH_CACHE", "off")
    fresh = _load(corpus, tok)  # no cache: tokenized here, the rows a cached load gives
    _equal(first.train, fresh.train)
    assert not isinstance(fresh.train.tokens, np.memmap)
    monkeypatch.setenv("JAXBATCH_CACHE", str(corpus / "cache"))
    with monkeypatch.context() as m:
        _read_fails(m)
        again = _load(corpus, tok)
    assert isinstance(again.train.tokens, np.memmap)  # its documents end to end, the rows read from them
    _equal(again.train, fresh.train)
    _equal(again.eval, fresh.eval)
    assert pipeline.digest(again.train) == pipeline.digest(fresh.train)  # a resumed run sees the same data


def test_entries_of_an_older_format_go_when_a_new_one_is_written(corpus, monkeypatch):
    """An upgrade that changes what an entry holds (FORMAT) leaves the old entries unread: the next write removes
    them (FORMAT 1's manifests named no format), not the size bound long after."""
    tok = bpe_tokenizer([TEXT])
    monkeypatch.setattr(token_cache, "FORMAT", 1)
    _load(corpus, tok)
    old = set(_entries(corpus))
    manifest = next(iter(old)) / "arrays.json"
    manifest.write_text(json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "format"}))
    monkeypatch.setattr(token_cache, "FORMAT", 2)
    _load(corpus, tok)
    assert len(old) == 2 and not old & set(_entries(corpus)) and len(_entries(corpus)) == 2
    again = set(_entries(corpus))
    _load(corpus, tok, "data.max_train=10")  # a write of the current format keeps the current entries
    assert again < set(_entries(corpus))


def test_a_character_vocabulary_is_kept_with_its_rows(corpus, monkeypatch):
    first = _load(corpus)
    _read_fails(monkeypatch)
    again = _load(corpus)
    assert again.tokenizer.chars == first.tokenizer.chars
    _equal(again.train, first.train)


def test_whatever_the_rows_depend_on_makes_a_new_entry(corpus, monkeypatch):
    tok = bpe_tokenizer([TEXT])
    _load(corpus, tok)
    made = 2
    for changed in [lambda: _load(corpus, tok, "data.max_train=10"),
                    lambda: _load(corpus, bpe_tokenizer([TEXT], bos=True)),  # another post-processor
                    lambda: (corpus / "corpus" / "valid.txt").write_text(TEXT[:300]) and _load(corpus, tok)]:
        before = set(_entries(corpus))
        changed()
        made += len(set(_entries(corpus)) - before)
    # both splits for a tokenizer, a changed file (the prepared data's hash); max_train: one
    assert made == 2 + 1 + 2 + 2
    before = set(_entries(corpus))
    longer = _load(corpus, tok, "data.seq_len=48")  # rows of another length: read from the same documents
    assert set(_entries(corpus)) == before
    monkeypatch.setenv("JAXBATCH_CACHE", "off")
    _equal(longer.train, _load(corpus, tok, "data.seq_len=48").train)
    chat = bpe_tokenizer([TEXT])
    chat.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    assert token_cache.fingerprint(chat) != token_cache.fingerprint(tok)
    assert token_cache.fingerprint(bpe_tokenizer([TEXT])) == token_cache.fingerprint(tok)


def test_a_tokenizers_truncation_and_padding_are_not_its_definition(corpus, monkeypatch):
    """A tokenizer file that sets truncation and padding (sentence-transformers' MiniLM: 128 tokens) has them reset
    by its first call: the validation split, encoded after the training split, is found by the next run all the
    same (its key once changed, so every first build was followed by a second of that split)."""
    def tokenizer():
        tok = bpe_tokenizer([TEXT])
        tok.backend_tokenizer.enable_truncation(128)
        tok.backend_tokenizer.enable_padding(length=128)
        return tok

    first = tokenizer()
    before = token_cache.fingerprint(first)
    loaded = _load(corpus, first)
    assert token_cache.fingerprint(first) == before and len(_entries(corpus)) == 2
    _read_fails(monkeypatch)
    again = _load(corpus, tokenizer())  # a new process' tokenizer, as its file sets it
    _equal(again.train, loaded.train)
    _equal(again.eval, loaded.eval)
    assert len(_entries(corpus)) == 2


def test_a_masked_lms_rows_are_cached_with_their_count_of_cut_lines(corpus, monkeypatch):
    """Lines (cut to seq_len as they are encoded) and grouped rows of any length read from the cached documents
    equal a fresh load's, masked validation included."""
    from jaxbatch import run as run_lib

    cfg = config.build(["model.preset=minilm-l6", "model.pretrained=minilm-l6", "model.task=lm", "data.name=text",
                        f"data.data_dir={corpus / 'corpus'}", f"data.cache_dir={corpus / 'tfds'}", "data.seq_len=8",
                        "data.line_by_line=true", "model.mlm_whole_word_mask=true"])
    tok = run_lib.tokenizer(cfg)
    first = tasks.load(cfg.data, tok, masked_lm=cfg.model)
    assert first.truncated["train"] == 60
    grouped = config.replace(cfg, data__line_by_line=False)
    tasks.load(grouped.data, tok, masked_lm=cfg.model)
    _read_fails(monkeypatch)
    again = tasks.load(cfg.data, tok, masked_lm=cfg.model)
    assert again.truncated == first.truncated
    _equal(again.train, first.train)
    _equal(again.eval, first.eval)  # masked once, by data.shuffle_seed, the same
    before = set(_entries(corpus))
    longer = config.replace(grouped, data__seq_len=24)  # rows of another length: read from the same documents
    cached = tasks.load(longer.data, tok, masked_lm=cfg.model)
    assert set(_entries(corpus)) == before
    monkeypatch.undo()  # the documents read again, and tokenized: nothing cached
    monkeypatch.setenv("JAXBATCH_CACHE", "off")
    fresh = tasks.load(longer.data, tok, masked_lm=cfg.model)
    _equal(cached.train, fresh.train)
    _equal(cached.eval, fresh.eval)


def test_a_broken_entry_is_built_again(corpus, caplog, monkeypatch):
    """A file cut short, a lost manifest or a flipped bit: the entry is built again, the rows as they were."""
    tok = bpe_tokenizer([TEXT])
    first = {k: np.array(v) for k, v in _load(corpus, tok).train.items()}  # copied: its files are cut below
    for entry in _entries(corpus):
        ids = entry / "tokens.npy"
        ids.write_bytes(ids.read_bytes()[:-100])  # a disk that lost the end of a file
    with caplog.at_level(logging.WARNING, logger="jaxbatch.data.token_cache"):
        again = _load(corpus, tok)
    assert caplog.text.count("cannot be read") == 2
    _equal(again.train, first)
    assert len(_entries(corpus)) == 2
    for entry in _entries(corpus):
        (entry / "arrays.json").unlink()  # an entry that lost its manifest is built again, and kept
    _equal(_load(corpus, tok).train, first)
    for entry in _entries(corpus):  # a manifest of another shape (edited, or another program's)
        (entry / "arrays.json").write_text(json.dumps({"format": token_cache.FORMAT, "arrays": None}))
    _equal(_load(corpus, tok).train, first)
    with monkeypatch.context() as m:
        _read_fails(m)
        _equal(_load(corpus, tok).train, first)
    caplog.clear()
    for entry in _entries(corpus):  # one bit flipped, the file's size unchanged: ids that were never written
        data = bytearray((entry / "tokens.npy").read_bytes())
        data[len(data) - 7] ^= 4
        (entry / "tokens.npy").write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="jaxbatch.data.token_cache"):
        _equal(_load(corpus, tok).train, first)
    assert caplog.text.count("its CRC-32 differs") == 2


def test_a_cache_that_cannot_be_written_costs_only_time(corpus, monkeypatch, caplog):
    blocked = corpus / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("JAXBATCH_CACHE", str(blocked))
    tok = bpe_tokenizer([TEXT])
    with caplog.at_level(logging.WARNING, logger="jaxbatch.data.token_cache"):
        data = _load(corpus, tok)
    assert caplog.text.count("cannot keep tokenized text in") == 1  # told once, not for each split
    monkeypatch.setenv("JAXBATCH_CACHE", "off")
    _equal(data.train, _load(corpus, tok).train)


def test_rows_are_laid_into_the_entrys_files_and_a_full_disk_there_lays_them_in_memory(corpus, monkeypatch, caplog):
    """A causal corpus' rows are written straight into the entry's files (never all in memory at once), its
    documents into scratch files as they are read (gone from the entry); where the disk cannot hold them (space
    taken up front: no crash when a page is first written) they are laid in memory."""
    import errno

    tok = bpe_tokenizer([TEXT])
    laid, scratch = [], []
    monkeypatch.setattr(token_cache, "_on_disk", lambda *a, real=token_cache._on_disk: laid.append(a[1]) or real(*a))
    monkeypatch.setattr(token_cache.Files, "scratch", lambda self, name, real=token_cache.Files.scratch: (
        scratch.append(name) or real(self, name)))
    first = _load(corpus, tok).train
    assert sorted(set(laid)) == ["tokens"]  # where the documents begin: 8 bytes each, saved from memory
    assert scratch.count("ids") == 2  # each split's documents written as read, before they are put in order
    assert not list((corpus / "cache" / "tokens").glob("*/*.scratch")) and first.tokens.size
    monkeypatch.setenv("JAXBATCH_CACHE", str(corpus / "spill"))

    def no_room(self, piece):
        raise OSError(errno.ENOSPC, "No space left on device")  # as ndarray.tofile raises it: no file named

    with monkeypatch.context() as m, caplog.at_level(logging.WARNING, logger="jaxbatch.data.token_cache"):
        m.setattr(tasks._Pieces, "add", lambda self, piece, real=tasks._Pieces.add: (
            no_room(self, piece) if self.file else real(self, piece)))
        _equal(_load(corpus, tok).train, first)
    assert "(No space left on device): it is tokenized again next run" in caplog.text
    caplog.clear()
    monkeypatch.setenv("JAXBATCH_CACHE", str(corpus / "full"))

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with caplog.at_level(logging.WARNING, logger="jaxbatch.data.token_cache"):
        data = _load(corpus, tok)
    assert "(No space left on device): it is tokenized again next run" in caplog.text
    assert not isinstance(data.train.tokens, np.memmap) and not list((corpus / "full" / "tokens").iterdir())
    _equal(data.train, first)


def test_processes_writing_one_entry_keep_one(tmp_path, monkeypatch):
    """Two hosts of one machine tokenizing at once: the second to finish keeps the first's entry."""
    monkeypatch.setenv("JAXBATCH_CACHE", str(tmp_path))
    built = {"input_ids": np.arange(6, dtype=np.int32).reshape(2, 3)}
    one = token_cache.arrays({"k": 1}, lambda alloc: built)
    entry = next((tmp_path / "tokens").iterdir())
    two = token_cache._write(entry, {"k": 1}, lambda alloc: {"input_ids": built["input_ids"] + 1})  # meets it
    _equal(one, two)
    assert [p.name for p in (tmp_path / "tokens").iterdir()] == [entry.name]  # no temporary folder left


def test_the_least_recently_used_entries_go_past_the_bound(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXBATCH_CACHE", str(tmp_path))
    monkeypatch.setattr(token_cache, "TOKEN_CACHE_BYTES", 2500)  # two entries of ~1 kB

    def use(k):
        token_cache.arrays({"k": k}, lambda alloc: {"input_ids": np.full(200, k, np.int32)})

    for k in range(2):
        use(k)
        for f in next(e for e in _keys(tmp_path) if _keys(tmp_path)[e] == k).iterdir():
            os.utime(f, (1000 + k, 1000 + k))
    use(0)  # read back: used now
    use(2)  # written: entry 1, the least recently used, goes to make room
    assert sorted(_keys(tmp_path).values()) == [0, 2]


def _keys(tmp_path) -> dict[Path, int]:
    return {e: json.loads((e / "arrays.json").read_text())["key"]["k"] for e in _entries(tmp_path)}


def test_a_run_trains_on_a_cached_corpus_as_on_a_fresh_one(corpus, monkeypatch):
    """End to end: a second run's rows come from the token cache (its documents are never read), and its losses
    and evaluation are the first run's, bit for bit."""
    from jaxbatch import cli

    args = ["train", "model.preset=gpt-tiny", "data.name=text", f"data.data_dir={corpus / 'corpus'}",
            f"data.cache_dir={corpus / 'tfds'}", "data.seq_len=32", "train.batch_size=8", "train.steps=3",
            "train.eval_every=3", "train.log_every=1", "train.progress=false"]
    assert cli.main([*args, f"train.run_dir={corpus / 'run0'}"]) == 0
    with monkeypatch.context() as m:
        _read_fails(m)
        assert cli.main([*args, f"train.run_dir={corpus / 'run1'}"]) == 0
    losses = [[(m["step"], m["kind"], m["loss"]) for m in map(json.loads, open(corpus / f"run{i}" / "metrics.jsonl"))]
              for i in range(2)]
    assert len(losses[0]) == 4 and losses[0] == losses[1]  # 3 steps and an evaluation
    assert len(_entries(corpus)) == 3  # characters, train, validation: the second run wrote none


def test_a_writer_killed_mid_write_leaves_nothing_behind(tmp_path, monkeypatch):
    """A run killed while it writes an entry leaves a temporary folder; the next write on this host removes it
    (a live writer's, and another host's, are left alone)."""
    import socket

    monkeypatch.setenv("JAXBATCH_CACHE", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    tokens = tmp_path / "tokens"
    names = [f".abc+{socket.gethostname()}+{int(dead.stdout)}+0000", f".abc+{socket.gethostname()}+{os.getpid()}+0001",
             f".abc+elsewhere+{int(dead.stdout)}+0002"]
    for name in names:
        (tokens / name).mkdir(parents=True)
        (tokens / name / "input_ids.npy").write_bytes(b"half")
    token_cache.arrays({"k": 1}, lambda alloc: {"input_ids": np.zeros(3, np.int32)})
    assert sorted(p.name for p in tokens.glob(".*")) == sorted(names[1:])


def test_an_error_reading_the_data_is_the_datas_not_the_caches(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("JAXBATCH_CACHE", str(tmp_path / "cache"))

    def build(alloc):
        raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "corpus" / "gone.txt"))

    with caplog.at_level(logging.WARNING, logger="jaxbatch.data.token_cache"), pytest.raises(FileNotFoundError):
        token_cache.arrays({"k": 1}, build)
    assert "cannot keep" not in caplog.text and not list((tmp_path / "cache" / "tokens").iterdir())
