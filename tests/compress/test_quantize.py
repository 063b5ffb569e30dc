"""int8 PTQ: error against float32 on random data, a real s8 x s8 -> s32 dot in the compiled HLO, calibration,
and int8 params that shard by their logical axes like the float ones."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_config
from jaxbatch import compress, mesh as mesh_lib
from jaxbatch import state as state_lib
from jaxbatch.compress import quantize
from jaxbatch.models.layers import Dense, Embed


def _dense(in_shape=(96,), out_shape=(4, 24)):
    names_in = ("embed",) * len(in_shape) if len(in_shape) == 1 else ("heads", "kv")
    names_out = ("heads", "kv") if len(out_shape) == 2 else ("embed",)
    return Dense(in_shape, out_shape, names_in, names_out, rngs=nnx.Rngs(3), init_std=0.05)


def _x(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("act", ["none", "dynamic", "static"])
@pytest.mark.parametrize("shapes", [((96,), (4, 24)), ((4, 24), (96,))])
def test_int8_dense_matches_float_within_quantization_error(act, shapes):
    dense = _dense(*shapes)
    x = _x((8, 16, *shapes[0]))
    ref = dense(x)
    q = quantize.quantize_dense(dense, act, act_absmax=float(jnp.abs(x).max()))
    y = q(x)
    assert y.shape == ref.shape and q.kernel[...].dtype == jnp.int8
    # Rounding to a step s leaves a uniform error of variance s^2/12 per element, independent across the K
    # summed terms, so the output's relative error is sqrt(E[s_w^2/12]/E[w^2] + E[s_x^2/12]/E[x^2]), with
    # s = absmax / 127.5 per output channel (weights), per token (dynamic) or per tensor (static).
    k = int(np.prod(shapes[0]))
    w = np.asarray(dense.kernel[...]).reshape(k, -1)
    xs = np.asarray(x).reshape(-1, k)
    rel_var = np.mean((np.abs(w).max(0) / 127.5) ** 2 / 12) / np.mean(w**2)
    if act != "none":
        x_step = np.abs(xs).max(1) if act == "dynamic" else np.abs(xs).max()
        rel_var += np.mean((x_step / 127.5) ** 2 / 12) / np.mean(xs**2)
    rel = float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref))
    assert 0.7 * np.sqrt(rel_var) < rel < 1.3 * np.sqrt(rel_var), (rel, np.sqrt(rel_var))


def _dots(hlo: str) -> list[tuple[str, str, str]]:
    """(result type, lhs type, rhs type) of every dot in an optimized HLO module."""
    types = dict(re.findall(r"%?([\w.\-]+) = (\w+)\[", hlo))
    found = []
    for m in re.finditer(r"= (\w+)\[[^\]]*\]\{?[^=]*? dot\(([^)]*)\)", hlo):
        operands = [o.strip().split()[-1].lstrip("%") for o in m[2].split(",")][:2]
        found.append((m[1], *(types.get(o, o.split("[")[0]) for o in operands)))
    return found


def test_dynamic_int8_compiles_to_an_integer_dot():
    q = quantize.quantize_dense(_dense(), "dynamic")
    graphdef, params = nnx.split(q)
    f = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
    hlo = f.lower(params, _x((8, 16, 96))).compile().as_text()
    assert ("s32", "s8", "s8") in _dots(hlo), _dots(hlo)
    weights_only = quantize.quantize_dense(_dense(), "none")
    g2, p2 = nnx.split(weights_only)
    hlo2 = jax.jit(lambda p, x: nnx.merge(g2, p2)(x)).lower(p2, _x((8, 16, 96))).compile().as_text()
    assert ("s32", "s8", "s8") not in _dots(hlo2)  # weights-only dequantizes into a float dot


def test_int8_embedding_lookup_and_tied_output():
    embed = Embed(50, 32, ("vocab", "embed"), rngs=nnx.Rngs(0))
    q = quantize.quantize_embed(embed)
    ids = jnp.arange(50)[None]
    np.testing.assert_allclose(q(ids), embed(ids), atol=float(jnp.abs(embed.embedding[...]).max()) / 127)
    x = _x((2, 5, 32))
    rel = float(jnp.linalg.norm(q.attend(x) - embed.attend(x)) / jnp.linalg.norm(embed.attend(x)))
    assert 1e-5 < rel < 0.01


def test_calibration_keeps_the_max_or_a_percentile_of_inputs():
    dense = _dense()
    xs = [_x((4, 8, 96), s) for s in range(3)]
    for percentile in (None, 90.0):
        obs = quantize.Observe(dense, percentile)
        for x in xs:
            np.testing.assert_array_equal(obs(x), dense(x))
        want = max(float(jnp.abs(x).max()) if percentile is None else float(jnp.percentile(jnp.abs(x), 90))
                   for x in xs)
        assert float(obs.absmax[...]) == pytest.approx(want, rel=1e-6)
    assert quantize.parse_calibration("percentile:99.9") == 99.9
    for bad in ("percentile:0", "percentile:x", "mean"):
        with pytest.raises(ValueError):
            quantize.parse_calibration(bad)


def test_int8_params_shard_like_the_float_ones():
    cfg = tiny_config("mesh.data=2", "mesh.fsdp=2", "mesh.model=2")
    mesh = mesh_lib.make_mesh(cfg.mesh)
    _, floats = state_lib.abstract_model(cfg.model, "fp32")
    int8_model = tiny_config("model.quant=int8", "model.quant_act=dynamic").model
    _, ints = state_lib.abstract_model(int8_model, "fp32")
    float_specs = {state_lib.param_name(p): s.spec for p, s in
                   jax.tree_util.tree_leaves_with_path(mesh_lib.tree_shardings(floats, mesh, cfg.mesh.rules))}
    int_specs = {state_lib.param_name(p): s.spec for p, s in
                 jax.tree_util.tree_leaves_with_path(mesh_lib.tree_shardings(ints, mesh, cfg.mesh.rules))}
    dtypes = {state_lib.param_name(p): x.dtype for p, x in jax.tree_util.tree_leaves_with_path(ints)}
    for name, spec in float_specs.items():
        assert int_specs[name] == spec, name  # same names, same layout: kernels and tables int8, the rest float
        assert dtypes[name] == (jnp.int8 if name.endswith(("kernel", "embedding")) else jnp.float32), name
    assert int_specs["encoder.layers.0.mlp.wi.scale"] == float_specs["encoder.layers.0.mlp.wi.bias"]
    assert len(compress.modules(nnx.eval_shape(lambda: state_lib.build_model(int8_model, "fp32")),
                                quantize.QuantDense)) == 6 * int8_model.num_layers + 1  # the layers' and the head's
