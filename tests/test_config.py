import pytest

from jaxbatch import config


def test_overrides_are_typed():
    cfg = config.build(["mesh.model=2", "train.batch_size=64", "optim.learning_rate=3e-4", "train.progress=false"])
    assert cfg.mesh.model == 2 and cfg.train.batch_size == 64
    assert cfg.optim.learning_rate == pytest.approx(3e-4) and cfg.train.progress is False
    saved = config.to_dict(cfg)  # a run saved when distributed.cpu_one_arena was a switch reads as its word
    saved["distributed"]["cpu_one_arena"] = True
    assert config.from_dict(saved).distributed.cpu_one_arena == "true"


def test_preset_fills_shape_and_explicit_keys_win():
    cfg = config.build(["model.num_layers=3", "model.preset=bert-base"])
    assert (cfg.model.hidden_size, cfg.model.num_heads, cfg.model.num_layers) == (768, 12, 3)
    minilm = config.build(["model.preset=minilm-l6"]).model
    assert (minilm.hidden_size, minilm.num_layers, minilm.num_heads, minilm.vocab_size) == (384, 6, 12, 30522)


def test_a_pretrained_folder_without_a_preset_gives_the_shape(tmp_path):
    """As from_pretrained: `model.pretrained=FOLDER` alone takes family and shape from its config.json (the
    default preset is a tiny BERT, which a decoder checkpoint would contradict); a named preset must agree."""
    alone = config.build([f"model.pretrained={tmp_path}", "model.num_layers=3"]).model
    assert (alone.preset, alone.family, alone.num_layers) == ("custom", "", 3)
    named = config.build([f"model.pretrained={tmp_path}", "model.preset=bert-base"]).model
    assert (named.preset, named.family, named.hidden_size) == ("bert-base", "bert", 768)
    (tmp_path / "run.toml").write_text(f'[model]\npretrained = "{tmp_path}"\n')
    assert config.build(config_file=str(tmp_path / "run.toml")).model.preset == "custom"


def test_unknown_key_names_nearest():
    with pytest.raises(config.ConfigError, match=r"unknown config key 'train.batchsize'.*train.batch_size"):
        config.build(["train.batchsize=3"])


def test_bad_values_name_the_key():
    with pytest.raises(config.ConfigError, match="train.steps"):
        config.build(["train.steps=ten"])
    with pytest.raises(config.ConfigError, match="not of the form"):
        config.build(["train.steps"])
    with pytest.raises(config.ConfigError, match="model.preset='huge'"):
        config.build(["model.preset=huge"])


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_a_number_must_be_finite(value, tmp_path):
    """NaN passes every `> 0` check (a NaN learning rate trained until the divergence guard stopped it)."""
    with pytest.raises(config.ConfigError, match=f"optim.learning_rate must be a finite number, got '{value}'"):
        config.build([f"optim.learning_rate={value}"])
    (tmp_path / "c.toml").write_text("[model]\nhidden_dropout = nan\n")
    with pytest.raises(config.ConfigError, match="c.toml: model.hidden_dropout must be a finite number"):
        config.build(config_file=str(tmp_path / "c.toml"))


def test_file_then_overrides(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('[train]\nbatch_size = 128\nsteps = 7\n[mesh]\nfsdp = 2\n[mesh.rules]\nbatch = ["data", "fsdp"]\n'
                 'embed = ["fsdp"]\nmlp = ["model"]\nheads = ["model"]\nkv = []\nvocab = []\nlength = []\n')
    cfg = config.build(["train.steps=9"], str(f))
    assert cfg.train.batch_size == 128 and cfg.train.steps == 9 and cfg.mesh.fsdp == 2
    assert dict(cfg.mesh.rules)["vocab"] == () and dict(cfg.mesh.rules)["mlp"] == ("model",)
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())  # saved by a Windows editor
    assert config.build([], str(f)).train.steps == 7
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nbatch_sise = 1\n")
    with pytest.raises(config.ConfigError, match=r"bad.toml: unknown config key 'train.batch_sise'"):
        config.build([], str(bad))


def test_rules_override_from_command_line():
    cfg = config.build(['mesh.rules=[["batch", ["data"]], ["embed", []], ["mlp", "model"], ["heads", "model"], '
                        '["kv", []], ["vocab", []], ["length", []]]'])
    assert dict(cfg.mesh.rules) == {"batch": ("data",), "embed": (), "mlp": ("model",), "heads": ("model",),
                                    "kv": (), "vocab": (), "length": ()}


@pytest.mark.parametrize("overrides,message", [
    (["train.batch_size=12", "mesh.data=8"], r"batch_size=12 .* mesh.data x mesh.fsdp = 8 x 1"),
    (["train.batch_size=32", "train.accum_steps=3"], "not divisible by train.accum_steps=3"),
    (["train.batch_size=32", "train.accum_steps=8", "mesh.data=8"], r"micro-batch 4"),
    (["mesh.data=1", "mesh.model=8", "model.num_heads=4"], r"model.num_heads=4 is not divisible by mesh.model=8"),
    (["mesh.data=3"], "uses 3 devices, but 8 are available"),
    (["mesh.data=-1", "mesh.fsdp=-1"], "at most one"),
    (["model.hidden_size=66"], "hidden_size=66 is not divisible by model.num_heads=4"),
    (["model.hidden_dropout=1.0"], r"model.hidden_dropout must be in \[0, 1\), got 1.0"),
    (["model.attention_dropout=1.5"], r"model.attention_dropout must be in \[0, 1\), got 1.5"),
    (["model.label_smoothing=-0.1"], r"model.label_smoothing must be in \[0, 1\), got -0.1"),
    (["model.task=qa", "model.num_labels=2", "model.z_loss=1e-4"], "not applied to an answer-span head"),
    (["model.task=qa", "model.num_labels=5"], "model.num_labels=5: an answer-span head has two outputs"),
    (["model.num_heads=0"], "model.num_heads must be > 0, got 0"),  # not a ZeroDivisionError
    (["model.hidden_size=-4"], "model.hidden_size must be > 0, got -4"),
    (["model.num_layers=0"], "model.num_layers must be > 0, got 0"),
    (["model.intermediate_size=0"], "model.intermediate_size must be > 0, got 0"),  # not a failed save
    (["model.num_kv_heads=-1"], "model.num_kv_heads must be >= 0"),
    (["model.preset=gpt-tiny", "model.task=lm", "model.rope_type=linear"], "gpt2 learns its positions"),
    (["model.preset=gpt-tiny", "model.task=lm", "model.attention_bias=qkv"], "attention_bias and model.mlp_bias are"),
    (["model.preset=gpt-tiny", "model.task=lm", "model.mlp_bias=true"], "are for arch=llama"),
    (["model.preset=gpt-tiny", "model.task=lm", "model.qk_norm=true"], "gpt2 has no such norm"),
    (["model.preset=llama-tiny", "model.task=lm", "model.attention_bias=out"], "must be none, qkv or all"),
    (["model.sliding_window=-1"], "model.sliding_window must be >= 0"),
    (["model.activation=gelu_tanh"], "model.activation must be one of gelu, .*, got 'gelu_tanh'"),
    (["model.preset=llama-tiny", "model.task=lm", "model.rope_type=yarn", "model.rope_beta_fast=1"], "below model.rope_beta_fast"),
    (["model.preset=llama-tiny", "model.task=lm", "model.rope_type=ntk"], "model.rope_type must be one of default, linear, llama3, yarn"),
    (["model.preset=llama-tiny", "model.task=lm", "model.rope_type=llama3", "model.rope_low_freq_factor=4"], "below model.rope_high"),
    (["data.seq_len=4096"], "max_position_embeddings"),
    (['mesh.rules=[["batch", ["dp"]]]'], "no rule for logical axis 'embed'"),
    (["train.loss_norm=tokens"], "train.loss_norm must be auto, batch or dataset, got 'tokens'"),
    (["optim.b2=1.0"], r"optim.b2 must be in \[0, 1\), got 1.0"),
    (["optim.eps=0"], "optim.eps must be > 0"),
    (["optim.clip_norm=-1"], "optim.clip_norm must be >= 0"),
    (["optim.warmup_fraction=1.5"], r"optim.warmup_fraction must be in \[0, 1\), got 1.5"),
    (["checkpoint.best_mode=highest"], "checkpoint.best_mode must be auto, max or min, got 'highest'"),
    (["train.patience=3"], r"train.patience counts evaluations without a better checkpoint.best_metric"),
    (["train.patience=-1", "checkpoint.best_metric=loss"], "train.patience must be >= 0"),
])
def test_validation(overrides, message):
    cfg = config.build(["model.preset=tiny", *overrides])
    with pytest.raises(config.ConfigError, match=message):
        config.validate(cfg, 8)


def test_mlm_probability_is_a_share_and_only_a_masked_lm_takes_it():
    masked = ["model.task=lm", "data.name=text", "data.data_dir=x"]
    config.validate(config.build([*masked, "model.mlm_probability=0.3"]), 1)
    for bad in ("0", "1", "-0.1"):
        with pytest.raises(config.ConfigError, match=r"model.mlm_probability must be in \(0, 1\)"):
            config.validate(config.build([*masked, f"model.mlm_probability={bad}"]), 1)
    with pytest.raises(config.ConfigError, match="trains no masked LM"):  # a token classifier; a decoder's LM is causal
        config.validate(config.build(["model.mlm_probability=0.3"]), 1)
    with pytest.raises(config.ConfigError, match="trains no masked LM"):
        config.validate(config.build(["model.preset=gpt-tiny", "model.vocab_size=64", "model.mlm_probability=0.3"]),
                        1)
    with pytest.raises(config.ConfigError, match="PEFT has no task type"):
        config.validate(config.build([*masked, "model.lora_rank=4"]), 1)
    config.validate(config.build([*masked, "model.mlm_mask_replace_prob=1", "model.mlm_random_replace_prob=0"]), 1)
    for shares in (("0.9", "0.2"), ("-0.1", "0.1"), ("0.5", "1.5")):
        with pytest.raises(config.ConfigError, match="adding up to at most 1"):
            config.validate(config.build([*masked, f"model.mlm_mask_replace_prob={shares[0]}",
                                          f"model.mlm_random_replace_prob={shares[1]}"]), 1)
    with pytest.raises(config.ConfigError, match="model.mlm_whole_word_mask masks"):
        config.validate(config.build(["model.mlm_whole_word_mask=true"]), 1)
