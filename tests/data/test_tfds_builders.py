"""data/tfds_builders.py: a build is prepared by one process at a time, and what a killed preparation left (TFDS'
`incomplete.*` folders, shards and all) is removed by the next one."""

import fcntl
import threading
import time
from pathlib import Path

from jaxbatch.data import tfds_builders


def _corpus(tmp_path) -> tuple[Path, Path]:
    """A text corpus and the folder its build is prepared in."""
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("\n\n".join(f"paragraph {i}" for i in range(20)))
    builder = tfds_builders.TextLocal(tfds_builders.files("text", d), data_dir=str(tmp_path / "cache"),
                                      file_format="array_record")
    return d, Path(builder.data_dir).parent


def test_a_killed_preparations_folder_is_removed_by_the_next(tmp_path):
    d, folder = _corpus(tmp_path)
    abandoned = folder / "incomplete.K1LLED_1.3.0"
    abandoned.mkdir(parents=True)
    (abandoned / "jaxbatch_text-train.array_record-00000-of-00001").write_bytes(b"\0" * 4096)
    sources = tfds_builders.prepare("text", d, tmp_path / "cache")
    assert len(sources["train"]) + len(sources["validation"]) == 20
    assert sorted(p.name for p in folder.iterdir()) == [".prepare.lock", "1.3.0"]


def test_a_second_preparation_waits_for_the_first_and_finds_it_prepared(tmp_path):
    d, folder = _corpus(tmp_path)
    folder.mkdir(parents=True)
    done = threading.Event()
    with open(folder / ".prepare.lock", "a+") as held:  # another process preparing (a lock of its own file handle)
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = threading.Thread(target=lambda: (tfds_builders.prepare("text", d, tmp_path / "cache"), done.set()))
        waiting.start()
        time.sleep(3)  # a corpus of 20 paragraphs prepares in well under that
        assert not done.is_set() and not (folder / "1.3.0").exists()
    waiting.join(120)
    assert done.is_set() and (folder / "1.3.0").is_dir()
    assert tfds_builders.TextLocal(tfds_builders.files("text", d), data_dir=str(tmp_path / "cache")).is_prepared()
