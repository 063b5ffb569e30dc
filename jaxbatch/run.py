"""One set-up path: Config -> resolved spec -> Run (mesh, optimizer, graphdef, sharded state, shardings,
compiled steps). `train`, `plan`, `predict`, `evaluate`, `export`, the benchmarks and the test fixtures
all build their run here, so none of them can drift from the others.

The input `Config` is never changed. What a run derives (the model shape from a pretrained folder, the
task and label set from the data, k from the micro-batch planner) goes into the *resolved spec*: a new
frozen Config, printed at the start, saved in every checkpoint and in summary.json. A run dir or a Hugging
Face folder alone is enough to rebuild the model (`restore`), on any mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import jax
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxbatch import accumulate, cache, compress, config, losses, models, optim, rampup
from jaxbatch import mesh as mesh_lib
from jaxbatch import state as state_lib
from jaxbatch import steps as steps_lib
from jaxbatch.errors import CheckpointError, ConfigError

TOKENIZER_DIR = "tokenizer"  # inside a run dir: the tokenizer the run used, so the dir describes itself


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything compiled and placed for one resolved spec. `state` is the initial TrainState (abstract
    when built for planning; the first train step donates its buffers); inference runs carry no optimizer
    (`tx`, `state` are None). `abstract_params` holds the parameters' shapes and metadata (nothing
    allocated): what loaders restore into."""

    spec: config.Config
    family: models.Family
    mesh: Mesh
    graphdef: nnx.GraphDef
    abstract_params: nnx.State
    params_sh: nnx.State
    batch_sh: dict
    steps: steps_lib.Steps
    hparams: optim.EffectiveHparams | None = None
    tx: optax.GradientTransformation | None = None
    schedule: optax.Schedule | None = None
    state_sh: state_lib.TrainState | None = None
    state: state_lib.TrainState | None = dataclasses.field(default=None, repr=False)
    load_report: object = None  # hf.LoadReport of a pretrained start

    @property
    def micro_batch(self) -> int:
        return rampup.micro_batch(self.spec.train)


def resolve(cfg: config.Config, *, task: str | None = None, label_names: list[str] | None = None,
            vocab_size: int | None = None, problem_type: str | None = None,
            train_examples: int | None = None) -> config.Config:
    """The spec: `cfg` with the pretrained folder's shape and what the data says filled in: the task, the
    label set (a regression's output names when it has several), the sequence head's `problem_type`
    (regression; multi_label_classification; empty: one class per example), the vocabulary size
    where the model leaves it to the tokenizer (vocab_size 0), and train.steps from train.epochs and the
    number of `train_examples`; train.loss_norm=auto made batch or dataset."""
    model = cfg.model
    default_task = config.ModelConfig.task  # the default defers to the data; an explicit other task must match it
    if task is not None and model.task not in (default_task, task):
        raise ConfigError(f"model.task={model.task} but data.name={cfg.data.name} is a {task} dataset: leave "
                          f"model.task out (the data sets it) or choose a {model.task} dataset")
    if model.pretrained:
        from jaxbatch import hf

        folder = hf.resolve(model.pretrained)
        if not model.family:
            model = dataclasses.replace(model, family=hf.family_for(folder))
        model = hf.configure(model, folder)
    if task is not None:  # an answer-span head has its two outputs whatever model.num_labels says
        model = dataclasses.replace(model, task=task, **({"num_labels": 2} if task == "qa" else {}))
    if vocab_size is not None and model.vocab_size == 0:
        model = dataclasses.replace(model, vocab_size=vocab_size)
    if problem_type is not None:
        model = dataclasses.replace(model, problem_type=problem_type,
                                    num_labels=1 if problem_type == losses.REGRESSION else model.num_labels)
    data = cfg.data
    if label_names:
        if any("," in n for n in label_names):
            raise ConfigError(f"label names may not contain ',': {label_names} (data.labels lists them "
                              f"comma-separated); model.problem_type=multi_label_classification reads a label "
                              f"'a,b' as the classes a and b")
        single_logit = (model.num_labels == 1 and len(label_names) == 2  # binary head with one logit, asked for
                        and model.problem_type not in losses.FLOAT_HEADS)
        model = dataclasses.replace(model, num_labels=1 if single_logit else len(label_names))
        data = dataclasses.replace(data, labels=",".join(label_names))
    train = cfg.train
    if train.loss_norm == "auto":
        train = dataclasses.replace(train, loss_norm="dataset" if data.buckets > 1 else "batch")
    if train.epochs and train_examples is not None:
        steps = rampup.steps_for(train, train.epochs * train_examples)
        if steps > config.MAX_STEPS:
            raise ConfigError(f"train.epochs={train.epochs:g} of {train_examples} examples is {steps} steps, past the "
                              f"{config.MAX_STEPS} a run can count")
        train = dataclasses.replace(train, steps=steps)
    return dataclasses.replace(cfg, model=model, data=data, train=train)


def label_names(spec: config.Config) -> list[str]:
    if spec.model.problem_type == losses.REGRESSION and spec.model.num_labels == 1:
        return ["LABEL_0"]  # HF's name for a regression head's one output
    if spec.data.labels:
        return spec.data.labels.split(",")
    return [f"LABEL_{i}" for i in range(max(spec.model.num_labels, 2 if spec.model.num_labels == 1 else 0))]


def tokenizer(spec: config.Config, run_dir: str | Path | None = None):
    """The run's tokenizer: the one saved in its run dir, else `data.tokenizer`'s or the pretrained folder's,
    else the family's word-level tokenizer over the generated corpus' vocabulary (synthetic data only)."""
    family = models.family(spec.model)
    if run_dir is not None and (Path(run_dir) / TOKENIZER_DIR).is_dir():
        return family.tokenizer(Path(run_dir) / TOKENIZER_DIR)
    if spec.data.tokenizer or spec.model.pretrained:
        from jaxbatch import hf

        key = "data.tokenizer" if spec.data.tokenizer else "model.pretrained"
        folder = hf.resolve(spec.data.tokenizer or spec.model.pretrained, key)
        return _folder_tokenizer(family, folder) or family.tokenizer(folder)  # none: the folder's own error
    if spec.data.name.startswith("synthetic"):
        from jaxbatch.data import synthetic

        return family.tokenizer(synthetic.vocabulary())
    if spec.model.task == "lm":
        return None  # a text corpus without a tokenizer: characters, built from the corpus (data/tasks.py)
    raise ConfigError("a randomly initialised model needs a vocabulary: set data.tokenizer (or model.pretrained) "
                      "to a folder or name whose tokenizer to use")


def setup(spec: config.Config, *, devices=None, training: bool = True, abstract: bool = False,
          plan_log: Callable[[str], None] | None = None, compile_ahead: Sequence[tuple[int, int]] = (),
          labelled_per_row: float = 0.0) -> Run:
    """Builds the Run for a resolved spec. `training=False` builds only what inference needs (params
    shardings, the eval step); `abstract=True` places nothing (shapes and shardings for the planner).
    With `train.auto_micro_batch`, k is planned here from compiled memory and written into the spec.
    `compile_ahead`: (global batch, length) shapes to compile the train step for on a thread, in order,
    while the state is initialised (the training loop passes those its data will have).
    `labelled_per_row`: the train split's, for train.loss_norm=dataset (steps.loss_denominator); 0 divides
    each batch by its own labelled count (what the planner and benchmarks, which measure cost, use)."""
    cache.enable_compilation_cache()  # before the first compile of the run
    mesh = mesh_lib.make_mesh(spec.mesh, devices)
    family = models.family(spec.model)
    if spec.model.vocab_size < 1:
        raise ConfigError("model.vocab_size=0 is taken from the tokenizer when training; set it for this command")
    if training:
        config.validate(spec, mesh.devices.size)
    else:
        config.validate_inference(spec)
        mesh_lib.mesh_shape(spec.mesh, mesh.devices.size)
        family.validate(spec.model, spec.data.seq_len, mesh.shape["model"])
        compress.validate(spec.model)
    graphdef, abstract_params = state_lib.abstract_model(spec.model, spec.precision.policy)
    params_sh = mesh_lib.tree_shardings(abstract_params, mesh, spec.mesh.rules)
    example = models.abstract_batch(spec.model, 1, spec.data.seq_len)
    batch_sh = steps_lib.batch_shardings(mesh, spec.mesh.rules, example)
    if not training:
        steps = steps_lib.Steps(spec, mesh, family, graphdef, params_sh, batch_sh)
        return Run(spec, family, mesh, graphdef, abstract_params, params_sh, batch_sh, steps)

    hp = optim.scale_hparams(spec.optim, spec.train.batch_size, spec.train.steps)
    tx, schedule = optim.make(spec.optim, hp, spec.train.steps)
    if spec.train.auto_micro_batch:
        from jaxbatch import memory

        budget = memory.device_budget(spec.train.memory_budget_gb)
        (plan_log or print)(f"planning the micro-batch for {memory.size(budget)} per device:")
        k = memory.plan_micro_batch(spec, budget, devices=devices, log=plan_log or print).accum_steps
        spec = config.replace(spec, train__accum_steps=k, train__auto_micro_batch=False)
    tx = accumulate.wrap(tx, spec.train)
    tx = optim.freeze(tx) if spec.model.lora_rank else tx  # LoRA: MultiSteps accumulates only what trains
    abstract_state = state_lib.abstract_state(spec, tx)
    state_sh = state_lib.shardings(abstract_state, mesh, spec.mesh.rules)
    abstract_sharded = mesh_lib.abstract_with_shardings(abstract_state, state_sh)
    steps = steps_lib.Steps(spec, mesh, family, graphdef, state_sh.params, batch_sh, tx, schedule, state_sh,
                            labelled_per_row)
    reports = []
    if abstract:
        state = abstract_sharded
    else:
        load = None
        if spec.model.pretrained:
            from jaxbatch import hf

            def load(params, shardings):
                params, report = hf.load_params(hf.resolve(spec.model.pretrained), spec.model, params, shardings)
                reports.append(report)
                return params

        steps.compile_ahead(abstract_sharded, [models.abstract_batch(spec.model, size, length, batch_sh)
                                               for size, length in compile_ahead])
        state = state_lib.create(spec, tx, state_sh, load)
    return Run(spec, family, mesh, graphdef, abstract_params, state_sh.params, batch_sh, steps, hp, tx, schedule,
               state_sh, state,
               reports[0] if reports else None)


@dataclasses.dataclass(frozen=True)
class Restored:
    """A trained model from a run dir or a Hugging Face folder: its inference Run, sharded params and
    tokenizer (None for a folder holding weights only), and where they came from (`step` and `finished`
    for run dirs)."""

    run: Run
    params: nnx.State
    tokenizer: object
    source: str
    step: int | None = None
    finished: bool = True


def hf_spec(folder: Path) -> config.Config:
    """The spec of a Hugging Face folder: its family and shape (and the task its architecture names), the
    label names of its config.json, and rows no longer than its position table holds."""
    from jaxbatch import hf

    base = config.Config()
    model = dataclasses.replace(base.model, family=hf.family_for(folder), preset="custom", pretrained=str(folder))
    model = hf.configure(model, folder)
    data = dataclasses.replace(base.data, seq_len=min(base.data.seq_len, models.family(model).max_seq_len(model)))
    if model.task == "lm":
        return dataclasses.replace(base, model=model, data=dataclasses.replace(data, name="text"))
    names = hf.label_names(folder, model.num_labels)
    return dataclasses.replace(base, model=model, data=dataclasses.replace(data, labels=",".join(names)))


def check_restore_overrides(overrides: list[str] | tuple, start_up: bool = False) -> None:
    """Refuses what `restore` may not change, before a command reads its input: a file named where an override
    goes would otherwise be taken for one, and predict would wait on standard input. distributed.* only where
    the caller applies them (`start_up`: `distributed.initialize`, before JAX starts)."""
    # the data.* of question answering are how answers are read (a Hugging Face folder does not say SQuAD 2.0)
    allowed = ("mesh.", *(("distributed.",) if start_up else ()), "train.batch_size", "data.seq_len",
               "data.unknown_label", "precision.policy",
               *(f"data.{k}=" for k in ("doc_stride", "max_answer_length", "null_threshold", "unanswerable")))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item!r} is not key=value: overrides come after the model; files and folders are "
                              f"given with their option (--input, --data-dir, --prompts; see --help)")
        if not item.startswith(allowed):
            raise ConfigError(f"{item!r}: only mesh.*, {'distributed.*, ' * start_up}train.batch_size, "
                              f"data.seq_len, data.unknown_label, precision.policy and question answering's "
                              f"data.doc_stride, data.max_answer_length, data.null_threshold and data.unanswerable "
                              f"may be changed when restoring a trained model")


def restore(source: str | Path, overrides: list[str] | tuple = (), devices=None, step: int | None = None) -> Restored:
    """Rebuilds a trained model for inference from a run dir (its best usable checkpoint by
    checkpoint.best_metric, else its newest: spec + params, no optimizer state; a damaged one before it in
    line is named in a warning), a compressed model folder (compress/storage.py) or a Hugging Face folder, on this
    machine's devices. `overrides` (key=value) may set the mesh (`mesh.model=2`), the eval batch
    (`train.batch_size`), `data.seq_len`, how an evaluated split's unknown tags are read (`data.unknown_label`)
    and how answers are read (data.doc_stride, data.max_answer_length, data.null_threshold, data.unanswerable);
    by default all devices split the batch. `step` picks one checkpoint of a run dir (default: its best by
    checkpoint.best_metric, else its newest)."""
    from jaxbatch import adapter, checkpoint, hf
    from jaxbatch.compress import storage

    source = Path(source)
    if not source.is_dir():
        raise CheckpointError(f"{source}: no such run dir or Hugging Face folder")
    check_restore_overrides(overrides)
    # inference runs the whole model as it is written: a layer's calibration observes the head too
    inference_mesh = ["mesh.data=-1", "mesh.fsdp=1", "mesh.model=1", "train.accum_steps=1", "model.vocab_tiling=1"]
    if step is not None and not (source / "checkpoints").is_dir():
        raise ConfigError(f"--step picks a checkpoint of a run dir; {source} holds one model")
    if storage.is_compressed(source):
        spec = config.build(inference_mesh + list(overrides), base=storage.read_spec(source))
        run = setup(spec, devices=devices, training=False)
        params = storage.load(source, run.abstract_params, run.params_sh)
        return Restored(run, params, tokenizer(spec, source), str(source))
    if ((source / "config.json").is_file() or adapter.is_adapter(source)) and not (source / "checkpoints").is_dir():
        spec = config.build(inference_mesh + list(overrides), base=hf_spec(source))
        run = setup(spec, devices=devices, training=False)
        params, report = hf.load_params(source, spec.model, _zeros(run), run.params_sh)
        missing = [n for n in report.new if not n.endswith((".lora_a", ".lora_b"))]  # zero factors: no update
        if missing:
            raise CheckpointError(f"{source}: weights missing for {', '.join(missing)}")
        return Restored(run, params, _folder_tokenizer(run.family, source), str(source))
    ckpt = checkpoint.Checkpointer(source / "checkpoints", read_only=True)
    try:
        steps, explicit = ckpt.ranked_steps(), step is not None  # the best by checkpoint.best_metric first
        if not steps:
            raise CheckpointError(f"{source}: no checkpoint in {source / 'checkpoints'} (and no config.json)")
        if explicit:
            if step not in steps:
                raise CheckpointError(f"{source}: no checkpoint at step {step} (it has "
                                      f"{', '.join(map(str, sorted(steps)))})")
            steps = [step]
        if ckpt.damaged_metrics():
            print(f"warning: {source}: the ranking saved with checkpoint step(s) {ckpt.damaged_metrics()} is "
                  f"unreadable; they rank last", file=sys.stderr)
        unusable = []  # read-only: a damaged checkpoint is reported and left where it is, the next one is used
        for step in steps:
            try:
                saved = ckpt.read_spec(step)
                spec = config.build(inference_mesh + list(overrides), base=saved)
                run = setup(spec, devices=devices, training=False)
                params = ckpt.restore_params(step, run.abstract_params, run.params_sh)
            except CheckpointError as e:
                unusable.append(f"step {step}: {str(e).splitlines()[0][:300]}")
                continue
            ranking = ckpt.metrics(step)
            if checkpoint.set_a_best(ranking):
                print(f"{source}: the best checkpoint by {ranking['name']}: step {step} ({ranking['value']:.4f}; "
                      f"newest step {max(ckpt.manager.all_steps())})", file=sys.stderr)
            if unusable:
                print(f"warning: {source}: using checkpoint step {step}; the ones before it in line are unusable "
                      f"({'; '.join(unusable)})", file=sys.stderr)
            return Restored(run, params, tokenizer(spec, source), str(source), step,
                            finished=_finished(ckpt, saved) and (explicit or not unusable))
    finally:
        ckpt.close()
    raise CheckpointError(f"{source}: no usable checkpoint ({'; '.join(unusable)})")


@functools.cache
def exported(run_dir: Path) -> Path:
    """A run dir named where a Hugging Face folder goes (model.pretrained, data.tokenizer: pretraining, then
    fine-tuning from the run, as `from_pretrained` reads a Trainer's output dir): the checkpoint `restore` picks,
    written once by `hf.export` under $JAXBATCH_CACHE/pretrained, keyed by the run dir and that checkpoint (its
    step and when it was written), so it loads as any folder does (the same load report, a new task head, the
    run's tokenizer)."""
    from jaxbatch import hf

    restored = restore(run_dir, devices=jax.local_devices())  # each host writes its own copy, from its devices
    spec = restored.run.spec
    if spec.model.quant or spec.model.lowrank:
        raise ConfigError(f"{run_dir} is a compressed model; start from the run it was compressed from")
    written = (run_dir / "checkpoints" / str(restored.step)).stat().st_mtime_ns  # a new run at the same path: anew
    key = hashlib.sha256(f"{run_dir.resolve()}:{written}".encode()).hexdigest()[:16]
    base = cache.root() or Path(tempfile.gettempdir()) / "jaxbatch"
    host = f"-process{jax.process_index()}" if jax.process_count() > 1 else ""  # a cache on a shared disk
    folder = base / "pretrained" / f"{key}-step{restored.step}{host}"
    if not (folder / "config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))  # this process's own
        try:
            hf.export(restored.params, spec.model, scratch / "model", restored.tokenizer, label_names(spec))
            try:
                os.replace(scratch / "model", folder)  # whole, at once
            except OSError:  # another process put its copy there first
                if not (folder / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    state = "" if restored.finished else f" of {spec.train.steps} (unfinished)"
    print(f"{run_dir}: its checkpoint at step {restored.step}{state}, as the folder {folder}", file=sys.stderr)
    return folder


def _finished(ckpt, spec: config.Config) -> bool:
    """The run reached train.steps, or stopped early (train.patience), by its newest checkpoint."""
    newest = max(ckpt.manager.all_steps())
    since = ckpt.metrics(newest).get("since_best") or 0
    return newest >= spec.train.steps or bool(spec.train.patience and since >= spec.train.patience)


def _folder_tokenizer(family: models.Family, folder: Path):
    """The folder's tokenizer (a PEFT adapter's, else its base's), or None when it has no tokenizer files."""
    from jaxbatch import adapter

    for source in (folder, adapter.base_folder(folder)) if adapter.is_adapter(folder) else (folder,):
        try:
            return family.tokenizer(source)
        except CheckpointError:
            continue
    return None


def _zeros(run: Run) -> nnx.State:
    """Params of the right shapes and shardings, to be overwritten by a loader."""
    return jax.jit(lambda: jax.tree.map(lambda x: jax.numpy.zeros(x.shape, x.dtype), run.abstract_params),
                   out_shardings=run.params_sh)()
