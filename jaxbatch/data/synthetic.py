"""A small generated corpus for offline runs and tests: NER sentences with PER/LOC/ORG/MISC entities
(IOB2 tags), sentiment sentences with a binary label, and questions whose answers are those entities. Generated deterministically from a seed, and
clearly synthetic: its scores say that the pipeline learns, not how good a model is on real text."""

from __future__ import annotations

import numpy as np

NER_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC")

_ENTITIES = {
    "PER": ["Anna Berg", "John Smith", "Maria Lopez", "Kenji Sato", "Olga Ivanova", "Peter Brown", "Amira Haddad",
            "Luis Garcia", "Chen Wei", "Sara Nilsson", "Tom Hardy", "Fatima Khan"],
    "LOC": ["Paris", "New York", "Tokyo", "Berlin", "Cape Town", "Lima", "Oslo", "Cairo", "Sydney", "Rio de Janeiro",
            "Toronto", "Mumbai"],
    "ORG": ["Reuters", "United Nations", "Acme Corp", "Bank of England", "Red Cross", "Toyota", "FIFA",
            "World Health Organization", "Siemens", "Apple"],
    "MISC": ["German", "Olympic Games", "French", "World Cup", "Japanese", "Nobel Prize", "Brazilian", "Euro"],
}
_NER_TEMPLATES = [
    "{PER} flew to {LOC} on Monday .", "{ORG} said {PER} will visit {LOC} .", "{PER} joined {ORG} in {LOC} .",
    "the {MISC} team beat {LOC} in the final .", "{ORG} shares fell in {LOC} trading .",
    "{PER} won the {MISC} after a long race .", "officials in {LOC} met {ORG} leaders .",
    "{PER} told {ORG} that prices rose .", "a {MISC} firm opened an office in {LOC} .",
    "{ORG} and {ORG} signed a deal in {LOC} .", "{PER} and {PER} spoke about the {MISC} .",
    "markets were quiet on Friday .", "the weather stayed dry across the region .",
]
_POS = ["wonderful", "delightful", "moving", "brilliant", "funny", "charming", "gripping", "superb", "warm"]
_NEG = ["dull", "tedious", "clumsy", "boring", "awful", "lifeless", "predictable", "weak", "messy"]
_SST_TEMPLATES = ["the film is {A} .", "a {A} and {A} story .", "the acting feels {A} , the plot {A} .",
                  "it is a {A} movie from start to finish .", "{A} , {A} and at times {A} .",
                  "the director made something {A} ."]


def _entities(held_out: bool) -> dict[str, list[str]]:
    """Every fourth name of each type is held out of training, so evaluation measures generalisation to
    unseen names, not memorised ones."""
    return {kind: [name for i, name in enumerate(names) if (i % 4 == 3) == held_out]
            for kind, names in _ENTITIES.items()}


def ner_corpus(n: int, seed: int, held_out: bool = False) -> list[tuple[list[str], list[str]]]:
    """n (words, IOB2 tags) sentences; `held_out` draws entity names only from the held-out quarter."""
    rng = np.random.default_rng(seed)
    entities = _entities(held_out)
    out = []
    for _ in range(n):
        words, tags = [], []
        for piece in _NER_TEMPLATES[rng.integers(len(_NER_TEMPLATES))].split():
            if piece.startswith("{"):
                kind = piece[1:-1]
                ent = entities[kind][rng.integers(len(entities[kind]))].split()
                words += ent
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(ent) - 1)
            else:
                words.append(piece)
                tags.append("O")
        out.append((words, tags))
    return out


def sentiment_corpus(n: int, seed: int) -> list[tuple[list[str], int]]:
    """n (words, label) sentences; label 1 = positive. Adjectives agree with the label."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        label = int(rng.integers(2))
        pool = _POS if label else _NEG
        text = _SST_TEMPLATES[rng.integers(len(_SST_TEMPLATES))]
        while "{A}" in text:
            text = text.replace("{A}", pool[rng.integers(len(pool))], 1)
        out.append((text.split(), label))
    return out


def qa_corpus(n: int, seed: int, held_out: bool = False, unanswerable: bool = False) -> list[dict]:
    """n SQuAD-style questions (id, question, context, answers): a context of 2 to 8 generated NER sentences, the
    question one of them without one of its entities (`flew to Paris on Monday .`), the answer that entity (`Anna
    Berg`, where it stands in the context). With `unanswerable` (SQuAD 2.0) about a third ask about a sentence
    the context does not hold, and have no answer. Words of the NER corpus only, so the same vocabulary reads it."""
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < n:
        sentences = ner_corpus(int(rng.integers(2, 9)), int(rng.integers(2**31)), held_out)
        context = " ".join(" ".join(w) for w, _ in sentences)
        if unanswerable and rng.random() < 1 / 3:
            words, tags = ner_corpus(1, int(rng.integers(2**31)), held_out)[0]  # a sentence from elsewhere
            blank = _blank_entity(words, tags, rng)
            if blank is not None and " ".join(words) not in context:
                rows.append({"id": f"{seed}-{len(rows)}", "question": " ".join(words[:blank[0]] + words[blank[1]:]),
                             "context": context, "answers": {"text": [], "answer_start": []}})
            continue
        k = int(rng.integers(len(sentences)))
        words, tags = sentences[k]
        blank = _blank_entity(words, tags, rng)
        if blank is None:
            continue
        first, last = blank
        before = sum(len(" ".join(w)) + 1 for w, _ in sentences[:k])
        start = before + len(" ".join(words[:first])) + (first > 0)
        rows.append({"id": f"{seed}-{len(rows)}", "question": " ".join(words[:first] + words[last:]),
                     "context": context, "answers": {"text": [" ".join(words[first:last])], "answer_start": [start]}})
    return rows


def _blank_entity(words: list[str], tags: list[str], rng) -> tuple[int, int] | None:
    """One of a sentence's entities, drawn: its first word and the word after it (None: the sentence has none)."""
    starts = [i for i, t in enumerate(tags) if t.startswith("B-")]
    if not starts:
        return None
    first = starts[int(rng.integers(len(starts)))]
    last = first + 1
    while last < len(tags) and tags[last].startswith("I-"):
        last += 1
    return first, last


def vocabulary() -> list[str]:
    """Word-level vocabulary of the generated corpus, special tokens [PAD] [UNK] [CLS] [SEP] [MASK] first (ids 0..4)."""
    words = set()
    for t in _NER_TEMPLATES + _SST_TEMPLATES:
        words.update(w for w in t.split() if not w.startswith("{"))
    for names in _ENTITIES.values():
        for name in names:
            words.update(name.split())
    words.update(_POS + _NEG)
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)
