import jax
import pytest
from jax.sharding import PartitionSpec as P

from jaxbatch import config, mesh as mesh_lib


def test_mesh_fill_and_axis_types():
    cfg = config.MeshConfig(data=-1, fsdp=2, model=2)
    assert mesh_lib.mesh_shape(cfg, 8) == (2, 2, 2)
    mesh = mesh_lib.make_mesh(cfg)
    assert mesh.axis_names == ("data", "fsdp", "model")
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_each_mesh_axis_used_once_per_array():
    mesh = mesh_lib.make_mesh(config.MeshConfig(data=2, fsdp=2, model=2))
    rules = config.DEFAULT_RULES
    # an activation: batch takes data+fsdp, so its embed stays replicated
    assert mesh_lib.logical_to_spec(("batch", "length", "embed"), rules, mesh) == P(("data", "fsdp"), None, None)
    assert mesh_lib.logical_to_spec(("batch", "length", "heads", "kv"), rules, mesh) == P(
        ("data", "fsdp"), None, "model", None)
    # a parameter: embed on fsdp, mlp on model
    assert mesh_lib.logical_to_spec(("embed", "mlp"), rules, mesh) == P("fsdp", "model")


def test_size_one_axes_and_indivisible_dims_are_replicated():
    mesh = mesh_lib.make_mesh(config.MeshConfig(data=2, fsdp=1, model=4))
    rules = config.DEFAULT_RULES
    assert mesh_lib.logical_to_spec(("embed", "mlp"), rules, mesh) == P(None, "model")
    # BERT's vocab 30522 does not divide by 4: replicated rather than an error
    assert mesh_lib.logical_to_spec(("vocab", "embed"), rules, mesh, (30522, 384)) == P(None, None)
    assert mesh_lib.logical_to_spec(("vocab", "embed"), rules, mesh, (30720, 384)) == P("model", None)


def test_batch_shards():
    mesh = mesh_lib.make_mesh(config.MeshConfig(data=2, fsdp=2, model=2))
    assert mesh_lib.batch_shards(mesh, config.DEFAULT_RULES) == 4


def test_bad_mesh_names_key():
    with pytest.raises(config.ConfigError, match="mesh.fsdp=0"):
        mesh_lib.mesh_shape(config.MeshConfig(data=-1, fsdp=0, model=1), 8)
