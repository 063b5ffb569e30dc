"""`jaxbatch compress`: a trained model (run dir or Hugging Face folder) -> a compressed model folder.

The pass is low-rank first (SVD of the trained float kernels), then one-shot magnitude pruning (of the
kernels that remain, factors included), then int8 (of every dense layer and embedding table, calibrated on a
few training batches when activations are static). Each step changes the model's modules in place; the spec
records the structure so `run.restore` rebuilds it. A model pruned while training (prune.* keys) needs no
--prune here: its zeros are stored packed anyway.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxbatch import compress, config, folders, lora
from jaxbatch import state as state_lib
from jaxbatch import mesh as mesh_lib
from jaxbatch import run as run_lib
from jaxbatch.compress import lowrank, prune, quantize, storage
from jaxbatch.errors import ConfigError
from jaxbatch.models.layers import Dense


@dataclasses.dataclass(frozen=True)
class Options:
    sparsity: float = 0.0  # one-shot unstructured sparsity of the selected kernels
    pattern: str = ""  # N:M (implies its sparsity)
    scope: str = "layer"  # layer | global
    exclude: str = ""  # regex over parameter / module names left uncompressed
    exclude_axes: str = "vocab,labels"  # pruning and low-rank leave kernels with these axes (output heads) alone
    quant: str = ""  # int8
    act: str = "none"  # none | dynamic | static
    calibration: str = "max"  # max | percentile:Q (static activations)
    calib_batches: int = 8
    rank: int = 0  # low-rank: this rank for every selected kernel (where it saves parameters)
    rank_energy: float = 0.0  # low-rank: the smallest rank keeping this fraction of spectral energy
    data_dir: str = ""  # calibration data; empty = the run's own data.data_dir


def _factorize(model, opts: Options, log) -> dict[str, int]:
    ranks = {}
    for path, dense in compress.modules(model, Dense):
        if not prune.selected(f"{path}.kernel", dense.kernel, opts):
            continue
        full = min(int(np.prod(dense.kernel.shape[:dense.n_in])), int(np.prod(dense.kernel.shape[dense.n_in:])))
        rank = min(opts.rank, full) if opts.rank else lowrank.rank_for_energy(lowrank.spectrum(dense), opts.rank_energy)
        if lowrank.saves(dense, rank):
            compress.replace(model, path, lowrank.factorize(dense, rank))
            ranks[path] = rank
    log(f"low-rank: {len(ranks)} dense layers factorised (ranks {sorted(set(ranks.values()))})")
    return ranks


def _prune_config(opts: Options) -> config.PruneConfig:
    return config.PruneConfig(sparsity=opts.sparsity, pattern=opts.pattern, scope=opts.scope, exclude=opts.exclude,
                              exclude_axes=opts.exclude_axes)


def _prune(model, opts: Options, log) -> None:
    pcfg = _prune_config(opts)
    params = nnx.state(model, nnx.Param)
    kernels = prune.prunable(params, pcfg)
    masks = prune.masks_at(kernels, prune.target(pcfg), pcfg)
    nnx.update(model, prune.apply(params, masks))
    kept = sum(int(m.sum()) for m in jax.tree.leaves(masks))
    total = sum(int(m.size) for m in jax.tree.leaves(masks))
    log(f"pruned {total - kept} of {total} weights in {len(jax.tree.leaves(masks))} kernels "
        f"({(total - kept) / max(total, 1):.2%}{', ' + opts.pattern if opts.pattern else ''})")


def _calibrate(model, restored, opts: Options, percentile: float | None, log) -> dict[str, float]:
    """Per dense layer, the largest per-batch max (or percentile) of |input| over a few training batches."""
    from jaxbatch.data import pipeline, tasks

    run = restored.run
    data_cfg = dataclasses.replace(run.spec.data, data_dir=opts.data_dir or run.spec.data.data_dir, max_train=0)
    if restored.tokenizer is None:
        raise ConfigError(f"{restored.source} has no tokenizer to calibrate with; use --act dynamic or none")
    arrays = tasks.load_split(data_cfg, restored.tokenizer, "train", run.spec.model.problem_type)
    batch = run.micro_batch
    n = min(len(arrays["labels"]), opts.calib_batches * batch)
    arrays = {k: v[:n] for k, v in arrays.items()}
    observers = {}
    for path, dense in compress.quantizable(model, _quant_cfg(opts), Dense):
        observers[path] = quantize.Observe(dense, percentile)
        compress.replace(model, path, observers[path])

    @nnx.jit
    def forward(m, b):
        with mesh_lib.activation_rules(run.mesh, run.spec.mesh.rules):
            run.family.forward(m, b, deterministic=True, rngs=None)

    for local, _ in pipeline.eval_batches(arrays, batch, jax.process_index(), jax.process_count()):
        forward(model, pipeline.to_global(local, run.batch_sh))
    for path, obs in observers.items():
        compress.replace(model, path, obs.dense)
    log(f"calibrated {len(observers)} layer inputs on {n} training examples ({opts.calibration})")
    return {path: float(obs.absmax[...]) for path, obs in observers.items()}


def _quant_cfg(opts: Options):
    return config.ModelConfig(quant=opts.quant, quant_act=opts.act, quant_exclude=opts.exclude)


def _quantize(model, restored, opts: Options, log) -> None:
    percentile = quantize.parse_calibration(opts.calibration) if opts.act == "static" else None
    absmax = _calibrate(model, restored, opts, percentile, log) if opts.act == "static" else {}
    layers = compress.quantizable(model, _quant_cfg(opts))
    for path, m in layers:
        new = (quantize.quantize_dense(m, opts.act, absmax.get(path)) if isinstance(m, Dense)
               else quantize.quantize_embed(m))
        compress.replace(model, path, new)
    log(f"int8: {len(layers)} layers (activations: {opts.act})")


def check(opts: Options) -> None:
    """Refuses bad options before anything is loaded."""
    prune.validate(_prune_config(opts))
    if opts.quant not in ("", "int8") or opts.act not in quantize.ACTIVATIONS:
        raise ConfigError(f"--quant must be int8 and --act one of {', '.join(quantize.ACTIVATIONS)}")
    if opts.act != "none" and not opts.quant:
        raise ConfigError("--act needs --quant int8")
    if opts.rank < 0 or not 0.0 <= opts.rank_energy <= 1.0:
        raise ConfigError("--rank must be >= 1 and --rank-energy in (0, 1]")
    if opts.act == "static" and opts.calib_batches < 1:
        raise ConfigError(f"--calib-batches must be >= 1 for --act static (its scales are calibrated on them), "
                          f"got {opts.calib_batches}")
    if opts.act == "static":
        try:
            quantize.parse_calibration(opts.calibration)
        except ValueError as e:
            raise ConfigError(f"--{e}") from e


def apply(restored: run_lib.Restored, opts: Options, log=print) -> tuple[config.Config, nnx.State, dict]:
    """The compressed model of a restored one: (its spec, its params, a report)."""
    check(opts)
    spec = restored.run.spec
    if spec.model.quant or spec.model.lowrank:
        raise ConfigError(f"{restored.source} is already compressed; compress the original run")
    model = nnx.merge(restored.run.graphdef, restored.params)
    if spec.model.lora_rank:  # the plain model with the LoRA updates folded into its kernels, then compressed
        name = state_lib.param_name
        merged = lora.merged({name(p): x for p, x in jax.tree_util.tree_leaves_with_path(restored.params)}, spec.model)
        spec = config.replace(spec, model__lora_rank=0)
        model = state_lib.build_model(spec.model, spec.precision.policy)
        nnx.update(model, jax.tree_util.tree_map_with_path(lambda p, x: np.asarray(merged[name(p)]),
                                                           nnx.state(model, nnx.Param)))
    before = _count(model)
    ranks = _factorize(model, opts, log) if (opts.rank or opts.rank_energy) else {}
    if opts.sparsity or opts.pattern:
        _prune(model, opts, log)
    if opts.quant:
        _quantize(model, restored, opts, log)
    model_cfg = dataclasses.replace(spec.model, quant=opts.quant, quant_act=opts.act if opts.quant else "none",
                                    quant_exclude=opts.exclude if opts.quant else "",
                                    lowrank=",".join(f"{p}:{r}" for p, r in ranks.items()))
    after = _count(model)
    report = {"source": restored.source, "options": dataclasses.asdict(opts), "params": before[0],
              "params_after": after[0], "nonzero_after": after[1], "ranks": ranks}
    return dataclasses.replace(spec, model=model_cfg), nnx.state(model, nnx.Param), report


def compress_model(restored: run_lib.Restored, out: str | Path, opts: Options, log=print) -> dict:
    """Compresses a restored model (`run.restore`'s, or the CLI's start-up path's) and writes the folder `out`;
    returns the report."""
    check(opts)
    folders.check_new(out)
    spec, params, report = apply(restored, opts, log)
    storage.save(out, spec, params, restored.tokenizer, report)
    report["bytes_on_disk"] = storage.bytes_on_disk(Path(out))
    return report


def _count(model) -> tuple[int, int]:
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return sum(int(x.size) for x in leaves), sum(int(np.count_nonzero(jax.device_get(x))) for x in leaves)
