"""Device mesh over ('data', 'fsdp', 'model') and the logical-axis rules that turn names into shardings.

Models name the dimensions of every array (batch, length, embed, heads, kv, mlp, vocab); the rules table
in `MeshConfig.rules` maps each name to mesh axes. Data parallel, FSDP and tensor parallel differ only in
that table and the mesh shape, never in model code.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from typing import Any, Sequence

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxbatch.errors import ConfigError

AXES = ("data", "fsdp", "model")
Rules = Sequence[tuple[str, Sequence[str]]]
log = logging.getLogger(__name__)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """Resolves the one allowed -1 to the devices left over; errors name the mesh key."""
    sizes = [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.model]
    if sizes.count(-1) > 1:
        raise ConfigError(f"at most one of mesh.data/fsdp/model may be -1, got {sizes}")
    for name, size in zip(AXES, sizes):
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{name}={size} must be a positive size or -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(f"mesh {sizes}: {num_devices} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(f"mesh.data x mesh.fsdp x mesh.model = {sizes} uses {math.prod(sizes)} devices, "
                          f"but {num_devices} are available")
    return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with Auto axes: jit's in/out shardings plus GSPMD propagation do the partitioning. Devices of
    several TPU slices (multislice: slices joined by the data-center network, DCN, far slower than the chips'
    own links) are laid out as MaxText's dcn_data_parallelism does: the data axis spans the slices, so only the
    gradient all-reduce crosses the DCN, and fsdp and model stay within a slice (FSDP spans them when the data
    axis cannot: hybrid sharding, its gathers over the DCN; the model axis never)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(mesh_cfg, len(devices))
    axis_types = (AxisType.Auto,) * len(AXES)
    slices = _slices(devices)
    if slices == 1:
        return jax.make_mesh(shape, AXES, axis_types=axis_types, devices=devices)
    across = next((i for i in (0, 1) if shape[i] % slices == 0), None)
    if across is None:
        raise ConfigError(f"mesh data={shape[0]} x fsdp={shape[1]} x model={shape[2]}: the devices span {slices} "
                          f"TPU slices, and mesh.data (or else mesh.fsdp) must be a multiple of {slices} to span them "
                          f"(mesh.model stays within a slice)")
    within = [size // slices if i == across else size for i, size in enumerate(shape)]
    dcn = [slices if i == across else 1 for i in range(len(AXES))]
    from jax.experimental import mesh_utils

    try:
        grid = mesh_utils.create_hybrid_device_mesh(within, dcn, devices)
    except (ValueError, AssertionError) as e:  # a slice's devices cannot hold the axes within it
        raise ConfigError(f"mesh data={shape[0]} x fsdp={shape[1]} x model={shape[2]} over {slices} TPU slices: "
                          f"{within} within each slice does not fit its devices ({e})") from e
    return Mesh(grid, AXES, axis_types=axis_types)


def _slices(devices) -> int:
    """How many TPU slices the devices span (1 for any other platform)."""
    return len({getattr(d, "slice_index", 0) for d in devices})


def logical_to_spec(names: Sequence[str | None], rules: Rules, mesh: Mesh | None = None,
                    shape: Sequence[int] | None = None) -> P:
    """Maps logical dimension names to a PartitionSpec.

    Each mesh axis is used at most once per array (the first dimension that asks gets it). With a shape,
    a dimension that the mesh axes do not divide stays replicated (logged), e.g. vocab 30522 over model=4.
    """
    table = {name: tuple(axes) for name, axes in rules}
    used: set[str] = set()
    spec = []
    for i, name in enumerate(names):
        axes = tuple(a for a in table.get(name, ()) if a not in used) if name is not None else ()
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
        if axes and shape is not None and mesh is not None:
            size = math.prod(mesh.shape[a] for a in axes)
            if shape[i] % size:
                log.info("dimension %s=%d of shape %s is not divisible by mesh axes %s (%d); replicated",
                         name, shape[i], tuple(shape), axes, size)
                axes = ()
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else (axes or None))
    return P(*spec)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def tree_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a pytree that holds nnx Variables (params, optimizer moments); other leaves
    (step counters, scalars) and factored moments whose rank no longer matches the names (Adafactor's
    row/column statistics, which are small) are replicated; a masked-out optimizer slot (optax's MaskedNode:
    no state for a frozen parameter) holds no array and stays as it is."""

    def one(x):
        if _is_variable(x) and not jax.tree.leaves(x):
            return x
        names = x.get_metadata().get("logical_axes") if _is_variable(x) else None
        if names is None or len(names) != len(x.shape):
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, logical_to_spec(names, rules, mesh, x.shape))

    return jax.tree.map(one, abstract_tree, is_leaf=_is_variable)


def abstract_with_shardings(tree, shardings):
    """ShapeDtypeStructs carrying the target shardings (one array leaf per sharding, same order): restore
    targets, and the inputs a step is compiled for before any array exists."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten([jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s, weak_type=getattr(x, "weak_type", False))
                              for x, s in zip(leaves, jax.tree.leaves(shardings))])


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
    """Sharding of a global batch array: leading dim on the batch axes, the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules, mesh))


def batch_shards(mesh: Mesh, rules: Rules) -> int:
    spec = logical_to_spec(("batch",), rules, mesh)[0]
    axes = (spec,) if isinstance(spec, str) else (spec or ())
    return math.prod(mesh.shape[a] for a in axes)


# Activation constraints: the step sets (mesh, rules) while tracing; model code only names dimensions.
_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar("jaxbatch_rules", default=None)


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Rules):
    token = _ACTIVE.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names; a no-op outside `activation_rules` (single device)."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, rules, mesh, x.shape)))


def target_device():
    """The first device of the program being traced: its mesh's under `activation_rules` (a TPU slice compiled
    ahead of time on a CPU or GPU box), else JAX's default device."""
    active = _ACTIVE.get()
    return active[0].devices.flat[0] if active is not None else jax.devices()[0]


def activation_spec(names: Sequence[str | None], shape: Sequence[int]) -> P:
    """The PartitionSpec `constrain` gives an activation of these logical names and shape while tracing
    (replicated outside `activation_rules`)."""
    active = _ACTIVE.get()
    return P() if active is None else logical_to_spec(names, active[1], active[0], shape)


def describe(mesh: Mesh) -> str:
    slices = _slices(mesh.devices.flat)
    return " x ".join(f"{a}={mesh.shape[a]}" for a in AXES) + (
        f" ({mesh.devices.size} {mesh.devices.flat[0].platform} devices" + f" in {slices} slices" * (slices > 1) + ")")
