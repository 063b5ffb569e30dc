"""Orbax checkpoints of the whole run: sharded TrainState + the grain iterator's position + the resolved
spec, saved asynchronously as one Composite, so a resumed run continues bit-for-bit where it stopped, and a
run dir alone rebuilds the model (`read_spec` + `restore_params`: no optimizer state, onto any mesh).

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a crash mid-save
leaves the previous checkpoint as the latest. SIGTERM (a preemption notice on most clusters and Cloud
TPU) asks the loop to save at the end of the current step and stop.
"""

from __future__ import annotations

import signal
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from jaxbatch import config
from jaxbatch.errors import CheckpointError


def abstract_with_shardings(tree, shardings):
    """ShapeDtypeStructs carrying the target shardings (one array leaf per sharding, same order)."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten([jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                              for x, s in zip(leaves, jax.tree.leaves(shardings))])


class Checkpointer:
    def __init__(self, directory: str | Path, max_to_keep: int = 3, read_only: bool = False):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not read_only, read_only=read_only))
        self.stop_requested = False
        self._previous_handler = None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator, spec: config.Config) -> None:
        """Starts an asynchronous save; the next save (or `close`) waits for it."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator),
            spec=ocp.args.JsonSave(config.to_dict(spec))))

    def restore(self, step: int, state_like, state_shardings, data_iterator):
        """The state at `step`, placed with `state_shardings` (any mesh: Orbax reshards), and the iterator
        moved to where it was."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_with_shardings(state_like, state_shardings)),
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
        return restored.state

    def read_spec(self, step: int) -> config.Config:
        """The resolved spec the checkpoint was written with."""
        try:
            return config.from_dict(self.manager.restore(step, args=ocp.args.Composite(
                spec=ocp.args.JsonRestore())).spec)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise CheckpointError(f"{self.directory}/{step}: cannot read the run's spec ({e})") from e

    def restore_params(self, step: int, abstract_params, params_shardings):
        """Only the parameters of the state at `step` (no optimizer moments are read), placed with
        `params_shardings` on whatever mesh they name."""
        item = {"params": abstract_with_shardings(abstract_params, params_shardings)}
        restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), item)
        restored = ocp.PyTreeCheckpointer().restore(self.directory / str(step) / "state", args=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True))
        return restored["params"]

    def handle_sigterm(self) -> None:
        """After this, SIGTERM sets `stop_requested` instead of killing the process."""
        def on_term(signum, frame):
            self.stop_requested = True

        self._previous_handler = signal.signal(signal.SIGTERM, on_term)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
