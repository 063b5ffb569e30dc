"""Orbax checkpoints of the whole run: sharded TrainState + the grain iterator's position + the config,
saved asynchronously as one Composite, so a resumed run continues bit-for-bit where it stopped.

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


def abstract_with_shardings(tree, shardings):
    """ShapeDtypeStructs carrying the target shardings (one array leaf per sharding, same order)."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten([jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
                              for x, s in zip(leaves, jax.tree.leaves(shardings))])


class Checkpointer:
    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))
        self.stop_requested = False
        self._previous_handler = None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator, config_dict: dict) -> None:
        """Starts an asynchronous save; the next save (or `close`) waits for it."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(config_dict)))

    def restore(self, step: int, state_like, state_shardings, data_iterator):
        """The state at `step`, placed with `state_shardings` (any mesh: Orbax reshards), and the iterator
        moved to where it was."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_with_shardings(state_like, state_shardings)),
            data=grain.checkpoint.CheckpointRestore(data_iterator)))
        return restored.state

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
