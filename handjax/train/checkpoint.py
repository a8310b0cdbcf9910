"""Orbax checkpoints of the train state plus the input iterator's state.

Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-write never leaves a half-written step that
``latest_step`` would pick; leftovers of such writes are reported and ignored.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp


def _iter_supports_state(it) -> bool:
    """grain iterators, or any iterator with get_state() -> bytes / set_state(bytes) / start_prefetch()."""
    return it is not None and hasattr(it, "get_state") and hasattr(it, "set_state")


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self._warn_partial()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                                 create=True),
        )

    def _warn_partial(self):
        if not os.path.isdir(self.directory):
            return
        for name in sorted(os.listdir(self.directory)):
            if ".orbax-checkpoint-tmp" in name or name.endswith(".tmp"):
                logging.warning("ignoring incomplete checkpoint %s (a write was interrupted)",
                                os.path.join(self.directory, name))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter=None, force: bool = False) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if _iter_supports_state(data_iter):
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, target_state: Any, data_iter=None):
        """Restore into the structure/shardings of ``target_state``; sets ``data_iter``'s state."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if _iter_supports_state(data_iter) and "data" in self.manager.item_metadata(step):
            items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


MODEL_META = "handjax_model.json"


def save_model(model, directory: str, meta: dict) -> None:
    """Model-only checkpoint (no optimizer state): ``directory/model`` (Orbax) + ``handjax_model.json``.

    Written by converters and loadable by every recipe (``restore_model`` accepts it), e.g. as
    ``finetune.init_from`` or ``eval.checkpoint``. ``meta`` records what built the model
    (system, config keys such as the backbone depth) so loaders can check it.
    """
    import json

    from flax import nnx

    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    state = {"params": nnx.state(model, nnx.Param), "rest": nnx.state(model, nnx.Not(nnx.Param))}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(directory, "model"), state, force=True)
    with open(os.path.join(directory, MODEL_META), "w") as fh:
        json.dump(meta, fh, indent=2)


def is_model_checkpoint(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, MODEL_META))


def load_model(model, directory: str) -> dict:
    """Load a ``save_model`` checkpoint into ``model`` (shapes must match); returns its metadata."""
    import json

    from flax import nnx

    with open(os.path.join(directory, MODEL_META)) as fh:
        meta = json.load(fh)
    target = {"params": nnx.state(model, nnx.Param), "rest": nnx.state(model, nnx.Not(nnx.Param))}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(os.path.join(os.path.abspath(directory), "model"), abstract)
    nnx.update(model, state["params"], state["rest"])
    return meta
