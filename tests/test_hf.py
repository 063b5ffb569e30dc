"""Hugging Face encoder import/export (BERT; RoBERTa, DistilBERT and ELECTRA): numerically identical to PyTorch
transformers (skipped without torch)."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import assert_gradients_equal_torch, params_numpy, replay_dropout_masks
from jaxbatch import config, hf, run as run_lib, steps

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def load_ours(folder, task="token", num_labels=5, mesh_overrides=("mesh.data=2", "mesh.fsdp=2", "mesh.model=2")):
    cfg = config.build(["model.preset=custom", "model.family=bert", f"model.pretrained={folder}",
                        f"model.task={task}", f"model.num_labels={num_labels}", "train.batch_size=8", *mesh_overrides])
    run = run_lib.setup(run_lib.resolve(cfg))
    return run.spec, run.graphdef, run.state, run.load_report


def padded_batch(vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000 if vocab_size > 2000 else 5, vocab_size, (4, 12))
    mask = np.ones_like(ids)
    for row, length in enumerate([12, 7, 3, 9]):
        ids[row, length:] = 0
        mask[row, length:] = 0
    types = np.zeros_like(ids)
    types[0, 6:] = 1
    return ids, mask, types


def ours_hidden(graphdef, state, ids, mask, types):
    model = nnx.merge(graphdef, state.params)
    return np.asarray(jax.jit(lambda i, m, t: model.encoder(i, m, t))(ids, mask, types))


def ours_logits(graphdef, state, ids, mask, types):
    model = nnx.merge(graphdef, state.params)
    return np.asarray(jax.jit(lambda i, m, t: model(i, m, t))(ids, mask, types))


def torch_run(model, ids, mask, types, attr):
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    return getattr(out, attr).numpy()


def test_minilm_matches_pytorch():
    folder = hf.resolve("minilm-l6")
    cfg, graphdef, state, report = load_ours(folder)
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads) == (384, 6, 12)
    assert report.new == ["classifier.bias", "classifier.kernel"]
    assert report.unexpected == [] and "embeddings.position_ids" not in report.unexpected
    assert len(report.loaded) == 5 + 6 * 16
    # the weights were placed per shard: the query kernel is split over fsdp (embed) and model (heads)
    q = state.params["encoder"]["layers"][0]["attention"]["query"]["kernel"][...]
    assert q.addressable_shards[0].data.shape == (192, 6, 32)
    ids, mask, types = padded_batch(cfg.model.vocab_size)
    theirs = torch_run(transformers.BertModel.from_pretrained(folder, attn_implementation="eager"), ids, mask, types,
                       "last_hidden_state")
    ours = ours_hidden(graphdef, state, ids, mask, types)
    assert np.abs(ours - theirs).max() < 1e-4


@pytest.fixture(scope="module")
def random_hf_models(tmp_path_factory):
    """A randomly initialised HF BERT of another shape (2 layers, hidden 128, 4 heads, cased-size vocab)."""
    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(vocab_size=28996, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=512, max_position_embeddings=64, num_labels=5,
                                     layer_norm_eps=1e-7)
    folders = {}
    for task, cls in (("token", transformers.BertForTokenClassification),
                      ("sequence", transformers.BertForSequenceClassification)):
        model = cls(hf_cfg)
        folders[task] = tmp_path_factory.mktemp(task)
        model.save_pretrained(folders[task])
        if task == "token":
            # transformers 5 always writes safetensors; an older-style pytorch_model.bin folder by hand
            folders["token-bin"] = tmp_path_factory.mktemp("token-bin")
            torch.save(model.state_dict(), folders["token-bin"] / "pytorch_model.bin")
            (folders["token-bin"] / "config.json").write_text((folders[task] / "config.json").read_text())
    return folders


@pytest.mark.parametrize("task", ["token", "sequence", "token-bin"])
def test_random_bert_logits_match_pytorch(task, random_hf_models):
    folder = random_hf_models[task]
    task = task.split("-")[0]
    cfg, graphdef, state, report = load_ours(folder, task)
    assert report.new == [] and report.unexpected == []
    assert cfg.model.layer_norm_eps == 1e-7
    ids, mask, types = padded_batch(cfg.model.vocab_size, 1)
    cls = transformers.BertForTokenClassification if task == "token" else transformers.BertForSequenceClassification
    theirs = torch_run(cls.from_pretrained(folder, attn_implementation="eager"), ids, mask, types, "logits")
    assert np.abs(ours_logits(graphdef, state, ids, mask, types) - theirs).max() < 1e-4


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_training_gradients_equal_pytorch(task, random_hf_models):
    """A training step's loss and every parameter's gradient (steps.make_grad_fn, dropout off) equal torch
    autograd on HF's own loss for the same padded batch, mapped through the HF table."""
    from jaxbatch.models import bert

    cfg, graphdef, state, _ = load_ours(random_hf_models[task], task)
    ids, mask, types = padded_batch(cfg.model.vocab_size, 4)
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 5, ids.shape if task == "token" else ids.shape[:1])
    if task == "token":
        labels = np.where(mask == 1, labels, -100)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels.astype(np.int32)}
    cls = transformers.BertForTokenClassification if task == "token" else transformers.BertForSequenceClassification
    theirs = cls.from_pretrained(random_hf_models[task], attn_implementation="eager").eval()
    assert_gradients_equal_torch(bert.FAMILY, cfg.model, graphdef, state.params, batch, theirs, input_ids=ids,
                                 attention_mask=mask, token_type_ids=types)


@pytest.mark.parametrize("task", ["token"])  # the encoder's dropout; a sequence head adds nothing to it, 20 s eager
def test_attention_dropout_equals_pytorch_given_the_same_masks(task, tmp_path, monkeypatch):
    """model.attention_dropout drops attention probabilities where HF's eager attention does (after the
    softmax, the kept ones over 1 - rate, per head): with torch's dropout handed the masks jaxbatch drew, a
    training step's loss and every gradient equal transformers' in training mode; export writes the rate."""
    from jaxbatch.models import bert

    cls = transformers.BertForTokenClassification if task == "token" else transformers.BertForSequenceClassification
    torch.manual_seed(3)
    cls(transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64, num_labels=3, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.25)).save_pretrained(tmp_path / "in")
    cfg = config.build([f"model.pretrained={tmp_path / 'in'}", f"model.task={task}", "model.num_labels=3",
                        "model.hidden_dropout=0", "model.attention_dropout=0.25", "mesh.data=1"])
    run = run_lib.setup(run_lib.resolve(cfg), devices=jax.devices()[:1])
    ids, mask, types = padded_batch(99, 5)
    labels = np.random.default_rng(5).integers(0, 3, ids.shape if task == "token" else ids.shape[:1])
    labels = np.where(mask == 1, labels, -100) if task == "token" else labels
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels.astype(np.int32)}
    drawn, pending = replay_dropout_masks(monkeypatch)
    theirs = cls.from_pretrained(tmp_path / "in", attn_implementation="eager").train()
    with jax.disable_jit():  # our masks are drawn eagerly, so they can be handed to torch
        assert_gradients_equal_torch(bert.FAMILY, run.spec.model, run.graphdef, run.state.params, batch, theirs,
                                     rng=jax.random.key(0), input_ids=ids, attention_mask=mask, token_type_ids=types)
    assert [m.shape for m in drawn] == [(4, 4, 12, 12)] * 2 and pending == []  # one per layer, all used
    assert 0.6 < np.mean(drawn) < 0.9  # a quarter dropped
    out = hf.export(run.state.params, run.spec.model, tmp_path / "out", label_names=["a", "b", "c"])
    assert cls.from_pretrained(out).config.attention_probs_dropout_prob == 0.25


@pytest.mark.parametrize("task", ["token", "sequence"])
def test_export_loads_in_pytorch_and_round_trips_bit_identically(task, tmp_path):
    folder = hf.resolve("minilm-l6")
    cfg, graphdef, state, _ = load_ours(folder, task, num_labels=3)
    out = hf.export(state.params, cfg.model, tmp_path / "export", label_names=["a", "b", "c"])
    cls = transformers.BertForTokenClassification if task == "token" else transformers.BertForSequenceClassification
    model = cls.from_pretrained(out, attn_implementation="eager")
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    ids, mask, types = padded_batch(cfg.model.vocab_size, 2)
    theirs = torch_run(model, ids, mask, types, "logits")
    assert np.abs(ours_logits(graphdef, state, ids, mask, types) - theirs).max() < 1e-4
    _, _, again, report = load_ours(out, task, num_labels=3)
    assert report.new == [] and report.unexpected == []
    a, b = params_numpy(state), params_numpy(again)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _right_padded_logits(cls, folder, pad_id: int, seq_len: int, seed: int):
    """(the rng, then) a right-padded batch of 8 rows of 1 to seq_len tokens, the transformers model of `folder`
    and its logits for them (an answer-span head's start and end logits stacked last, as ours)."""
    rng = np.random.default_rng(seed)
    ids, mask = rng.integers(5, 99, (8, seq_len)), np.ones((8, seq_len), np.int64)
    for row, length in enumerate([seq_len, 7, 3, 12, 1, seq_len, 9, 2]):
        ids[row, length:], mask[row, length:] = pad_id, 0
    theirs = cls.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = theirs(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    expected = out.logits if hasattr(out, "logits") else torch.stack([out.start_logits, out.end_logits], -1)
    return rng, ids, mask, theirs, expected.numpy()


ENCODERS = {  # family -> (transformers config class, its class prefix, config.json overrides)
    "roberta": ("RobertaConfig", "Roberta", dict(max_position_embeddings=20, type_vocab_size=1, pad_token_id=1)),
    "distilbert": ("DistilBertConfig", "DistilBert", dict(max_position_embeddings=18, dim=32, n_layers=2, n_heads=4,
                                                          hidden_dim=64)),
    "electra": ("ElectraConfig", "Electra", dict(max_position_embeddings=18, embedding_size=16)),
    "albert": ("AlbertConfig", "Albert", dict(max_position_embeddings=18, embedding_size=16)),  # one layer, used twice
}


@pytest.mark.parametrize("family", sorted(ENCODERS))
@pytest.mark.parametrize("task", ["token", "sequence"])
def test_other_encoder_families_equal_pytorch_and_export_back(family, task, tmp_path):
    """RoBERTa, DistilBERT, ELECTRA and ALBERT checkpoints (random, small; ELECTRA's and ALBERT's embeddings
    narrower than the hidden size, ALBERT's one layer shared by both): logits on a right-padded batch and every
    training gradient equal transformers', and the exported folder loads in transformers with identical
    logits."""
    from jaxbatch import models

    config_cls, prefix, shape = ENCODERS[family]
    cls = getattr(transformers, f"{prefix}For{'Token' if task == 'token' else 'Sequence'}Classification")
    torch.manual_seed(0)
    sizes = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    cls(getattr(transformers, config_cls)(**sizes, **shape, num_labels=3)).save_pretrained(tmp_path / "in")
    run = run_lib.setup(run_lib.resolve(config.build([
        f"model.pretrained={tmp_path / 'in'}", "train.batch_size=8", "data.seq_len=18", "mesh.data=2", "mesh.model=2",
        "mesh.fsdp=2"])))
    assert (run.spec.model.family, run.spec.model.task, run.spec.model.hidden_size) == (family, task, 32)
    assert run.load_report.new == [] and run.load_report.unexpected == []
    rng, ids, mask, theirs, expected = _right_padded_logits(cls, tmp_path / "in", shape.get("pad_token_id", 0), 18, 1)
    model = nnx.merge(run.graphdef, run.state.params)
    ours = np.asarray(jax.jit(lambda i, m: model(i, m))(ids, mask))
    real = mask == 1 if task == "token" else slice(None)  # RoBERTa gives padding the padding row's position
    assert np.abs(ours[real] - expected[real]).max() < 1e-5

    labels = rng.integers(0, 3, ids.shape if task == "token" else ids.shape[:1])
    labels = np.where(mask == 1, labels, -100) if task == "token" else labels
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
             "labels": labels.astype(np.int32)}
    assert_gradients_equal_torch(models.family(run.spec.model), run.spec.model, run.graphdef, run.state.params,
                                 batch, theirs, input_ids=ids, attention_mask=mask)

    out = hf.export(run.state.params, run.spec.model, tmp_path / "out", label_names=["a", "b", "c"])
    assert json.loads((out / "config.json").read_text())["architectures"] == [cls.__name__]
    with torch.no_grad():
        exported = cls.from_pretrained(out, attn_implementation="eager")
        again = exported(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_array_equal(again.numpy(), expected)


MASKED_LM = {"bert": ("BertConfig", "Bert", dict(max_position_embeddings=18)), **ENCODERS}


@pytest.mark.parametrize("family", sorted(MASKED_LM))
def test_answer_span_heads_equal_pytorch_and_export_back(family, tmp_path):
    """Each encoder family's *ForQuestionAnswering (random, small) is read as the qa task: start and end logits
    at the real tokens of a right-padded batch equal transformers', and the loss and every gradient on windows
    without padding (where HF's softmax, which also spans padding, is ours); the export reloads bit-identically."""
    from jaxbatch import models

    config_cls, prefix, shape = MASKED_LM[family]
    cls = getattr(transformers, f"{prefix}ForQuestionAnswering")
    torch.manual_seed(0)
    sizes = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    cls(getattr(transformers, config_cls)(**sizes, **shape)).save_pretrained(tmp_path / "in")
    run = run_lib.setup(run_lib.resolve(config.build([
        f"model.pretrained={tmp_path / 'in'}", "train.batch_size=8", "data.seq_len=18", "mesh.data=2", "mesh.model=2",
        "mesh.fsdp=2"])))
    assert (run.spec.model.family, run.spec.model.task, run.spec.model.num_labels) == (family, "qa", 2)
    assert run.load_report.new == [] and run.load_report.unexpected == []
    rng, ids, mask, theirs, expected = _right_padded_logits(cls, tmp_path / "in", shape.get("pad_token_id", 0), 18, 1)
    model = nnx.merge(run.graphdef, run.state.params)
    ours = np.asarray(jax.jit(lambda i, m: model(i, m))(ids, mask))
    assert ours.shape == expected.shape and np.abs(ours[mask == 1] - expected[mask == 1]).max() < 1e-5

    full = rng.integers(5, 99, (8, 18))
    labels = rng.integers(0, 18, (8, 2)).astype(np.int32)
    batch = {"input_ids": full, "attention_mask": np.ones_like(full), "token_type_ids": np.zeros_like(full),
             "labels": labels}
    assert_gradients_equal_torch(models.family(run.spec.model), run.spec.model, run.graphdef, run.state.params,
                                 batch, theirs, input_ids=full, attention_mask=np.ones_like(full))

    out_dir = hf.export(run.state.params, run.spec.model, tmp_path / "out")
    assert json.loads((out_dir / "config.json").read_text())["architectures"] == [cls.__name__]
    with torch.no_grad():
        again = cls.from_pretrained(out_dir, attn_implementation="eager").eval()(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    np.testing.assert_array_equal(torch.stack([again.start_logits, again.end_logits], -1).numpy(), expected)


@pytest.mark.parametrize("family", sorted(MASKED_LM))
def test_masked_lm_heads_equal_pytorch_and_export_back(family, tmp_path):
    """Each encoder family's *ForMaskedLM (random, small, a ReLU MLP where the family reads one, the vocabulary
    bias random): the folder is read as the lm task, its logits on a right-padded batch and every training
    gradient of the loss on masked positions equal transformers', and the export loads back as that class with
    identical logits. The head's activation is the family's (RoBERTa's and ELECTRA's are GELU whatever the MLP's)."""
    from jaxbatch import models

    config_cls, prefix, shape = MASKED_LM[family]
    cls = getattr(transformers, f"{prefix}ForMaskedLM")
    torch.manual_seed(0)
    sizes = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    act = {"activation": "relu"} if family == "distilbert" else {"hidden_act": "relu"}
    theirs = cls(getattr(transformers, config_cls)(**sizes, **shape, **act))
    with torch.no_grad():
        next(p for n, p in theirs.named_parameters() if n.endswith(("predictions.bias", "lm_head.bias",
                                                                     "vocab_projector.bias"))).normal_()
    theirs.save_pretrained(tmp_path / "in")
    run = run_lib.setup(run_lib.resolve(config.build([
        f"model.pretrained={tmp_path / 'in'}", "train.batch_size=8", "data.seq_len=18", "mesh.data=2", "mesh.model=2",
        "mesh.fsdp=2"])))
    assert (run.spec.model.family, run.spec.model.task) == (family, "lm")
    assert run.load_report.new == [] and run.load_report.unexpected == []
    rng, ids, mask, theirs, expected = _right_padded_logits(cls, tmp_path / "in", shape.get("pad_token_id", 0), 18, 1)
    model = nnx.merge(run.graphdef, run.state.params)
    ours = np.asarray(jax.jit(lambda i, m: model(i, m))(ids, mask))
    real = mask == 1  # RoBERTa gives padding the padding row's position
    assert np.abs(ours[real] - expected[real]).max() < 1e-5

    labels = np.where((mask == 1) & (rng.random(ids.shape) < 0.3), ids, -100).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids), "labels": labels}
    assert_gradients_equal_torch(models.family(run.spec.model), run.spec.model, run.graphdef, run.state.params,
                                 batch, theirs, input_ids=ids, attention_mask=mask)

    out = hf.export(run.state.params, run.spec.model, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["architectures"] == [cls.__name__]
    exported, info = cls.from_pretrained(out, attn_implementation="eager", output_loading_info=True)
    assert not any(info.values())
    with torch.no_grad():
        again = exported(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_array_equal(again.numpy(), expected)


def test_a_pretraining_checkpoint_trains_its_masked_lm_head(tmp_path):
    """A BertForPreTraining folder (bert-base-uncased's kind) under the lm task: its masked-LM head is loaded
    (logits equal its prediction_logits) and its next-sentence head is ignored as expected."""
    torch.manual_seed(2)
    hf_cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    theirs = transformers.BertForPreTraining(hf_cfg)
    with torch.no_grad():
        theirs.cls.predictions.bias.normal_()
    theirs.save_pretrained(tmp_path / "in")
    cfg, graphdef, state, report = load_ours(tmp_path / "in", task="lm", mesh_overrides=())
    assert report.new == [] and report.unexpected == []
    assert any(n.startswith("cls.seq_relationship") for n in report.expected_unused)
    ids, mask, types = padded_batch(99, 4)
    expected = torch_run(theirs, ids, mask, types, "prediction_logits")
    assert np.abs(ours_logits(graphdef, state, ids, mask, types) - expected)[mask == 1].max() < 1e-5


@pytest.mark.parametrize("activation", ["gelu_new", "relu"])
def test_an_encoder_with_another_activation_equals_pytorch_and_exports_it(activation, tmp_path):
    """hidden_act is read, run and written back (not only exact gelu); the same weights under gelu differ."""
    torch.manual_seed(1)
    hf_cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64, num_labels=3,
                                     hidden_act=activation)
    model = transformers.BertForTokenClassification(hf_cfg)
    with torch.no_grad():  # pre-activations of a few units (not 0.1), where the GELU variants part
        for name, p in model.named_parameters():
            p.mul_(20.0 if "intermediate.dense.weight" in name or "classifier" in name else 1.0)
    model.save_pretrained(tmp_path / "in")
    cfg, graphdef, state, _ = load_ours(tmp_path / "in", num_labels=3)
    assert cfg.model.activation == activation
    ids, mask, types = padded_batch(99, 3)
    theirs = torch_run(transformers.BertForTokenClassification.from_pretrained(tmp_path / "in"), ids, mask, types,
                       "logits")
    ours = ours_logits(graphdef, state, ids, mask, types)
    assert np.abs(ours - theirs).max() < 1e-5
    gelu = ours_logits(run_lib.setup(config.replace(cfg, model__activation="gelu"), training=False).graphdef, state,
                       ids, mask, types)
    assert np.abs(gelu - theirs).max() > 1e-4  # 10x the tolerance: the activation is what matched
    out = hf.export(state.params, cfg.model, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["hidden_act"] == activation
    reloaded = transformers.BertForTokenClassification.from_pretrained(out)
    assert np.abs(torch_run(reloaded, ids, mask, types, "logits") - theirs).max() < 1e-5


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_a_regression_head_equals_pytorch_and_exports_back(family, tmp_path):
    """HF reads a one-output sequence head as a regression (STS-B): its score, its mean squared error loss and
    every gradient equal transformers' (unlabelled rows, NaN, count nowhere), and the export is one again."""
    from jaxbatch import models

    config_cls, prefix = {"bert": ("BertConfig", "Bert"), "roberta": ("RobertaConfig", "Roberta")}[family]
    cls = getattr(transformers, f"{prefix}ForSequenceClassification")
    torch.manual_seed(2)
    shape = dict(pad_token_id=1, type_vocab_size=1) if family == "roberta" else {}
    cls(getattr(transformers, config_cls)(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=64, max_position_embeddings=20, num_labels=1,
                                          **shape)).save_pretrained(tmp_path / "in")
    run = run_lib.setup(run_lib.resolve(config.build([f"model.pretrained={tmp_path / 'in'}", "train.batch_size=8",
                                                      "data.seq_len=16", "mesh.data=4", "mesh.model=2"])))
    assert (run.spec.model.problem_type, run.spec.model.num_labels) == ("regression", 1)
    assert run_lib.label_names(run.spec) == ["LABEL_0"]
    rng, ids, mask, theirs, expected = _right_padded_logits(cls, tmp_path / "in", shape.get("pad_token_id", 0), 16, 3)
    scores = rng.uniform(0, 5, 8).astype(np.float32)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids), "labels": scores}
    family_ = models.family(run.spec.model)
    sums, out = jax.jit(lambda p, b: steps.eval_step(p, b, family=family_, model_cfg=run.spec.model,
                                                     graphdef=run.graphdef, mesh=run.mesh, rules=run.spec.mesh.rules))(
        run.state.params, batch)
    assert np.abs(np.asarray(out["preds"]) - expected[:, 0]).max() < 1e-5
    unlabelled = dict(batch, labels=np.where(np.arange(8) < 6, scores, np.nan).astype(np.float32))
    sums6, _ = steps.eval_step(run.state.params, unlabelled, family=family_, model_cfg=run.spec.model,
                               graphdef=run.graphdef, mesh=run.mesh, rules=run.spec.mesh.rules)
    assert float(sums6["weight"]) == 6
    assert float(sums6["loss_sum"]) == pytest.approx(float(((expected[:6, 0] - scores[:6]) ** 2).sum()), rel=1e-5)
    assert_gradients_equal_torch(family_, run.spec.model, run.graphdef, run.state.params, batch, theirs,
                                 input_ids=ids, attention_mask=mask)
    out_dir = hf.export(run.state.params, run.spec.model, tmp_path / "out", label_names=run_lib.label_names(run.spec))
    written = json.loads((out_dir / "config.json").read_text())
    assert (written["problem_type"], written["num_labels"], written["id2label"]) == ("regression", 1, {"0": "LABEL_0"})
    with torch.no_grad():
        again = cls.from_pretrained(out_dir, attn_implementation="eager")(input_ids=torch.tensor(ids),
                                                                         attention_mask=torch.tensor(mask)).logits
    np.testing.assert_array_equal(again.numpy(), expected)


FLOAT_HEADS = {  # problem_type -> (class names, targets from an rng, the eval output HF's logits map to, torch loss)
    "multi_label_classification": (["anger", "fear", "joy", "love"], lambda rng: (rng.random((8, 4)) < 0.4),
                                   ("probs", lambda logits: 1 / (1 + np.exp(-logits))), "BCEWithLogitsLoss"),
    "regression": (["valence", "arousal", "dominance"], lambda rng: rng.uniform(-2, 2, (8, 3)),
                   ("preds", lambda logits: logits), "MSELoss"),
}


@pytest.mark.parametrize("family, problem", [("bert", "multi_label_classification"),
                                             ("distilbert", "multi_label_classification"), ("bert", "regression")])
def test_a_head_of_float_targets_equals_pytorch_and_exports_back(family, problem, tmp_path):
    """HF's multi_label_classification head (a sigmoid per class, BCEWithLogitsLoss on float 0/1 targets) and
    its regression of several outputs (num_labels=3, MSELoss over every (example, output)): the probabilities
    or scores, the loss and every gradient equal transformers' on a sharded mesh, an unlabelled example (a
    NaN row) counts nowhere, and the export is the same head again with its class or output names."""
    from jaxbatch import models

    names, make_targets, (output, from_logits), loss_name = FLOAT_HEADS[problem]
    config_cls, prefix = {"bert": ("BertConfig", "Bert"), "distilbert": ("DistilBertConfig", "DistilBert")}[family]
    cls = getattr(transformers, f"{prefix}ForSequenceClassification")
    torch.manual_seed(3)
    shape = (dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64) if family == "distilbert" else
             dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
    k = len(names)
    cls(getattr(transformers, config_cls)(vocab_size=99, max_position_embeddings=20, num_labels=k, problem_type=problem,
                                          id2label=dict(enumerate(names)), **shape)).save_pretrained(tmp_path / "in")
    run = run_lib.setup(run_lib.resolve(config.build([f"model.pretrained={tmp_path / 'in'}", "train.batch_size=8",
                                                      "data.seq_len=16", "mesh.data=4", "mesh.model=2"])))
    assert (run.spec.model.problem_type, run.spec.model.num_labels) == (problem, k)
    rng, ids, mask, theirs, expected = _right_padded_logits(cls, tmp_path / "in", 0, 16, 4)
    targets = make_targets(rng).astype(np.float32)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids), "labels": targets}
    family_ = models.family(run.spec.model)
    eval_step = jax.jit(lambda p, b: steps.eval_step(p, b, family=family_, model_cfg=run.spec.model,
                                                     graphdef=run.graphdef, mesh=run.mesh, rules=run.spec.mesh.rules))
    _, out = eval_step(run.state.params, batch)
    assert np.abs(np.asarray(out[output]) - from_logits(expected)).max() < 1e-5
    unlabelled = dict(batch, labels=np.where(np.arange(8)[:, None] < 6, targets, np.nan).astype(np.float32))
    sums6, _ = eval_step(run.state.params, unlabelled)
    loss = getattr(torch.nn, loss_name)(reduction="sum")(torch.tensor(expected[:6]), torch.tensor(targets[:6])).item()
    assert float(sums6["weight"]) == 6 * k and float(sums6["loss_sum"]) == pytest.approx(loss, rel=1e-5)
    assert_gradients_equal_torch(family_, run.spec.model, run.graphdef, run.state.params, batch, theirs,
                                 input_ids=ids, attention_mask=mask)
    out_dir = hf.export(run.state.params, run.spec.model, tmp_path / "out", label_names=names)
    written = json.loads((out_dir / "config.json").read_text())
    assert (written["problem_type"], written["num_labels"], written["id2label"]) == (
        problem, k, {str(i): n for i, n in enumerate(names)})
    with torch.no_grad():
        again = cls.from_pretrained(out_dir, attn_implementation="eager")(input_ids=torch.tensor(ids),
                                                                         attention_mask=torch.tensor(mask)).logits
    np.testing.assert_array_equal(again.numpy(), expected)


def test_a_one_logit_binary_head_is_not_exported_as_a_regression(tmp_path):
    cfg = config.build(["model.preset=tiny", "model.num_labels=1", "model.task=sequence"]).model
    with pytest.raises(config.ConfigError, match="one-logit binary head has no Hugging Face class"):
        hf.export({}, cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_checkpoints_name_the_problem(tmp_path):
    with pytest.raises(hf.CheckpointError, match="no such folder"):
        hf.resolve(str(tmp_path / "missing"))
    with pytest.raises(hf.CheckpointError, match="no config.json"):
        hf.read_config(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_act": "mish"}')
    with pytest.raises(hf.CheckpointError, match="config.json: hidden_act 'mish' is not supported .only gelu,"):
        hf.configure(config.Config().model, tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    with pytest.raises(hf.CheckpointError, match="model_type 't5' is not supported"):
        hf.family_for(tmp_path)
    (tmp_path / "config.json").write_text('[1, 2]')
    with pytest.raises(hf.CheckpointError, match="expected a JSON object, got list"):
        hf.read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(hf.CheckpointError, match="config.json: not valid JSON"):
        hf.read_config(tmp_path)
    with pytest.raises(hf.CheckpointError, match="neither model.safetensors"):
        hf.read_tensors(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(hf.CheckpointError, match="model.safetensors: cannot read"):
        hf.read_tensors(tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"num_attention_heads": None}, "no 'num_attention_heads', which a bert config needs"),  # never a default
    ({"hidden_size": "384"}, "model.hidden_size must be an integer, got '384'"),
    ({"num_hidden_layers": 0}, "model.num_layers must be > 0, got 0"),
    ({"num_hidden_layers": 6.5}, "model.num_layers must be an integer, got 6.5"),
    ({"layer_norm_eps": None}, "cannot read the model's shape from layer_norm_eps=None"),
    ({"is_decoder": True}, "is_decoder / add_cross_attention .* is not supported"),  # causal: other logits
    ({"num_attention_heads": 5}, "model.hidden_size=384 is not divisible by model.num_heads=5"),  # the file's
])
def test_a_bad_config_json_value_is_one_error_naming_it(tmp_path, change, message):
    """A hand-edited or truncated config.json: a missing shape key used to take our default (a model with
    the wrong number of heads loads the same weights, silently); a bad value used to be a traceback."""
    tree = hf.read_config(hf.resolve("minilm-l6"))
    tree.update(change)
    tree = {k: v for k, v in tree.items() if v is not None or k == "layer_norm_eps"}
    (tmp_path / "config.json").write_text(json.dumps(tree))
    with pytest.raises(hf.CheckpointError, match=f"^{tmp_path}/config.json: {message}"):
        run_lib.hf_spec(tmp_path)


@pytest.mark.parametrize("family, positions", [("Bert", 18), ("Roberta", 20)])
def test_a_folder_with_a_short_position_table_is_read_at_the_length_it_holds(family, positions, tmp_path):
    """Inference on a folder with fewer positions than data.seq_len's default caps its rows at what its table
    holds (18 both: RoBERTa's positions start past its padding row), as transformers' tokenizers cap at
    model_max_length; full-length rows' logits equal transformers'."""
    torch.manual_seed(0)
    shape = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                 max_position_embeddings=positions, num_labels=3, pad_token_id=1)
    getattr(transformers, f"{family}ForSequenceClassification")(
        getattr(transformers, f"{family}Config")(**shape)).save_pretrained(tmp_path)
    restored = run_lib.restore(tmp_path)
    assert restored.run.spec.data.seq_len == 18
    _, ids, mask, _, expected = _right_padded_logits(
        getattr(transformers, f"{family}ForSequenceClassification"), tmp_path, 1, 18, seed=0)
    model = nnx.merge(restored.run.graphdef, restored.params)
    np.testing.assert_allclose(model(ids, mask, np.zeros_like(ids)), expected, atol=1e-5)


@pytest.mark.parametrize("family", ["Bert", "XLMRoberta"])
@pytest.mark.parametrize("head", ["Sequence", "Token"])
def test_a_head_of_transformers_default_two_labels_is_read_as_two(family, head, tmp_path):
    """transformers leaves id2label and num_labels out of config.json at its default of two labels."""
    torch.manual_seed(0)
    cls = getattr(transformers, f"{family}For{head}Classification")
    cls(getattr(transformers, f"{family}Config")(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=48,
                                                 max_position_embeddings=40, pad_token_id=1)).save_pretrained(tmp_path)
    assert not {"id2label", "num_labels"} & set(json.loads((tmp_path / "config.json").read_text()))
    restored = run_lib.restore(tmp_path)
    assert restored.run.spec.model.num_labels == 2 and run_lib.label_names(restored.run.spec) == ["LABEL_0", "LABEL_1"]
    _, ids, mask, _, expected = _right_padded_logits(cls, tmp_path, 1, 16, seed=0)
    got = np.asarray(nnx.merge(restored.run.graphdef, restored.params)(ids, mask, np.zeros_like(ids)))
    real = mask.astype(bool) if head == "Token" else slice(None)  # a padding token's logits are anyone's
    np.testing.assert_allclose(got[real], expected[real], atol=1e-5)


def test_pretrained_alone_takes_the_folders_shape_and_a_wrong_family_preset_says_so(tmp_path):
    spec = run_lib.resolve(config.build(["model.pretrained=minilm-l6"]))
    assert (spec.model.family, spec.model.hidden_size, spec.model.num_layers) == ("bert", 384, 6)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(hf.CheckpointError, match="is not a bert model \\(model.preset=tiny is one; leave it out"):
        run_lib.resolve(config.build([f"model.pretrained={tmp_path}", "model.preset=tiny"]))


def test_preset_mismatch_is_a_config_error():
    cfg = config.build(["model.preset=bert-base"])
    with pytest.raises(config.ConfigError, match="hidden_size: preset 768 vs checkpoint 384"):
        hf.configure(cfg.model, hf.resolve("minilm-l6"))
