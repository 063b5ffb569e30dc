"""tensorflow-datasets builders for local CoNLL, TSV and plain-text files (array_record format, so
TensorFlow is never needed), and TFDS' own catalog when online.

Prepared data is cached under a data dir, keyed by a hash of the source files' contents: unchanged files
are not rebuilt, changed files get a new build next to the old one. One process prepares a build at a time, and
what a killed preparation left is removed by the next (`_preparing`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxbatch import cache
from jaxbatch.data import conll, text, tsv
from jaxbatch.data.files import shards
from jaxbatch.errors import DataError, MissingSplit, WriteError


def default_data_dir() -> Path:
    """`data.cache_dir`'s default: $JAXBATCH_DATA_DIR, else tfds/ beside the other caches under $JAXBATCH_CACHE
    (~/.cache/jaxbatch), so moving the cache off a small home folder moves prepared data too. JAXBATCH_CACHE=off
    keeps no compiled programs, but prepared data needs a place: ~/.cache/jaxbatch/tfds."""
    if os.environ.get("JAXBATCH_DATA_DIR"):
        return Path(os.environ["JAXBATCH_DATA_DIR"]).expanduser()
    return (cache.root() or cache.DEFAULT_ROOT) / "tfds"


def _digest(paths: dict[str, Path]) -> str:
    """The files' content hash: each split's name, suffix (.jsonl reads unlike .txt) and shards' bytes, read 4 MB
    at a time (a corpus of any size is hashed in constant memory; SHA-1 fed in pieces: the same hash)."""
    h = hashlib.sha1()
    for split, path in sorted(paths.items()):
        h.update(split.encode())
        h.update(path.suffix.encode())
        for shard in shards(path):
            with open(shard, "rb") as f:
                while block := f.read(4 << 20):
                    h.update(block)
    return h.hexdigest()[:12]


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder over files given at construction; the config name is the files' content hash. TFDS
    shuffles examples when it writes them, so each carries its position in the file (`index`) and
    `read_all` gives them back in file order (predictions line up with the input; GLUE test ids hold)."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {"1.1.0": "examples carry their file position",
                     "1.2.0": "examples of CoNLL and text-classification files carry their line"}
    FEATURES: dict = {}

    def __init__(self, paths: dict[str, Path], **kwargs):
        self.paths = paths
        super().__init__(config=tfds.core.BuilderConfig(name=f"local-{_digest(paths)}"), **kwargs)

    def _log_download_bytes(self) -> None:  # TFDS' banner ("Downloading ... Unknown size") would be wrong here
        print(f"data: preparing {', '.join(str(p) for p in self.paths.values())} as array_record in "
              f"{self.data_dir} (once: later runs on the same files reuse it)")

    def _log_download_done(self) -> None:
        pass

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"index": np.int64, **self.FEATURES}))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(path) for split, path in self.paths.items()}


class ConllLocal(_LocalBuilder):
    name = "jaxbatch_conll"
    FEATURES = {"tokens": tfds.features.Sequence(tfds.features.Text()),
                "tags": tfds.features.Sequence(tfds.features.Text()), "line": np.int64}

    def _generate_examples(self, path):
        for i, s in enumerate(conll.read(path)):
            yield i, {"index": i, "tokens": s.words, "tags": s.tags, "line": s.line}


class TsvLocal(_LocalBuilder):
    name = "jaxbatch_tsv"
    VERSION = tfds.core.Version("1.4.0")
    RELEASE_NOTES = {**_LocalBuilder.RELEASE_NOTES, "1.3.0": "examples carry a pair's second text",
                     "1.4.0": "a label may be a list of classes (`labels`, with `listed` set)"}
    FEATURES = {"sentence": tfds.features.Text(), "sentence_pair": tfds.features.Text(),
                "label": tfds.features.Text(), "labels": tfds.features.Sequence(tfds.features.Text()),
                "listed": np.bool_, "line": np.int64}

    def _generate_examples(self, path):
        for i, e in enumerate(tsv.read(path)):
            listed = isinstance(e.label, tuple)
            yield i, {"index": i, "sentence": e.text, "sentence_pair": e.text_pair, "label": "" if listed else e.label,
                      "labels": list(e.label) if listed else [], "listed": listed, "line": e.line}


class TextLocal(_LocalBuilder):
    name = "jaxbatch_text"
    VERSION = tfds.core.Version("1.3.0")
    RELEASE_NOTES = {**_LocalBuilder.RELEASE_NOTES,
                     "1.3.0": "documents carry a prompt (read, not trained on) or a chat history (as JSON)"}
    FEATURES = {"text": tfds.features.Text(), "prompt": tfds.features.Text(), "chat": np.bool_}

    def _split_generators(self, dl_manager):
        grouped = {}
        for key, path in self.paths.items():  # `split/i` (a corpus of unnamed files: `file{i}`)
            grouped.setdefault(key.split("/")[0] if "/" in key else "", []).append(path)
        return {split: self._generate_examples(d) for split, d in text.splits(grouped).items()}

    def _generate_examples(self, docs):
        for i, (prompt, doc) in enumerate(docs):
            chat = isinstance(prompt, list)
            yield i, {"index": i, "text": doc, "prompt": json.dumps(prompt) if chat else prompt, "chat": chat}


BUILDERS = {"conll": (ConllLocal, conll.split_paths), "tsv": (TsvLocal, tsv.split_paths),
            "text": (TextLocal, lambda s, required=(): {f"{split}/{i}" if split else f"file{i}": p
                                                         for split, paths in text.split_files(s).items()
                                                         for i, p in enumerate(paths)})}


def _is_not_custom_config_notice(record: logging.LogRecord) -> bool:
    """TFDS warns "Using custom data configuration" for every local build: its config is the files' hash, by
    design."""
    return "Using custom data configuration" not in str(record.msg)


@contextlib.contextmanager
def progress_bars(enabled: bool):
    """TFDS' own bars while it prepares a dataset, as `train.progress` says (TFDS' default, on, afterwards)."""
    tfds.display_progress_bar(enabled)
    try:
        yield
    finally:
        tfds.display_progress_bar(True)


def files(kind: str, source: str | Path, required: tuple[str, ...] = ("train", "validation")) -> dict[str, Path]:
    """The files `prepare` reads: {split: path} (a text corpus: every .txt file, all in its splits)."""
    paths = BUILDERS[kind][1](source, required)
    if kind != "text" and len(required) == 1:
        paths = {required[0]: paths[required[0]]}
    return paths


def prepare(kind: str, source: str | Path, data_dir: str | Path | None = None,
            required: tuple[str, ...] = ("train", "validation")):
    """Builds (once) and opens the splits of a local dataset: {split: random-access data source}. With
    `required=(split,)` only that split's file is needed (and read)."""
    return build(kind, files(kind, source, required), data_dir)


def build(kind: str, paths: dict[str, Path], data_dir: str | Path | None = None):
    """`prepare` for files already found (`files`), for a caller that also names them in its messages."""
    logging.getLogger("absl").addFilter(_is_not_custom_config_notice)  # once: a filter is added once
    data_dir = str(data_dir or default_data_dir())
    builder = BUILDERS[kind][0](paths, data_dir=data_dir, file_format="array_record")
    try:
        if not Path(builder.data_dir).is_dir():  # as TFDS tests it; prepared data is read without the lock
            with _preparing(Path(builder.data_dir).parent):
                builder.download_and_prepare()  # a process that waited finds it prepared, and returns
    except (OSError, RuntimeError) as e:
        if not _cannot_write(e, data_dir):
            raise
        cause = (e.strerror if isinstance(e, OSError) and e.strerror else
                 "No space left on device" if "No space left" in str(e) else str(e).splitlines()[0][:200])
        raise WriteError(f"{data_dir}: cannot write the prepared data ({cause}); free space there or set "
                         f"data.cache_dir (or JAXBATCH_DATA_DIR) to another folder") from e
    return builder.as_data_source()


@contextlib.contextmanager
def _preparing(folder: Path):
    """Holds `.prepare.lock` in a build's folder (the kernel's flock: a killed holder leaves none) while TFDS
    prepares it: two processes given the same files (two runs, hosts sharing a disk) prepare them once, the second
    waiting. Holding it, every `incomplete.*` folder there is a killed preparation's, which TFDS neither reuses
    nor removes (a kill mid-write would keep its shards for good): they are removed. A file system without locks
    (some network mounts): no waiting and nothing removed. Data already prepared is read without it (its folder
    may be read-only)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".prepare.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            pass
        else:
            for abandoned in folder.glob("incomplete.*"):
                shutil.rmtree(abandoned, ignore_errors=True)
        yield  # closing the file releases the lock


def _cannot_write(e: Exception, data_dir: str) -> bool:
    """A full disk, a quota or a read-only folder under `data_dir` (array_record's writer reports a failed write
    as a RuntimeError), not a source file that cannot be read."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) or str(e.filename or "").startswith(data_dir)
    return "write() failed" in str(e) or "No space left" in str(e)


CATALOG_SPLITS = {"dev": "validation"}  # a catalog split's name here (TFDS' conll2003 says dev)


DOWNLOAD_TRIES = 3


@contextlib.contextmanager
def _download_tries(n: int):
    """TFDS retries each download 10 times with doubling waits (its downloader's MAX_RETRIES, read at each
    download, no setting), ~3.4 min before an offline machine hears that it is offline; 3 tries still ride out
    a server's passing 5xx errors."""
    from tensorflow_datasets.core.download import downloader

    saved, downloader.MAX_RETRIES = downloader.MAX_RETRIES, n
    try:
        yield
    finally:
        downloader.MAX_RETRIES = saved


def from_catalog(name: str, data_dir: str | Path | None = None, required: tuple[str, ...] = ()):
    """TFDS' own builder (e.g. 'conll2003', 'glue/sst2'), downloaded when online: {split: data source}, the
    splits named as ours, the test split standing in for a missing validation split (lm1b has none); the
    `required` splits must be there."""
    import tensorflow_datasets.text  # noqa: F401  registers conll2003 and glue, which `import tfds` leaves lazy

    try:
        with _download_tries(DOWNLOAD_TRIES):
            sources = tfds.data_source(name, data_dir=str(data_dir or default_data_dir()),
                                       download_and_prepare_kwargs={"file_format": "array_record"})
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(f"tensorflow-datasets {tfds.__version__} has no catalog dataset {name!r}; set "
                        f"data.data_dir to your files' folder") from e
    except Exception as e:  # network or a TF-only builder: one line (TFDS' messages run to pages)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"tfds catalog dataset {name!r} could not be prepared ({type(e).__name__}: {first}); "
                        f"offline, set data.data_dir to your files' folder instead") from e
    sources = {CATALOG_SPLITS.get(split, split): source for split, source in sources.items()}
    if "validation" not in sources and "test" in sources:
        sources["validation"] = sources.pop("test")
    missing = [split for split in required if split not in sources]
    if missing:
        raise MissingSplit(f"tfds catalog dataset {name!r} has no {missing[0]} split (it has {sorted(sources)})",
                           missing[0])
    return sources


def class_names(source, records: list[dict], feature: str) -> list[list[str]]:
    """Each record's `feature`, a sequence of TFDS ClassLabel ids, by name."""
    names = source.dataset_info.features[feature].feature.names
    return [[names[i] for i in r[feature]] for r in records]


def read_all(source, limit: int | None = None) -> list[dict]:
    """Every record of a data source (or its first `limit`), bytes decoded to str, in file order where
    records carry `index`."""
    records = [r for chunk in read_chunks(source, limit) for r in chunk]
    return sorted(records, key=lambda r: r["index"]) if records and "index" in records[0] else records


def read_chunks(source, limit: int | None = None, size: int = 10_000):
    """The records of a data source (or its first `limit`) as stored (a local build's shuffled: each carries its
    `index` in the file), `size` at a time, bytes decoded to str: for a reader that need not hold them all."""
    def decode(v):
        if isinstance(v, bytes):
            return v.decode("utf-8")
        if isinstance(v, (list, np.ndarray)) and len(v) and isinstance(v[0], bytes):
            return [x.decode("utf-8") for x in v]
        return v

    n = min(len(source), limit or len(source))
    for start in range(0, n, size):
        yield [{k: decode(v) for k, v in r.items()} for r in source.__getitems__(range(start, min(n, start + size)))]
