"""The training loop, top to bottom: data -> resolved spec -> Run (run.py) -> resume -> loop -> summary."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import time
from pathlib import Path

import jax
import numpy as np

from jaxbatch import checkpoint, config, distributed, evaluate, lora, losses, metrics, models, noise_scale, optim
from jaxbatch import precision, rampup, reporting
from jaxbatch import mesh as mesh_lib
from jaxbatch import run as run_lib
from jaxbatch import state as state_lib
from jaxbatch.data import conll, pipeline, tasks, tfds_builders
from jaxbatch.errors import CheckpointError, TrainingDiverged, WriteError, writing


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished (or stopped) training call leaves: the JSON summary written to summary.json, the
    Run it built, its final state, and the data it trained on. `finished` is False when the run stopped
    early (SIGTERM, Ctrl-C, train.stop_after) with a checkpoint to resume from."""

    summary: dict
    run: run_lib.Run
    state: state_lib.TrainState
    data: tasks.TaskData

    @property
    def spec(self) -> config.Config:
        return self.run.spec

    @property
    def finished(self) -> bool:
        return self.summary["finished"]


LOCK = ".train.lock"


def writable_dir(path: Path, key: str) -> None:
    """Fails at once (not minutes later inside a checkpoint thread) when `path` cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{jax.process_index()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"{key}={str(path)!r} is not a writable folder ({e.strerror or e})") from e


def link_checkpoints(run_dir: Path, ckpt_dir: Path) -> None:
    """A run dir always has `checkpoints/`: with checkpoint.directory elsewhere (a bigger disk) it is a link
    there, so predict, evaluate, compress and export find the run's checkpoints from its run dir."""
    link = run_dir / "checkpoints"
    if jax.process_index() != 0 or link.resolve() == ckpt_dir.resolve():
        return
    if link.exists() and not link.is_symlink():
        raise config.ConfigError(f"{link} holds this run dir's own checkpoints, so checkpoint.directory="
                                 f"{str(ckpt_dir)!r} would split the run in two; use a new train.run_dir")
    with writing(link):
        link.unlink(missing_ok=True)  # a link left by an earlier segment
        link.symlink_to(ckpt_dir.resolve(), target_is_directory=True)


def check_identity(ckpt_dir: Path, spec: config.Config, identity: dict) -> list[str]:
    """A run dir holds one run: resuming with another model, optimizer, data, seed, batch, accumulation or
    precision is refused, before anything compiles. Returns the settings that may change and did (cadence,
    stopping, mesh). With train.auto_micro_batch the planner has not chosen train.accum_steps yet: call again
    with the planned spec."""
    ckpt, saved = checkpoint.Checkpointer(ckpt_dir, read_only=True), None
    try:
        saved_step = ckpt.latest_step()
        for step in sorted(ckpt.manager.all_steps(), reverse=True):  # the newest spec that can be read
            try:
                saved, saved_identity = ckpt.read_spec(step), ckpt.read_identity(step)
                break
            except Exception:  # noqa: BLE001  a damaged checkpoint: restore_latest reports and moves it
                continue
    finally:
        ckpt.close()
    if saved_step is not None and saved_step > spec.train.steps:
        raise config.ConfigError(f"train.steps={spec.train.steps} is below the step of the newest checkpoint "
                                 f"({saved_step}) in {ckpt.directory}")
    if saved is None:
        return []
    if spec.train.auto_micro_batch:
        spec = config.replace(spec, train__accum_steps=saved.train.accum_steps, train__auto_micro_batch=False)
    fixed, changed = config.drift(saved, spec)
    fixed += [f"data ({k}): {saved_identity.get(k)!r} -> {v!r}" for k, v in identity.items()
              if saved_identity.get(k) != v]
    if fixed:
        raise config.ConfigError(
            f"{ckpt.directory} holds a run with a different identity:\n  " + "\n  ".join(fixed)
            + "\nuse a new train.run_dir, or checkpoint.resume=false to move the old run aside and start anew")
    return changed


def train(cfg: config.Config) -> TrainResult:
    """Runs one training job as configured (`cfg` is not changed), holding its run dir while it runs."""
    run_dir = Path(cfg.train.run_dir)
    ckpt_dir = Path(cfg.checkpoint.directory or run_dir / "checkpoints")
    shaped = run_lib.resolve(cfg, task=tasks.dataset(cfg.data).task)  # checked before any data is read
    config.validate(shaped, jax.device_count())
    _check_best_metric(shaped, shaped.model.problem_type or None)
    writable_dir(run_dir, "train.run_dir")
    with holding(run_dir, "train.run_dir"):
        writable_dir(ckpt_dir, "checkpoint.directory")
        with holding(ckpt_dir, "checkpoint.directory"):
            link_checkpoints(run_dir, ckpt_dir)
            return _train(cfg, shaped, ckpt_dir)


def _check_best_metric(spec: config.Config, problem_type: str | None, entities: bool = True,
                       classes: int | None = None) -> None:
    """checkpoint.best_metric must be one the evaluations report (`problem_type` None: the data decides it;
    `entities`: whether a token task's tags mark entities; `classes`: the label set's size, once known)."""
    named = evaluate.metric_names(spec.model.task, problem_type, entities, classes, models.masked_lm(spec.model),
                                  spec.data.unanswerable)
    if spec.checkpoint.best_metric and spec.checkpoint.best_metric not in named:
        head = {losses.REGRESSION: "regression", losses.MULTI_LABEL: "multi-label"}.get(problem_type, spec.model.task)
        raise config.ConfigError(f"checkpoint.best_metric={spec.checkpoint.best_metric!r} is not reported for this "
                                 f"{head} task; choose one of {', '.join(named)}")


@contextlib.contextmanager
def holding(folder: Path, key: str):
    """One training process per run dir and per checkpoint folder: a second one (a double launch, a retry
    loop while the first still runs, two runs given one checkpoint.directory) would save the same steps and
    interleave the metrics. The lock is the kernel's (flock on `.train.lock`), so a killed process never
    leaves it behind. Process 0 holds it for every host."""
    if jax.process_index() != 0:
        yield
        return
    with writing(folder / LOCK):
        handle = open(folder / LOCK, "a+")
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise config.ConfigError(f"{key}={str(folder)!r} is in use by another training process "
                                     f"(pid {holder}); wait for it to finish, or use another run dir") from None
        except OSError:  # a file system without locks (some network mounts): run unguarded, as before
            locked = False
        if locked:
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        yield  # closing the file releases the lock


def _train(cfg: config.Config, shaped: config.Config, ckpt_dir: Path) -> TrainResult:
    say = print if jax.process_index() == 0 else (lambda *a, **k: None)
    run_dir = Path(cfg.train.run_dir)
    began_all = time.perf_counter()

    # ---- Data, then the resolved spec (the data fixes the head: task and label set) -------------------------
    began = time.perf_counter()
    with tfds_builders.progress_bars(cfg.train.progress):
        data = tasks.load(cfg.data, run_lib.tokenizer(shaped), shaped.model.problem_type,
                          shaped.model if models.masked_lm(shaped.model) else None)
    data_s = time.perf_counter() - began
    tokenizer = data.tokenizer
    spec = run_lib.resolve(cfg, task=data.task, label_names=data.label_names, vocab_size=len(tokenizer),
                           problem_type=data.problem_type, train_examples=len(data.train["labels"]))
    _check_best_metric(spec, spec.model.problem_type, data.task != "token" or conll.is_entity_scheme(data.label_names),
                       len(data.label_names))
    if len(tokenizer) > spec.model.vocab_size:
        raise config.ConfigError(f"the tokenizer has {len(tokenizer)} tokens but model.vocab_size="
                                 f"{spec.model.vocab_size}; raise model.vocab_size")

    identity = {"train_examples": len(data.train["labels"]), "train_digest": pipeline.digest(data.train)}
    distributed.same_on_every_host(lambda: identity["train_digest"] + pipeline.digest(data.eval),
                                   spec.data.data_dir or spec.data.name)
    changed = check_identity(ckpt_dir, spec, identity) if spec.checkpoint.resume else []

    # ---- The run: mesh, optimizer, sharded state, compiled steps ----------------------------------------------
    # measured before any compile runs, in the dtype the matmuls take
    peak = metrics.peak_flops_per_device(spec.train.peak_tflops, precision.compute_dtype(spec.precision.policy))
    shapes = pipeline.step_shapes(data.train, spec.train.batch_size, spec.train.steps, spec.train.seed,
                                  spec.data.buckets, rampup.batch_sizes(spec.train) if spec.train.rampup_samples else None)
    per_row = pipeline.labelled_per_row(data.train) if spec.train.loss_norm == "dataset" else 0.0
    per_row *= data.masking.probability if data.masking else 1.0  # the train split's labels are the candidates
    run = run_lib.setup(spec, plan_log=say, compile_ahead=shapes, labelled_per_row=per_row)
    if spec.train.auto_micro_batch and spec.checkpoint.resume:
        check_identity(ckpt_dir, run.spec, identity)  # the planner's train.accum_steps
    spec, t = run.spec, run.spec.train  # the planner may have chosen train.accum_steps
    # while the train step still compiles on its thread: the programs evaluation and checkpoints run
    run.steps.compile_eval(run.state.params, evaluate.batch_shapes(run, data.eval, t.eval_batch_size or None))
    checkpoint.compile_fingerprint(run.state)
    hp = run.hparams
    say(f"spec (resolved config):\n{config.describe(spec)}")
    say(f"mesh: {mesh_lib.describe(run.mesh)}")
    padding = pipeline.padding_stats(data.train, spec.data.buckets)
    targets = (f"labels {data.label_names}" if data.problem_type != losses.REGRESSION else
               f"scores (regression) of outputs {data.label_names}" if data.label_names else "scores (regression)")
    say(f"data: {data.name}{' (SYNTHETIC, generated)' if data.synthetic else ''}: "
        f"{len(data.train['labels'])} train / {len(data.eval['labels'])} eval "
        f"{'windows (question + part of its context)' if data.task == 'qa' else 'examples'}, "
        f"{targets}"
        f"{' (several per example)' if data.problem_type == losses.MULTI_LABEL else ''}, "
        f"padding {100 * padding.padding_fraction:.1f}% ({spec.data.buckets} length bucket(s)), truncated {data.truncated}")
    if data.masking:
        say(f"masked LM: {data.masking.describe(tokenizer.mask_token)}")
    if t.epochs:
        say(f"train.steps={t.steps}: train.epochs={t.epochs:g} x {len(data.train['labels'])} training "
            f"{'rows' if data.task == 'lm' else 'examples'} in batches of {t.batch_size}")
    say("loss: each batch's sum divided by " + (f"rows x {per_row:.2f}, the train split's labelled positions per row"
                                                 if per_row else "its labelled positions") + f" (train.loss_norm={t.loss_norm})")
    say(f"optimizer: {spec.optim.name}, peak lr {hp.learning_rate:.3g} ({hp.rule} scaling from batch "
        f"{hp.reference_batch} to {hp.batch}), warmup {hp.warmup_steps} steps, "
        f"{optim.describe_schedule(spec.optim, hp, t.steps)}")
    if hp.warmup_steps >= t.steps:  # allowed (a later segment may raise train.steps), never hidden
        top = float(optim.schedule(spec.optim, hp, t.steps)(t.steps - 1))
        say(f"note: the warmup ({hp.warmup_steps} steps) is not shorter than the run ({t.steps} steps): the learning "
            f"rate reaches {top:.3g} at most, not the peak {hp.learning_rate:.3g}")
    sizes = rampup.batch_sizes(t)
    seen = np.concatenate([[0], np.cumsum(sizes)])  # examples consumed before step i
    if t.rampup_samples:
        ramp = sum(1 for b in sizes if b < t.batch_size)
        say(f"batch ramp-up: {t.rampup_start} -> {t.batch_size} sequences over the first {ramp} steps "
            f"({seen[ramp]} examples), batch sizes {rampup.distinct(t)} (one compile each)")
    if run.load_report is not None:
        say(str(run.load_report))
    n_params = state_lib.num_params(run.state.params)
    say(f"model: {run.family.describe(spec.model)}, {n_params / 1e6:.2f}M parameters, precision "
        f"{spec.precision.policy}")
    if spec.model.lora_rank:
        trained = sum(x.size for x, t in zip(jax.tree.leaves(run.state.params),
                                             jax.tree.leaves(lora.trainable(run.state.params))) if t)
        say(f"LoRA: rank {spec.model.lora_rank} on {spec.model.lora_targets}, scale {lora.scale(spec.model):g}; "
            f"{trained:,} parameters train ({100 * trained / n_params:.2f}%), the rest are frozen")
    say(f"MFU against {peak.flops / 1e12:.2f} TFLOP/s per device ({peak.source})")
    if jax.process_index() == 0:  # the run dir describes itself: its tokenizer travels with it
        with writing(run_dir / run_lib.TOKENIZER_DIR):
            tokenizer.save_pretrained(str(run_dir / run_lib.TOKENIZER_DIR))

    # ---- Data iterator and resume (a run dir holds one run; damaged checkpoints are skipped, never lost) -----
    batches = iter(pipeline.train_dataset(data.train, t.batch_size, t.steps, t.seed, jax.process_index(),
                                          jax.process_count(), spec.data.buckets,
                                          batch_sizes=sizes if t.rampup_samples else None,
                                          mask=data.masking.train_batch(t.seed) if data.masking else None))
    best = checkpoint.Best.of(spec.checkpoint)  # the metric ranking checkpoints, and early stopping's count
    ckpt = checkpoint.Checkpointer(ckpt_dir, spec.checkpoint.max_to_keep, best=best)
    state, earlier = run.state, {}  # earlier: the loop's host-side record at the checkpoint resumed from
    if ckpt.latest_step() is not None and not spec.checkpoint.resume:
        ckpt.close()
        aside = reporting.move_aside(run_dir, ckpt_dir)
        say(f"checkpoint.resume=false: the previous run in {run_dir} was moved to {aside}; starting a new run")
        ckpt = checkpoint.Checkpointer(ckpt_dir, spec.checkpoint.max_to_keep, best=best)
    elif ckpt.latest_step() is not None:
        if changed:
            say("resuming with changed settings: " + "; ".join(changed))
        restored = ckpt.restore_latest(state, run.state_sh, batches, warn=say)
        if restored is not None:
            state, earlier = restored, ckpt.read_loop(int(restored.step))
            say(f"resumed from {ckpt.directory} at step {int(state.step)} (state and data iterator, verified)")
            if not earlier:
                say(f"note: checkpoint step {int(state.step)} holds no record of the run's earlier evaluations "
                    f"(written by an older jaxbatch, or unreadable): its summary's evaluations and noise scale "
                    f"start there")
            if best is not None:
                best = best.resumed(ckpt.metrics(int(state.step)))
    if int(state.step) == 0 and (run_dir / "metrics.jsonl").is_file():
        say(f"no usable checkpoint in {ckpt_dir}: starting from step 0 (earlier metrics rows are dropped)")
    first_step = int(state.step)

    def patience_spent() -> bool:  # early stopping: evaluations without a better checkpoint.best_metric
        return bool(best is not None and t.patience and best.since >= t.patience)

    last_step = first_step if patience_spent() else t.steps  # a run that stopped early stays stopped
    if first_step < last_step:
        ckpt.check_space(state)  # before the first step, not at the first save
    ckpt.handle_signals()
    reporter = reporting.Reporter(run_dir, t.steps, peak, jax.device_count(), t.progress, first_step,
                                  reevaluating=first_step == last_step)

    # ---- Loop -------------------------------------------------------------------------------------------------
    noise = (noise_scale.NoiseScale(run.micro_batch, t.batch_size, **(earlier.get("noise_scale") or {}))
             if t.accum_steps > 1 and t.accum_impl == "scan" else None)
    pending_noise = []  # per-step (|g_b|^2, |g_B|^2, b, B), on device until the next log or save
    evals, start_time, result, eval_s = list(earlier.get("evals", [])), time.perf_counter(), None, [0.0]

    def take_noise() -> None:  # the pending steps' norms into the running estimate, in step order
        for sq_small, sq_big, b_small, b_big in jax.device_get(pending_noise):
            noise.update(float(sq_small), float(sq_big), b_small, b_big)
        pending_noise.clear()

    def run_eval(done: int) -> dict:
        began = time.perf_counter()
        result = evaluate.evaluate(run, state.params, data.eval, data.label_names, data.task,
                                   batch_size=t.eval_batch_size or None, bytes_per_token=data.bytes_per_token,
                                   windows=data.windows.get("validation"))
        evals[:] = [e for e in evals if e["step"] != done] + [{"step": done, **evaluate.recorded(result)}]  # a rerun
        reporter.log(done, {k: v for k, v in result.items() if isinstance(v, float)}, kind="eval")
        reporter.write(f"eval @ {done}: " + evaluate.summary_line(result))
        eval_s[0] += time.perf_counter() - began
        return result

    def check_finite(done: int) -> None:
        bad = int(state.bad_steps)
        if bad >= t.max_bad_steps:
            raise TrainingDiverged(
                f"step {done}: the loss or gradients were non-finite for {bad} steps in a row (updates skipped; "
                f"train.max_bad_steps={t.max_bad_steps}); the newest checkpoint in {ckpt.directory} is the last "
                f"good one. Lower optim.learning_rate, raise optim.warmup_steps or use precision.policy=fp32")

    stopped_by = None
    trace = reporting.StepTrace(run_dir / "profile", first_step, t.profile)
    with _naming_the_newest_checkpoint(ckpt):  # a run file on a full disk stops the run in one line
        try:
            # resuming a finished run: nothing to train, evaluate what it left; or the evaluation a signal's stop
            # skipped at this step (the record says it is missing; with checkpoint.best_metric the checkpoint is
            # already saved unranked, so the hole stays rather than rank a checkpoint by a value it does not carry)
            skipped = (bool(earlier) and best is None and t.eval_every and first_step % t.eval_every == 0
                       and first_step not in {e["step"] for e in evals})
            if first_step == last_step or skipped:
                result = run_eval(first_step)
            for step in range(first_step, last_step):
                batch = pipeline.to_global(next(batches), run.batch_sh)
                trace.before(step)
                state, step_metrics = run.steps.train(state, batch)
                done = step + 1
                traced = trace.after(done, state)
                if traced:
                    reporter.write(traced)
                size, length = batch["input_ids"].shape
                tokens = size * length
                reporter.advance(tokens, models.train_flops_per_token(spec.model, length) * tokens)
                if noise is not None and "grad_sq_small" in step_metrics:  # every step (a one-micro-batch ramp
                    pending_noise.append((step_metrics["grad_sq_small"],  # step has none), fetched when logging
                                          step_metrics["grad_sq_big"], rampup.step_micro_batch(size, run.micro_batch),
                                          size))
                if step == first_step:  # exclude compilation from throughput (a new bucket length compiles once more)
                    jax.block_until_ready(state)
                    reporter.start_clock(done)
                slot_ended = bool(t.stop_after and done - first_step >= t.stop_after)
                stop = distributed.any_process(bool(ckpt.stop_requested) or slot_ended)
                # a due evaluation runs at train.stop_after's planned stop (segments report and rank as one run),
                # not at a signal's (a preemption's grace period is short)
                evaluating = (((t.eval_every and done % t.eval_every == 0) or done == t.steps)
                              and not (stop and done < t.steps and not slot_ended))
                save = ((spec.checkpoint.every and done % spec.checkpoint.every == 0) or done == t.steps or stop
                        or (best is not None and evaluating))
                if done % t.log_every == 0 or done == t.steps or save:
                    check_finite(done)
                if done % t.log_every == 0 or done == t.steps:
                    record = reporter.log(done, {**step_metrics, "batch_size": size, "samples": int(seen[done])})
                    if pending_noise:
                        take_noise()
                        if noise.b_simple is not None:
                            reporter.log(done, {"b_simple": noise.b_simple}, kind="noise_scale")
                if evaluating:
                    result = run_eval(done)
                    if best is not None:
                        best = best.update(result.get(best.name, float("nan")), done)  # absent: no labelled dev token
                if save:  # asynchronous; with a ranking metric, it travels with the checkpoint
                    ranking = best.metrics(result.get(best.name) if evaluating else None) if best is not None else None
                    take_noise()  # every step's norms so far, into the record the checkpoint keeps
                    ckpt.save(done, state, batches, spec, identity, ranking, loop={  # a copy: the save is async
                        "evals": list(evals), "noise_scale": noise.running() if noise is not None else None})
                if patience_spent() and done < t.steps:
                    say(f"early stop at step {done}: no better {best.name} in {best.since} evaluations "
                        f"(train.patience={t.patience})")
                    break
                if stop and done < t.steps:
                    stopped_by = ckpt.stop_requested or ("train.stop_after" if slot_ended else
                                                         "another process was asked to stop")
                    break
        finally:
            trace.close()
            run.steps.close()
            try:
                ckpt.close()  # waits for the last asynchronous save, on every way out
            finally:
                reporter.close()

        # ---- Summary ------------------------------------------------------------------------------------------
        train_logs = [r for r in reporter.history if r["kind"] == "train" and "tokens_per_s" in r]
        summary = {
            "steps": t.steps, "step": int(state.step), "finished": stopped_by is None,
            "samples": int(seen[int(state.step)]),
            "wall_time_s": time.perf_counter() - start_time,  # the loop: steps, evaluations, saves
            "setup_s": start_time - began_all, "data_s": data_s, "eval_s": eval_s[0],  # set-up includes data_s
            "parameters": n_params, "final_eval": evals[-1] if evals else {}, "evals": evals,
            "tokens_per_s": float(np.median([r["tokens_per_s"] for r in train_logs])) if train_logs else None,
            "mfu": float(np.median([r["mfu"] for r in train_logs])) if train_logs else None,
            "synthetic_data": data.synthetic, "config": config.to_dict(spec), "label_names": data.label_names,
            "noise_scale": noise.b_simple if noise is not None else None,
            "effective_hparams": dataclasses.asdict(hp),
            "best": None if best is None else {"metric": best.name, "value": best.value, "step": best.step,
                                               "evaluations_since": best.since, "stopped_early": patience_spent()},
        }
        reporting.write_json(run_dir / "summary.json", summary)
        reporting.plot_curves(run_dir)
    if stopped_by is not None:
        say(f"stopped at step {int(state.step)} of {t.steps} ({stopped_by}; checkpoint saved); run the same "
            f"command again to resume")
        return TrainResult(summary, run, state, data)
    if best is not None and best.step is not None:
        kept = (ckpt.directory / str(best.step)).is_dir()
        say(f"{best.describe()}: " + ("the checkpoint predict, evaluate, generate, compress and export read" if kept
                                      else "its checkpoint was set aside as unusable; they read the best one left"))
    if noise is not None:
        say(noise_scale.advice(noise.b_simple, t.batch_size))
    if data.task in ("token", "qa") and result is not None and "\n" in (report := evaluate.report_lines(result)):
        say(report.split("\n", 1)[1])  # entity and token reports; SQuAD 2.0's breakdown and best threshold
    return TrainResult(summary, run, state, data)


@contextlib.contextmanager
def _naming_the_newest_checkpoint(ckpt: checkpoint.Checkpointer):
    """A WriteError (metrics, events or the summary on a full disk) says where running again resumes from."""
    try:
        yield
    except WriteError as e:
        ckpt.wait()  # the save under way lands first (or fails, and says so)
        raise WriteError(f"{e}; the newest complete checkpoint is {ckpt.newest_complete()}: free space and run "
                         f"the same command again (it resumes from there)") from e
