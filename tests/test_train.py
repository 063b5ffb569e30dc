"""The whole loop on the generated corpus: it learns, and it leaves metrics behind."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import event_records, subprocess_env, tiny_config
from jaxbatch import cli, reporting, train
from jaxbatch.data import pipeline


def test_train_loop_learns_synthetic_ner(tmp_run_dir):
    cfg = tiny_config("train.steps=60", "train.eval_every=30", "train.log_every=10", "train.batch_size=32",
                      "optim.learning_rate=3e-3", "data.seq_len=32", "mesh.data=4", "mesh.fsdp=2", "data.buckets=2",
                      f"train.run_dir={tmp_run_dir}")
    result = train.train(cfg)
    summary = result.summary
    # length buckets: every batch's loss is divided by its rows x the split's labelled tokens per row
    assert result.spec.train.loss_norm == "dataset" and cfg.train.loss_norm == "auto"
    assert result.run.steps.labelled_per_row == pipeline.labelled_per_row(result.data.train) > 1
    evals = summary["evals"]
    assert [e["step"] for e in evals] == [30, 60]
    lines = [json.loads(line) for line in open(f"{tmp_run_dir}/metrics.jsonl")]
    train_lines = [r for r in lines if r["kind"] == "train"]
    assert [r["step"] for r in train_lines] == [10, 20, 30, 40, 50, 60]
    assert train_lines[-1]["loss"] < 0.3 * train_lines[0]["loss"]
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in train_lines[1:])
    # dev names are unseen and a random-init word-level model cannot place them; context words still count
    from jaxbatch import evaluate

    assert set(evaluate.metric_names("token")) <= set(evals[-1])  # what checkpoint.best_metric may name
    report = evals[-1]["entities"]
    assert set(report) >= {"PER", "LOC", "ORG", "MISC", "micro avg"}
    assert sum(report[t]["support"] for t in ("PER", "LOC", "ORG", "MISC")) == report["micro avg"]["support"] > 100
    assert json.load(open(f"{tmp_run_dir}/summary.json"))["synthetic_data"] is True
    from pathlib import Path

    assert (Path(tmp_run_dir) / "curves.png").stat().st_size > 10_000
    (events,) = (Path(tmp_run_dir) / "tensorboard").glob("events.out.tfevents.*")
    records = event_records(events)
    # every logged scalar, written by the writer thread: 6 train and 2 eval steps
    assert sum(b"train/grad_norm" in r for r in records) == 6 and sum(b"eval/accuracy" in r for r in records) == 2


def test_train_loop_learns_synthetic_sentiment(tmp_run_dir):
    cfg = tiny_config("data.name=synthetic_sst", "train.steps=40", "train.eval_every=40", "train.batch_size=32",
                      "optim.learning_rate=3e-3", "data.seq_len=24", "mesh.data=2", "mesh.model=4",
                      f"train.run_dir={tmp_run_dir}")
    result = train.train(cfg)
    assert result.spec.model.task == "sequence" and result.spec.model.num_labels == 2
    assert result.spec.data.labels == "negative,positive"
    assert cfg.model.task == "token" and cfg.data.labels == ""  # the input config is never changed
    final = result.summary["final_eval"]
    assert final["accuracy"] > 0.95 and final["f1"] > 0.95 and final["matthews_correlation"] > 0.9
    from jaxbatch import evaluate

    assert set(evaluate.metric_names("sequence", "", classes=2)) <= set(final)  # what checkpoint.best_metric may name


def test_cli_reports_config_errors(capsys):
    assert cli.main(["train", "train.batchsize=3"]) == 2
    assert "did you mean train.batch_size" in capsys.readouterr().err


def test_checkpoints_on_another_disk_are_found_from_the_run_dir(tmp_path):
    """checkpoint.directory elsewhere: the run dir links to it, so inference finds the run's checkpoints; a
    run dir that holds checkpoints of its own is not split across two folders."""
    from jaxbatch import run as run_lib
    from jaxbatch.errors import ConfigError

    run, elsewhere = tmp_path / "run", tmp_path / "big_disk" / "ckpts"
    args = ["train.steps=4", "train.eval_every=0", "checkpoint.every=2", f"train.run_dir={run}"]
    done = train.train(tiny_config(*args, f"checkpoint.directory={elsewhere}"))
    assert (run / "checkpoints").is_symlink() and (run / "checkpoints").resolve() == elsewhere.resolve()
    assert sorted(p.name for p in elsewhere.iterdir() if p.name.isdigit()) == ["2", "4"]
    restored = run_lib.restore(run)
    assert restored.step == 4 and restored.finished
    assert jax.tree.all(jax.tree.map(np.array_equal, jax.device_get(restored.params),
                                     jax.device_get(done.state.params)))
    own = tmp_path / "own"
    train.train(tiny_config(*args, f"train.run_dir={own}"))
    with pytest.raises(ConfigError, match="holds this run dir's own checkpoints"):
        train.train(tiny_config(*args, f"train.run_dir={own}", f"checkpoint.directory={elsewhere}"))
    assert (own / "checkpoints").is_dir() and not (own / "checkpoints").is_symlink()
    # a new run in the same run dir: the old checkpoints are renamed on their own disk and linked from the
    # replaced folder, which stays a run dir inference can read
    again = train.train(tiny_config(*args, "train.steps=2", "checkpoint.resume=false",
                                    f"checkpoint.directory={elsewhere}"))
    (aside,) = run.glob("replaced-*")
    assert (aside / "checkpoints").resolve().parent == elsewhere.resolve().parent
    assert run_lib.restore(aside).step == 4 and run_lib.restore(run).step == again.summary["step"] == 2


def test_a_run_dir_trains_in_one_process_at_a_time(tmp_path):
    """A second launch on a run dir in use is refused in one line naming the holder, before it reads data or
    touches a checkpoint; the kernel drops the lock with its holder, so a killed run leaves none behind."""
    import os
    import subprocess
    import sys

    from jaxbatch.errors import ConfigError

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, sys, time
f = open({str(run / train.LOCK)!r}, "a+"); fcntl.flock(f, fcntl.LOCK_EX); f.write(f"{{os.getpid()}}\\n"); f.flush()
print("held", flush=True); time.sleep(600)"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ConfigError, match=rf"is in use by another training process \(pid {holder.pid}\)"):
            train.train(tiny_config("train.steps=2", f"train.run_dir={run}"))
        assert sorted(p.name for p in run.iterdir()) == [train.LOCK]
        shared = [f"checkpoint.directory={run}", "train.steps=2"]  # another run dir, the same checkpoint folder
        with pytest.raises(ConfigError, match=rf"checkpoint.directory='{run}' is in use .*pid {holder.pid}"):
            train.train(tiny_config(*shared, f"train.run_dir={tmp_path / 'other'}"))
    finally:
        holder.kill()
        holder.wait()
    result = train.train(tiny_config("train.steps=2", "train.eval_every=0", f"train.run_dir={run}"))  # gone with it
    assert result.finished
    again = train.train(tiny_config("train.steps=4", "train.eval_every=0", f"train.run_dir={run}"))  # released
    assert again.summary["step"] == 4 and os.path.exists(run / train.LOCK)


def test_a_warmup_longer_than_the_run_says_how_high_the_learning_rate_gets(tmp_path, capsys):
    train.train(tiny_config("train.steps=3", "train.log_every=1", "train.eval_every=0", "optim.warmup_steps=10",
                            "optim.learning_rate=1e-3", f"train.run_dir={tmp_path}"))
    logged = max(r["learning_rate"] for r in map(json.loads, open(tmp_path / "metrics.jsonl")) if r["kind"] == "train")
    assert logged == pytest.approx(2e-4)  # step 3 trains with the schedule's value at step 2: 1e-3 x 2/10
    assert ("the warmup (10 steps) is not shorter than the run (3 steps): the learning rate reaches 0.0002 at "
            "most, not the peak 0.001") in capsys.readouterr().out


def _replay(evals, name, mode, patience):
    """Where the run should have stopped and which step is best, replayed from its evaluations."""
    best, best_step, since = None, None, 0
    for e in evals:
        if best is None or (e[name] > best if mode == "max" else e[name] < best):
            best, best_step, since = e[name], e["step"], 0
        else:
            since += 1
        if since >= patience:
            return e["step"], best_step, best
    return evals[-1]["step"], best_step, best


def test_the_best_checkpoint_is_kept_read_and_early_stopping_resumes_exactly(tmp_path):
    """checkpoint.best_metric keeps the best checkpoint beside the latest max_to_keep (here 1) and inference
    reads it; train.patience stops the run, and a run cut in two segments (train.stop_after) stops at the same
    step with the same best, because the tracker travels with each checkpoint. Higher loss counts as better
    here only so that the first evaluation stays best and the run has to stop early: the mechanics are
    under test, not the metric."""
    from jaxbatch import run as run_lib
    from jaxbatch import evaluate
    from jaxbatch.data import tasks
    from jaxbatch.errors import CheckpointError

    common = ["train.steps=20", "train.eval_every=2", "checkpoint.max_to_keep=1", "checkpoint.best_metric=loss",
              "checkpoint.best_mode=max", "train.patience=3"]
    whole = train.train(tiny_config(*common, f"train.run_dir={tmp_path / 'whole'}")).summary
    stop, best_step, best_loss = _replay(whole["evals"], "loss", "max", 3)
    assert whole["finished"] and whole["step"] == stop < 20
    assert whole["best"] == {"metric": "loss", "value": best_loss, "step": best_step, "evaluations_since": 3,
                             "stopped_early": True}
    ckpt_dir = tmp_path / "whole" / "checkpoints"
    assert sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) == sorted({best_step, stop})
    restored = run_lib.restore(tmp_path / "whole")
    assert restored.step == best_step and restored.finished
    arrays = tasks.load_split(restored.run.spec.data, restored.tokenizer, "validation")
    again = evaluate.evaluate(restored.run, restored.params, arrays, restored.run.spec.data.labels.split(","), "token")
    np.testing.assert_allclose(again["loss"], best_loss, rtol=1e-6)
    newest = run_lib.restore(tmp_path / "whole", step=stop)  # --step: any kept checkpoint, e.g. the newest
    assert newest.step == stop and newest.finished
    with pytest.raises(CheckpointError, match=f"no checkpoint at step 1 .it has {min(best_step, stop)}, "):
        run_lib.restore(tmp_path / "whole", step=1)
    # the same command again: the run stays stopped
    rerun = train.train(tiny_config(*common, f"train.run_dir={tmp_path / 'whole'}")).summary
    assert rerun["step"] == stop and rerun["best"]["step"] == best_step
    assert rerun["evals"] == whole["evals"]  # its evaluation again, in place of the first
    rows = [(r["step"], r["kind"]) for r in reporting.read_metrics(tmp_path / "whole")]
    assert rows.count((stop, "eval")) == 1 and rows[-1] == (stop, "eval"), rows  # in metrics.jsonl too
    # two segments: cut before the best is known to be final
    cut = tiny_config(*common, "train.stop_after=3", f"train.run_dir={tmp_path / 'cut'}")
    assert not train.train(cut).finished
    resumed = train.train(tiny_config(*common, f"train.run_dir={tmp_path / 'cut'}")).summary
    assert resumed["step"] == stop and resumed["best"] == whole["best"]
    assert resumed["evals"] == whole["evals"]  # the earlier segment's too: they travel with the checkpoint


def test_best_metric_must_be_one_the_task_reports(tmp_path, capsys):
    assert cli.main(["train", "model.preset=tiny", "checkpoint.best_metric=perplexity", "train.steps=2",
                     "train.progress=false", f"train.run_dir={tmp_path}"]) == 2
    assert "checkpoint.best_metric='perplexity' is not reported for this token task; choose one of loss, " \
           "accuracy, entity_f1" in capsys.readouterr().err


def test_a_run_dir_is_a_pretrained_folder_whose_task_head_is_replaced_for_other_labels(tmp_path, monkeypatch):
    """model.pretrained=RUN_DIR (pretrain, then fine-tune from it): the run's checkpoint, exported once under
    $JAXBATCH_CACHE, loads as any folder: every backbone tensor is the run's, bit for bit; its 2-class sequence
    head does not fit a 9-tag token task, so the head is initialised anew and the load report says so (as
    transformers' ignore_mismatched_sizes, never silently)."""
    from jaxbatch import config, run as run_lib, state as state_lib

    monkeypatch.setenv("JAXBATCH_CACHE", str(tmp_path / "cache"))
    run_lib.exported.cache_clear()
    source = tmp_path / "sst"
    train.train(tiny_config("data.name=synthetic_sst", "train.steps=2", "train.eval_every=0", "data.num_train=64",
                            f"train.run_dir={source}"))
    before = run_lib.restore(source)
    cfg = config.build([f"model.pretrained={source}", "data.name=synthetic_ner", "train.progress=false"])
    spec = run_lib.resolve(cfg, task="token", label_names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG",
                                                             "B-MISC", "I-MISC"])
    run = run_lib.setup(spec)
    report = run.load_report
    assert [r.split(" ")[0] for r in report.resized] == ["classifier.bias", "classifier.kernel"], str(report)
    assert not report.new and not report.unexpected and "another shape" in str(report)
    ours = {state_lib.param_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(run.state.params)}
    theirs = {state_lib.param_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(before.params)}
    backbone = [n for n in ours if not n.startswith("classifier.")]  # the source's pooler: a sequence head's
    assert len(backbone) == len(ours) - 2 > 20 and set(backbone) < set(theirs)
    for name in backbone:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert ours["classifier.kernel"].shape == (spec.model.hidden_size, 9)
    folder = run_lib.exported(source)
    written = (folder / "model.safetensors").stat().st_mtime_ns
    run_lib.exported.cache_clear()  # another process: the folder is found, not written again
    assert run_lib.exported(source) == folder and (folder / "model.safetensors").stat().st_mtime_ns == written
    assert folder.parent == tmp_path / "cache" / "pretrained"
    step_dir = source / "checkpoints" / "2"  # another run written to the same path and step: exported anew
    os.utime(step_dir, ns=(step_dir.stat().st_atime_ns, step_dir.stat().st_mtime_ns + 1))
    run_lib.exported.cache_clear()
    assert run_lib.exported(source) != folder


def test_epochs_set_the_steps_once_the_data_is_read_and_the_later_of_steps_and_epochs_wins(tmp_path):
    """train.epochs=1.5 over 64 synthetic examples in batches of 16: 6 steps (HF's num_train_epochs)."""
    from jaxbatch import config

    run_dir = tmp_path / "run"
    train.train(tiny_config("data.name=synthetic_sst", "data.num_train=64", "train.eval_every=0", "train.epochs=1.5",
                            f"train.run_dir={run_dir}"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["train"]["steps"] == 6 and summary["config"]["train"]["epochs"] == 1.5
    steps = [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert max(steps) == 6
    assert config.build(["train.epochs=2", "train.steps=7"]).train.epochs == 0  # a recipe's epochs, then steps
    assert config.build(["train.steps=7", "train.epochs=2"]).train.epochs == 2
    with pytest.raises(config.ConfigError, match="train.epochs must be >= 0"):
        config.validate(config.build(["train.epochs=-1"]), 1)
    from jaxbatch import run as run_lib

    with pytest.raises(config.ConfigError, match="train.epochs=1e\\+09 of 2048 examples is 64000000000 steps"):
        run_lib.resolve(config.build(["train.epochs=1e9"]), train_examples=2048)


def test_an_encoder_pretrains_as_a_masked_lm_resumes_bitwise_and_is_evaluated_as_it_trained(tmp_path, capsys):
    """An encoder on a text corpus trains its masked-LM head (HF's run_mlm.py): it learns the corpus (each word
    follows from its neighbours), a run cut in two (train.stop_after) ends bit-identical to one that was not
    (the masks of each batch are drawn again exactly), `jaxbatch evaluate` scores the validation split to the
    last digit of training's final evaluation, and generate refuses it."""
    from jaxbatch.models import bert

    words = [f"w{i}" for i in range(100)]
    bert.tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]).save_pretrained(tmp_path / "tok")
    rng = np.random.default_rng(0)
    docs = [" ".join(words[(s + k) % 100] for k in range(rng.integers(5, 30))) for s in rng.integers(0, 100, 400)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(docs))
    common = ("model.preset=tiny", "data.name=text", f"data.data_dir={tmp_path / 'corpus.txt'}", "data.seq_len=32",
              f"data.tokenizer={tmp_path / 'tok'}", "model.hidden_dropout=0", "optim.learning_rate=3e-3",
              "train.batch_size=16", "mesh.data=2", "mesh.fsdp=4")
    learnt = train.train(tiny_config(*common, "train.steps=400", "train.eval_every=0",
                                     f"train.run_dir={tmp_path / 'a'}"))
    assert learnt.spec.model.task == "lm" and learnt.data.masking is not None
    final = learnt.summary["final_eval"]
    assert final["loss"] < 0.6 * np.log(105) and final["accuracy"] > 0.15 and "bits_per_byte" not in final
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "a"), "--split", "validation"]) == 0
    assert f"loss {final['loss']:.4f} accuracy {final['accuracy']:.4f}" in capsys.readouterr().out
    assert cli.main(["generate", str(tmp_path / "a"), "--prompt", "w1"]) == 2
    assert "masked language model" in capsys.readouterr().err
    tuned = train.train(tiny_config("data.name=synthetic_sst", f"model.pretrained={tmp_path / 'a'}", "train.steps=1",
                                    "train.eval_every=0", f"train.run_dir={tmp_path / 'tuned'}"))  # then fine-tuned
    report = tuned.run.load_report
    assert sorted(report.new) == ["classifier.bias", "classifier.kernel", "pooler.bias", "pooler.kernel"]
    assert report.unexpected == [] and "cls.predictions.bias" in report.expected_unused

    short = (*common, "train.steps=6", "train.eval_every=3", "checkpoint.every=3")
    whole = train.train(tiny_config(*short, f"train.run_dir={tmp_path / 'whole'}"))
    train.train(tiny_config(*short, "train.stop_after=2", f"train.run_dir={tmp_path / 'cut'}"))
    resumed = train.train(tiny_config(*short, f"train.run_dir={tmp_path / 'cut'}"))
    assert resumed.summary["evals"] == whole.summary["evals"]  # steps 3 and 6
    for a, b in zip(jax.tree.leaves(whole.state.params), jax.tree.leaves(resumed.state.params)):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


def test_a_causal_lm_fine_tunes_as_a_text_classifier_with_lora_and_exports_what_predict_reads(tmp_path, capsys):
    """A LLaMA-style causal LM folder (its BPE tokenizer starts texts with BOS and has no pad token) fine-tuned
    with LoRA on a TSV of sentiment: a new `score` head, read at each text's last token, learns; `jaxbatch
    evaluate` prints training's final evaluation; and both exports, the merged LlamaForSequenceClassification and
    the PEFT adapter on its base, give in transformers (padding a batch as training did) the probabilities
    `jaxbatch predict` gives."""
    import peft
    import torch
    import transformers

    from conftest import bpe_tokenizer
    from jaxbatch.data import synthetic

    splits = {"train": synthetic.sentiment_corpus(384, 0), "dev": synthetic.sentiment_corpus(96, 1)}
    tok = bpe_tokenizer([" ".join(w) for w, _ in splits["train"]], bos=True)
    for name, rows in splits.items():
        (tmp_path / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{' '.join(w)}\t{y}\n" for w, y in rows))
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64)).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    result = train.train(tiny_config(
        "model.preset=custom", f"model.pretrained={tmp_path / 'base'}", "model.lora_rank=4", "data.name=tsv",
        f"data.data_dir={tmp_path}", "data.seq_len=32", "train.steps=60", "train.eval_every=0", "train.batch_size=32",
        "optim.learning_rate=3e-3", "mesh.data=2", "mesh.fsdp=2", "mesh.model=2", f"train.run_dir={tmp_path / 'run'}"))
    spec, report = result.spec.model, result.run.load_report
    assert (spec.family, spec.task, spec.num_labels) == ("decoder", "sequence", 2)
    assert "score.kernel" in report.new and report.expected_unused == ["lm_head.weight"] and not report.unexpected
    final = result.summary["final_eval"]
    assert final["accuracy"] > 0.85
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "run"), "--split", "validation"]) == 0
    assert f"loss {final['loss']:.4f} accuracy {final['accuracy']:.4f}" in capsys.readouterr().out
    lines = [" ".join(w) for w, _ in splits["dev"][:6]]
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n")
    assert cli.main(["predict", str(tmp_path / "run"), "--input", str(tmp_path / "lines.txt")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ours = [[r["probabilities"][n] for n in ("0", "1")] for r in records]
    right = [r["label"] == str(y) for r, (_, y) in zip(records, splits["dev"][:6])]
    assert sum(right) >= 5, right  # 6 of 6 here; one spared for another CPU's rounding of a close call
    assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "adapter"), "--adapter"]) == 0
    merged = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert type(merged).__name__ == "LlamaForSequenceClassification"
    pad = tok.eos_token_id
    assert f"pad_token_id={pad}" in (tmp_path / "adapter" / "README.md").read_text()
    adapted = peft.PeftModel.from_pretrained(transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "base", num_labels=2, pad_token_id=pad), tmp_path / "adapter")
    for model, folder in ((merged, "hf"), (adapted, "adapter")):
        exported = transformers.AutoTokenizer.from_pretrained(tmp_path / folder)
        assert exported.pad_token_id == pad
        with torch.no_grad():
            logits = model.eval()(**exported(lines, padding=True, return_tensors="pt")).logits
        np.testing.assert_allclose(torch.softmax(logits, -1).numpy(), ours, atol=1e-5, err_msg=folder)


def test_the_planned_micro_batch_trains_as_if_set_by_hand_and_a_resume_keeps_it(tmp_path):
    """train.auto_micro_batch with a budget between the compiled steps' needs at k=1 and k=2 trains with k=2,
    bit for bit as train.accum_steps=2 does, across a cut; a resume whose budget would plan another k is
    refused, since the updates would no longer be the same."""
    from jaxbatch import config, memory

    common = ["data.name=synthetic_sst", "data.num_train=64", "train.batch_size=32", "data.seq_len=64", "train.steps=4",
              "train.eval_every=0"]
    by_hand = train.train(tiny_config(*common, "train.accum_steps=2", f"train.run_dir={tmp_path / 'hand'}"))
    one, two = (memory.step_memory(config.replace(by_hand.spec, train__accum_steps=1), k) for k in (1, 2))
    assert two.total < one.total
    budget = f"train.memory_budget_gb={(one.total + two.total) / 2 / 2**30}"
    planned = [*common, "train.auto_micro_batch=true", budget, f"train.run_dir={tmp_path / 'planned'}"]
    assert not train.train(tiny_config(*planned, "train.stop_after=2")).finished
    resumed = train.train(tiny_config(*planned))
    assert resumed.summary["step"] == 4 and resumed.spec.train.accum_steps == 2
    assert not resumed.spec.train.auto_micro_batch
    for ours, theirs in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(by_hand.state.params)):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    with pytest.raises(config.ConfigError, match=r"train.accum_steps: 2 -> 1"):  # a budget where k=1 fits
        train.train(tiny_config(*planned[:-2], "train.steps=6", "train.memory_budget_gb=64",
                                f"train.run_dir={tmp_path / 'planned'}"))


def test_a_decoder_learns_to_tag_words_and_exports_a_token_classifier_hf_reads_alike(tmp_path, capsys):
    """A GPT-2-shaped decoder (task=token: HF's *ForTokenClassification) on the generated NER data, with a GPT-2
    tokenizer: the words are read as inside a text (HF's run_ner loads GPT-2's tokenizer with add_prefix_space),
    and kept so in the run dir; a tagger that sees only the words before each one learns the names it trained
    on; the exported GPT2ForTokenClassification, with its tokenizer, tags as `jaxbatch predict` does."""
    import torch
    import transformers

    from conftest import bpe_tokenizer
    from jaxbatch.data import synthetic

    core = bpe_tokenizer([" ".join(w) for w, _ in synthetic.ner_corpus(200, 0)]).backend_tokenizer
    transformers.GPT2TokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>").save_pretrained(tmp_path / "tok")
    run = tmp_path / "run"
    assert cli.main(["train", "model.preset=gpt-tiny", "data.name=synthetic_ner", f"data.tokenizer={tmp_path / 'tok'}",
                     "train.steps=60", "train.eval_every=0", "train.batch_size=32", "data.seq_len=32",
                     "optim.learning_rate=5e-3", "train.progress=false", f"train.run_dir={run}"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["model"]["task"] == "token"  # dev names are unseen, and no word sees those after it
    saved = transformers.AutoTokenizer.from_pretrained(run / "tokenizer")
    enc = saved(["John", "flew"], is_split_into_words=True)
    pieces = saved.convert_ids_to_tokens(enc["input_ids"])
    assert [pieces[enc.word_ids().index(w)][0] for w in (0, 1)] == ["Ġ", "Ġ"]  # each word after a space
    lines = ["John Smith flew to Paris on Monday .", "Reuters said Anna Berg will visit Tokyo ."]
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert cli.main(["predict", str(run), "--input", str(tmp_path / "lines.txt")]) == 0
    tags = [r["tags"] for r in map(json.loads, capsys.readouterr().out.splitlines())]
    assert tags == [["B-PER", "I-PER", "O", "O", "B-LOC", "O", "O", "O"],
                    ["B-ORG", "O", "B-PER", "I-PER", "O", "O", "B-LOC", "O"]]
    assert cli.main(["export", str(run), str(tmp_path / "hf")]) == 0
    theirs = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(theirs).__name__ == "GPT2ForTokenClassification"
    for line, want in zip(lines, tags):
        enc = tok(line.split(), is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            best = theirs(**enc).logits[0].argmax(-1).tolist()
        firsts = [enc.word_ids().index(w) for w in range(len(want))]
        assert [theirs.config.id2label[best[j]] for j in firsts] == want


def test_an_encoder_learns_to_answer_questions_and_exports_a_question_answering_model(tmp_path, capsys, monkeypatch):
    """MiniLM fine-tuned on generated SQuAD-style questions whose contexts take several windows of 48 tokens:
    from answering few questions right to all of them; `evaluate` scores the run alike, `predict` answers a
    question<TAB>context line (one piece long when data.max_answer_length=1 says so) and SQuAD's JSON, and the
    exported BertForQuestionAnswering's best span is the same answer (and "" read as a SQuAD 2.0 model)."""
    import torch
    import transformers

    from data.test_squad import generated, write_split

    write_split(tmp_path / "data", "train", generated(300, 0))
    write_split(tmp_path / "data", "validation", generated(40, 1), nested=True)
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "jaxbatch", "train", "data.name=squad", f"data.data_dir={tmp_path / 'data'}",
                    "model.pretrained=minilm-l6", "data.seq_len=48", "data.doc_stride=16", "train.steps=40",
                    "train.eval_every=10", "train.batch_size=16", "optim.learning_rate=3e-4", "train.progress=false",
                    f"train.run_dir={run}"], env={**subprocess_env(1), "XLA_FLAGS": ""}, check=True, timeout=600)
    # one device, XLA's optimisations on (the suite's flags compile fast and run slow): 3x faster than in-process
    summary = json.loads((run / "summary.json").read_text())
    first, last = summary["evals"][0], summary["final_eval"]
    assert summary["config"]["model"]["task"] == "qa" and first["exact_match"] < 0.2 and last["exact_match"] >= 0.95
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), "--split", "validation"]) == 0
    assert f"exact match {last['exact_match']:.4f} F1 {last['f1']:.4f}" in capsys.readouterr().out
    context = "The bridge is Mira Pell. The lake is Nim Lark. The tower is Vesta Rowan."
    (tmp_path / "ask.txt").write_text(f"Who is the lake?\t{context}\n")
    assert cli.main(["predict", str(run), "--input", str(tmp_path / "ask.txt")]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["answer"], context[record["start"]: record["end"]]) == ("Nim Lark", "Nim Lark")
    assert cli.main(["predict", str(run), "--input", str(tmp_path / "ask.txt"), "data.max_answer_length=1"]) == 0
    assert json.loads(capsys.readouterr().out)["answer"] in ("Nim", "Ni", "Lark")  # one word piece at the most
    from jaxbatch import predict

    monkeypatch.setattr(predict, "CHUNK", 1)  # a question too long for its windows in the second chunk: named first
    (tmp_path / "long.txt").write_text(f"Who is the lake?\t{context}\n{'Who is ' * 20}the lake?\t{context}\n")
    assert cli.main(["predict", str(run), "--input", str(tmp_path / "long.txt")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "line 2: the question takes" in err
    monkeypatch.undo()
    assert cli.main(["predict", str(run), "--input", str(tmp_path / "data" / "validation.json")]) == 0  # SQuAD's JSON
    answered = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    gold = {r["id"]: r["answers"]["text"][0] for r in generated(40, 1)}
    assert len(answered) == 40 and sum(a["answer"] == gold[a["id"]] for a in answered) >= 38
    assert cli.main(["export", str(run), str(tmp_path / "hf")]) == 0
    theirs = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert type(theirs).__name__ == "BertForQuestionAnswering"
    enc = tok("Who is the lake?", context, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping")[0]
    with torch.no_grad():
        out = theirs(**enc)
    start, end = int(out.start_logits.argmax()), int(out.end_logits.argmax())
    assert context[offsets[start][0]: offsets[end][1]] == "Nim Lark"
    capsys.readouterr()  # read as SQuAD 2.0's (which an HF folder cannot say): "" at any null score, the span kept
    assert cli.main(["predict", str(tmp_path / "hf"), "--input", str(tmp_path / "ask.txt"), "data.unanswerable=true",
                     "data.null_threshold=-1e9"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["answer"], record["best_span"], record["start"]) == ("", "Nim Lark", -1)
