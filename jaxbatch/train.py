"""The training loop, top to bottom: mesh -> data -> optimizer -> sharded state -> compiled steps -> loop."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxbatch import accumulate, checkpoint, config, metrics, noise_scale, optim, reporting
from jaxbatch import mesh as mesh_lib
from jaxbatch import state as state_lib
from jaxbatch import steps as steps_lib
from jaxbatch.data import pipeline, tasks



def evaluate(steps: steps_lib.Steps, params, arrays: dict, data: tasks.TaskData, batch_sh: dict,
             batch_size: int) -> dict:
    """Loss, accuracy and (token tasks) seqeval entity scores + token report over one whole split;
    `predictions` holds every example's predicted label ids."""
    totals = {"loss_sum": 0.0, "weight": 0.0, "correct": 0.0}
    all_preds = []
    for local, real in pipeline.eval_batches(arrays, batch_size, jax.process_index(), jax.process_count()):
        sums, preds = steps.eval(params, pipeline.to_global(local, batch_sh))
        for k, v in jax.device_get(sums).items():
            totals[k] += float(v)
        all_preds.append(np.asarray(multihost_utils.process_allgather(preds, tiled=True))[:real])
    weight = max(totals["weight"], 1.0)
    preds = np.concatenate(all_preds)
    result = {"loss": totals["loss_sum"] / weight, "accuracy": totals["correct"] / weight, "predictions": preds}
    if data.task == "token" and totals["weight"] > 0:
        gold, pred = metrics.aligned_tags(preds, arrays["labels"], data.label_names)
        result["entities"] = metrics.entity_report(gold, pred)
        result["entity_f1"] = result["entities"]["micro avg"]["f1-score"]
        result["tokens"], result["token_report_text"] = metrics.token_report(gold, pred, data.label_names)
    return result


def train(cfg: config.Config) -> dict:
    """Runs one training job as configured; returns a summary (final eval metrics, throughput)."""
    # ---- Mesh and config --------------------------------------------------------------------------------
    mesh = mesh_lib.make_mesh(cfg.mesh)
    pretrained = None
    if cfg.model.pretrained:
        from jaxbatch import hf

        pretrained = hf.resolve(cfg.model.pretrained)
        hf.configure(cfg.model, pretrained)  # the checkpoint's config.json fixes the model shape
    config.validate(cfg, jax.device_count())
    run_dir = Path(cfg.train.run_dir)
    say = print if jax.process_index() == 0 else (lambda *a, **k: None)

    # ---- Data (fixes the head: task and number of labels come from the dataset) -------------------------
    data = tasks.load(cfg.data, cfg.model)
    cfg.model.task = data.task
    if not (cfg.model.num_labels == 1 and len(data.label_names) == 2):
        cfg.model.num_labels = len(data.label_names)
    say(f"config:\n{config.describe(cfg)}")
    say(f"mesh: {mesh_lib.describe(mesh)}")
    padding = pipeline.padding_stats(data.train, cfg.data.buckets)
    say(f"data: {data.name}{' (SYNTHETIC, generated)' if data.synthetic else ''}: "
        f"{len(data.train['labels'])} train / {len(data.eval['labels'])} eval examples, labels {data.label_names}, "
        f"padding {100 * padding.padding_fraction:.1f}% ({cfg.data.buckets} length bucket(s)), truncated {data.truncated}")

    # ---- Optimizer --------------------------------------------------------------------------------------
    t = cfg.train
    hp = optim.scale_hparams(cfg.optim, t.batch_size)
    tx, schedule = optim.make(cfg.optim, hp, t.steps)
    if t.auto_micro_batch:
        from jaxbatch import memory

        budget = memory.device_budget(t.memory_budget_gb)
        say(f"planning the micro-batch for {budget / 2**30:.2f} GiB per device:")
        t.accum_steps = memory.plan_micro_batch(cfg, mesh, tx, schedule, budget, log=say).accum_steps
        say(f"plan: train.accum_steps={t.accum_steps} (micro-batch {t.batch_size // t.accum_steps})")
    tx = accumulate.wrap(tx, t)
    say(f"optimizer: {cfg.optim.name}, peak lr {hp.learning_rate:.3g} ({hp.rule} scaling from batch "
        f"{hp.reference_batch} to {hp.batch}), warmup {hp.warmup_steps} steps, {cfg.optim.schedule} decay")

    # ---- Sharded state ----------------------------------------------------------------------------------
    reports = []
    load = None
    if pretrained is not None:
        def load(params, shardings):
            params, report = hf.load_params(pretrained, cfg.model, params, shardings)
            reports.append(report)
            return params
    graphdef, state, state_sh = state_lib.create(cfg, mesh, tx, load)
    for report in reports:
        say(str(report))
    n_params = state_lib.num_params(state.params)
    say(f"model: BERT {cfg.model.preset} ({cfg.model.task} classification, {cfg.model.num_labels} labels), "
        f"{n_params / 1e6:.2f}M parameters, precision {cfg.precision.policy}")

    # ---- Compiled steps ---------------------------------------------------------------------------------
    batch_sh = steps_lib.batch_shardings(mesh, cfg.mesh.rules, data.train)
    steps = steps_lib.Steps(cfg, mesh, graphdef, tx, schedule, state_sh, batch_sh)
    micro_batch = t.batch_size // t.accum_steps
    peak, peak_source = metrics.peak_flops_per_device(t.peak_tflops)
    say(f"MFU against {peak / 1e12:.2f} TFLOP/s per device ({peak_source})")

    # ---- Data iterator and resume -----------------------------------------------------------------------
    batches = iter(pipeline.train_dataset(data.train, t.batch_size, t.steps, t.seed, jax.process_index(),
                                          jax.process_count(), cfg.data.buckets))
    ckpt = checkpoint.Checkpointer(cfg.checkpoint.directory or run_dir / "checkpoints", cfg.checkpoint.max_to_keep)
    ckpt.handle_sigterm()
    if cfg.checkpoint.resume and ckpt.latest_step() is not None:
        state = ckpt.restore(ckpt.latest_step(), state, state_sh, batches)
        say(f"resumed from {ckpt.directory} at step {int(state.step)} (state and data iterator)")
    first_step = int(state.step)
    reporter = reporting.Reporter(run_dir, t.steps, peak, jax.device_count(), t.progress, first_step)

    # ---- Loop -------------------------------------------------------------------------------------------
    noise = noise_scale.NoiseScale(micro_batch, t.batch_size) if t.accum_steps > 1 and t.accum_impl == "scan" else None
    evals, start_time = [], time.perf_counter()

    def run_eval(done: int) -> dict:
        result = evaluate(steps, state.params, data.eval, data, batch_sh, micro_batch)
        evals.append({"step": done, **{k: v for k, v in result.items() if k not in ("token_report_text", "predictions")}})
        reporter.log(done, {k: v for k, v in result.items() if isinstance(v, float)}, kind="eval")
        line = f"eval @ {done}: loss {result['loss']:.4f} accuracy {result['accuracy']:.4f}"
        if "entity_f1" in result:
            line += f" entity F1 {result['entity_f1']:.4f}"
        reporter.write(line)
        return result

    if first_step == t.steps:  # resuming a finished run: nothing to train, evaluate what it left
        result = run_eval(first_step)
    for step in range(first_step, t.steps):
        batch = pipeline.to_global(next(batches), batch_sh)
        state, step_metrics = steps.train(state, batch)
        done = step + 1
        length = batch["input_ids"].shape[1]
        reporter.advance(t.batch_size * length, metrics.train_flops_per_sequence(cfg.model, length) * t.batch_size)
        if step == first_step:  # exclude compilation from throughput (a new bucket length compiles once more)
            jax.block_until_ready(state)
            reporter.start_clock(done)
        if done % t.log_every == 0 or done == t.steps:
            record = reporter.log(done, step_metrics)
            if noise is not None:
                noise.update(record["grad_sq_small"], record["grad_sq_big"])
                if noise.b_simple is not None:
                    reporter.log(done, {"b_simple": noise.b_simple}, kind="noise_scale")
        if (t.eval_every and done % t.eval_every == 0) or done == t.steps:
            result = run_eval(done)
        stop = ckpt.stop_requested or (t.stop_after and done - first_step >= t.stop_after)
        if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == t.steps or stop:
            ckpt.save(done, state, batches, config.to_dict(cfg))  # asynchronous
        if stop:
            say(f"stopping at step {done} ({'SIGTERM' if ckpt.stop_requested else 'train.stop_after'}); "
                f"checkpoint saved, run again to resume")
            break
    ckpt.close()
    reporter.close()

    # ---- Summary ----------------------------------------------------------------------------------------
    train_logs = [r for r in reporter.history if r["kind"] == "train" and "tokens_per_s" in r]
    summary = {
        "steps": t.steps, "wall_time_s": time.perf_counter() - start_time, "parameters": n_params,
        "final_eval": evals[-1] if evals else {}, "evals": evals,
        "tokens_per_s": float(np.median([r["tokens_per_s"] for r in train_logs])) if train_logs else None,
        "mfu": float(np.median([r["mfu"] for r in train_logs])) if train_logs else None,
        "synthetic_data": data.synthetic, "config": config.to_dict(cfg), "label_names": data.label_names,
        "noise_scale": noise.b_simple if noise is not None else None,
        "effective_hparams": {"learning_rate": hp.learning_rate, "warmup_steps": hp.warmup_steps, "rule": hp.rule,
                              "reference_batch": hp.reference_batch, "batch": hp.batch},
    }
    reporting.write_json(run_dir / "summary.json", summary)
    reporting.plot_curves(run_dir)
    if noise is not None:
        say(noise_scale.advice(noise.b_simple, t.batch_size))
    if data.task == "token" and evals:
        say("entity-level (seqeval):\n" + metrics.format_entity_report(evals[-1]["entities"]))
        say("token-level:\n" + result["token_report_text"])
    return {**summary, "state": state, "graphdef": graphdef, "steps_fn": steps, "data": data, "batch_sh": batch_sh,
            "eval_batch": micro_batch}
