"""The compress pass and its folder: predictions identical before and after save/load (on any mesh), int8
at <= 0.27x the float32 bytes, packed sparse tensors, damage detected, and the CLI around it."""

import io
import json

import numpy as np
import pytest

from conftest import tiny_config
from jaxbatch import cli, evaluate, train
from jaxbatch import run as run_lib
from jaxbatch.compress import pipeline, storage
from jaxbatch import predict as predict_lib
from jaxbatch.data import synthetic, tasks
from jaxbatch.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("compress") / "run"
    train.train(tiny_config("model.hidden_size=128", "model.intermediate_size=512", "train.steps=30",
                            "train.eval_every=0", "data.num_train=256", "data.num_eval=64", f"train.run_dir={path}"))
    return path


def _outputs(restored):
    arrays = tasks.load_split(restored.run.spec.data, restored.tokenizer, "validation")
    return evaluate.outputs(restored.run, restored.params, arrays)


VARIANTS = {
    "int8-static": pipeline.Options(quant="int8", act="static", calibration="percentile:99.9", calib_batches=2),
    "2:4+int8-dynamic": pipeline.Options(pattern="2:4", quant="int8", act="dynamic"),
    "lowrank+prune": pipeline.Options(rank_energy=0.8, sparsity=0.5, scope="global"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_predictions_are_identical_after_save_and_load(run_dir, tmp_path, name):
    restored = run_lib.restore(run_dir)
    spec, params, report = pipeline.apply(restored, VARIANTS[name], log=lambda _: None)
    in_memory = run_lib.Restored(run_lib.setup(spec, training=False), params, restored.tokenizer, "memory")
    sums, preds = _outputs(in_memory)
    storage.save(tmp_path / name, spec, params, restored.tokenizer, report)
    loaded = run_lib.restore(tmp_path / name)  # no flag: the folder says what it is
    assert loaded.run.spec == in_memory.run.spec
    sums2, preds2 = _outputs(loaded)
    assert sums2 == sums
    for k in preds:
        np.testing.assert_array_equal(preds2[k], preds[k])
    # another mesh (tensor parallel): the same model, to float reassociation
    sharded = run_lib.restore(tmp_path / name, ["mesh.data=4", "mesh.model=2"])
    sums3, preds3 = _outputs(sharded)
    np.testing.assert_allclose(sums3["loss_sum"], sums["loss_sum"], rtol=1e-5)
    # and it is still the model it came from: the metric moves little
    dense_sums, _ = _outputs(restored)
    assert abs(sums["correct"] - dense_sums["correct"]) / dense_sums["weight"] < 0.05


def test_int8_folder_is_at_most_0_27_of_float32_and_sparse_tensors_are_packed(run_dir, tmp_path):
    sizes = {}
    for name, opts in {"float": pipeline.Options(), "int8": pipeline.Options(quant="int8"),
                       "pruned": pipeline.Options(sparsity=0.5), "2:4-int8": pipeline.Options(pattern="2:4", quant="int8")}.items():
        report = pipeline.compress_model(run_lib.restore(run_dir), tmp_path / name, opts, log=lambda _: None)
        sizes[name] = report["bytes_on_disk"]
        manifest = json.loads((tmp_path / name / storage.MANIFEST).read_text())
        packed = [k for k, e in manifest["params"].items() if e.get("packed")]
        assert bool(packed) == (name in ("pruned", "2:4-int8")), name
    assert sizes["int8"] <= 0.27 * sizes["float"], sizes
    assert sizes["pruned"] < 0.75 * sizes["float"] and sizes["2:4-int8"] < 0.85 * sizes["int8"], sizes
    x = np.array([[0, 1.5, 0, -2], [0, 0, 0, 3]], np.float32)
    packed = storage.pack(x)
    np.testing.assert_array_equal(storage.unpack(packed["values"], packed["bits"], x.shape, x.dtype), x)
    assert storage.pack(np.ones(8, np.float32)) is None  # dense: stored as is


def test_damage_and_misuse_are_one_line_errors(run_dir, tmp_path, capsys):
    out = tmp_path / "int8"
    assert cli.main(["compress", str(run_dir), str(out), "--quant", "int8"]) == 0
    assert cli.main(["compress", str(run_dir), str(out), "--quant", "int8"]) == 2  # never overwritten
    assert "exists and is not empty" in capsys.readouterr().err
    for args in (["--act", "static"], ["--pattern", "3:2"], ["--quant", "int4"], ["--act", "static", "--quant", "int8",
                                                                                  "--calibration", "mean"]):
        assert cli.main(["compress", str(run_dir), str(tmp_path / "x"), *args]) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
    assert cli.main(["compress", str(out), str(tmp_path / "y"), "--quant", "int8"]) == 2
    assert "already compressed" in capsys.readouterr().err
    assert cli.main(["export", str(out), str(tmp_path / "hf")]) == 2
    data = bytearray((out / storage.WEIGHTS).read_bytes())
    data[-100] ^= 0xFF  # flip bits inside the last tensor
    (out / storage.WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        run_lib.restore(out)
    with pytest.raises(ConfigError, match="int8 model is for inference"):
        train.train(tiny_config("model.quant=int8", f"train.run_dir={tmp_path / 't'}"))


def test_cli_predict_takes_a_compressed_folder(run_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "c"
    assert cli.main(["compress", str(run_dir), str(out), "--pattern", "2:4", "--quant", "int8"]) == 0
    assert "wrote" in capsys.readouterr().out
    words = [w for w in synthetic.vocabulary() if w.isalpha()][:12]
    text = "\n".join(" ".join(words[i:i + 4]) for i in range(0, 12, 4)) + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert cli.main(["predict", str(out)]) == 0
    printed = [json.loads(line)["tags"] for line in capsys.readouterr().out.strip().splitlines()]
    sentences = predict_lib.read_sentences(None, "text", io.StringIO(text))
    assert printed == [r["tags"] for r in predict_lib.predict(run_lib.restore(out), sentences)]
    assert len(printed) == 3 and all(len(t) == 4 for t in printed)
