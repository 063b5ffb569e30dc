"""Shared fixtures. JAX must see 8 CPU devices before it starts, so this is set before any jax import."""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
# CPU only, even with libtpu installed (the tpu extra): topologies for `plan --target` still work, and JAX
# does not probe for TPU hardware (and print libtpu's warnings) in every test process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compare numbers, not speed, and most of the suite's time is XLA:CPU compiling small programs:
# optimisation level 0 cuts compile time by about a third, and XLA's older elemental emitters for fusions
# (instead of its MLIR fusion emitters) by about 40% more (benchmarks/README.md, "The test suite's time").
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
                                   "--xla_cpu_use_fusion_emitters=false")
# Every program into the persistent cache, not only those over jaxbatch's 0.5 s: the suite's tiny steps compile
# faster than that and recur across tests and their subprocesses (a cold CI cache fills as the suite runs).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import contextlib  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxbatch import config as config_lib  # noqa: E402
from jaxbatch import run as run_lib  # noqa: E402
from jaxbatch import state as state_lib  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def subprocess_env(cpu_devices: int | None = None) -> dict:
    """This environment for a child process that sets its own device count (None: as users' runs do, the
    program's default): the suite's compile-time flags kept, its 8 devices dropped."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    if cpu_devices is not None:
        env["JAX_NUM_CPU_DEVICES"] = str(cpu_devices)
    return env


def tiny_config(*overrides: str) -> config_lib.Config:
    """The tiny BERT with one layer, dropout on, a constant LR (no warmup, so step 1 moves the parameters). One
    layer: what these tests compare (sharded vs single-device steps, accumulation, optimizers, resume) is the
    same math in every layer, and a second one made each test's programs ~40% longer to compile; tests of the
    layer stack itself (its names, scanning it, exporting it) ask for model.num_layers=2."""
    return config_lib.build(["model.preset=tiny", "model.num_layers=1", "optim.warmup_steps=0",
                             "optim.schedule=constant", "optim.learning_rate=1e-3", "train.batch_size=16",
                             "data.seq_len=16", "train.progress=false", *overrides])


def random_batch(cfg: config_lib.Config, seed: int = 0, batch_size: int | None = None) -> dict:
    """A token-classification batch whose examples have different numbers of real tokens (a sequence head's
    labels per example, an answer-span head's start and end among each example's real tokens)."""
    rng = np.random.default_rng(seed)
    b, t = batch_size or cfg.train.batch_size, cfg.data.seq_len
    lengths = rng.integers(3, t + 1, size=b)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(5, cfg.model.vocab_size, size=(b, t)).astype(np.int32) * mask
    if cfg.model.task == "token":
        labels = rng.integers(0, cfg.model.num_labels, size=(b, t)).astype(np.int32)
        labels = np.where(mask.astype(bool) & (rng.random((b, t)) < 0.8), labels, -100).astype(np.int32)
    elif cfg.model.task == "qa":
        labels = np.sort(rng.integers(0, lengths[:, None], size=(b, 2)), 1).astype(np.int32)
    else:
        labels = rng.integers(0, max(cfg.model.num_labels, 2), size=(b,)).astype(np.int32)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids), labels=labels)


def run_steps(cfg: config_lib.Config, batches: list[dict], devices=None):
    """Sets the run up (run.setup: mesh, optimizer, sharded state, compiled steps) and trains on the batches.
    Returns (state, [metrics], run)."""
    run = run_lib.setup(cfg, devices=devices)
    state, history = run.state, []
    for b in batches:
        state, m = run.steps.train(state, {k: jax.device_put(v, run.batch_sh[k]) for k, v in b.items()})
        history.append(jax.device_get(m))
    return state, history, run


dotted = state_lib.param_name


def params_numpy(state) -> dict:
    return {dotted(p): np.asarray(jax.device_get(x)) for p, x in jax.tree_util.tree_leaves_with_path(state.params)}


@pytest.fixture
def tmp_run_dir(tmp_path):
    return str(tmp_path / "run")


_COMPILE_RECORDS: list[list] = []  # one list per open `compiles()` block
jax.monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: [r.append(name) for r in _COMPILE_RECORDS]
    if name == "/jax/core/compile/backend_compile_duration" else None)
jax.monitoring.register_event_listener(
    lambda name, **kw: [r.append(name) for r in _COMPILE_RECORDS] if name == "/jax/compilation_cache/cache_hits" else None)


@contextlib.contextmanager
def compiles():
    """The programs XLA compiled (or loaded from the persistent cache) while the block ran."""
    record: list = []
    _COMPILE_RECORDS.append(record)
    try:
        yield record
    finally:
        _COMPILE_RECORDS.remove(record)


def event_records(events_file) -> list[bytes]:
    """The serialized Event protos of a TensorBoard event file (TFRecord framing: uint64 length, crc,
    payload, crc)."""
    data, records = Path(events_file).read_bytes(), []
    while data:
        n = int.from_bytes(data[:8], "little")
        records.append(data[12: 12 + n])
        data = data[16 + n:]
    return records


def _torch_labels(labels: np.ndarray) -> np.ndarray:
    """Class ids as torch's int64; regression scores stay float32."""
    return labels if np.issubdtype(labels.dtype, np.floating) else labels.astype(np.int64)


def replay_dropout_masks(monkeypatch) -> tuple[list, list]:
    """Hands torch's dropout the masks jaxbatch draws: each mask `layers.dropout` draws (run eagerly, under
    `jax.disable_jit()`) is kept, in order, and each torch dropout call with p > 0 multiplies by the next one
    (scaled as torch's), so a training-mode PyTorch model drops exactly what ours dropped. Returns (every
    mask drawn, those torch has not used yet)."""
    import torch

    from jaxbatch.models import layers

    drawn, pending, draw = [], [], layers.dropout

    def recording(x, key, rate):
        drawn.append(np.asarray(layers.dropout_keep(key, x.shape, rate)))
        pending.append(torch.tensor(drawn[-1]))
        return draw(x, key, rate)

    def replay(x, p=0.5, training=True, inplace=False):
        return x * pending.pop(0) / (1 - p) if training and p else x

    monkeypatch.setattr(layers, "dropout", recording)
    monkeypatch.setattr(torch.nn.functional, "dropout", replay)
    return drawn, pending


def assert_gradients_equal_torch(family, model_cfg, graphdef, params, batch: dict, torch_model, rng=None,
                                 **torch_inputs):
    """A training step's loss and every parameter's gradient (steps.make_grad_fn; dropout off, or with `rng`
    and `replay_dropout_masks` on) equal torch autograd on the Hugging Face model's own loss for the same
    batch, mapped through the family's HF table. The labels go to torch as `labels`, or (an answer-span head's
    (batch, 2)) as start_positions and end_positions."""
    import torch

    from jaxbatch import hf, steps

    sums, grads = jax.jit(steps.make_grad_fn(family, model_cfg, graphdef))(params, batch, rng, 1.0)
    labels = _torch_labels(batch["labels"])
    given = ({"start_positions": torch.tensor(labels[:, 0]), "end_positions": torch.tensor(labels[:, 1])}
             if model_cfg.task == "qa" else {"labels": torch.tensor(labels)})
    loss = torch_model(**{k: torch.tensor(v) for k, v in torch_inputs.items()}, **given).loss
    loss.backward()
    assert float(sums["loss_sum"] / sums["weight"]) == pytest.approx(loss.item(), rel=1e-5)
    named = dict(torch_model.named_parameters())
    flat = {dotted(p): np.asarray(g) / float(sums["weight"])  # of the mean, as HF's loss
            for p, g in jax.tree_util.tree_leaves_with_path(grads)}
    key_map = family.hf.key_map(model_cfg)
    assert sorted(key_map) == sorted(flat)
    for ours, (name, how) in key_map.items():
        mine = hf.to_theirs(flat[ours], how)
        expected = named[family.hf.tensor_name(name, model_cfg)].grad.numpy()
        np.testing.assert_allclose(mine, expected.reshape(mine.shape), rtol=1e-3, atol=1e-6, err_msg=ours)


# A Universal Dependencies CoNLL-U sample: comments, a multi-word token range (1-2), an empty node (3.1)
UD = """# sent_id = 1
# text = Don't go.
1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_
1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_
3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\tSpaceAfter=No
3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t3:conj\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# sent_id = 2
1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_
"""


def hub_parquet(path, columns: dict, class_names: dict):
    """A Parquet file as `datasets` writes it: its features (ClassLabel names) in the `huggingface` metadata."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    features = {c: ({"feature": {"names": class_names[c], "_type": "ClassLabel"}, "_type": "Sequence"}
                    if c in class_names else {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"})
                for c in columns}
    table = pa.table(columns).replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)



def bpe_tokenizer(texts, bos: bool = False):
    """A byte-level BPE tokenizer trained on `texts`, shaped like a causal model's: no [CLS] and no pad token,
    `<|endoftext|>` its EOS (GPT-2's); with `bos`, a template that starts each text with `<s>` (LLaMA's)."""
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    core = tokenizers.Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>"] + ["<s>"] * bos
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        s = core.token_to_id("<s>")
        core.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                            special_tokens=[("<s>", s)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>",
                                                **({"bos_token": "<s>"} if bos else {}))
