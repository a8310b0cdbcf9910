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
restore can pick them. A step directory without that file that is OLDER than a complete step
is not an interrupted write (steps are written in increasing order) but the remains of an
interrupted keep-N clean-up (Orbax deleting an old step): it is reported as such and removed.

Damaged steps: :meth:`Checkpointer.restore_latest` tries the complete steps newest first; a
step that fails to restore (truncated or zeroed data files, unreadable metadata, a broken
iterator state) is renamed to ``<step>.unreadable[.k]`` with a warning naming the step, the
path and the reason, and the next older step is tried. Nothing is deleted. If no step
restores, nothing is renamed and :class:`CheckpointRestoreError` lists every step tried. A
step whose saved tree does not fit the model (another config) is not damage: that is a
ValueError listing the differing keys, raised at once.

Failed writes: directories are created synchronously in :meth:`Checkpointer.save`, so an
unwritable folder fails there, and :meth:`Checkpointer.check` (called by the training loop
after every step) surfaces a failed background write (e.g. a full disk) at once; both raise
:class:`CheckpointWriteError` naming the path and the OS error and remove the failed step's
temporary directory (the previous steps stay intact).

Stage results: ``<step>/metrics`` holds the metrics logged at that step (the final metrics of a
stage in its last step), returned again when a finished stage is resumed; a stage's result
file (:func:`write_stage_result` / :func:`read_stage_result`) marks a unit of work as done.

Changing the process count between save and restore: the train state restores onto any
mesh (it is saved as global arrays). The iterator state is per process and depends on the
process count (each process reads its own shard), so it does not carry over: the train state
is restored, a warning says so, and the input iterators start from the beginning of their
new shards (deterministic: the same seeds as a fresh run with that process count).
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, List, NamedTuple, Optional, Tuple

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from handjax.distributed import all_processes_agree, barrier, is_main
from handjax.models.checkpoint import resolve_path

COMMIT_FILE = "commit_success.txt"  # Orbax writes it last into every step directory
TMP_MARK = ".orbax-checkpoint-tmp"
INCOMPLETE_SUFFIX = ".incomplete"
UNREADABLE_SUFFIX = ".unreadable"
METRICS_ITEM = "metrics"
STAGE_RESULT = "stage_result.json"


class CheckpointWriteError(OSError):
    """A checkpoint step could not be written (the message names the path and the OS error)."""


class CheckpointRestoreError(ValueError):
    """No checkpoint step under a directory restores (the message lists every step tried)."""


class Restored(NamedTuple):
    """What :meth:`Checkpointer.restore_latest` found: the state, its step and the saved metrics."""

    state: Any
    step: int
    metrics: dict


def brief_reason(err: BaseException, limit: int = 400) -> str:
    """``Type: first line of the message``, without TensorStore's JSON specs, at most ``limit`` chars."""
    text = str(err).strip().split("\n")[0]
    for cut in (" [tensorstore_spec", " [source locations"):
        text = text.split(cut)[0]
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _iter_supports_state(it) -> bool:
    """grain iterators, or any iterator with get_state() -> bytes / set_state(bytes) / start_prefetch()."""
    return it is not None and hasattr(it, "get_state") and hasattr(it, "set_state")


_DATA_STATE_RE = re.compile(r"process_\d+-of-(\d+)\.json")


def _data_state_name(process_index: int, process_count: int) -> str:
    """The per-process iterator file grain's Orbax handler writes under ``<step>/data``."""
    return f"process_{process_index}-of-{process_count}.json"


def _free_name(root: epath.Path, name: str, suffix: str) -> epath.Path:
    """``root/<name><suffix>``, or ``<name><suffix>.k`` for the first k not taken."""
    target, k = root / (name + suffix), 1
    while target.exists():
        target, k = root / f"{name}{suffix}.{k}", k + 1
    return target


def set_aside_incomplete(directory: str) -> list:
    """Warn about interrupted checkpoint writes under ``directory``; hide incomplete step dirs.

    Temporary Orbax directories (never restored from) are reported. Step directories without
    ``commit_success.txt`` newer than every complete step (an interrupted write) are renamed
    to ``<step>.incomplete[.k]``; older ones (an interrupted keep-N clean-up: Orbax was
    deleting that old step) are removed. Returns the renamed paths. Call on one process only.
    """
    root = epath.Path(directory)
    if not root.is_dir():
        return []
    steps = [c for c in root.iterdir() if c.name.isdigit() and c.is_dir()]
    complete = [int(c.name) for c in steps if (c / COMMIT_FILE).exists()]
    newest_complete = max(complete) if complete else None
    moved = []
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        if TMP_MARK in child.name:
            logging.warning("ignoring incomplete checkpoint %s (a write was interrupted; safe to delete)", child)
        elif child.name.isdigit() and child.is_dir() and not (child / COMMIT_FILE).exists():
            if newest_complete is not None and int(child.name) < newest_complete:
                child.rmtree()
                logging.warning("removed the remains of old checkpoint step %s: its deletion by the keep-N "
                                "clean-up (keep_checkpoints) was interrupted; step %d is the newest complete one",
                                child, newest_complete)
                continue
            target = _free_name(root, child.name, INCOMPLETE_SUFFIX)
            child.rename(target)
            logging.warning("ignoring incomplete checkpoint step %s (no %s: a write was interrupted); "
                            "moved it to %s", child, COMMIT_FILE, target)
            moved.append(target)
    return moved


def set_aside_unreadable(directory: str, step: int, reason: str) -> epath.Path:
    """Rename step ``step`` under ``directory`` to ``<step>.unreadable[.k]`` (kept, never deleted)
    with a warning naming the step, the path and ``reason``. Call on one process only."""
    root = epath.Path(directory)
    source = root / str(step)
    target = _free_name(root, str(step), UNREADABLE_SUFFIX)
    source.rename(target)
    logging.warning("checkpoint step %d in %s does not restore (%s); set it aside as %s (its files are kept) "
                    "and trying the previous step", step, source, reason, target)
    return target


def _atomic_write_text(path: epath.Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    tmp.rename(path)


def write_stage_result(stage_dir: str, result: dict) -> str:
    """Mark a unit of work (a stage) as done: ``<stage_dir>/stage_result.json`` holds ``result``.

    Written atomically (temporary file + rename) by process 0 only; every process may call it.
    Returns the path. A stage is done exactly when :func:`read_stage_result` returns its result.
    """
    path = epath.Path(resolve_path(stage_dir)) / STAGE_RESULT
    if is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(path, json.dumps(result, indent=2, default=float))
    barrier(f"handjax-stage-result:{path}")
    return os.fspath(path)


def read_stage_result(stage_dir: str) -> Optional[dict]:
    """The result of a finished unit of work under ``stage_dir``, or None when it has not finished.

    An unreadable result file counts as not finished (with a warning naming it): the unit runs
    again and rewrites it.
    """
    path = epath.Path(resolve_path(stage_dir)) / STAGE_RESULT
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        logging.warning("%s is unreadable (%s): the stage runs again", path, brief_reason(e))
        return None
    if not isinstance(result, dict):
        logging.warning("%s does not hold a JSON object: the stage runs again", path)
        return None
    return result


def _read_saved_tree(path: epath.Path) -> dict:
    """The tree metadata (shapes, dtypes) of the saved train state item at ``path``.

    Read with the item's handler, not a ``Checkpointer``: the step-level metadata file lives one
    folder up, and a ``Checkpointer`` warns that it is missing from the item folder."""
    reader = ocp.PyTreeCheckpointHandler()
    try:
        saved = reader.metadata(path)
    finally:
        reader.close()
    return getattr(getattr(saved, "item_metadata", saved), "tree", saved)


def saved_leaf_paths(tree) -> List[Tuple[str, ...]]:
    """The leaf paths of a saved tree (Orbax metadata or arrays) as tuples of strings, in tree order.

    E.g. ``('l2', 'kernel', 'value')`` for the ``params`` entry of a train state whose ``l2.kernel``
    is trainable (nnx variables are saved as ``{'value': array}``).
    """
    return [tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


class Checkpointer:
    """Save/restore ``{state, data}`` steps under ``directory`` (local path or gs://).

    Every process must construct it and call ``save`` / ``restore`` / ``restore_data``
    together (the train state is written and read collectively).
    """

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = resolve_path(directory)
        self._pending: Optional[int] = None  # the step being written in the background
        if is_main():
            set_aside_incomplete(self.directory)
        barrier(f"handjax-checkpoint-scan:{self.directory}")
        try:
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
                    # directories are created in save() itself: an unwritable folder fails there at once
                    # instead of timing out in a background barrier
                    async_options=ocp.options.AsyncOptions(create_directories_asynchronously=False)),
            )
        except OSError as e:
            raise CheckpointWriteError(f"cannot create the checkpoint folder {self.directory}: "
                                       f"{brief_reason(e)}") from e

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter=None, force: bool = False,
             metrics: Optional[dict] = None) -> None:
        """Write ``step`` (in the background when asynchronous; :meth:`check` surfaces a failure).

        ``metrics``: JSON-able dict saved with the step (returned by :meth:`restore_latest`).
        Raises :class:`CheckpointWriteError` when the step cannot be started (unwritable folder)
        or when the previous background write failed.
        """
        self._finish_pending(block=True)
        items = {"state": ocp.args.StandardSave(state)}
        if _iter_supports_state(data_iter):
            items["data"] = grain.checkpoint.CheckpointSave(data_iter)
        if metrics is not None:
            items[METRICS_ITEM] = ocp.args.JsonSave({k: float(v) for k, v in metrics.items()})
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as e:  # noqa: BLE001 -- any failure to write is reported with its path
            self._failed_write(step, e)
        self._pending = step

    def _failed_write(self, step: int, err: BaseException):
        """Remove the failed step's temporary directory (main process) and raise CheckpointWriteError."""
        root = epath.Path(self.directory)
        left = []
        if is_main():
            try:
                for child in root.iterdir():
                    if child.name.startswith(f"{step}{TMP_MARK}") or (
                            child.name == str(step) and not (child / COMMIT_FILE).exists()):
                        child.rmtree()
            except OSError as e:
                left.append(brief_reason(e))
        where, reason = os_error_of(err)
        raise CheckpointWriteError(
            f"cannot write checkpoint step {step} to {where or os.path.join(self.directory, str(step))}: {reason}; "
            f"stopping. The previous checkpoints in {self.directory} are intact"
            + (f" (could not remove the partial step: {left[0]})" if left else "")) from err

    def _finish_pending(self, block: bool) -> None:
        """Surface the outcome of the background write of ``self._pending`` once it has ended
        (``block``: wait for it). Raises :class:`CheckpointWriteError` if it failed."""
        if self._pending is None or (not block and self.manager.is_saving_in_progress()):
            return
        step, self._pending = self._pending, None
        try:
            self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001 -- any failure to write is reported with its path
            self._failed_write(step, e)

    def check(self) -> None:
        """Raise :class:`CheckpointWriteError` if the background write has failed (cheap, never
        blocks: call it after every step)."""
        self._finish_pending(block=False)

    def restore(self, step: int, target_state: Any, data_iter=None):
        """The train state of ``step`` in the structure/shardings of ``target_state`` (any mesh).

        With ``data_iter``, also restores its state (:meth:`restore_data`).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        if data_iter is not None:
            self.restore_data(step, data_iter)
        return restored["state"]

    def restore_subset(self, step: int, target: Any) -> Any:
        """Only the entries of the train state present in ``target`` (e.g. ``{"params", "rest"}``).

        Restores the model without building an optimizer (evaluation, ``init_from``). A saved
        tree that does not fit ``target`` is a ValueError listing the differing keys.
        """
        from handjax.models.checkpoint import check_matches

        saved = _read_saved_tree(epath.Path(self.directory) / str(step) / "state")
        check_matches({k: saved[k] for k in target if k in saved}, target, f"checkpoint step {step} in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        args = ocp.args.PyTreeRestore(item=abstract, partial_restore=True,
                                      restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
        return self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]

    def saved_tree(self, step: int) -> dict:
        """The tree metadata (shapes, dtypes) of step ``step``'s saved train state, read without restoring it.

        Raises FileNotFoundError naming the path when the step has no train state, and ValueError
        naming it when its metadata cannot be read.
        """
        path = epath.Path(self.directory) / str(step) / "state"
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint step {step} in {self.directory} has no train state ({path})")
        try:
            tree = _read_saved_tree(path)
        except Exception as e:  # noqa: BLE001 -- any unreadable metadata is reported with its path
            raise ValueError(f"cannot read the saved train state of checkpoint step {step} ({path}): "
                             f"{brief_reason(e)}") from e
        if not isinstance(tree, dict):
            raise ValueError(f"{path}: expected a saved train state (a dict with 'params' and 'rest'), "
                             f"got {type(tree).__name__}")
        return tree

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

    def restore_latest(self, target_state: Any, data_iter=None) -> Optional[Restored]:
        """The newest step that restores (state into ``target_state``'s structure, ``data_iter``'s
        state, the saved metrics), or None when there is no complete step.

        A step that fails to restore is set aside (:func:`set_aside_unreadable`) and the next older
        one is tried; with several processes they agree on every attempt. Raises
        :class:`CheckpointRestoreError` listing every step tried (nothing renamed) when none
        restores, and ValueError (from the structure check) when a step was written for another
        model.
        """
        from handjax.models.checkpoint import check_matches

        failures: List[Tuple[int, str, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            path = os.path.join(self.directory, str(step))
            reason = ""
            try:
                state = self.restore(step, target_state)
                self.restore_data(step, data_iter)
                metrics = self._restore_metrics(step)
            except Exception as e:  # noqa: BLE001 -- classified below
                reason = brief_reason(e)
                saved = self._saved_tree(step)
                if saved is not None:  # readable, but written for another model: a config error, not damage
                    check_matches(saved, target_state, f"checkpoint step {step} in {self.directory}")
            if all_processes_agree(not reason):
                for step_, path_, reason_ in failures:
                    if is_main():
                        set_aside_unreadable(self.directory, step_, reason_)
                barrier(f"handjax-checkpoint-set-aside:{self.directory}:{step}")
                if failures:
                    self.manager.reload()
                return Restored(state, step, metrics)
            failures.append((step, path, reason or "failed to restore on another process"))
        if failures:
            tried = "\n".join(f"  step {s} ({p}): {r}" for s, p, r in failures)
            raise CheckpointRestoreError(
                f"no checkpoint in {self.directory} restores; tried (nothing was changed):\n{tried}\n"
                f"Move {self.directory} away (or delete the damaged steps) to start this stage from scratch.")
        return None

    def _saved_tree(self, step: int):
        """The saved train state's tree metadata of ``step``, or None when it cannot be read."""
        try:
            return _read_saved_tree(epath.Path(self.directory) / str(step) / "state")
        except Exception:  # noqa: BLE001 -- unreadable metadata: damage
            return None

    def _restore_metrics(self, step: int) -> dict:
        if not (epath.Path(self.directory) / str(step) / METRICS_ITEM).exists():
            return {}  # written before metrics were saved with the step
        restored = self.manager.restore(step, args=ocp.args.Composite(**{METRICS_ITEM: ocp.args.JsonRestore()}))
        metrics = restored[METRICS_ITEM]
        if not isinstance(metrics, dict):
            raise ValueError(f"{METRICS_ITEM} of step {step} is not a JSON object")
        return {str(k): float(v) for k, v in metrics.items()}

    def wait(self):
        self._finish_pending(block=True)
        self.manager.wait_until_finished()

    def close(self):
        """Wait for the last write and close; a failed write raises :class:`CheckpointWriteError`."""
        try:
            self._finish_pending(block=True)
        finally:
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001 -- the write error (if any) is the one to report
                logging.debug("closing the checkpoint manager failed", exc_info=True)


_TS_OS_ERROR = re.compile(r'"([^"]+)": ([^"\[\]]*?) \[os_error_code=.(\d+).\]')


def os_error_of(err: BaseException) -> Tuple[Optional[str], str]:
    """(path, reason) of the OS error behind ``err``: a Python OSError in its chain, or the
    ``"path": ... [os_error_code='N']`` part of a TensorStore message; else (None, brief reason)."""
    for e in _causes(err):
        if isinstance(e, OSError) and e.errno is not None:
            return e.filename, f"{e.strerror} (errno {e.errno})"
    for e in _causes(err):
        m = _TS_OS_ERROR.search(str(e))
        if m:
            detail = m.group(2).rsplit(": ", 1)[-1]
            return m.group(1), f"{detail} (errno {m.group(3)})"
    return None, brief_reason(err)


def _causes(err: BaseException):
    """``err`` and its ``__cause__`` / ``__context__`` chain."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__
