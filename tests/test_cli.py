"""The `jaxbatch` command: train, plan and advise-batch end to end on the tiny model."""

import json

from jaxbatch import cli

TINY = ["model.preset=tiny", "data.seq_len=16", "train.progress=false", "mesh.data=8"]


def test_train_with_accumulation_then_advise(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "train.batch_size=32", "train.accum_steps=2", "train.steps=12",
                     "train.log_every=2", "train.eval_every=12", f"train.run_dir={run}"]) == 0
    estimates = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert sum(r["kind"] == "noise_scale" for r in estimates) >= 3
    summary = json.load(open(run / "summary.json"))
    assert summary["noise_scale"] is not None and summary["steps"] == 12
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done: ")]
    assert len(done) == 1 and f"entity F1 {summary['final_eval']['entity_f1']:.4f};" in done[0], done  # the headline
    assert cli.main(["advise-batch", str(run)]) == 0
    assert "gradient noise scale" in capsys.readouterr().out
    assert cli.main(["advise-batch", str(tmp_path / "none")]) == 2
    (run / "summary.json").write_text("{")  # damaged: one line naming the file, exit 2
    capsys.readouterr()
    assert cli.main(["advise-batch", str(run)]) == 2
    err = capsys.readouterr().err
    assert "summary.json: not a jaxbatch run summary" in err and err.count("\n") == 1, err


def test_plan_prints_the_chosen_accumulation(capsys):
    # 0.0034 GiB: the whole micro-batch of 64 needs 3.9 MiB a device, 8 x 8 accumulation 3.2 MiB
    assert cli.main(["plan", *TINY, "train.batch_size=64", "train.memory_budget_gb=0.0034"]) == 0
    out = capsys.readouterr().out
    assert "plan: train.accum_steps=" in out and "too big" in out
    assert cli.main(["plan", *TINY, "train.batch_size=16", "train.memory_budget_gb=0.00001"]) == 1
    assert "does not fit: parameters and optimizer state alone" in capsys.readouterr().out


def test_plan_starts_this_machines_devices_as_training_does(capsys):
    """plan goes through the start-up path: distributed.cpu_devices gives its CPU the devices training would
    have (it was ignored: the plan saw JAX's one device); with --target it is refused, not ignored."""
    import subprocess
    import sys

    from conftest import subprocess_env

    done = subprocess.run([sys.executable, "-m", "jaxbatch", "plan", *TINY, "distributed.cpu_devices=4", "mesh.data=4",
                           "train.batch_size=64"], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("mesh data=4 x fsdp=1 x model=1 (4 cpu devices)"), (
        done.stdout + done.stderr)[-2000:]
    assert cli.main(["plan", "--target", "v5e:2x2", *TINY, "distributed.cpu_devices=4"]) == 2
    err = capsys.readouterr().err
    assert "--target plans on v5e:2x2's devices; distributed.* sets up this machine's" in err and err.count("\n") == 1


def test_bad_input_files_are_reported_without_traceback(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("John B-PER\nlives O extra\n")
    (tmp_path / "valid.txt").write_text("x O\n")
    args = ["train", "model.preset=minilm-l6", "model.pretrained=minilm-l6", "data.name=conll2003",
            f"data.data_dir={tmp_path}", f"data.cache_dir={tmp_path / 'cache'}", "train.progress=false"]
    assert cli.main(args) == 2
    assert "DataError" in (err := capsys.readouterr().err) and "train.txt:2: 3 columns, but the file started with 2" in err
    assert cli.main(["train", "model.preset=custom", f"model.pretrained={tmp_path / 'nothing'}"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_export_a_finished_run_loads_in_transformers(tmp_path, capsys):
    import numpy as np
    import pytest

    from conftest import params_numpy, tiny_config
    from jaxbatch import config, train

    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    run = tmp_path / "run"
    trained = train.train(tiny_config("model.num_layers=2", "train.batch_size=16", "train.steps=3",
                                      "train.eval_every=0", f"train.run_dir={run}", "mesh.data=2", "mesh.model=4"))
    assert cli.main(["export", str(run), str(tmp_path / "hf")]) == 0
    assert f"exported step 3 of {run} to {tmp_path / 'hf'}" in capsys.readouterr().out
    assert cli.main(["export", str(tmp_path / "hf"), str(tmp_path / "again")]) == 0  # a folder has no step
    assert f"exported {tmp_path / 'hf'} to {tmp_path / 'again'}\n" in capsys.readouterr().out
    model = transformers.BertForTokenClassification.from_pretrained(tmp_path / "hf")
    assert model.config.id2label[1] == "B-PER" and model.config.num_hidden_layers == 2
    ours = params_numpy(trained.state)
    theirs = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    np.testing.assert_array_equal(theirs["classifier.weight"], ours["classifier.kernel"].T)
    np.testing.assert_array_equal(theirs["bert.encoder.layer.1.intermediate.dense.weight"],
                                  ours["encoder.layers.1.mlp.wi.kernel"].T)
    cfg = config.from_dict(json.load(open(run / "summary.json"))["config"])
    assert cfg.mesh.rules == config.Config().mesh.rules and (cfg.mesh.data, cfg.mesh.model) == (2, 4)
    tok = transformers.BertTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.convert_tokens_to_ids("Paris") != tok.unk_token_id
    assert cli.main(["export", str(tmp_path / "none"), str(tmp_path / "x")]) == 2
    before = {f.name: f.read_bytes() for f in (tmp_path / "hf").iterdir()}
    assert cli.main(["export", str(run), str(tmp_path / "hf")]) == 2  # an existing model is never overwritten
    assert {f.name: f.read_bytes() for f in (tmp_path / "hf").iterdir()} == before


def test_a_task_the_data_does_not_train_is_refused(tmp_path, capsys):
    for task, data, trains in (("sequence", "synthetic_ner", "token"), ("lm", "synthetic_sst", "sequence")):
        assert cli.main(["train", *TINY, f"model.task={task}", f"data.name={data}", f"train.run_dir={tmp_path}"]) == 2
        err = capsys.readouterr().err
        assert f"model.task={task} but data.name={data} is a {trains} dataset" in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_command_that_would_do_nothing_says_so(tmp_path, capsys):
    assert cli.main(["keys", "train.ste"]) == 0 and capsys.readouterr().out.split() == ["train.steps", "=", "100"]
    assert cli.main(["keys", "trian"]) == 2 and "no config key starts with 'trian'" in capsys.readouterr().err
    assert cli.main(["compress", str(tmp_path), str(tmp_path / "out")]) == 2  # no --prune/--quant/--rank
    assert "compress: nothing asked" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert cli.main(["compress", str(tmp_path), str(tmp_path / "out"), "--quant", "int8", "--act", "static",
                     "--calib-batches", "0"]) == 2  # static scales calibrated on nothing
    assert "--calib-batches must be >= 1 for --act static" in capsys.readouterr().err


def test_a_full_or_closed_stdout_is_one_line_or_quiet(tmp_path):
    """`> file` on a full disk is one line on stderr and exit 2; `| head` closing the pipe is exit 141 (as
    SIGPIPE) and nothing on stderr: never a traceback, from the command or from the interpreter's exit."""
    import os
    import subprocess
    import sys

    import pytest

    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    command = [sys.executable, "-m", "jaxbatch", "keys"]
    with open("/dev/full", "w") as full:
        done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "No space left on device" in done.stderr
    reader = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader.stdout.close()  # as `head` does once it has read enough: here before the command writes (it
    # spends seconds importing JAX first)
    assert reader.wait(timeout=300) == 141 and reader.stderr.read() == ""


def test_plan_for_a_character_corpus_uses_the_vocabulary_train_builds(tmp_path, capsys):
    """Without a tokenizer, train builds a character vocabulary from the corpus; plan reads the same one
    (not a 32000-token guess, whose embedding would dominate a small model's memory)."""
    from jaxbatch import config, train

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("To be, or not to be: that is the question.\n\n" * 40 + "Zany quiz!\n")
    args = ["model.preset=gpt-tiny", "data.name=text", f"data.data_dir={corpus}", f"data.cache_dir={tmp_path / 'c'}",
            "data.seq_len=16", "train.batch_size=8", "train.progress=false"]
    assert cli.main(["plan", *args]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("model.vocab_size=0"))
    result = train.train(config.build([*args, "train.steps=1", "train.eval_every=0", f"train.run_dir={tmp_path / 'r'}"]))
    assert line == f"model.vocab_size=0: planning with the corpus' characters, {result.spec.model.vocab_size}"
    assert 20 < result.spec.model.vocab_size < 40
