"""tensorflow-datasets builders for local CoNLL-2003, SST-2 and plain-text files (array_record format, so
TensorFlow is never needed), and TFDS' own catalog when online.

Prepared data is cached under a data dir, keyed by a hash of the source files' contents: unchanged files
are not rebuilt, changed files get a new build next to the old one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxbatch.data import conll, glue, text
from jaxbatch.data.files import DataError

DEFAULT_DATA_DIR = Path(os.environ.get("JAXBATCH_DATA_DIR", Path.home() / ".cache" / "jaxbatch" / "tfds"))


def _digest(paths: dict[str, Path]) -> str:
    h = hashlib.sha1()
    for split, path in sorted(paths.items()):
        h.update(split.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A builder over files given at construction; the config name is the files' content hash."""

    VERSION = tfds.core.Version("1.0.0")
    FEATURES: dict = {}

    def __init__(self, paths: dict[str, Path], **kwargs):
        self.paths = paths
        super().__init__(config=tfds.core.BuilderConfig(name=f"local-{_digest(paths)}"), **kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(dict(self.FEATURES)))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(path) for split, path in self.paths.items()}


class Conll2003Local(_LocalBuilder):
    name = "jaxbatch_conll2003"
    FEATURES = {"tokens": tfds.features.Sequence(tfds.features.Text()),
                "tags": tfds.features.Sequence(tfds.features.Text())}

    def _generate_examples(self, path):
        for i, s in enumerate(conll.read(path)):
            yield i, {"tokens": s.words, "tags": s.tags}


class Sst2Local(_LocalBuilder):
    name = "jaxbatch_sst2"
    FEATURES = {"sentence": tfds.features.Text(), "label": np.int64}

    def _generate_examples(self, path):
        for i, e in enumerate(glue.read(path)):
            yield i, {"sentence": e.text, "label": e.label}


class TextLocal(_LocalBuilder):
    name = "jaxbatch_text"
    FEATURES = {"text": tfds.features.Text()}

    def _split_generators(self, dl_manager):
        docs = [d for p in self.paths.values() for d in text.read(p)]
        return {split: self._generate_examples(d) for split, d in text.split(docs).items()}

    def _generate_examples(self, docs):
        for i, doc in enumerate(docs):
            yield i, {"text": doc}


BUILDERS = {"conll2003": (Conll2003Local, conll.split_paths), "sst2": (Sst2Local, glue.split_paths),
            "text": (TextLocal, lambda s: {f"file{i}": p for i, p in enumerate(text.files(s))})}


def prepare(kind: str, source: str | Path, data_dir: str | Path | None = None):
    """Builds (once) and opens the splits of a local dataset: {split: random-access data source}."""
    builder_cls, find_files = BUILDERS[kind]
    builder = builder_cls(find_files(source), data_dir=str(data_dir or DEFAULT_DATA_DIR), file_format="array_record")
    builder.download_and_prepare()
    return builder.as_data_source()


def from_catalog(name: str, data_dir: str | Path | None = None):
    """TFDS' own builder (e.g. 'conll2003', 'glue/sst2'), downloaded when online."""
    try:
        return tfds.data_source(name, data_dir=str(data_dir or DEFAULT_DATA_DIR),
                                download_and_prepare_kwargs={"file_format": "array_record"})
    except Exception as e:  # network, missing dataset or a TF-only builder: one clear message
        raise DataError(f"tfds catalog dataset {name!r} could not be prepared ({type(e).__name__}: {e}); "
                        f"offline, pass the files' directory instead") from e


def read_all(source) -> list[dict]:
    """Every record of a data source, bytes decoded to str."""
    def decode(v):
        if isinstance(v, bytes):
            return v.decode("utf-8")
        if isinstance(v, (list, np.ndarray)) and len(v) and isinstance(v[0], bytes):
            return [x.decode("utf-8") for x in v]
        return v

    records = source.__getitems__(range(len(source))) if len(source) else []
    return [{k: decode(v) for k, v in r.items()} for r in records]
