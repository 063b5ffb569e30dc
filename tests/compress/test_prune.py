"""Magnitude pruning: exact sparsity (per layer and global), exact N:M groups, the cubic schedule, and masks
that hold through training, checkpoint/resume and a change of mesh."""

import jax
import numpy as np
import pytest

from conftest import params_numpy, tiny_config
from jaxbatch import config, train
from jaxbatch import state as state_lib
from jaxbatch.compress import prune
from jaxbatch.errors import ConfigError


def _params(*overrides):
    cfg = tiny_config(*overrides)
    _, params = __import__("flax").nnx.split(state_lib.build_model(cfg.model, "fp32", seed=1))
    return params


def _named(tree) -> dict:
    return {state_lib.param_name(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_selection_excludes_embeddings_norms_biases_and_heads():
    names = set(_named(prune.prunable(_params(), config.PruneConfig())))
    assert names and all(n.endswith(".kernel") for n in names)
    assert "classifier.kernel" not in names  # logical axis 'labels'
    assert not any("embeddings" in n or "norm" in n for n in names)
    fewer = set(_named(prune.prunable(_params(), config.PruneConfig(exclude=r"attention\.(query|key)", exclude_axes=""))))
    assert "classifier.kernel" in fewer and not any(".query." in n or ".key." in n for n in fewer)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_unstructured_sparsity_is_exact(scope):
    cfg = config.PruneConfig(sparsity=0.37, scope=scope)
    kernels = prune.prunable(_params("model.intermediate_size=200"), cfg)  # sizes where s x n is not an integer
    masks = _named(prune.masks_at(kernels, 0.37, cfg))
    weights = _named(kernels)
    zeros = {k: int((~m).sum()) for k, m in masks.items()}
    if scope == "layer":
        for k, m in masks.items():
            assert zeros[k] == round(0.37 * m.size), k
    else:
        total = sum(m.size for m in masks.values())
        assert sum(zeros.values()) == round(np.float32(0.37) * total)
        assert len(set(z / masks[k].size for k, z in zeros.items())) > 1  # layers differ under one ranking
        # one threshold: every pruned weight is no larger than every kept one
        pruned = np.concatenate([np.abs(weights[k][~m]) for k, m in masks.items()])
        kept = np.concatenate([np.abs(weights[k][m]) for k, m in masks.items()])
        assert pruned.max() <= kept.min()


def test_two_four_keeps_the_two_largest_of_every_group_along_the_contraction():
    cfg = config.PruneConfig(pattern="2:4")
    kernels = prune.prunable(_params(), cfg)
    assert prune.target(cfg) == 0.5
    masks, weights = _named(prune.masks_at(kernels, 0.5, cfg)), _named(kernels)
    for name, m in masks.items():
        contract = 2 if name.endswith("attention.out.kernel") else 1  # (heads, kv) -> embed contracts two dims
        rows = int(np.prod(m.shape[:contract]))
        groups = m.reshape(rows // 4, 4, -1)
        assert (groups.sum(axis=1) == 2).all(), name
        w = np.abs(weights[name]).reshape(rows // 4, 4, -1)
        assert (np.where(groups, w, np.inf).min(axis=1) >= np.where(groups, -np.inf, w).max(axis=1)).all()


def test_bad_settings_are_refused():
    for bad in ("prune.pattern=4:2", "prune.sparsity=1.0", "prune.scope=row", "prune.every=0",
                "prune.pattern=2:4 prune.sparsity=0.3"):
        with pytest.raises(ConfigError, match="prune"):
            config.validate(tiny_config(*bad.split()), 8)
    with pytest.raises(ConfigError, match="not a multiple of 3"):  # 64 inputs do not split into groups of 3
        prune.masks_at(prune.prunable(_params(), config.PruneConfig()), 0.33, config.PruneConfig(pattern="2:3"))


def test_cubic_schedule():
    cfg = config.PruneConfig(sparsity=0.8, begin=10, end=20, every=5)
    s = [float(prune.sparsity_at(t, cfg)) for t in (0, 10, 15, 20, 30)]
    np.testing.assert_allclose(s, [0, 0, 0.8 * (1 - 0.5**3), 0.8, 0.8], rtol=1e-6)
    assert [int(t) for t in range(40) if prune.is_mask_step(t, cfg)] == [10, 15, 20]
    one_shot = config.PruneConfig(sparsity=0.5)
    assert float(prune.sparsity_at(0, one_shot)) == 0.5


ARGS = ["train.steps=8", "train.eval_every=0", "data.num_train=96", "checkpoint.every=4", "prune.sparsity=0.6",
        "prune.begin=1", "prune.end=5", "prune.every=2", "prune.scope=global"]


def test_masks_hold_through_training_resume_and_a_new_mesh(tmp_path):
    whole = train.train(tiny_config(*ARGS, "mesh.data=8", f"train.run_dir={tmp_path / 'whole'}"))
    part = tmp_path / "part"
    first = train.train(tiny_config(*ARGS, "mesh.data=8", "train.stop_after=3", f"train.run_dir={part}"))
    early = _named(first.state.masks)
    assert 0 < sum((~m).sum() for m in early.values()) < 0.6 * sum(m.size for m in early.values())  # mid-schedule
    rest = train.train(tiny_config(*ARGS, "mesh.data=2", "mesh.fsdp=2", "mesh.model=2", f"train.run_dir={part}"))
    masks, params = _named(whole.state.masks), params_numpy(whole.state)
    assert _named(rest.state.masks).keys() == masks.keys()
    specs = {state_lib.param_name(p): x.sharding.spec for p, x in jax.tree_util.tree_leaves_with_path(rest.state.params)}
    for (path, x), (k, m) in zip(jax.tree_util.tree_leaves_with_path(rest.state.masks),
                                 _named(rest.state.masks).items()):
        np.testing.assert_array_equal(m, masks[k], err_msg=k)
        assert x.sharding.spec == specs[k] and any(specs[k]), k  # sharded like its parameter on 2x2x2
    total = sum(m.size for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(np.float32(0.6) * total)  # the target, exactly
    for k, m in masks.items():  # steps 6-8 trained on: pruned weights stayed exactly zero, kept ones moved
        assert (params[k][~m] == 0).all() and (params[k][m] != 0).all(), k
        np.testing.assert_allclose(params_numpy(rest.state)[k], params[k], rtol=2e-6, atol=2e-7, err_msg=k)
