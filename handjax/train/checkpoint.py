"""Orbax checkpoints of the train state plus the input iterator's state.

Layout: ``<directory>/<step>/state`` (the train state, written collectively by all
processes) and ``<directory>/<step>/data/process_<i>-of-<n>.json`` (grain iterator state,
one file per process).

Atomicity: Orbax writes a step into ``<step>.orbax-checkpoint-tmp-*`` (local disks) and
renames it when complete, or (gs://) writes ``commit_success.txt`` last; a complete step
always holds ``commit_success.txt``. A run killed mid-write (``kill -9``, node loss) leaves a
temporary directory, or on filesystems without atomic rename a step directory without that
file. On start, :class:`Checkpointer` warns about both; temporary directories are ignored
by Orbax, and incomplete step directories are renamed to ``<step>.incomplete`` so that no
restore can pick them.

Changing the process count between save and restore: the train state restores onto any
mesh (it is saved as global arrays). The iterator state is per process and depends on the
process count (each process reads its own shard), so it does not carry over: the train state
is restored, a warning says so, and the input iterators start from the beginning of their
new shards (deterministic: the same seeds as a fresh run with that process count).
"""
from __future__ import annotations

import logging
import re
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from handjax.distributed import barrier, is_main
from handjax.models.checkpoint import resolve_path

COMMIT_FILE = "commit_success.txt"  # Orbax writes it last into every step directory
TMP_MARK = ".orbax-checkpoint-tmp"
INCOMPLETE_SUFFIX = ".incomplete"


def _iter_supports_state(it) -> bool:
    """grain iterators, or any iterator with get_state() -> bytes / set_state(bytes) / start_prefetch()."""
    return it is not None and hasattr(it, "get_state") and hasattr(it, "set_state")


_DATA_STATE_RE = re.compile(r"process_\d+-of-(\d+)\.json")


def _data_state_name(process_index: int, process_count: int) -> str:
    """The per-process iterator file grain's Orbax handler writes under ``<step>/data``."""
    return f"process_{process_index}-of-{process_count}.json"


def set_aside_incomplete(directory: str) -> list:
    """Warn about interrupted checkpoint writes under ``directory``; hide incomplete step dirs.

    Temporary Orbax directories (never restored from) are reported. Step directories without
    ``commit_success.txt`` are renamed to ``<step>.incomplete[.k]``. Returns the renamed
    paths. Call on one process only.
    """
    root = epath.Path(directory)
    if not root.is_dir():
        return []
    moved = []
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        if TMP_MARK in child.name:
            logging.warning("ignoring incomplete checkpoint %s (a write was interrupted; safe to delete)", child)
        elif child.name.isdigit() and child.is_dir() and not (child / COMMIT_FILE).exists():
            target, k = root / (child.name + INCOMPLETE_SUFFIX), 1
            while target.exists():
                target, k = root / f"{child.name}{INCOMPLETE_SUFFIX}.{k}", k + 1
            child.rename(target)
            logging.warning("ignoring incomplete checkpoint step %s (no %s: a write was interrupted); "
                            "moved it to %s", child, COMMIT_FILE, target)
            moved.append(target)
    return moved


class Checkpointer:
    """Save/restore ``{state, data}`` steps under ``directory`` (local path or gs://).

    Every process must construct it and call ``save`` / ``restore`` / ``restore_data``
    together (the train state is written and read collectively).
    """

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = resolve_path(directory)
        if is_main():
            set_aside_incomplete(self.directory)
        barrier(f"handjax-checkpoint-scan:{self.directory}")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                                 create=True),
        )

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter=None, force: bool = False) -> None:
        items = {"state": ocp.args.StandardSave(state)}
        if _iter_supports_state(data_iter):
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, step: int, target_state: Any, data_iter=None):
        """The train state of ``step`` in the structure/shardings of ``target_state`` (any mesh).

        With ``data_iter``, also restores its state (:meth:`restore_data`).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        if data_iter is not None:
            self.restore_data(step, data_iter)
        return restored["state"]

    def restore_data(self, step: int, data_iter) -> bool:
        """Set ``data_iter``'s state from ``step`` if the checkpoint holds one for this process.

        Returns False, with a warning, when there is none (iterator not checkpointable, no
        iterator state saved, or saved by a different number of processes); ``data_iter``
        then keeps its initial state.
        """
        if not _iter_supports_state(data_iter):
            return False
        data_dir = epath.Path(self.directory) / str(step) / "data"
        i, n = jax.process_index(), jax.process_count()
        if not data_dir.is_dir():
            if is_main():
                logging.warning("checkpoint step %d in %s has no data iterator state: the input pipeline "
                                "starts from its beginning", step, self.directory)
            return False
        if not (data_dir / _data_state_name(i, n)).exists():
            saved = sorted({m.group(1) for m in map(_DATA_STATE_RE.fullmatch, (p.name for p in data_dir.iterdir()))
                            if m})
            if is_main():
                logging.warning(
                    "checkpoint step %d in %s holds data iterator states written by %s process(es); this run "
                    "has %d. The train state is restored, but per-process iterator states do not carry over "
                    "to another process count: every input iterator restarts from the beginning of its new "
                    "shard (same seed, deterministic), so early samples of the epoch are seen again.",
                    step, self.directory, " or ".join(saved) or "no", n)
            return False
        self.manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iter)))
        return True

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()
