"""LM corpora: plain UTF-8 .txt (e.g. tiny shakespeare), whose documents are blank-line separated
paragraphs, and JSON lines or Parquet (.jsonl, .parquet: one `{"text": ...}` document per record, as Hugging
Face datasets and web crawls are dumped and the hub stores them, or one example in TRL's formats for
supervised fine-tuning: `{"prompt": ...,
"completion": ...}`, or `{"messages": [{"role": ..., "content": ...}, ...]}` ending with the assistant's
turn). A document is a (prompt, text) pair: the model reads the prompt ('' for plain documents; for a chat,
the conversation before the last turn, as a list of messages for the tokenizer's chat template to render)
and is trained to produce the text (and a chat's earlier assistant turns: data/tasks.py). Documents are
kept whole so a later packer can cut them into fixed-length windows."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from jaxbatch.errors import DataError
from jaxbatch.data.files import json_records, parquet_records, place, text_pieces

SUFFIXES = (".txt", ".jsonl", ".parquet")  # the files of a corpus folder

Doc = tuple[str | list[dict], str]  # (prompt or chat history: read, bar its assistant turns; text: trained on)


def _file_docs(path: Path, empty_ok: bool = True):
    """One file's documents, in order, as an iterator: a .txt or .jsonl file's read as its text is, 16 MB at a
    time; a .parquet file's 4,096 rows at a time."""
    if path.suffix == ".jsonl":
        return _records(path, json_records(path, empty_ok))
    if path.suffix == ".parquet":
        return _records(path, parquet_records(path, empty_ok))
    return _paragraphs(text_pieces(path, empty_ok=empty_ok))


def _paragraphs(pieces):
    """The blank-line separated documents of a text given in pieces, stripped ("\\r\\n" read as "\\n"): what
    splitting the whole text on "\\n\\n" gives, a piece at a time (a document's pieces are joined once)."""
    rest, held = [], ""  # the last document's pieces so far; a piece's last "\r" (its "\n" may begin the next)
    for piece in itertools.chain(pieces, [None]):
        text = held + (piece or "")
        held = "\r" if piece is not None and text.endswith("\r") else ""
        text = text[: len(text) - len(held)].replace("\r\n", "\n")
        if piece is not None and "\n\n" not in (rest[-1][-1:] if rest else "") + text:
            rest += [text] if text else []  # (an empty piece would hide the last character before it)
            continue
        parts = ("".join(rest) + text).split("\n\n")
        rest = [parts.pop()] if piece is not None else []
        yield from (("", d.strip()) for d in parts if d.strip())


def _counts(paths: list[Path]) -> list[int]:
    """How many documents each file holds (every file read, so its errors are raised here, before any is
    written). An empty file in a folder of several holds no documents (as in Hugging Face's text loader); a
    corpus with no text at all is an error naming it."""
    counts = [sum(1 for _ in _file_docs(path, empty_ok=len(paths) > 1)) for path in paths]
    if not sum(counts):
        where = paths[0] if len(paths) == 1 else f"{paths[0].parent} ({len(paths)} files)"
        raise DataError(f"{where}: no text")
    return counts


def _documents(paths: list[Path], counts: list[int], start: int = 0, stop: int | None = None):
    """Documents start..stop of the files in order, read a file at a time (`counts`: each file's; files wholly
    outside are not read): a corpus of any size is never in memory at once."""
    stop, at = sum(counts) if stop is None else stop, 0
    for path, n in zip(paths, counts):
        if at < stop and at + n > start:
            yield from itertools.islice(_file_docs(path), max(start - at, 0), stop - at)
        at += n


def _records(path: Path, rows):
    """The `text` (any case) of each record (`rows`: (number, record) pairs, an iterable), or its `prompt` and
    `completion` (kept as written: a completion often starts with a space), as they come; an empty text or
    completion holds no document."""
    for number, row in rows:
        if isinstance(row.get("text"), str):
            if row["text"].strip():
                yield "", row["text"].strip()
        elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
            if row["completion"].strip():
                yield row["prompt"], row["completion"]
        elif "messages" in row:
            yield _chat(row["messages"], place(path, number))
        else:
            raise DataError(f"{place(path, number)}: expected an object with a 'text' string, 'prompt' and "
                            f"'completion' strings, or 'messages', got keys {sorted(row)}")


def _chat(messages, where: str) -> Doc:
    """A conversation: its history (every message before the last) and the assistant's last answer."""
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages)
    if not ok:
        raise DataError(f"{where}: 'messages' must be a list of {{\"role\": ..., \"content\": ...}} objects")
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise DataError(f"{where}: a conversation must end with the assistant's answer to something (the answer "
                        f"is what is trained), got roles {[m['role'] for m in messages]}")
    return [{"role": m["role"], "content": m["content"]} for m in messages[:-1]], messages[-1]["content"]


def _cut(n: int, validation_fraction: float) -> int:
    """How many of n documents train: all but the last `validation_fraction`, at least one."""
    return max(1, int(round(n * (1 - validation_fraction))))


def split(docs: list[Doc], validation_fraction: float = 0.1) -> dict[str, list[Doc]]:
    """Deterministic split: the last `validation_fraction` of documents is validation (no leakage across).
    A corpus of too few documents for that (one book without blank lines, a handful of files) is split
    as a single text usually is: the last fraction of its characters, cut at a line break where there is one."""
    cut = _cut(len(docs), validation_fraction)
    if cut < len(docs):
        return {"train": docs[:cut], "validation": docs[cut:]}
    if any(prompt for prompt, _ in docs):
        raise DataError(f"{len(docs)} prompt/completion or chat example(s) are too few to split into training and "
                        f"validation examples (at least 5)")
    parts = _split_text([d for _, d in docs], validation_fraction)
    return {split: [("", d) for d in part] for split, part in parts.items()}


def _split_text(docs: list[str], validation_fraction: float) -> dict[str, list[str]]:
    """Too few documents to split by: the last fraction of the characters is validation."""
    target = int(sum(len(d) for d in docs) * (1 - validation_fraction))
    for i, doc in enumerate(docs):
        if target < len(doc):
            break
        target -= len(doc)
    if target == 0 and i > 0:  # the cut falls on a document boundary
        return {"train": docs[:i], "validation": docs[i:]}
    line = doc.rfind("\n", 0, target + 1)
    at = line if line > 0 else target
    head, tail = doc[:at].strip(), doc[at:].strip()
    if not head or not tail:
        raise DataError(f"a text corpus of {len(docs)} document(s) and {sum(len(d) for d in docs)} characters "
                        f"is too small to split into training and validation text")
    return {"train": docs[:i] + [head], "validation": [tail] + docs[i + 1:]}


# Hugging Face datasets' split keywords: a corpus file whose name holds one as a word (train.txt, wiki.valid.txt,
# validation-00000-of-00001.parquet) holds that split's documents
SPLIT_WORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "dev", "val"),
               "test": ("test", "testing", "eval", "evaluation")}


def split_files(directory_or_file: str | Path) -> dict[str, list[Path]]:
    """A corpus' files by split. A folder whose files' names give splits (SPLIT_WORDS, as `load_dataset` reads a
    folder: a hub dump's or wikitext's train/validation/test files) has those splits, so a validation or test
    file is never trained on; otherwise, and for one file named directly, {"": files}: one corpus, which
    `split` divides."""
    paths = files(directory_or_file)
    named = {p: _split_named(p) for p in paths}
    if Path(directory_or_file).is_file() or not any(named.values()):
        return {"": paths}
    unnamed = [p.name for p, split in named.items() if split is None]
    if unnamed:
        raise DataError(f"{directory_or_file}: {', '.join(unnamed)} name no split while "
                        f"{', '.join(p.name for p, split in named.items() if split)} do; name every file for its "
                        f"split (train, validation, test) or none (one corpus, its last tenth held out)")
    return {split: [p for p in paths if named[p] == split] for split in SPLIT_WORDS if split in named.values()}


def _split_named(path: Path) -> str | None:
    words = set(re.split(r"[^a-z]+", path.name.lower()))
    return next((split for split, keys in SPLIT_WORDS.items() if words & set(keys)), None)


def splits(grouped: dict[str, list[Path]], validation_fraction: float = 0.1) -> dict:
    """The documents of `split_files`' splits, each an iterator reading a file at a time: one corpus divided by
    `split`, or the named splits, the training files divided where no file holds validation documents (as
    run_clm holds out a share of its train file). Every file is read once first, to count its documents."""
    counts = {name: _counts(paths) for name, paths in grouped.items()}
    out = {name: _documents(paths, counts[name]) for name, paths in grouped.items()}
    held = "" if "" in grouped else "train" if "train" in grouped and "validation" not in grouped else None
    if held is None:
        return out
    paths, n = grouped[held], sum(counts[held])
    cut = _cut(n, validation_fraction)
    divided = split(list(out[held]), validation_fraction) if cut == n else {  # too few documents: in memory
        "train": _documents(paths, counts[held], 0, cut), "validation": _documents(paths, counts[held], cut)}
    return divided if held == "" else {**out, **divided}  # train where it was, validation after the rest


def files(directory_or_file: str | Path) -> list[Path]:
    p = Path(directory_or_file)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError(f"text corpus {p} does not exist")
    found = sorted(f for suffix in SUFFIXES for f in p.glob(f"*{suffix}"))
    if not found:
        raise DataError(f"{p}: no {', '.join(SUFFIXES)} files")
    return found


class CharTokenizer:
    """Character-level tokenizer (the classic char-level LM setup): the vocabulary is the sorted set of characters
    of the training text, id = position. Saved as chars.json, so a run dir carries it."""

    FILE = "chars.json"

    def __init__(self, chars):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_texts(cls, texts) -> "CharTokenizer":
        return cls(sorted(set().union(*map(set, texts))))

    @classmethod
    def load(cls, folder) -> "CharTokenizer":
        import json

        return cls(json.loads((Path(folder) / cls.FILE).read_text()))

    def save_pretrained(self, folder) -> None:
        """chars.json, and the same vocabulary as a `tokenizers` file (one word per character, joined back
        without spaces), so `AutoTokenizer.from_pretrained` reads the folder and an exported model is usable
        from transformers alone."""
        import json

        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / self.FILE).write_text(json.dumps(self.chars, ensure_ascii=False))
        hf = Tokenizer(models.WordLevel(dict(self.index), unk_token=None))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        hf.decoder = decoders.Fuse()
        PreTrainedTokenizerFast(tokenizer_object=hf, clean_up_tokenization_spaces=False).save_pretrained(str(folder))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        missing = sorted(set(text) - set(self.index))
        if missing:
            raise DataError(f"characters {missing[:10]} are not in the character vocabulary of {len(self)} (the "
                            f"training corpus' characters): a character-level model reads no others")
        return [self.index[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def byte_lengths(self):
        """UTF-8 bytes of each token (for bits per byte)."""
        return [len(c.encode()) for c in self.chars]
