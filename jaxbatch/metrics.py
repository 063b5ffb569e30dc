"""Evaluation metrics (seqeval entity F1, token-level report, multi-label F1, correlations of scores, SQuAD's
exact match and F1) and the peak FLOP/s behind MFU."""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbatch.losses import IGNORE_INDEX, labelled


def aligned_tags(preds: np.ndarray, labels: np.ndarray, label_names: list[str]) -> tuple[list, list]:
    """Per-sentence (gold, predicted) tag lists over the labelled positions (first word pieces)."""
    gold, pred = [], []
    for p_row, l_row in zip(preds, labels):
        keep = l_row != IGNORE_INDEX
        gold.append([label_names[i] for i in l_row[keep]])
        pred.append([label_names[i] for i in p_row[keep]])
    return gold, pred


def entity_report(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """seqeval entity-level precision/recall/F1 per type plus micro/macro/weighted averages (IOB2, strict)."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    report = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    return {k: {m: float(v) for m, v in d.items()} for k, d in report.items()}


def token_report(gold: list[list[str]], pred: list[list[str]], label_names: list[str]) -> tuple[dict, str]:
    """Token-level per-tag precision/recall/F1/support in scikit-learn's layout (dict and text)."""
    from sklearn.metrics import classification_report

    g = [t for s in gold for t in s]
    p = [t for s in pred for t in s]
    labels = [name for name in label_names if name in set(g) | set(p)]
    kw = dict(labels=labels, zero_division=0, digits=4)
    return classification_report(g, p, output_dict=True, **kw), classification_report(g, p, **kw)


CORRELATIONS = ("pearson", "spearmanr")  # what GLUE scores STS-B by (HF's run_glue, scipy)


def correlations(predicted: np.ndarray, gold: np.ndarray) -> dict:
    """Pearson's and Spearman's correlation of predicted and gold scores (scipy.stats, as GLUE's metric);
    NaN where they are undefined (fewer than two examples, or constant scores)."""
    import warnings

    from scipy import stats

    if len(gold) < 2 or np.ptp(predicted) == 0 or np.ptp(gold) == 0:
        return {k: float("nan") for k in CORRELATIONS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"pearson": float(stats.pearsonr(predicted, gold)[0]),
                "spearmanr": float(stats.spearmanr(predicted, gold)[0])}


def regression_scores(predicted: np.ndarray, gold: np.ndarray, output_names: list[str]) -> dict:
    """`correlations` of a regression head over its labelled examples (gold NaN: unlabelled): of its one
    score, or, with several outputs, their mean over the outputs, and under `outputs` each output's own
    correlations and mean squared error."""
    keep = labelled(gold)
    if gold.ndim == 1:
        return correlations(predicted[keep], gold[keep])
    outputs = {}
    for k, name in enumerate(output_names):
        rows = keep[:, k]
        outputs[name] = {**correlations(predicted[rows, k], gold[rows, k]),
                         "mse": float(np.mean(np.square(predicted[rows, k] - gold[rows, k]))) if rows.any() else
                         float("nan")}
    return {**{c: float(np.mean([o[c] for o in outputs.values()])) for c in CORRELATIONS}, "outputs": outputs}


CLASSES = ("macro_f1", "matthews_correlation")  # single-label heads beside accuracy: uneven classes, GLUE's CoLA
BINARY = ("f1",)  # two classes: the second class's F1, GLUE's MRPC and QQP metric


def class_scores(pred: np.ndarray, gold: np.ndarray, label_names: list[str]) -> dict:
    """A single-label head's F1 averaged over classes and Matthews' correlation (scikit-learn's, over the classes
    that occur, as HF's `evaluate` metrics), with two classes the second (positive) class's F1, and the per-class
    report (dict and text), from class ids (gold < 0: unlabelled)."""
    from sklearn.metrics import classification_report, f1_score, matthews_corrcoef

    keep = gold >= 0
    g, p = gold[keep].astype(np.int64), pred[keep].astype(np.int64)
    binary = BINARY if len(label_names) == 2 else ()
    if not len(g):
        return {k: float("nan") for k in CLASSES + binary}
    scores = {"macro_f1": float(f1_score(g, p, average="macro", zero_division=0)),
              "matthews_correlation": float(matthews_corrcoef(g, p))}
    if binary:
        scores["f1"] = float(f1_score(g, p, pos_label=1, average="binary", zero_division=0))
    present = sorted(set(g.tolist()) | set(p.tolist()))
    names = dict(labels=present, target_names=[label_names[i] for i in present], zero_division=0)
    return {**scores, "classes": classification_report(g, p, output_dict=True, **names),
            "class_report_text": classification_report(g, p, digits=4, **names)}


MULTI_LABEL = ("micro_f1", "macro_f1", "exact_match")  # what multi-label heads are scored by (HF's examples)


def multi_label_scores(pred: np.ndarray, gold: np.ndarray, label_names: list[str]) -> dict:
    """Micro- and macro-averaged F1 over classes, the fraction of examples whose whole label set is right
    (exact_match: scikit-learn's subset accuracy), and the per-class report (dict and text), from 0/1
    (examples, classes) indicator arrays."""
    from sklearn.metrics import accuracy_score, classification_report, f1_score

    kw = dict(y_true=gold.astype(np.int32), y_pred=pred.astype(np.int32), zero_division=0)
    names = dict(labels=list(range(len(label_names))), target_names=label_names)
    return {"micro_f1": float(f1_score(average="micro", **kw)), "macro_f1": float(f1_score(average="macro", **kw)),
            "exact_match": float(accuracy_score(kw["y_true"], kw["y_pred"])),
            "classes": classification_report(output_dict=True, **names, **kw),
            "class_report_text": classification_report(digits=4, **names, **kw)}


SQUAD = ("exact_match", "f1")  # what extractive question answering is scored by (SQuAD's script), as fractions
SQUAD_BEST = tuple(f"best_{k}" for k in SQUAD)  # SQuAD 2.0's, at the split's best null-score threshold


def _normalized(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles (a, an, the), words."""
    import re
    import string

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text, flags=re.UNICODE).split()


def _answer_f1(predicted: list[str], gold: list[str]) -> float:
    """Word-overlap F1 of normalised answers; an empty answer scores 1 against an empty one, else 0 (2.0's)."""
    from collections import Counter

    if not predicted or not gold:
        return float(predicted == gold)
    same = sum((Counter(predicted) & Counter(gold)).values())
    if not same:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def _squad_per_question(predicted: list[str], gold: list[tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """Each answer's exact match and F1 against the best of its gold answers (none: the empty answer)."""
    exact, f1 = [], []
    for answer, answers in zip(predicted, gold):
        mine, theirs = _normalized(answer), [_normalized(a) for a in answers or ("",)]
        exact.append(max(float(mine == t) for t in theirs))
        f1.append(max(_answer_f1(mine, t) for t in theirs))
    return np.asarray(exact), np.asarray(f1)


def squad_scores(predicted: list[str], gold: list[tuple[str, ...]]) -> dict:
    """Exact match and F1 of each predicted answer against the best of its gold answers, averaged over the
    questions, as SQuAD's evaluation script (v2.0's, which is v1.1's where every question has an answer; an
    unanswerable question's gold is the empty answer). Where some questions have no answer, v2.0's breakdown
    too: `has_answer_*` over the answerable ones, `no_answer_*` over the others (its HasAns_ and NoAns_).
    Hand-written: the `evaluate` library fetches this script from the hub at run time; fractions, where the
    script prints percent."""
    if not gold:
        return {k: float("nan") for k in SQUAD}
    exact, f1 = _squad_per_question(predicted, gold)
    out = {"exact_match": float(exact.mean()), "f1": float(f1.mean())}
    answerable = np.asarray([bool(g) for g in gold])
    if not answerable.all():
        for group, rows in (("has_answer", answerable), ("no_answer", ~answerable)):
            if rows.any():
                out.update({f"{group}_exact_match": float(exact[rows].mean()), f"{group}_f1": float(f1[rows].mean())})
    return out


def squad_best_thresholds(spans: list[str], null_diffs: list[float], gold: list[tuple[str, ...]]) -> dict:
    """SQuAD 2.0's best exact match and F1 over the null-score threshold, and the threshold that gives each (the
    script's best_exact/best_f1 with its --na-prob-file): a question is answered "" where its null score beats
    its best span (`spans`, its text) by more than the threshold (`null_diffs`: null minus span score, as
    squad.answers and HF's null_odds.json give them; None where no span qualifies), so the threshold is
    data.null_threshold's best value on this split. run_qa passes a no-answer probability of 0 to the script,
    so reports no such threshold. The smallest threshold of equal scores wins, as in the script."""
    diffs = np.asarray([np.inf if d is None else d for d in null_diffs], dtype=np.float64)
    finite = np.isfinite(diffs)
    empty = _squad_per_question([""] * len(gold), gold)
    if not finite.any():
        return {k: float(e.mean()) for k, e in zip(SQUAD_BEST, empty)} | {f"{k}_threshold": 0.0 for k in SQUAD_BEST}
    order = np.argsort(np.where(finite, diffs, np.inf), kind="stable")[: int(finite.sum())]
    last_of_ties = np.append(diffs[order][1:] != diffs[order][:-1], True)  # a threshold answers all its ties
    thresholds = np.concatenate([[np.nextafter(diffs[order][0], -np.inf)], diffs[order][last_of_ties]])
    out = {}
    for name, answered, unanswered in zip(SQUAD_BEST, _squad_per_question(spans, gold), empty):
        totals = unanswered.sum() + np.concatenate([[0.0], np.cumsum((answered - unanswered)[order])[last_of_ties]])
        best = int(np.argmax(totals))
        out[name], out[f"{name}_threshold"] = float(totals[best] / len(gold)), float(thresholds[best])
    return out


def format_entity_report(report: dict) -> str:
    lines = [f"{'':>14}{'precision':>11}{'recall':>9}{'f1':>9}{'support':>9}"]
    for name, row in report.items():
        lines.append(f"{name:>14}{row['precision']:>11.4f}{row['recall']:>9.4f}{row['f1-score']:>9.4f}"
                     f"{int(row['support']):>9d}")
    return "\n".join(lines)


def measure_matmul_flops(sizes: tuple[int, ...] = (1024, 2048), dtype=jnp.float32, repeats: int = 5,
                         device=None) -> float:
    """FLOP/s of square matmuls on one device: the *largest* over sizes and repeats. A median or a single
    run is pulled down by anything else running at that moment, and a low peak shows MFU above 100%. bf16
    on a CPU is summed in float32, as the models' dense layers do there (`layers.f32_accumulated`)."""
    device = device or jax.devices()[0]
    wide = jnp.float32 if jnp.dtype(dtype) == jnp.bfloat16 and device.platform == "cpu" else None
    f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=wide))
    best = 0.0
    for n in sizes:
        a = jax.device_put(jnp.ones((n, n), dtype), device)
        f(a).block_until_ready()
        for _ in range(repeats):
            t0 = time.perf_counter()
            f(a).block_until_ready()
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


class Peak(NamedTuple):
    flops: float  # per device
    source: str  # where the number came from, for the log
    measured: bool  # a matmul timed on this machine (a lower bound: a faster step raises it)
    dtype: str = "float32"  # the matmul's inputs: a bf16 run is measured against a bf16 peak, never fp32's


def peak_flops_per_device(override_tflops: float = 0.0, dtype=jnp.float32) -> Peak:
    """The override, the spec sheet for known accelerators, else a matmul in the run's compute `dtype` measured
    on this machine (CPU) and cached per machine and dtype (cache.py): on a CPU bf16 dots run ~3x fp32's rate,
    so one shared number would read a bf16 run's MFU against fp32's peak and raise fp32's from it."""
    if override_tflops:
        return Peak(override_tflops * 1e12, "config", False)
    from jaxbatch import cache, topology

    kind = jax.devices()[0].device_kind
    chip = topology.chip_for_kind(kind)
    if chip is not None:
        return Peak(chip.peak_flops, f"spec sheet ({kind}, bf16)", False)
    name = jnp.dtype(dtype).name
    value, fresh = cache.cached_peak(lambda: measure_matmul_flops(dtype=dtype), name)
    source = f"{name} matmul ({kind}), {'measured now' if fresh else 'measured earlier on this machine'}"
    per_device = measured_peak_per_device(value)
    if per_device != value:
        source = f"{source}, the host's peak shared by {jax.local_device_count()} devices"
    return Peak(per_device, source, True, name)


def raise_measured_peak(peak: Peak, per_device: float) -> None:
    """A step reached `per_device` FLOP/s on each device, above the measured `peak`: the measurement was low;
    store the step's rate as this machine's peak for its dtype instead (cache.raise_peak), in
    `measure_matmul_flops`' units."""
    from jaxbatch import cache

    cache.raise_peak(per_device * _devices_sharing_a_measurement(), peak.dtype)


def measured_peak_per_device(peak: float) -> float:
    """A peak measured on device 0 (`measure_matmul_flops`), per device."""
    return peak / _devices_sharing_a_measurement()


def _devices_sharing_a_measurement() -> int:
    """XLA:CPU devices of one process share its cores, so one device's matmul already ran on all of them: the
    host's peak is split among them. An accelerator's measurement is its own."""
    return jax.local_device_count() if jax.devices()[0].platform == "cpu" else 1
