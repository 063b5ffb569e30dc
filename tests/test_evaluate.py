"""Length-bucketed evaluation: the same sums and per-example outputs, in the split's order, as evaluating
every example at seq_len."""

import jax
import numpy as np
import pytest

from conftest import compiles, random_batch, run_steps, tiny_config
from jaxbatch import evaluate


@pytest.mark.parametrize("task", ["token", "sequence", "qa"])
def test_bucketed_eval_equals_full_length_eval(task):
    cfg = tiny_config(f"model.task={task}", "data.seq_len=32", "train.batch_size=8", "mesh.data=2", "mesh.model=2",
                      *(["model.num_labels=2"] if task == "qa" else []))
    rng = np.random.default_rng(0)
    arrays = random_batch(cfg, 1, batch_size=45)  # not a multiple of the eval batch: a padded last batch
    short = rng.random(45) < 0.6  # most examples short, in no particular order
    for k in ("input_ids", "attention_mask"):
        arrays[k][short, 8:] = 0
    if task == "token":
        arrays["labels"][short, 8:] = -100
    if task == "qa":  # the answer among the real tokens
        arrays["labels"][short] = np.minimum(arrays["labels"][short], 7)
    _, _, run = run_steps(cfg, [], jax.devices()[:4])
    full_sums, full = evaluate.outputs(run, run.state.params, arrays, buckets=1)
    sums, out = evaluate.outputs(run, run.state.params, arrays, buckets=3)
    assert sums.keys() == full_sums.keys()
    for k in sums:
        assert sums[k] == pytest.approx(full_sums[k], rel=1e-5), k
    real = arrays["attention_mask"].astype(bool)
    for k in full:  # per-token outputs are compared where there are tokens (padding positions are not computed)
        assert out[k].shape == full[k].shape
        a, b = (x[real] if task != "sequence" and x.ndim >= 2 else x for x in (out[k], full[k]))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_split_computed_as_read_is_evaluated_a_batch_at_a_time():
    """A split whose rows are computed as they are read (a text corpus': packing.Rows) is read once, a block at a
    time, for its lengths, then a batch at a time in length order (never whole), with the outputs of its arrays."""
    from jaxbatch.data import packing

    class Counted(packing.Rows):
        def __init__(self, arrays):
            super().__init__(tuple(arrays), len(arrays["labels"]), arrays["input_ids"].shape[1])
            self.arrays, self.read = arrays, []

        def compute(self, which):
            self.read.append(len(which))
            return {k: v[which] for k, v in self.arrays.items()}

    cfg = tiny_config("model.task=token", "data.seq_len=32", "train.batch_size=8")
    arrays = random_batch(cfg, 1, batch_size=45)
    short = np.random.default_rng(1).random(45) < 0.6
    arrays["attention_mask"][short, 8:] = 0
    _, _, run = run_steps(cfg, [], jax.devices()[:1])
    want_sums, want = evaluate.outputs(run, run.state.params, arrays)
    counted = Counted(arrays)
    sums, got = evaluate.outputs(run, run.state.params, counted)
    assert counted.read[0] == 45 and max(counted.read[1:]) <= evaluate.eval_batch_size(run)
    assert sums == pytest.approx(want_sums, rel=1e-6)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("task", ["token", "sequence", "lm"])
def test_eval_compiled_ahead_for_every_batch_shape(task):
    """batch_shapes names exactly the batches `outputs` evaluates; after Steps.compile_eval, evaluating the
    split compiles nothing (the train loop compiles them while the train step compiles)."""
    if task == "lm":
        cfg = tiny_config("model.preset=gpt-tiny", "model.vocab_size=97", "model.task=lm", "model.hidden_size=32",
                          "model.num_heads=4", "model.intermediate_size=64", "model.num_layers=2", "mesh.data=2")
        ids = np.random.default_rng(0).integers(0, 97, (37, 16)).astype(np.int32)
        arrays = dict(input_ids=ids, labels=np.roll(ids, -1, 1), segment_ids=np.ones_like(ids),
                      positions=np.broadcast_to(np.arange(16, dtype=np.int32), ids.shape).copy())
    else:
        cfg = tiny_config(f"model.task={task}", "data.seq_len=32", "train.batch_size=8", "mesh.data=2")
        arrays = random_batch(cfg, 1, batch_size=45)
        lengths = np.where(np.arange(45) % 3 == 0, 6, 30)  # short and long examples: two of the three bucket lengths
        arrays["attention_mask"] = (np.arange(32) < lengths[:, None]).astype(np.int32)
        arrays["input_ids"] *= arrays["attention_mask"]
    _, _, run = run_steps(cfg, [], jax.devices()[:2])
    shapes = evaluate.batch_shapes(run, arrays)
    with compiles() as ahead:
        run.steps.compile_eval(run.state.params, shapes)
    seen = []
    evaluate_step = run.steps.eval

    def spy(params, batch):
        seen.append(sorted((k, v.shape, v.dtype) for k, v in batch.items()))
        return evaluate_step(params, batch)

    run.steps.eval = spy
    with compiles() as evaluating:
        evaluate.outputs(run, run.state.params, arrays)
    assert evaluating == [] and len(ahead) >= len(shapes)
    expected = {str(sorted((k, v.shape, v.dtype) for k, v in b.items())) for b in shapes}
    assert {str(b) for b in seen} == expected
    assert len(expected) == (1 if task == "lm" else 2)


def test_single_label_heads_report_f1_and_matthews_correlation_as_glue_does():
    """Worked by hand. Three classes, gold 0 0 1 1 1 2 against predicted 0 1 1 1 0 2: F1 1/2, 2/3 and 1, so macro
    F1 13/18; Matthews' correlation (c s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)) with c = 4
    right of s = 6 and 2, 3, 1 of each class both ways: 10/22. An unlabelled example (-100) counts nowhere."""
    from jaxbatch import metrics

    gold, pred = np.array([0, 0, 1, 1, 1, 2, -100]), np.array([0, 1, 1, 1, 0, 2, 2])
    got = metrics.class_scores(pred, gold, ["a", "b", "c"])
    assert got["macro_f1"] == pytest.approx(13 / 18) and got["matthews_correlation"] == pytest.approx(10 / 22)
    assert "f1" not in got and got["classes"]["c"]["support"] == 1 and "     c " in got["class_report_text"]
    # two classes: F1 of the second (positive) one, as GLUE scores MRPC and QQP; 2 right of 3 predicted, of 3
    binary = metrics.class_scores(np.array([1, 0, 0, 1, 1]), np.array([1, 1, 0, 0, 1]), ["no", "yes"])
    assert binary["f1"] == pytest.approx(2 / 3)
    assert binary["matthews_correlation"] == pytest.approx((3 * 5 - (2 * 2 + 3 * 3)) / (25 - 13))
    assert evaluate.metric_names("sequence", "", classes=3) == ("loss", "accuracy", "macro_f1", "matthews_correlation")
    assert evaluate.metric_names("qa") == ("loss", "accuracy", "exact_match", "f1")  # SQuAD 2.0: at its best threshold
    assert evaluate.metric_names("qa", unanswerable=True)[4:] == ("best_exact_match", "best_f1")


def test_answers_are_scored_as_squads_evaluation_script_scores_them():
    """Normalised exact match and word-overlap F1 against the best gold answer (case, punctuation and articles
    do not count), and v2.0's empty answer: right only where the question has none."""
    from jaxbatch import metrics

    predicted = ["The Eiffel tower!", "in Paris", "", "", "Corin"]
    gold = [("Eiffel Tower",), ("Paris, France", "the city of Paris"), (), ("Ister",), ("corin", "Corin's bank")]
    scores = metrics.squad_scores(predicted, gold)
    assert scores["exact_match"] == pytest.approx(3 / 5)
    assert scores["f1"] == pytest.approx((1 + 0.5 + 1 + 0 + 1) / 5)
    assert scores["no_answer_exact_match"] == scores["no_answer_f1"] == 1.0  # v2.0's HasAns_ and NoAns_ breakdown
    assert (scores["has_answer_exact_match"], scores["has_answer_f1"]) == (pytest.approx(2 / 4), pytest.approx(2.5 / 4))
    assert set(metrics.squad_scores(predicted[:2], gold[:2])) == {"exact_match", "f1"}  # every question answerable


def test_squad_2s_best_threshold_answers_a_tie_of_null_scores_together():
    """The null-score threshold of the best exact match and F1 over a split (SQuAD 2.0's script with its
    no-answer file): questions answered "" unless their null score exceeds their best span's by no more than it.
    Answering questions 3 and 5 (tied at 0.5) gains F1 2/3 and loses 1, so the best F1 is at -2, where the
    script's question-by-question walk would stop at 0.5 halfway through the tie (F1 4.67 / 5)."""
    from jaxbatch import metrics

    gold = [("Paris",), (), ("Nim Lark",), (), ()]
    spans, diffs = ["Paris", "Rome", "Lark", "", "Ys"], [-2.0, 1.0, 0.5, None, 0.5]  # question 4: no span at all
    best = metrics.squad_best_thresholds(spans, diffs, gold)
    assert best == {"best_exact_match": 4 / 5, "best_exact_match_threshold": -2.0, "best_f1": 4 / 5,
                    "best_f1_threshold": -2.0}
    best = metrics.squad_best_thresholds(spans[:4], diffs[:4], gold[:4])  # no tie: F1's best answers question 3
    assert (best["best_exact_match"], best["best_exact_match_threshold"]) == (3 / 4, -2.0)
    assert (best["best_f1"], best["best_f1_threshold"]) == (pytest.approx((3 + 2 / 3) / 4), 0.5)
    none = metrics.squad_best_thresholds(["a", "b"], [1.0, 2.0], [(), ()])  # every question best left unanswered
    assert none["best_f1"] == 1.0 and np.nextafter(1.0, -np.inf) == none["best_f1_threshold"] < 1.0
