"""A LoRA run exported as a PEFT adapter: `PeftModel.from_pretrained` on the run's base folder gives the LoRA
model's logits (factors in each family's key layout, GPT-2's fused c_attn as one factor pair of the summed
rank, the trained head as modules_to_save), and an adapter that would load as another model is refused."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxbatch import adapter, config, lora
from jaxbatch import run as run_lib
from jaxbatch.errors import CheckpointError, ConfigError
from jaxbatch.state import param_name as state_name

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

SIZES = dict(vocab_size=97, num_hidden_layers=2, num_attention_heads=4)
BASES = {  # name: (base class written as the pretrained folder, its config, class PEFT's base is loaded as, overrides)
    "bert-sequence": ("BertModel", transformers.BertConfig(**SIZES, hidden_size=32, intermediate_size=64),
                      "BertForSequenceClassification", ["model.task=sequence", "model.num_labels=3",
                                                        "model.lora_targets=query,value,wi"]),
    "bert-token": ("BertModel", transformers.BertConfig(**SIZES, hidden_size=32, intermediate_size=64),
                   "BertForTokenClassification", ["model.task=token", "model.num_labels=5",
                                                  "model.lora_targets=key,out,wo"]),
    "roberta-sequence": ("RobertaModel", transformers.RobertaConfig(**SIZES, hidden_size=32, intermediate_size=64,
                                                                    pad_token_id=1, max_position_embeddings=40),
                         "RobertaForSequenceClassification", ["model.task=sequence", "model.num_labels=2"]),
    "distilbert-sequence": ("DistilBertModel",
                            transformers.DistilBertConfig(vocab_size=97, dim=32, n_layers=2, n_heads=4, hidden_dim=64),
                            "DistilBertForSequenceClassification", ["model.task=sequence", "model.num_labels=2",
                                                                    "model.lora_targets=all-linear"]),
    "gpt2": ("GPT2LMHeadModel", transformers.GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64),
             "GPT2LMHeadModel", ["data.name=text", "model.lora_targets=query,value,out,wi"]),
    "llama": ("LlamaForCausalLM", transformers.LlamaConfig(**SIZES, hidden_size=32, intermediate_size=64,
                                                           num_key_value_heads=2, tie_word_embeddings=False),
              "LlamaForCausalLM", ["data.name=text", "model.lora_targets=query,key,value,out,gate"]),
}


def _trained_run(tmp_path, name: str, *extra: str):
    """A LoRA run on a random base folder, its trainable parameters moved as training would move them."""
    cls, hf_cfg, _, overrides = BASES[name]
    torch.manual_seed(0)
    getattr(transformers, cls)(hf_cfg).save_pretrained(tmp_path / "base")
    cfg = run_lib.resolve(config.build([f"model.pretrained={tmp_path / 'base'}", "train.batch_size=2",
                                        "data.seq_len=12", "mesh.data=1", "model.lora_rank=4", "model.lora_alpha=12",
                                        *overrides, *extra]))
    run = run_lib.setup(cfg, devices=jax.devices()[:1])
    keys = iter(jax.random.split(jax.random.key(1), 10_000))
    moved = jax.tree.map(lambda x, t: x + 0.05 * jax.random.normal(next(keys), x.shape) if t else x,
                         nnx.to_pure_dict(run.state.params), nnx.to_pure_dict(lora.trainable(run.state.params)))
    params = run.state.params
    nnx.replace_by_pure_dict(params, moved)
    return run, params


def _logits(run, params, ids):
    model = nnx.merge(run.graphdef, params)
    if run.spec.model.task == "lm":
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        return np.asarray(model(jnp.asarray(ids), positions, jnp.ones(ids.shape, jnp.int32)))
    return np.asarray(model(jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32)))


@pytest.mark.parametrize("name, extra", [*((n, ()) for n in BASES), ("gpt2", ("model.lora_rslora=true",))])
def test_the_adapter_in_peft_gives_the_lora_models_logits(name, extra, tmp_path):
    run, params = _trained_run(tmp_path, name, *extra)
    out = adapter.export(params, run.abstract_params, run.spec.model, tmp_path / "adapter", label_names=None)
    written = json.loads((out / "adapter_config.json").read_text())
    _, _, peft_cls, _ = BASES[name]
    head = {} if run.spec.model.task == "lm" else {"num_labels": run.spec.model.num_labels}
    base = getattr(transformers, peft_cls).from_pretrained(written["base_model_name_or_path"], **head)
    model = peft.PeftModel.from_pretrained(base, out).eval()
    ids = np.random.default_rng(0).integers(5, 97, (2, 12))
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(ids)).logits.numpy()
    ours = _logits(run, params, ids)
    np.testing.assert_allclose(theirs, ours, atol=2e-5)
    untrained = run_lib.setup(run.spec, devices=jax.devices()[:1]).state.params
    assert np.abs(ours - _logits(run, untrained, ids)).max() > 1e-3  # the factors and the head change the model
    if name == "gpt2":  # query and value share c_attn: one pair of rank 2 x 4, scaled by 12 / 4 (or 12 / 2) still
        rslora = bool(extra)
        assert written["rank_pattern"] == {f"transformer.h.{i}.attn.c_attn": 8 for i in range(2)}
        assert written["alpha_pattern"] == pytest.approx(
            {f"transformer.h.{i}.attn.c_attn": 12 * 8 ** 0.5 / 2 if rslora else 24 for i in range(2)})
        assert written["fan_in_fan_out"] is True and written["use_rslora"] is rslora
    if name == "bert-sequence":  # the trained pooler is saved beside the classifier
        assert written["modules_to_save"] == ["bert.pooler.dense", "classifier"]


def test_an_adapter_that_would_load_as_another_model_is_refused(tmp_path):
    run, params = _trained_run(tmp_path, "llama")
    flat = nnx.to_pure_dict(params)
    flat["layers"][0]["attention"]["key"]["kernel"] = flat["layers"][0]["attention"]["key"]["kernel"] + 1e-3
    nnx.replace_by_pure_dict(params, flat)  # a frozen kernel no longer the base folder's
    with pytest.raises(CheckpointError, match=r"model.layers.0.self_attn.k_proj.weight differs from the run's frozen"):
        adapter.export(params, run.abstract_params, run.spec.model, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_runs_without_factors_or_base_take_the_merged_export():
    from conftest import tiny_config

    plain = tiny_config().model
    with pytest.raises(ConfigError, match="model.lora_rank is 0"):
        adapter.export({}, {}, plain, "unused")
    with pytest.raises(ConfigError, match="randomly initialised"):
        adapter.export({}, {}, tiny_config("model.lora_rank=4").model, "unused")


PEFT_MADE = {  # name: (base key in BASES, LoraConfig arguments); B and the head drawn at random after creation
    "bert-sequence": ("bert-sequence", dict(r=4, lora_alpha=8, target_modules=["query", "value"],
                                            rank_pattern={"layer.1.attention.self.value": 2},
                                            alpha_pattern={"layer.1.attention.self.value": 6}, use_rslora=True)),
    "bert-token": ("bert-token", dict(r=2, lora_alpha=4, target_modules=["key", "output.dense"],
                                      layers_to_transform=[1])),
    "gpt2": ("gpt2", dict(r=4, lora_alpha=16, target_modules=["c_attn", "mlp.c_proj"], fan_in_fan_out=True)),
    "llama": ("llama", dict(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"])),
}


@pytest.mark.parametrize("name", list(PEFT_MADE))
def test_a_peft_adapter_loads_as_the_lora_model(name, tmp_path):
    """An adapter PEFT wrote (per-module ranks and alphas, rsLoRA, some layers only, GPT-2's fused c_attn with a
    full B, the head as modules_to_save): predict's restore and a training run from it give PEFT's logits, and
    the run trains the adapter's rank and targets."""
    key, lora_args = PEFT_MADE[name]
    cls, hf_cfg, peft_cls, overrides = BASES[key]
    torch.manual_seed(0)
    getattr(transformers, cls)(hf_cfg).save_pretrained(tmp_path / "base")
    task = {"BertForSequenceClassification": "SEQ_CLS", "BertForTokenClassification": "TOKEN_CLS"}.get(peft_cls,
                                                                                                       "CAUSAL_LM")
    head = {} if task == "CAUSAL_LM" else {"num_labels": 3}
    model = peft.get_peft_model(getattr(transformers, peft_cls).from_pretrained(tmp_path / "base", **head),
                                peft.LoraConfig(task_type=task, **lora_args))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "modules_to_save" in n:
                p.normal_(0, 0.2)
    model.save_pretrained(tmp_path / "adapter")
    ids = np.random.default_rng(0).integers(5, 97, (2, 12))
    with torch.no_grad():
        theirs = model.eval()(input_ids=torch.tensor(ids)).logits.numpy()

    restored = run_lib.restore(tmp_path / "adapter", ["data.seq_len=12"])
    np.testing.assert_allclose(_logits(restored.run, restored.params, ids), theirs, atol=2e-5)
    data = [o for o in overrides if o.startswith("data.")]
    run = run_lib.setup(run_lib.resolve(config.build([f"model.pretrained={tmp_path / 'adapter'}", "mesh.data=1",
                                                      "train.batch_size=2", "data.seq_len=12", *data])),
                        devices=jax.devices()[:1])
    np.testing.assert_allclose(_logits(run, run.state.params, ids), theirs, atol=2e-5)
    spec = run.spec.model
    assert spec.lora_rank == lora_args["r"] and spec.task == {"SEQ_CLS": "sequence", "TOKEN_CLS": "token"}.get(
        task, "lm")
    assert spec.lora_rslora == bool(lora_args.get("use_rslora"))
    if name == "gpt2":  # c_attn's factors reach query, key and value
        assert spec.lora_targets == "key,query,value,wo"


def test_an_exported_adapter_reads_back_as_the_same_model(tmp_path):
    run, params = _trained_run(tmp_path, "gpt2")
    out = adapter.export(params, run.abstract_params, run.spec.model, tmp_path / "adapter")
    restored = run_lib.restore(out, ["data.seq_len=12"])
    ids = np.random.default_rng(1).integers(5, 97, (2, 12))
    np.testing.assert_allclose(_logits(restored.run, restored.params, ids), _logits(run, params, ids), atol=1e-5)
    assert restored.run.spec.model.lora_rank == 8  # query and value shared c_attn: rank 2 x 4, one scale


@pytest.mark.parametrize("change, message", [
    (dict(peft_type="IA3"), "peft_type 'IA3' is not read"),
    (dict(use_dora=True), "use_dora True is not read"),
    (dict(base_model_name_or_path="org/not-here"), "download the base model and write its folder there"),
    (dict(r=0), "r must be a positive number"),
    ("embedding", r"model.embed_tokens.lora_embedding_A is not read")])
def test_adapters_jaxbatch_cannot_run_exactly_are_one_line(change, message, tmp_path):
    """Including LoRA on the embeddings (PEFT's lora_embedding_A/B), which jaxbatch does not train."""
    run, params = _trained_run(tmp_path, "llama")
    out = adapter.export(params, run.abstract_params, run.spec.model, tmp_path / "adapter")
    if change == "embedding":
        from safetensors.numpy import load_file, save_file

        tensors = load_file(out / "adapter_model.safetensors")
        tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = np.zeros((4, 97), np.float32)
        save_file(tensors, out / "adapter_model.safetensors")
    else:
        written = json.loads((out / "adapter_config.json").read_text())
        (out / "adapter_config.json").write_text(json.dumps({**written, **change}))
    with pytest.raises(CheckpointError, match=message):
        run_lib.restore(out)


def test_lora_dropout_trains_as_peft_does(monkeypatch, tmp_path):
    """model.lora_dropout (read from the adapter's lora_dropout) drops out the factors' input only: a training
    step's loss and the factors' and head's gradients equal PEFT's in training mode, given the same masks."""
    from conftest import replay_dropout_masks

    from jaxbatch import steps

    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**SIZES, hidden_size=32, intermediate_size=64, hidden_dropout_prob=0,
                                                   attention_probs_dropout_prob=0)).save_pretrained(tmp_path / "base")
    model = peft.get_peft_model(transformers.BertForTokenClassification.from_pretrained(tmp_path / "base", num_labels=3),
                                peft.LoraConfig(task_type="TOKEN_CLS", r=4, lora_alpha=8, lora_dropout=0.25,
                                                target_modules=["query", "value", "intermediate.dense"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    model.save_pretrained(tmp_path / "adapter")
    run = run_lib.setup(run_lib.resolve(config.build([f"model.pretrained={tmp_path / 'adapter'}", "mesh.data=1",
                                                      "model.hidden_dropout=0", "train.batch_size=2"])),
                        devices=jax.devices()[:1])
    assert run.spec.model.lora_dropout == 0.25
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 97, (2, 12)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids),
             "labels": rng.integers(0, 3, ids.shape).astype(np.int32)}
    drawn, pending = replay_dropout_masks(monkeypatch)
    with jax.disable_jit():  # our masks are drawn eagerly, so they can be handed to torch
        sums, grads = steps.make_grad_fn(run.family, run.spec.model, run.graphdef)(
            run.state.params, batch, jax.random.key(0), 1.0)
    loss = model.train()(input_ids=torch.tensor(ids), labels=torch.tensor(batch["labels"].astype(np.int64))).loss
    loss.backward()
    assert len(drawn) == 2 * 3 and pending == [] and 0.65 < np.mean(drawn) < 0.85  # one per factor pair, all used
    assert float(sums["loss_sum"] / sums["weight"]) == pytest.approx(loss.item(), rel=1e-5)
    theirs = {n.replace("base_model.model.", "").replace(".default", ""): p.grad.numpy()
              for n, p in model.named_parameters() if p.grad is not None}
    ours = {state_name(p): np.asarray(g) / float(sums["weight"]) for p, g in jax.tree_util.tree_leaves_with_path(grads)}
    checked = 0
    for i in range(2):
        for stem, module in (("attention.query", "attention.self.query"), ("mlp.wi", "intermediate.dense")):
            for f, t in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
                mine = ours[f"encoder.layers.{i}.{stem}.{f}"]
                mine = mine.reshape(mine.shape[0], -1).T if f == "lora_b" else mine.reshape(-1, mine.shape[-1]).T
                np.testing.assert_allclose(mine, theirs[f"bert.encoder.layer.{i}.{module}.{t}.weight"], rtol=1e-3,
                                           atol=1e-6)
                checked += 1
    np.testing.assert_allclose(ours["classifier.kernel"].T, theirs["classifier.modules_to_save.weight"], rtol=1e-3,
                               atol=1e-6)
    assert checked == 8
