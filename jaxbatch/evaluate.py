"""Evaluation of a model on a whole split: loss, accuracy and, for token tasks, seqeval entity scores and
the token report (multi-label heads: micro/macro F1, exact match and the per-class report; regression heads:
Pearson and Spearman correlations instead of accuracy; question answering: SQuAD's exact match and F1 of the
answers); also the per-example predictions and probabilities that `predict` prints.

Used by the train loop, `jaxbatch evaluate` and `jaxbatch predict`, so the three can never disagree.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxbatch import metrics, mesh as mesh_lib
from jaxbatch.data import conll, pipeline, squad
from jaxbatch import losses
from jaxbatch.losses import IGNORE_INDEX, OBJECTIVE_TERMS


def eval_batch_size(run, wanted: int | None = None) -> int:
    """The eval batch: `wanted` (default the run's micro-batch) rounded up to a multiple of the batch shards
    and of the process count, so every device and host gets equal slices."""
    shards = mesh_lib.batch_shards(run.mesh, run.spec.mesh.rules)
    step = int(np.lcm(shards, jax.process_count()))
    wanted = wanted or run.micro_batch
    return -(-wanted // step) * step


def _plan(arrays: dict, batch_size: int, buckets: int) -> tuple[np.ndarray | None, list, int | None]:
    """(the order to evaluate the split in, each batch's length, the padded length): padded examples (those
    with an attention mask) shortest first, each batch cut to the smallest of `buckets` lengths (those that pad
    the split least, pipeline.bucket_lengths) that holds it; without a mask, the split's order and length
    (None, [None, ...], None)."""
    starts = range(0, len(arrays["labels"]), batch_size)
    if "attention_mask" not in arrays:
        return None, [None for _ in starts], None
    lengths = pipeline.real_lengths(arrays)  # a block of rows at a time (a text corpus' rows are computed as read)
    order = np.argsort(lengths, kind="stable")
    lengths = lengths[order]
    seq_len = arrays["attention_mask"].shape[1]
    cuts = np.asarray(pipeline.bucket_lengths(seq_len, buckets, lengths))
    return order, [int(cuts[np.searchsorted(cuts, lengths[start: start + batch_size].max())])
                   for start in starts], seq_len




def batch_shapes(run, arrays: dict, batch_size: int | None = None, buckets: int = 3) -> list[dict]:
    """The distinct global batches `outputs` gives the eval step for this split, as abstract arrays: what
    to compile ahead (Steps.compile_eval)."""
    batch_size = eval_batch_size(run, batch_size)
    _, cuts, _ = _plan(arrays, batch_size, buckets)
    shapes = {}
    for cut in cuts:
        rows = pipeline.take({k: arrays[k] for k in run.batch_sh}, slice(0, 1), cut)
        shapes[cut] = {k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype, sharding=run.batch_sh[k])
                       for k, v in rows.items()}
    return list(shapes.values())


def outputs(run, params, arrays: dict, batch_size: int | None = None, buckets: int = 3) -> tuple[dict, dict]:
    """(summed metrics over the split, the family's per-example outputs as numpy, in the split's order).

    Padded examples are evaluated in length buckets (`_plan`): the sums are the same, the padding (most of
    a short-sentence split at seq_len) is not computed, and at most `buckets` shapes compile. Per-token
    outputs are padded back to seq_len (0 past a batch's cut: padding is not computed) and everything is
    returned in the split's order."""
    batch_size = eval_batch_size(run, batch_size)
    order, cuts, seq_len = _plan(arrays, batch_size, buckets)
    token_outputs = seq_len is not None and (pipeline.per_token("labels", arrays["labels"], seq_len)
                                             or run.spec.model.task == "qa")  # its logits are per token
    totals: dict[str, float] = {}
    parts: dict[str, list] = {}
    batch_sums = []  # fetched once at the end (batches queue up; several CPU devices: Steps._launch)
    for cut, (local, real) in zip(cuts, pipeline.eval_batches(arrays, batch_size, jax.process_index(),
                                                              jax.process_count(), order)):
        local = pipeline.take(local, slice(None), cut)  # the same cut on every host: from the global batch
        sums, preds = run.steps.eval(params, pipeline.to_global(local, run.batch_sh))
        batch_sums.append(sums)
        for k, v in preds.items():
            v = np.asarray(multihost_utils.process_allgather(v, tiled=True))[:real]
            if cut is not None and token_outputs and v.ndim >= 2:  # per token: back to seq_len
                v = np.pad(v, [(0, 0), (0, seq_len - v.shape[1])] + [(0, 0)] * (v.ndim - 2))
            parts.setdefault(k, []).append(v)
    for sums in jax.device_get(batch_sums):
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    outs = {k: np.concatenate(v) for k, v in parts.items()}
    if order is None:
        return totals, outs
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return totals, {k: v[inverse] for k, v in outs.items()}


def metric_names(task: str, problem_type: str | None = "", entities: bool = True,
                 classes: int | None = None, masked: bool = False, unanswerable: bool = False) -> tuple[str, ...]:
    """The scalar metrics a training run's evaluations report for a task (what checkpoint.best_metric may
    name); a causal language model's bits per byte come from the run's tokenizer (a `masked` one's predicted
    tokens are not a text, so it has none). `problem_type` None: not known
    yet (before the data has decided), so any sequence head's. A token task's entity F1 needs entity tags
    (`entities`: plain tags such as part of speech have no entities); a single-label head's F1 of its positive
    class needs two `classes` (None: not known yet); SQuAD 2.0 (`unanswerable`) adds the scores at the split's best
    null-score threshold."""
    if problem_type == losses.REGRESSION:
        return ("loss",) + metrics.CORRELATIONS
    if task == "qa":
        return ("loss", "accuracy") + metrics.SQUAD + (metrics.SQUAD_BEST if unanswerable else ())
    names = ("loss", "accuracy") + {"lm": ("perplexity",) if masked else ("perplexity", "bits_per_byte"),
                                    "token": ("entity_f1",) if entities else ()}.get(task, ())
    if problem_type == losses.MULTI_LABEL:
        return names + metrics.MULTI_LABEL
    if task != "sequence":
        return names
    single = metrics.CLASSES + (metrics.BINARY if classes is None or classes <= 2 else ())
    others = metrics.MULTI_LABEL + metrics.CORRELATIONS if problem_type is None else ()  # any sequence head's
    return names + tuple(dict.fromkeys(single + others))  # macro_f1 is a single-label and a multi-label head's


def evaluate(run, params, arrays: dict, label_names: list[str], task: str, batch_size: int | None = None,
             bytes_per_token: np.ndarray | None = None, windows: squad.Windows | None = None) -> dict:
    """Loss and accuracy over one split; token tasks add the token report, and seqeval entity scores when
    their tags mark entities (conll.is_entity_scheme);
    language models report cross-entropy (z-loss excluded), perplexity and bits per byte; multi-label heads
    their binary cross-entropy and accuracy per (example, class) pair, F1 and exact match; regression heads
    their mean squared error and correlations, no accuracy; question answering (`windows`: the split's way back
    to its questions) its windows' accuracy (start and end both right) and the answers' exact match and F1.
    `predictions` holds every example's predicted label ids (classifiers), 0/1 per class (multi-label), scores
    (regression) or each question's answer (squad.answers)."""
    totals, out = outputs(run, params, arrays, batch_size)
    weight = max(totals.get("weight", 0.0), 1.0)
    objective = sum(totals.get(k, 0.0) for k in OBJECTIVE_TERMS)  # regularisers: not the model's loss
    result = {"loss": (totals["loss_sum"] - objective) / weight, "predictions": out.get("preds")}
    if run.spec.model.problem_type == losses.REGRESSION:
        return {**result, **metrics.regression_scores(out["preds"], arrays["labels"], label_names)}
    result["accuracy"] = totals.get("correct", 0.0) / weight
    if task == "qa":
        spec = run.spec.data
        answers = squad.answers(windows, out["start_logits"], out["end_logits"], spec.max_answer_length,
                                spec.unanswerable, spec.null_threshold)
        scored = [(a["answer"], q.answers) for a, q in zip(answers, windows.questions)
                  if q.answers or spec.unanswerable]
        result.update(metrics.squad_scores([a for a, _ in scored], [g for _, g in scored]), predictions=answers)
        if spec.unanswerable:  # SQuAD 2.0: the null-score threshold this split would have been best with
            result.update(metrics.squad_best_thresholds([a["best_span"] for a in answers],
                                                        [a["null_score_diff"] for a in answers],
                                                        [q.answers for q in windows.questions]))
    if run.spec.model.problem_type == losses.MULTI_LABEL:
        keep = losses.labelled(arrays["labels"]).all(1)
        result.update(metrics.multi_label_scores(out["preds"][keep], arrays["labels"][keep] > 0.5, label_names))
    elif task == "sequence":
        result.update(metrics.class_scores(out["preds"], arrays["labels"], label_names))
    if task == "lm":
        result["perplexity"] = float(np.exp(min(result["loss"], 700.0)))
        if bytes_per_token is not None:
            predicted = sum(int(bytes_per_token[block[block != IGNORE_INDEX]].sum())
                            for block in pipeline.blocks(arrays["labels"]))
            result["bits_per_byte"] = (result["loss"] * weight / np.log(2)) / max(predicted, 1)
    if task == "token" and totals["weight"] > 0:
        gold, pred = metrics.aligned_tags(out["preds"], arrays["labels"], label_names)
        if conll.is_entity_scheme(label_names):
            result["entities"] = metrics.entity_report(gold, pred)
            result["entity_f1"] = result["entities"]["micro avg"]["f1-score"]
        result["tokens"], result["token_report_text"] = metrics.token_report(gold, pred, label_names)
    return result


def recorded(result: dict) -> dict:
    """What a run's records keep of an evaluation: not the per-example predictions nor the printed reports."""
    return {k: v for k, v in result.items() if k != "predictions" and not k.endswith("_text")}


def summary_line(result: dict) -> str:
    """One line of an evaluation's scalar scores, as training's eval lines and its final line print them."""
    if "accuracy" not in result:  # a regression head: its loss is the mean squared error
        return f"loss (mean squared error) {result['loss']:.4f} " + " ".join(
            f"{k} {result[k]:.4f}" for k in metrics.CORRELATIONS)
    line = f"loss {result['loss']:.4f} accuracy {result['accuracy']:.4f}"
    if "perplexity" in result:
        line += f" perplexity {result['perplexity']:.2f}"
        if "bits_per_byte" in result:
            line += f" bits/byte {result['bits_per_byte']:.4f}"
    if "micro_f1" in result:
        line += " " + " ".join(f"{k.replace('_', ' ')} {result[k]:.4f}" for k in metrics.MULTI_LABEL)
    if "matthews_correlation" in result:
        line += "".join(f" {name} {result[k]:.4f}" for k, name in (("f1", "F1"), ("macro_f1", "macro F1"),
                                                                   ("matthews_correlation", "MCC")) if k in result)
    if "entity_f1" in result:
        line += f" entity F1 {result['entity_f1']:.4f}"
    if "exact_match" in result and "micro_f1" not in result:  # question answering's
        line += f" exact match {result['exact_match']:.4f} F1 {result['f1']:.4f}"
    return line


def report_lines(result: dict) -> str:
    """The printed report: the summary line, then each output's scores (several regression outputs), the
    per-class report (multi-label), or seqeval's entity table and the token report (token tasks)."""
    line = summary_line(result)
    for name, o in result.get("outputs", {}).items():
        line += f"\n  {name}: mse {o['mse']:.4f} " + " ".join(f"{k} {o[k]:.4f}" for k in metrics.CORRELATIONS)
    if "class_report_text" in result:
        line += "\nper class:\n" + result["class_report_text"]
    for group, name in (("has_answer", "answerable"), ("no_answer", "unanswerable")):  # SQuAD 2.0's breakdown
        if f"{group}_f1" in result:
            line += (f"\n  {name} questions: exact match {result[group + '_exact_match']:.4f} "
                     f"F1 {result[group + '_f1']:.4f}")
    if "best_f1" in result:
        line += (f"\n  best F1 {result['best_f1']:.4f} at data.null_threshold={result['best_f1_threshold']:.4g}, "
                 f"best exact match {result['best_exact_match']:.4f} at {result['best_exact_match_threshold']:.4g}")
    if "entity_f1" in result:
        line += "\nentity-level (seqeval):\n" + metrics.format_entity_report(result["entities"])
    if "token_report_text" in result:
        line += "\ntoken-level:\n" + result["token_report_text"]
    return line
