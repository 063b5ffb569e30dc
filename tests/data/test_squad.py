"""Question-answering data: SQuAD files read in both layouts, windows labelled as Hugging Face's run_qa.py labels
them, and logits turned back into answers as its postprocess_qa_predictions does."""

import json

import numpy as np
import pytest

from jaxbatch import config, hf
from jaxbatch.data import squad, tasks
from jaxbatch.errors import ConfigError, DataError

CONTEXT = "The river of Brask is the Ister. Its capital, Corin, lies on the Ister's northern bank."
ROWS = [{"id": "a", "question": "What is the river of Brask?", "context": CONTEXT,
         "answers": {"text": ["the Ister", "Ister"], "answer_start": [22, 26]}},
        {"id": "b", "question": " Which city is the capital?", "context": CONTEXT,
         "answers": {"text": ["Corin"], "answer_start": [46]}}]


def squad_json(rows) -> dict:
    """SQuAD's own layout of `rows` (one article, one paragraph per context)."""
    paragraphs = {}
    for r in rows:
        answers = [{"text": t, "answer_start": s} for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"])]
        paragraphs.setdefault(r["context"], []).append({"id": r["id"], "question": r["question"], "answers": answers})
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": c, "qas": q}
                                                                      for c, q in paragraphs.items()]}]}


def write_split(folder, name: str, rows, nested: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{name}.json" if nested else f"{name}.jsonl")
    path.write_text(json.dumps(squad_json(rows)) if nested else "".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_squads_own_json_and_the_hubs_records_read_alike(tmp_path):
    flat = squad.read(write_split(tmp_path / "flat", "train", ROWS))
    nested = squad.read(write_split(tmp_path / "nested", "train", ROWS, nested=True))
    strip = lambda qs: [(q.id, q.question, q.context, q.answers, q.starts) for q in qs]  # noqa: E731
    assert strip(flat) == strip(nested) and flat[0].answers == ("the Ister", "Ister")
    assert flat[1].place.endswith("train.jsonl:2") and nested[1].place.endswith("data[0].paragraphs[0].qas[1]")


@pytest.mark.parametrize("change, message", [
    (dict(answers={"text": ["Brask"], "answer_start": [4]}), r"x.jsonl:1: answer 'Brask' is not the context's text at "
                                                             r"answer_start 4 \(there: 'river'\)"),
    (dict(context=" "), r"x.jsonl:1: no context"),
    (dict(question=None), r"x.jsonl:1: no question"),
    (dict(answers={"text": ["Corin"]}), r"x.jsonl:1: answers must be"),
    (dict(answers={"text": [""], "answer_start": [0]}), r"x.jsonl:1: answer '' at 0: an answer is a text"),
])
def test_a_bad_question_is_one_error_naming_its_record(tmp_path, change, message):
    (tmp_path / "x.jsonl").write_text(json.dumps({**ROWS[0], **change}) + "\n")
    with pytest.raises(DataError, match=message):
        squad.read(tmp_path / "x.jsonl")


def run_qa_features(tokenizer, rows, seq_len, stride):
    """Hugging Face's examples/pytorch/question-answering/run_qa.py prepare_train_features, as written there
    (right padding): the reference the windows are checked against."""
    enc = tokenizer([r["question"].lstrip() for r in rows], [r["context"] for r in rows], truncation="only_second",
                    max_length=seq_len, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                    padding="max_length")
    starts, ends = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        input_ids = enc["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id)
        sequence_ids = enc.sequence_ids(i)
        answers = rows[enc["overflow_to_sample_mapping"][i]]["answers"]
        if len(answers["answer_start"]) == 0:
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        token_start_index = 0
        while sequence_ids[token_start_index] != 1:
            token_start_index += 1
        token_end_index = len(input_ids) - 1
        while sequence_ids[token_end_index] != 1:
            token_end_index -= 1
        if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
            starts.append(cls_index)
            ends.append(cls_index)
        else:
            while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                token_start_index += 1
            starts.append(token_start_index - 1)
            while offsets[token_end_index][1] >= end_char:
                token_end_index -= 1
            ends.append(token_end_index + 1)
    return enc, np.stack([starts, ends], 1)


@pytest.fixture(scope="module")
def tokenizer():
    from jaxbatch.models import bert

    return bert.tokenizer(hf.resolve("minilm-l6"))


THINGS = ["capital", "river", "mountain", "king", "harbour", "festival", "queen", "bridge", "forest", "lake",
          "tower", "market"]
NAMES = ["Mira", "Tobin", "Quill", "Sable", "Orrin", "Vesta", "Pell", "Rowan", "Lark", "Nim"]


def generated(n: int, seed: int):
    """Questions over contexts of 3 to 12 facts (`The river is Mira Pell.`), answers of one or two names anywhere
    in them (some at a window's edge, some with two spaces inside)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        facts = [(t, " ".join(rng.choice(NAMES, int(rng.integers(1, 3)))).replace(" ", " " * int(rng.integers(1, 3))))
                 for t in rng.permutation(THINGS)[: int(rng.integers(3, 13))]]
        context = " ".join(f"The {t} is {v}." for t, v in facts)
        k = int(rng.integers(len(facts)))
        start = context.index(f"The {facts[k][0]} is ") + len(f"The {facts[k][0]} is ")
        rows.append({"id": str(i), "question": f"Who is the {facts[k][0]}?" + " now" * int(rng.integers(0, 4)),
                     "context": context, "answers": {"text": [facts[k][1]], "answer_start": [start]}})
    return rows


@pytest.mark.parametrize("chunk", [squad.CHUNK, 7])
def test_windows_are_run_qas_features(tmp_path, tokenizer, chunk, monkeypatch):
    """Inputs, token types, padding and each window's start and end token equal run_qa's for 200 questions
    whose contexts take one to six windows, but where run_qa's start search runs past the window's last context
    token (an answer starting there): its loop reads [SEP] and padding, whose offsets are (0, 0), as still before
    the answer and labels the last of them; ours labels the context token. Encoded 7 questions at a time, the
    windows are the same (the tokenizer's offsets of a whole SQuAD at once took ~120 kB a question)."""
    monkeypatch.setattr(squad, "CHUNK", chunk)
    rows = generated(200, 0)
    questions = squad.read(write_split(tmp_path, "train", rows))
    w = squad.windows(tokenizer, questions, 40, 12)
    enc, expected = run_qa_features(tokenizer, rows, 40, 12)
    np.testing.assert_array_equal(w.question, enc["overflow_to_sample_mapping"])
    assert np.bincount(w.question).max() > 3 and (expected[:, 0] == 0).any()  # several windows; answers outside
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(w.arrays[key], np.asarray(enc[key]), err_msg=key)
    last_context = np.asarray([np.flatnonzero(o[:, 0] != squad.NOT_CONTEXT).max() for o in w.offsets])
    past = expected[:, 0] > last_context
    assert 0 < past.sum() < 10 and (w.arrays["labels"][past, 0] == last_context[past]).all()
    np.testing.assert_array_equal(w.arrays["labels"][~past], expected[~past])
    for row in np.flatnonzero(w.arrays["labels"][:, 0] > 0):  # every labelled span reads as its answer
        q = questions[w.question[row]]
        a, b = w.offsets[row, w.arrays["labels"][row, 0], 0], w.offsets[row, w.arrays["labels"][row, 1], 1]
        assert q.context[a:b] == q.answers[0]


def test_the_best_span_over_a_questions_windows_is_its_answer(tokenizer):
    """Logits pointing at each question's gold span in one of its windows give its text back; a span longer than
    max_answer_length or ending before it starts is never chosen; an unanswerable question is "" where [CLS]
    wins, with the probabilities as transformers' QA pipeline normalises them."""
    rows = generated(30, 1)
    questions = [squad.Question(r["id"], r["question"], r["context"], tuple(r["answers"]["text"]),
                                tuple(r["answers"]["answer_start"]), "") for r in rows]
    w = squad.windows(tokenizer, questions, 40, 12)
    rng = np.random.default_rng(0)
    start, end = rng.normal(0, 1, (2, *w.arrays["input_ids"].shape))
    for row, (s, e) in enumerate(w.arrays["labels"]):
        if s > 0:
            start[row, s] += 20
            end[row, e] += 20
    found = squad.answers(w, start, end)
    assert [a["answer"] for a in found] == [r["answers"]["text"][0] for r in rows]
    assert all(r["context"][a["start"]: a["end"]] == a["answer"] and 0.5 < a["score"] <= 1 for a, r in zip(found, rows))
    start[:, 0], end[:, 0] = 100, 100  # [CLS] beats every span
    bare = squad.answers(w, start, end, unanswerable=True)
    assert {a["answer"] for a in bare} == {""} and all(a["null_score_diff"] > 100 for a in bare)
    assert [a["best_span"] for a in bare] == [r["answers"]["text"][0] for r in rows]  # what a threshold would answer
    tolerant = squad.answers(w, start, end, unanswerable=True, null_threshold=max(a["null_score_diff"] for a in bare))
    assert [a["answer"] for a in tolerant] == [r["answers"]["text"][0] for r in rows]
    assert [a["answer"] for a in squad.answers(w, start, end)] == [r["answers"]["text"][0] for r in rows]
    assert all(len(a["answer"].split()) <= 1 for a in squad.answers(w, start, end, max_answer_length=1))
    reversed_ = squad.answers(w, end * 0, start * 0 - np.arange(40))  # ends only score before starts
    assert all(a["end"] >= a["start"] for a in reversed_)


def test_a_question_too_long_for_its_windows_is_named(tmp_path, tokenizer, monkeypatch):
    long = dict(ROWS[0], question="what " * 30)
    questions = squad.read(write_split(tmp_path, "train", [ROWS[1], long]))
    for chunk in (squad.CHUNK, 1):  # read a chunk of questions at a time: the second chunk's is named by its place
        monkeypatch.setattr(squad, "CHUNK", chunk)
        with pytest.raises(DataError, match=r"train.jsonl:2: the question takes 33 of data.seq_len=40 tokens, "
                                             r"leaving 7 for the context, not more than data.doc_stride=12"):
            squad.windows(tokenizer, questions, 40, 12)
    with pytest.raises(ConfigError, match="data.doc_stride=40 must be positive and below data.seq_len=40"):
        squad.windows(tokenizer, questions, 40, 40)


def test_unanswerable_questions_need_squad_2s_setting(tmp_path, tokenizer):
    rows = [ROWS[0], dict(ROWS[1], answers={"text": [], "answer_start": []})]
    write_split(tmp_path, "train", rows)
    write_split(tmp_path, "dev", ROWS, nested=True)
    data_cfg = config.build(["data.name=squad", f"data.data_dir={tmp_path}", "data.seq_len=40"]).data
    with pytest.raises(DataError, match=r"train.jsonl:2: no answer \(1 of the train split's 2 questions have none\); "
                                        r"for SQuAD 2.0-style data set data.unanswerable=true"):
        tasks.load(data_cfg, tokenizer)
    import dataclasses

    data = tasks.load(dataclasses.replace(data_cfg, unanswerable=True), tokenizer)
    assert data.task == "qa" and data.label_names == ["start", "end"]
    assert data.train["labels"][1].tolist() == [0, 0] and data.train["labels"][0, 0] > 0  # [CLS]; the span
    assert [q.id for q in data.windows["validation"].questions] == ["a", "b"] and "train" not in data.windows


def test_generated_questions_are_answered_by_names_training_never_saw(tokenizer):
    """data.name=synthetic_qa: every answer is its context's text at its start (read as any file is), and the
    validation split's answers are the held-out names."""
    from jaxbatch.data import synthetic

    data_cfg = config.build(["data.name=synthetic_qa", "data.num_train=200", "data.num_eval=50",
                             "data.seq_len=64"]).data
    data = tasks.load(data_cfg, tokenizer)
    questions = {split: [q for q in w.questions] for split, w in data.windows.items()}
    assert len(questions["validation"]) == 50 and len(data.train["labels"]) >= 200
    train = {a for row in synthetic.qa_corpus(200, 0) for a in row["answers"]["text"]}
    assert not train & {a for q in questions["validation"] for a in q.answers}
    assert all(q.context[q.starts[0]:].startswith(q.answers[0]) for q in questions["validation"])
    import dataclasses

    bare = tasks.load(dataclasses.replace(data_cfg, unanswerable=True), tokenizer).windows["validation"].questions
    assert 8 <= sum(not q.answers for q in bare) <= 25  # SQuAD 2.0-style: about a third without an answer
