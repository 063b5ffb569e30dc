"""`jaxbatch <command> ...`: train | plan | predict | evaluate | generate | compress | export | advise-batch |
keys.

Every command reports a bad config, data file or model folder as one line naming the key or file and
exits with code 2; no traceback. `train` exits 0 when finished, 75 when stopped with a checkpoint to resume
from (SIGTERM, Ctrl-C, train.stop_after: the launch scripts' retry signal) and 3 when the divergence guard
stopped it (never retried)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path


RESTORE_HELP = ("key=value: mesh.*, distributed.* (several CPU devices, or hosts), train.batch_size, data.seq_len, "
                "data.unknown_label, precision.policy; question answering's data.doc_stride, data.max_answer_length, "
                "data.null_threshold, data.unanswerable")
STEP_HELP = "a run dir's checkpoint at this step (default: its best by checkpoint.best_metric, else its newest)"
MAX_NEW_TOKENS = 200  # generate's, where neither --max-new-tokens nor a generation_config.json says


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxbatch", description="Large-batch Transformer training in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    train_p = sub.add_parser("train", help="train a model; overrides as section.key=value")
    train_p.add_argument("--config", help="TOML or JSON config file")
    train_p.add_argument("overrides", nargs="*", help="e.g. mesh.model=2 train.batch_size=64")
    plan_p = sub.add_parser("plan", help="choose the micro-batch from compiled memory (no training)")
    plan_p.add_argument("--config", help="TOML or JSON config file")
    plan_p.add_argument("--target", help="compile for a TPU slice instead of the local devices, e.g. v5e:16x16")
    plan_p.add_argument("--compare-meshes", action="store_true",
                        help="compile a few meshes (FSDP, FSDP+TP, DP+FSDP) at train.accum_steps and recommend one")
    plan_p.add_argument("overrides", nargs="*")
    predict_p = sub.add_parser("predict", help="label new text with a trained run dir or Hugging Face folder")
    predict_p.add_argument("model", help="run dir or Hugging Face folder")
    predict_p.add_argument("--step", type=int, help=STEP_HELP)
    predict_p.add_argument("--input",
                           help="text (one sentence per line), CoNLL, or TSV / CSV / JSONL file; default stdin")
    predict_p.add_argument("--format", default="auto", help="input format: auto | text | conll | tsv | squad")
    predict_p.add_argument("--output-format", default="json", help="json (lines) | conll (token tasks)")
    predict_p.add_argument("overrides", nargs="*", help=RESTORE_HELP)
    eval_p = sub.add_parser("evaluate", help="score a trained run dir on a dataset split")
    eval_p.add_argument("model", help="run dir or Hugging Face folder")
    eval_p.add_argument("--step", type=int, help=STEP_HELP)
    eval_p.add_argument("--data-dir", help="folder with the split's file (default: the run's data.data_dir)")
    eval_p.add_argument("--split", help="train | validation | test (default: test, else validation where the data "
                        "has no test split)")
    eval_p.add_argument("--data-name", help="conll | tsv | ... (default: the run's data.name)")
    eval_p.add_argument("overrides", nargs="*", help=RESTORE_HELP)
    gen_p = sub.add_parser("generate", help="continue prompts with a trained decoder (run dir or HF folder)")
    gen_p.add_argument("model", help="run dir or Hugging Face folder")
    gen_p.add_argument("--step", type=int, help=STEP_HELP)
    gen_p.add_argument("--prompt", action="append", default=[], help="a prompt; repeat for a batch")
    gen_p.add_argument("--prompts", help="a UTF-8 file of prompts, one per line (blank lines skipped), after any --prompt")
    gen_p.add_argument("--batch-size", type=int, default=32, help="prompts continued at once")
    sampled = " (default: the model's generation_config.json as HF reads it, else %s)"
    gen_p.add_argument("--max-new-tokens", type=int, help=sampled.strip() % MAX_NEW_TOKENS)
    gen_p.add_argument("--temperature", type=float, help="0 = greedy" + sampled % "0.8")
    gen_p.add_argument("--top-k", type=int, help="0 = every token" + sampled % "0")
    gen_p.add_argument("--top-p", type=float, help=sampled.strip() % "1")
    gen_p.add_argument("--min-p", type=float, help="0 = none; tokens at least this times as likely as the likeliest"
                       + sampled % "0")
    gen_p.add_argument("--typical-p", type=float, help="1 = none; locally typical sampling's mass (HF's)"
                       + sampled % "1")
    gen_p.add_argument("--epsilon-cutoff", type=float, help="0 = none; tokens at least this likely (HF's)"
                       + sampled % "0")
    gen_p.add_argument("--eta-cutoff", type=float, help="0 = none; eta sampling's cutoff (HF's)" + sampled % "0")
    gen_p.add_argument("--repetition-penalty", type=float, help="1 = none; HF's, greedy too" + sampled % "1")
    gen_p.add_argument("--no-repeat-ngram-size", type=int, help="0 = none; no n-gram of this size twice in a row's "
                       "tokens (HF's), greedy too" + sampled % "0")
    gen_p.add_argument("--min-new-tokens", type=int, help="no end-of-sequence token before this many new tokens "
                       "(HF's)" + sampled % "0")
    gen_p.add_argument("--min-length", type=int, help="no end-of-sequence token before prompt and new tokens reach "
                       "this many (HF's min_length: a batch's longest prompt counts)" + sampled % "0")
    gen_p.add_argument("--stop", action="append", default=[], help="a string that ends a continuation, left out of "
                       "the printed text (HF's stop_strings); repeat for several" + sampled % "none")
    gen_p.add_argument("--num-beams", type=int, help="> 1: beam search, as HF's generate(num_beams=...); "
                       "with --temperature > 0, its beam sampling"
                       + sampled % "1")
    gen_p.add_argument("--length-penalty", type=float, help="beam search: finished scores / length ** this"
                       + sampled % "1")
    gen_p.add_argument("--early-stopping", choices=["true", "false", "never"],
                       help="beam search: HF's early_stopping" + sampled % "false")
    gen_p.add_argument("--num-return-sequences", type=int, default=1,
                       help="continuations of each prompt (draws when sampling, the best beams in beam search)")
    gen_p.add_argument("--seed", type=int, default=0)
    gen_p.add_argument("--output-format", choices=["text", "json"], default="text",
                       help="text: each prompt and its continuation, then a rule; json: one JSON line each (prompt, "
                       "completion, new_tokens, finish_reason: stop or length)")
    gen_p.add_argument("--chat", action="store_true",
                        help="each prompt is a user's message, rendered by the tokenizer's chat template")
    gen_p.add_argument("overrides", nargs="*", help="mesh.*, distributed.*, precision.policy")
    comp_p = sub.add_parser("compress", help="prune / quantize / factorise a trained model into a new folder")
    comp_p.add_argument("model", help="run dir or Hugging Face folder")
    comp_p.add_argument("--step", type=int, help=STEP_HELP)
    comp_p.add_argument("out", help="new folder (never overwritten); predict/evaluate/generate take it")
    comp_p.add_argument("--prune", type=float, default=0.0, help="one-shot unstructured sparsity, e.g. 0.5")
    comp_p.add_argument("--pattern", default="", help="N:M structured sparsity along the contraction dim, e.g. 2:4")
    comp_p.add_argument("--scope", default="layer", help="unstructured ranking: layer (each kernel) | global")
    comp_p.add_argument("--quant", default="", help="int8: weights (and embeddings) as int8, per-channel scales")
    comp_p.add_argument("--act", default="none", help="int8 activations: none | dynamic (per token) | static")
    comp_p.add_argument("--calibration", default="max", help="static activations: max | percentile:Q")
    comp_p.add_argument("--calib-batches", type=int, default=8)
    comp_p.add_argument("--rank", type=int, default=0, help="low-rank factors of this rank")
    comp_p.add_argument("--rank-energy", type=float, default=0.0,
                        help="low-rank: smallest rank keeping this fraction of spectral energy, e.g. 0.9")
    comp_p.add_argument("--exclude", default="", help="regex over parameter / module names left alone")
    comp_p.add_argument("--data-dir", default="", help="calibration data (default: the run's data.data_dir)")
    advise_p = sub.add_parser("advise-batch", help="batch-size advice from a run's gradient noise scale")
    advise_p.add_argument("run_dir")
    export_p = sub.add_parser("export", help="write a trained run's model as a Hugging Face folder")
    export_p.add_argument("run_dir")
    export_p.add_argument("out_dir", help="new folder (never overwritten)")
    export_p.add_argument("--step", type=int, help=STEP_HELP)
    export_p.add_argument("--adapter", action="store_true",
                          help="a LoRA run's factors and head as a PEFT adapter of its base folder (default: merged)")
    keys_p = sub.add_parser("keys", help="list every config key with its default")
    keys_p.add_argument("prefix", nargs="?", default="")
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options (argparse hands an empty `overrides` out before seeing them)
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    commands = {"train": train, "plan": plan, "predict": predict, "evaluate": evaluate_split, "generate": generate,
                "compress": compress, "export": export, "advise-batch": advise_batch, "keys": keys}
    return reported(commands[args.command], args)


def reported(command, *args) -> int:
    """Runs `command(*args)` (a CLI command, an experiment's main) and returns its exit code: the int it
    returns, else 0. An error the user caused becomes one line on stderr and its exit code (errors.py)."""
    from jaxbatch.errors import (EXIT_BAD_INPUT, EXIT_DIVERGED, CheckpointError, ConfigError, DataError,
                                 TrainingDiverged, WriteError, writing)

    try:
        result = command(*args)
        with writing("standard output"):  # `> file` on a full disk fails here, not as a traceback at exit
            sys.stdout.flush()
        return result if isinstance(result, int) else 0
    except BrokenPipeError:  # `jaxbatch predict ... | head`: the reader has what it wanted
        return 128 + signal.SIGPIPE
    except ConfigError as e:
        print(f"jaxbatch: config error: {e}", file=sys.stderr)
    except (DataError, CheckpointError, WriteError) as e:  # files it cannot use or write: the message names them
        kind = next(k for k in (DataError, CheckpointError, WriteError) if isinstance(e, k))  # MissingSplit: data
        print(f"jaxbatch: {kind.__name__}: {e}", file=sys.stderr)
    except TrainingDiverged as e:
        print(f"jaxbatch: diverged: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:  # before the loop there is nothing to save
        print("jaxbatch: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # what the machine refused (a file, the disk, stdout): its errno and path in one line
        print(f"jaxbatch: {e}", file=sys.stderr)
    finally:
        try:
            sys.stdout.flush()
        except OSError:  # already reported: point stdout at /dev/null so the exit's own flush stays quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_BAD_INPUT


def keys(args) -> int:
    from jaxbatch import config
    from jaxbatch.errors import ConfigError

    lines = [line for line in config.describe(config.Config()).splitlines() if line.strip().startswith(args.prefix)]
    if not lines:
        raise ConfigError(f"no config key starts with {args.prefix!r}; `jaxbatch keys` lists them all")
    print("\n".join(lines))
    return 0


def train(args) -> int:
    from jaxbatch import config, distributed, evaluate
    from jaxbatch import train as train_lib

    cfg = config.build(args.overrides, args.config)
    if distributed.initialize(cfg):
        print(distributed.describe())
    result = train_lib.train(cfg)
    if not result.finished:
        from jaxbatch.errors import EXIT_STOPPED

        return EXIT_STOPPED
    print(f"done: {result.summary['step']} steps in {result.summary['wall_time_s']:.1f}s; "
          f"final eval {evaluate.summary_line(result.summary['final_eval'])}; "
          f"summary in {cfg.train.run_dir}/summary.json")
    return 0


def plan(args) -> int:
    """Per-device memory of the compiled train step, the micro-batch plan and (for a TPU target) XLA's
    estimated step time, tokens/s and MFU. Exit 1 when nothing fits."""
    from jaxbatch import config, distributed, memory, models, topology
    from jaxbatch import mesh as mesh_lib
    from jaxbatch import run as run_lib

    from jaxbatch.data import tasks
    from jaxbatch.errors import ConfigError

    cfg = config.build(args.overrides, args.config)
    if args.target and cfg.distributed != config.DistributedConfig():
        raise ConfigError(f"--target plans on {args.target}'s devices; distributed.* sets up this machine's (leave "
                          f"it out, or plan for this machine without --target)")
    if not args.target and distributed.initialize(cfg):  # this machine's devices, as training would start them
        print(distributed.describe())
    spec = run_lib.resolve(cfg, task=tasks.dataset_task(cfg.data))
    target = topology.target(args.target) if args.target else None
    devices = target.devices if target else None
    if target:
        print(f"target {target.describe()}")
    if spec.model.vocab_size < 1:  # the tokenizer's, as train takes it: a text corpus without one reads its
        tokenizer = run_lib.tokenizer(spec)  # characters from the data
        whose = "the tokenizer's"
        if tokenizer is None:
            tokenizer, whose = tasks.load(cfg.data, None).tokenizer, "the corpus' characters"
        spec = config.replace(spec, model__vocab_size=len(tokenizer))
        print(f"model.vocab_size=0: planning with {whose}, {len(tokenizer)}")
    if args.compare_meshes:
        spec = _best_mesh(spec, devices, target)
    mesh = mesh_lib.make_mesh(spec.mesh, devices)
    config.validate(spec, mesh.devices.size)
    budget = _budget(spec, target)
    print(f"mesh {mesh_lib.describe(mesh)}; global batch {spec.train.batch_size} x seq {spec.data.seq_len}; "
          f"budget {memory.size(budget)} per device")
    try:
        chosen = memory.plan_micro_batch(spec, budget, devices=devices)
    except memory.DoesNotFit as e:
        print(f"does not fit: {e}")
        return 1
    print(f"plan: train.accum_steps={chosen.accum_steps} (micro-batch {chosen.micro_batch})")
    hbm = f" of {memory.size(target.device_memory)} HBM" if target else ""
    print(f"  per device: params {memory.size(chosen.params)}, optimizer {memory.size(chosen.optimizer)}, "
          f"activations+temp {memory.size(chosen.temp)}, total {memory.size(chosen.total)}{hbm}")
    tokens = spec.train.batch_size * spec.data.seq_len
    model_flops = models.train_flops_per_token(spec.model, spec.data.seq_len) * tokens / mesh.devices.size
    if chosen.flops:
        print(f"  compute: {chosen.flops / 1e12:.3f} TFLOP per device per step (XLA cost analysis)")
    else:  # none, or XLA's count of a program with scanned loops inside, is not the step's (memory.StepMemory)
        print(f"  compute: {model_flops / 1e12:.3f} TFLOP per device per step (the model's matmul FLOPs; XLA's "
              f"cost analysis gives none for this program or counts a scanned loop's body once)")
    if target and not chosen.seconds:
        print(f"  estimated step time: not given by the TPU cost model for this program; its FLOPs at the chip's "
              f"peak take {(chosen.flops or model_flops) / target.device_peak_flops * 1e3:.1f} ms (a floor)")
    if chosen.seconds and target:
        mfu = model_flops / (chosen.seconds * target.device_peak_flops)
        print(f"  estimated step time {chosen.seconds * 1e3:.1f} ms (XLA's TPU cost model): "
              f"{tokens / chosen.seconds:,.0f} tokens/s, MFU {mfu:.1%}")
    return 0


def _budget(spec, target) -> int:
    """Bytes per device to plan for: train.memory_budget_gb, else 90% of the target chip's HBM or of this
    device's memory."""
    from jaxbatch import memory

    if target and not spec.train.memory_budget_gb:
        return int(0.9 * target.device_memory)
    return memory.device_budget(spec.train.memory_budget_gb)


def _best_mesh(spec, devices, target):
    """Compiles the step on a few meshes at the spec's accum_steps; returns the spec with the fastest that
    fits (by XLA's estimated time on a TPU target, else by memory)."""
    import jax

    from jaxbatch import config, memory

    n = len(devices) if devices is not None else jax.device_count()
    heads = spec.model.num_heads
    candidates = {"FSDP": (1, n, 1), "DP": (n, 1, 1)}
    for data in (2, 4, 8):
        if n % data == 0 and n // data > 1:
            candidates[f"DP {data} x FSDP"] = (data, n // data, 1)
    for tp in (2, 4, 8):
        if n % tp == 0 and heads % tp == 0 and n // tp > 1:
            candidates[f"FSDP x TP {tp}"] = (1, n // tp, tp)
    budget = _budget(spec, target)
    rows = []
    for name, (data, fsdp, model) in candidates.items():
        candidate = config.replace(spec, mesh__data=data, mesh__fsdp=fsdp, mesh__model=model)
        try:
            config.validate(candidate, n)
        except config.ConfigError as e:
            print(f"  {name:16s} data={data} fsdp={fsdp} model={model}: skipped ({e})")
            continue
        m = memory.step_memory(candidate, spec.train.accum_steps, devices)
        est = f"{m.seconds * 1e3:9.1f} ms" if m.seconds else "        -"
        fit = m.total <= budget
        print(f"  {name:16s} data={data} fsdp={fsdp} model={model}: {m.total / 2**30:7.2f} GiB/device, "
              f"step {est} {'fits' if fit else 'too big'}")
        rows.append((not fit, m.seconds or 0.0, m.total, name, candidate))
    if not rows:
        raise config.ConfigError("no candidate mesh is valid for this model and device count")
    best = min(rows, key=lambda r: r[:3])
    print(f"recommended mesh: {best[3]} (mesh.data={best[4].mesh.data} mesh.fsdp={best[4].mesh.fsdp} "
          f"mesh.model={best[4].mesh.model}){'' if not best[0] else ' - but none fits at this accum_steps'}")
    return best[4]


def _start_up(overrides: list[str]):
    """The config `distributed.initialize` reads for an inference command: its distributed.* overrides, one
    malloc arena only when asked for (auto's estimate is a training step's)."""
    from jaxbatch import config

    return config.build(["distributed.cpu_one_arena=false", *(o for o in overrides if o.startswith("distributed."))])


def _restore(model: str, overrides: list[str], step: int | None, need_tokenizer: bool = True):
    """The trained model, after the one start-up path (`distributed.initialize`, before JAX starts): the
    distributed.* overrides give a CPU several devices, or start jax.distributed across hosts (each computes
    its share of every batch; process 0 prints)."""
    from jaxbatch import distributed
    from jaxbatch import run as run_lib
    from jaxbatch.errors import CheckpointError

    run_lib.check_restore_overrides(overrides, start_up=True)
    if distributed.initialize(_start_up(overrides)):
        print(distributed.describe(), file=sys.stderr)
    restored = run_lib.restore(model, [o for o in overrides if not o.startswith("distributed.")], step=step)
    if need_tokenizer and restored.tokenizer is None:
        raise CheckpointError(f"{model} has no tokenizer files (save one with the weights)")
    if not restored.finished:
        print(f"jaxbatch: note: {model} is unfinished (checkpoint at step {restored.step} of "
              f"{restored.run.spec.train.steps}); using that checkpoint", file=sys.stderr)
    return restored


def predict(args) -> int:
    import jax

    from jaxbatch import distributed, models
    from jaxbatch import predict as predict_lib
    from jaxbatch import run as run_lib

    if args.output_format not in ("json", "conll"):
        from jaxbatch.errors import ConfigError

        raise ConfigError(f"--output-format must be json or conll, got {args.output_format!r}")
    if not Path(args.model).is_dir():
        from jaxbatch.errors import CheckpointError

        raise CheckpointError(f"{args.model}: no such run dir or Hugging Face folder")
    run_lib.check_restore_overrides(args.overrides, start_up=True)
    if distributed.across_hosts(_start_up(args.overrides).distributed) and not args.input:  # one host has the tty
        from jaxbatch.errors import ConfigError

        raise ConfigError("predict across hosts reads --input FILE on every host, not standard input")
    path = Path(args.input) if args.input else None
    sentences = predict_lib.read_sentences(path, args.format)  # bad input fails before the model loads
    restored = _restore(args.model, args.overrides, args.step)
    distributed.same_on_every_host(sentences.digest, args.input)
    if restored.run.spec.model.task == "lm" and not models.masked_lm(restored.run.spec.model):
        from jaxbatch.errors import ConfigError

        raise ConfigError(f"{args.model} is a causal language model, and predict labels text with a classifier or "
                          f"fills in a masked LM's masks; continue text with `jaxbatch generate` or score it with "
                          f"`jaxbatch evaluate`")
    records = predict_lib.records(restored, sentences, args.input or "stdin")  # written as each chunk is predicted
    if jax.process_count() > 1:  # every host predicts every chunk first: a failed write then stops no host mid-batch
        records = list(records)
    from jaxbatch.errors import writing

    if jax.process_index() == 0:  # every host labelled its share of each batch and gathered all of them
        with writing("standard output"):
            predict_lib.write(records, sentences, args.output_format)
    return 0


def evaluate_split(args) -> int:
    import dataclasses

    import jax

    from jaxbatch import distributed, evaluate, models
    from jaxbatch.data import pipeline, tasks
    from jaxbatch.errors import ConfigError, MissingSplit

    restored = _restore(args.model, args.overrides, args.step)
    spec = restored.run.spec
    data_cfg = dataclasses.replace(spec.data, data_dir=spec.data.data_dir if args.data_dir is None else args.data_dir,
                                   name=args.data_name or spec.data.name, max_train=0)
    data_task = tasks.dataset_task(data_cfg)
    if data_task != spec.model.task:
        raise ConfigError(f"{args.model} is a {spec.model.task} model but data.name={data_cfg.name} is a "
                          f"{data_task} dataset: name the split's kind with --data-name")
    masked = models.masked_lm(spec.model)
    for split in [args.split] if args.split else ["test", "validation"]:  # HF's evaluate scores validation
        try:
            arrays, windows = tasks.scored_split(data_cfg, restored.tokenizer, split, spec.model.problem_type,
                                                 spec.model if masked else None)
            break
        except MissingSplit as e:  # no test split: the validation split, named in the printed line
            if args.split or e.split != "test":
                raise
    distributed.same_on_every_host(lambda: pipeline.digest(arrays), tasks.source_of(data_cfg))
    per_byte = tasks.bytes_per_token(restored.tokenizer) if spec.model.task == "lm" and not masked else None
    result = evaluate.evaluate(restored.run, restored.params, arrays, data_cfg.labels.split(","), spec.model.task,
                               bytes_per_token=per_byte, windows=windows)
    what = f"windows of {len(windows.questions)} questions" if windows else "examples"
    if jax.process_index() == 0:  # every host scored its share; one prints
        print(f"{split} ({len(arrays['labels'])} {what}, {tasks.source_of(data_cfg)}): "
              + evaluate.report_lines(result))
    return 0


def generate(args) -> int:
    import jax

    from jaxbatch import distributed, models
    from jaxbatch import generate as generate_lib
    from jaxbatch.errors import ConfigError

    restored = _restore(args.model, args.overrides, args.step)
    if restored.run.spec.model.task != "lm":
        raise ConfigError(f"{args.model} is a {restored.run.spec.model.task} classifier, not a language model")
    if models.masked_lm(restored.run.spec.model):
        raise ConfigError(f"{args.model} is a masked language model (an encoder): it fills in masked tokens, and "
                          f"generate continues text with a causal one (a decoder)")
    texts = list(args.prompt)
    if args.prompts:
        from jaxbatch.data.files import read_text_file

        texts += [line for line in read_text_file(args.prompts).splitlines() if line.strip()]
    if not texts or (args.max_new_tokens or 1) < 1 or args.batch_size < 1 or args.num_return_sequences < 1:
        raise ConfigError("give a --prompt or a --prompts file; --max-new-tokens, --batch-size and "
                          "--num-return-sequences must be >= 1")
    tok = restored.tokenizer
    prompts = generate_lib.encode_prompts(tok, texts, chat=args.chat)
    if not all(prompts):
        raise ConfigError("every prompt must have at least one token")
    configs = generate_lib.generation_configs([f for f in (args.model, restored.run.spec.model.pretrained) if f])
    stops = generate_lib.stop_tokens(tok, configs)
    max_new = generate_lib.max_new_tokens(configs, args.max_new_tokens, MAX_NEW_TOKENS)
    early = {"true": True, "false": False}.get(args.early_stopping, args.early_stopping)
    try:
        chosen, source = generate_lib.sampling(configs, temperature=args.temperature, top_k=args.top_k,
                                               top_p=args.top_p, min_p=args.min_p, typical_p=args.typical_p,
                                               epsilon_cutoff=args.epsilon_cutoff, eta_cutoff=args.eta_cutoff,
                                               repetition_penalty=args.repetition_penalty,
                                               no_repeat_ngram_size=args.no_repeat_ngram_size,
                                               min_new_tokens=args.min_new_tokens, min_length=args.min_length)
        beams = generate_lib.beam_settings(configs, num_beams=args.num_beams, length_penalty=args.length_penalty,
                                           early_stopping=early)
        if beams["num_beams"] > 1:
            generate_lib.check_beams(beams["num_beams"], beams["early_stopping"], args.num_return_sequences)
        strings = generate_lib.stop_strings(configs, args.stop)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    n, searched = args.num_return_sequences, beams["num_beams"] > 1
    # sampling asked for by the command line or the file (its do_sample); jaxbatch's own default is for one beam
    sampler = chosen["temperature"] > 0 and (args.temperature is not None or bool(configs))
    if not searched and n > 1 and chosen["temperature"] <= 0:
        raise ConfigError("greedy decoding continues a prompt one way; --num-return-sequences needs sampling "
                          "(--temperature > 0) or beam search (--num-beams)")
    texts = [t for t in texts for _ in range(n)]  # each prompt's continuations together
    if searched:  # beam search returns a prompt's n best beams together; sampled beams are HF's beam sampling
        sampled = {k: chosen[k] for k in generate_lib.applied(chosen) if sampler or k in generate_lib.PROCESSORS}
        print(f"beam {'sampling' if sampler else 'search'}: {', '.join(f'{k} {v}' for k, v in beams.items())}"
              + "".join(f", {k} {v}" for k, v in sampled.items()) + f" ({source})" * bool(sampler), file=sys.stderr)
    else:  # each draw is a row of its own
        prompts = [p for p in prompts for _ in range(n)]
        shown = ["greedy" if k == "temperature" and chosen[k] <= 0 else f"{k} {chosen[k]}"
                 for k in generate_lib.applied(chosen)]
        print(f"sampling: {', '.join(shown)} ({source})", file=sys.stderr)
    if strings:
        print(f"stop strings: {', '.join(map(repr, strings))}", file=sys.stderr)
    banned = generate_lib.token_bans(configs, restored.run.spec.model.vocab_size, stops)
    if banned:
        print(f"banned: {', '.join(f'{k} {v}' for k, v in banned.items())} ({configs[0][0]})", file=sys.stderr)
    shaping = generate_lib.token_shaping(configs, restored.run.spec.model.vocab_size)
    if shaping:
        print(f"also: {', '.join(f'{k} {v}' for k, v in shaping.items())} ({configs[0][0]})", file=sys.stderr)
    path, ignored = generate_lib.unapplied(configs)
    if ignored:
        print(f"note: {path} also sets {', '.join(ignored)}, which jaxbatch generate does not apply (HF's would)",
              file=sys.stderr)
    # every host runs each step on its share of the devices: the same programs, from the same prompts
    distributed.same_on_every_host(lambda: repr((prompts, chosen, beams, n, max_new, args.seed,
                                                 args.batch_size, stops, strings, banned, shaping)),
                                   "generate's prompts and settings", "give each the same ones")
    from jaxbatch.errors import writing

    ends_text = generate_lib.text_stops(tok, strings)
    for start in range(0, len(prompts), args.batch_size):  # each batch printed as soon as it is done
        batch = prompts[start:start + args.batch_size]
        try:
            if searched:
                new = generate_lib.beam_search(restored.run.graphdef, restored.params, batch, max_new,
                                               **beams, **sampled, stop_tokens=stops, num_return_sequences=n,
                                               seed=args.seed + start, stop_text=ends_text, **banned, **shaping)
            else:
                new = generate_lib.generate(restored.run.graphdef, restored.params, batch, max_new,
                                            **chosen, seed=args.seed + start, stop_tokens=stops,
                                            stop_text=ends_text, **banned, **shaping)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        if jax.process_index():
            continue
        with writing("standard output"):
            heads = [p for p in batch for _ in range(n if searched else 1)]  # each output's prompt ids
            for prompt, head, tokens in zip(texts[start * (n if searched else 1):], heads, new):
                stopped = bool(tokens) and tokens[-1] in stops
                answer = generate_lib.continuation(tok, head, tokens[:-1] if stopped else tokens)
                if ends_text is not None and not stopped and ends_text(head + tokens):
                    stopped, answer = True, generate_lib.before_stop(answer, strings)
                if args.output_format == "json":  # a continuation may hold new lines: one record a line
                    print(json.dumps({"prompt": prompt, "completion": answer, "new_tokens": len(tokens),
                                      "finish_reason": "stop" if stopped else "length"}, ensure_ascii=False),
                          flush=True)
                    continue
                print(prompt + ("\n" if args.chat else "") + answer)  # a chat's answer is a turn of its own
                print("-" * 40, flush=True)
    return 0


def compress(args) -> int:
    from jaxbatch import folders
    from jaxbatch.compress import pipeline
    from jaxbatch.errors import ConfigError

    opts = pipeline.Options(sparsity=args.prune, pattern=args.pattern, scope=args.scope, exclude=args.exclude,
                            quant=args.quant, act=args.act, calibration=args.calibration,
                            calib_batches=args.calib_batches, rank=args.rank, rank_energy=args.rank_energy,
                            data_dir=args.data_dir)
    pipeline.check(opts)  # a bad option's own message first
    if not (args.prune or args.pattern or args.quant or args.rank or args.rank_energy):
        raise ConfigError("compress: nothing asked; choose --prune, --pattern, --quant int8, --rank or --rank-energy")
    folders.check_new(args.out)  # before the model is read
    report = pipeline.compress_model(_restore(args.model, [], args.step, need_tokenizer=False), args.out, opts)
    print(f"wrote {args.out}: {report['params_after']:,} parameters ({report['nonzero_after']:,} non-zero; "
          f"{report['params']:,} before), {report['bytes_on_disk'] / 2**20:.2f} MiB on disk")
    return 0


def export(args) -> int:
    """The run's best or newest checkpoint, or --step (params only, on this machine's devices) as config.json,
    model.safetensors and tokenizer files, loadable by the family's transformers class; with --adapter, a LoRA
    run as a PEFT adapter of the folder it started from."""
    from jaxbatch import hf
    from jaxbatch import run as run_lib
    from jaxbatch.errors import ConfigError

    restored = _restore(args.run_dir, [], args.step, need_tokenizer=False)
    spec = restored.run.spec
    if spec.model.quant or spec.model.lowrank:
        raise ConfigError(f"{args.run_dir} is a compressed model, which Hugging Face classes cannot load; "
                          f"export the run it was compressed from")
    source = args.run_dir if restored.step is None else f"step {restored.step} of {args.run_dir}"  # a folder has none
    if args.adapter:
        from jaxbatch import adapter

        out = adapter.export(restored.params, restored.run.abstract_params, spec.model, args.out_dir,
                             restored.tokenizer, run_lib.label_names(spec))
        print(f"exported {source} to {out} as a PEFT LoRA adapter "
              f"(its README.md names the base model and shows how to load it)")
        return 0
    out = hf.export(restored.params, spec.model, args.out_dir, restored.tokenizer, run_lib.label_names(spec))
    print(f"exported {source} to {out}")
    return 0


def advise_batch(args) -> int:
    from jaxbatch import noise_scale, reporting
    from jaxbatch.errors import CheckpointError

    path = Path(args.run_dir) / "metrics.jsonl"
    summary = Path(args.run_dir) / "summary.json"
    if not path.is_file() or not summary.is_file():
        print(f"jaxbatch: {path if not path.is_file() else summary} does not exist (run not finished?)",
              file=sys.stderr)
        return 2
    estimates = [r["b_simple"] for r in reporting.read_metrics(args.run_dir) if r["kind"] == "noise_scale"]
    try:
        batch = json.loads(summary.read_text())["config"]["train"]["batch_size"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{summary}: not a jaxbatch run summary ({type(e).__name__}: {e})") from e
    print(noise_scale.advice(estimates[-1] if estimates else None, batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
