"""One training loop for every handjax system.

A system supplies a :class:`Task`: an NNX model and a loss function
``loss_fn(model, batch, rng) -> (loss, metrics)`` that runs inside ``jax.jit``
with the model in train mode. The loop owns everything else: a ``Mesh`` over
all devices with a 'data' axis (batch sharded, parameters and optimizer state
replicated, so BatchNorm statistics and contrastive negatives are global by
construction), the optax optimizer, non-finite guards, Orbax checkpoints with
the input iterator's state, automatic resume, TensorBoard and stdout logging
(process 0 only).

The input is any iterator of process-local numpy batches (dicts); the loop
never imports a dataset module.

Multi-process runs (``handjax.distributed.initialize`` first): every process runs the same
loop on its own slice of the global batch; checkpoints are written collectively. A SIGTERM
(preemption notice) makes every process checkpoint the same step and raise
:class:`Preempted`; ``handjax.main`` turns that into exit code
``handjax.distributed.PREEMPTED_EXIT_CODE``, and rerunning the command resumes.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from handjax import distributed
from handjax.distributed import PreemptionGuard, barrier
from handjax.sharding import global_batch, make_mesh, replicate  # noqa: F401 (re-exported)
from handjax.models.checkpoint import is_model_checkpoint, load_model, resolve_path
from handjax.train.checkpoint import Checkpointer, saved_leaf_paths
from handjax.train.optim import make_optimizer


@dataclasses.dataclass
class Task:
    model: nnx.Module
    loss_fn: Callable[[nnx.Module, dict, jax.Array], tuple]
    trainable: Any = nnx.Param  # nnx filter of the optimised variables
    summary_fn: Optional[Callable[[nnx.Module, dict], dict]] = None  # host side: name -> (N, H, W, 3) uint8
    eval_fn: Optional[Callable[[nnx.Module], dict]] = None  # validation metrics; called on every process


class NonFiniteLossError(FloatingPointError):
    pass


class Preempted(distributed.Preempted):
    """Training stopped on a preemption notice after checkpointing ``step`` into ``directory``."""

    def __init__(self, name: str, step: int, directory: str):
        super().__init__(f"[{name}] preempted: checkpoint of step {step} written to {directory}; "
                         f"run the same command again to resume")
        self.name, self.step, self.directory = name, step, directory


def _is_main() -> bool:
    return jax.process_index() == 0


class _Logger:
    def __init__(self, workdir: str, total_steps: int, name: str):
        self.total, self.name = total_steps, name
        self.writer = None
        if _is_main():
            from tensorboardX import SummaryWriter
            self.logdir = os.path.join(workdir, "tb")
            self.pngdir = os.path.join(workdir, "summaries")
            self.writer = SummaryWriter(self.logdir)
        self.t0, self.s0 = time.time(), None

    def scalars(self, step: int, values: dict):
        if self.s0 is None:
            self.t0, self.s0 = time.time(), step
            rate = float("nan")
        else:
            rate = (step - self.s0) / max(time.time() - self.t0, 1e-9)
        if not _is_main():
            return
        for k, v in values.items():
            self.writer.add_scalar(f"{self.name}/{k}", float(v), step)
        if np.isfinite(rate):
            self.writer.add_scalar(f"{self.name}/steps_per_sec", rate, step)
        eta = (self.total - step) / rate if rate and np.isfinite(rate) and rate > 0 else float("nan")
        eta_s = f"{int(eta // 60)}m{int(eta % 60):02d}s" if np.isfinite(eta) else "?"
        shown = " ".join(f"{k} {float(v):.4g}" for k, v in values.items())
        rate_s = f"{rate:.2f} step/s" if np.isfinite(rate) else "- step/s"
        print(f"[{self.name}] step {step}/{self.total} {shown} ({rate_s}, ETA {eta_s})", flush=True)

    def validation(self, step: int, values: dict):
        """Validation metrics (TensorBoard ``<name>/val/<key>`` and one printed line)."""
        if not _is_main():
            return
        for k, v in values.items():
            self.writer.add_scalar(f"{self.name}/val/{k}", float(v), step)
        print(f"[{self.name}] step {step} validation: " + " ".join(f"{k} {float(v):.4g}" for k, v in values.items()),
              flush=True)

    def images(self, step: int, images: dict):
        """TensorBoard images, plus a PNG (panels stacked vertically) under workdir/summaries."""
        if self.writer is None:
            return
        import io

        from PIL import Image
        pngdir = epath.Path(self.pngdir)
        pngdir.mkdir(parents=True, exist_ok=True)
        for k, v in images.items():
            v = np.asarray(v)
            self.writer.add_images(f"{self.name}/{k}", v, step, dataformats="NHWC")
            buf = io.BytesIO()
            Image.fromarray(np.concatenate(list(v), axis=0)).save(buf, format="PNG")
            (pngdir / f"{k}_{step:07d}.png").write_bytes(buf.getvalue())

    def close(self):
        if self.writer is not None:
            self.writer.close()


def init_state(model: nnx.Module, trainable, tx) -> tuple:
    """(graphdef, train state) for ``model``: params, the rest of the model state, optimizer state, counters."""
    graphdef, params, rest = nnx.split(model, trainable, ...)
    state = {"params": params, "rest": rest, "opt_state": tx.init(params),
             "step": jnp.zeros((), jnp.int32), "nonfinite": jnp.zeros((), jnp.int32)}
    return graphdef, state


def saved_trainable(saved_params, saved_rest=None):
    """The nnx filter of the variables a checkpoint stores under "params" (its stage's ``Task.trainable``).

    saved_params / saved_rest: the saved trees of a train state's "params" / "rest" entries
    (``Checkpointer.saved_tree(step)[...]``: leaves at ``<variable path>/value``). A variable path in
    neither (e.g. of a model of another config) is classified by its type (``nnx.Param``: "params"), so
    a mismatch is reported where the default split would put it.
    """
    def prefixes(tree):
        return {leaf[:i] for leaf in saved_leaf_paths(tree) for i in range(1, len(leaf) + 1)}

    stored, other = prefixes(saved_params), prefixes(saved_rest) if saved_rest is not None else set()
    is_param = nnx.filterlib.to_predicate(nnx.Param)

    def trainable(path, variable):
        key = tuple(map(str, path))
        if key in stored:
            return True
        return key not in other and is_param(path, variable)

    return trainable


def restore_model(model: nnx.Module, workdir: str, step: Optional[int] = None, trainable=None) -> int:
    """Load the model part of a checkpoint written by ``train`` into ``model``; returns the step.

    Builds no optimizer: only the parameters and the other model state are read. Also accepts
    a model-only checkpoint (``handjax.models.checkpoint.save_model``, e.g. from a converter);
    then returns -1. Raises FileNotFoundError naming the directory if there is none, and
    ValueError naming the checkpoint and listing the differing keys (e.g.
    ``not in the model: params/head/kernel/value``) if the checkpoint does not fit ``model``.

    A train checkpoint stores the ``Task.trainable`` variables of its stage as "params" and the
    others as "rest"; which is which is read from the saved tree (:func:`saved_trainable`), so a
    stage trained with any filter (e.g. only a head) restores without being told it.
    ``trainable``: None (read it from the checkpoint), or the filter the stage trained with (it
    must agree with the checkpoint).
    """
    if is_model_checkpoint(workdir):
        load_model(model, workdir)
        return -1
    directory = os.path.join(resolve_path(workdir), "checkpoints")
    if not epath.Path(directory).is_dir():
        raise FileNotFoundError(f"no checkpoints in {directory} (and {workdir} is not a model checkpoint)")
    ckpt = Checkpointer(directory, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {directory}")
        if trainable is None:
            saved = ckpt.saved_tree(step)
            if "params" not in saved:
                raise ValueError(f"checkpoint step {step} in {directory}: the saved train state has no 'params' "
                                 f"entry (found {sorted(saved)}); expected one written by handjax.train.loop.train")
            trainable = saved_trainable(saved["params"], saved.get("rest"))
        target = {"params": nnx.state(model, trainable), "rest": nnx.state(model, nnx.Not(trainable))}
        state = ckpt.restore_subset(step, target)
    finally:
        ckpt.close()
    nnx.update(model, state["params"], state["rest"])
    return int(step)


def _nonfinite_message(name: str, done: int, last_good: Optional[int], directory: str) -> str:
    msg = f"[{name}] non-finite loss or gradient before step {done}; stopping. Updates on those steps were skipped; "
    if last_good is not None:
        return msg + f"the last good checkpoint is step {last_good} in {directory}"
    return msg + (f"there is no checkpoint yet (it happened before the first one). Try a lower learning rate "
                  f"(--config.{name}.optim.lr), a warm-up (--config.{name}.optim.warmup_steps) or check the input "
                  f"data for NaN/inf; --config.{name}.checkpoint_every sets how often checkpoints are written")


def _train_step(graphdef, tx, loss_fn, trainable, state, batch, rng):
    """One optimisation step; skips the update (and counts it) if the loss or a gradient is not finite."""
    params, rest = state["params"], state["rest"]

    def compute(p):
        model = nnx.merge(graphdef, p, jax.tree.map(lambda x: x, rest), copy=True)
        loss, metrics = loss_fn(model, batch, rng)
        return loss, (metrics, nnx.state(model, nnx.Not(trainable)))

    (loss, (metrics, new_rest)), grads = jax.value_and_grad(compute, has_aux=True)(params)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & jnp.all(jnp.array([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = {
        "params": keep(new_params, params),
        "rest": keep(new_rest, rest),
        "opt_state": keep(opt_state, state["opt_state"]),
        "step": state["step"] + 1,
        "nonfinite": state["nonfinite"] + (~finite).astype(jnp.int32),
    }
    metrics = dict(metrics, loss=loss)
    return new_state, metrics


def _host_copy(tree):
    """Host numpy copy of replicated arrays (also when they span several processes)."""
    return jax.tree.map(np.asarray, tree)


def _restore(ckpt: Checkpointer, state: dict, data, name: str) -> tuple:
    """(state, start step, metrics saved with that step) from the newest checkpoint that restores
    (damaged newer ones are set aside, see ``Checkpointer.restore_latest``), or (state, 0, {})."""
    found = ckpt.restore_latest(state, data)
    if found is None:
        return state, 0, {}
    start = int(found.state["step"])
    if _is_main():
        print(f"[{name}] resumed from {ckpt.directory} at step {start}", flush=True)
    return found.state, start, found.metrics


def train(task: Task, data: Iterator, cfg, workdir: str, *, name: str = "train", mesh=None,
          seed: int = 0, on_log: Optional[Callable[[int, dict], None]] = None) -> dict:
    """Run ``cfg.num_steps`` steps; resume from ``workdir/checkpoints`` if present.

    cfg: num_steps, optim (see handjax.train.optim), log_every, checkpoint_every,
    keep_checkpoints, summary_every. ``on_log(step, metrics)`` is called on every process
    at each logged step with the full-precision metrics (host floats). Returns the last
    logged metrics; the trained state is written back into ``task.model``.

    ``workdir`` may be a local path or a URL Orbax/TensorBoard understand (gs://...).
    Raises :class:`Preempted` after checkpointing the current step when a preemption
    notice (SIGTERM) arrives; :class:`NonFiniteLossError` on a non-finite loss/gradient.
    """
    mesh = mesh or make_mesh()
    workdir = resolve_path(workdir)
    num_steps = int(cfg.num_steps)
    tx, schedule = make_optimizer(cfg.optim, num_steps)
    model = task.model
    model.train()
    graphdef, state = init_state(model, task.trainable, tx)
    replicated = NamedSharding(mesh, P())
    state = replicate(state, mesh)

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=int(cfg.get("keep_checkpoints", 3)))
    try:
        state, start, restored_metrics = _restore(ckpt, state, data, name)
    except BaseException:
        ckpt.close()
        raise

    def step_fn(state, batch, rng):
        return _train_step(graphdef, tx, task.loss_fn, task.trainable, state, batch, rng)

    step_jit = jax.jit(step_fn, donate_argnums=(0,), out_shardings=(replicated, replicated))
    logger = _Logger(workdir, num_steps, name)
    log_every = int(cfg.get("log_every", 50))
    ckpt_every = int(cfg.get("checkpoint_every", 500))
    summary_every = int(cfg.get("summary_every", 0))
    eval_every = int(cfg.get("eval_every", 0) or 0)
    base_rng = jax.random.key(seed)
    last_metrics: dict = dict(restored_metrics)  # a stage resumed at its last step reports its final metrics
    last_good = start if start else None
    preempted_at = None
    try:
        with PreemptionGuard() as guard:
            for step in range(start, num_steps):
                local = next(data)
                batch = global_batch(local, mesh)
                state, metrics = step_jit(state, batch, jax.random.fold_in(base_rng, step))
                ckpt.check()  # a failed background checkpoint write stops the run now, not steps later
                done = step + 1
                stop = guard.should_stop()
                is_log = done % log_every == 0 or done == num_steps
                is_ckpt = done % ckpt_every == 0 or done == num_steps or stop
                if is_log or is_ckpt:
                    if int(state["nonfinite"]) > 0:
                        raise NonFiniteLossError(_nonfinite_message(name, done, last_good, ckpt.directory))
                    last_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    last_metrics["lr"] = float(schedule(step))
                    if is_log:
                        logger.scalars(done, last_metrics)
                        if on_log is not None:
                            on_log(done, dict(last_metrics))
                    if is_ckpt:
                        ckpt.save(done, state, data, metrics=last_metrics)
                        last_good = done
                if summary_every and task.summary_fn is not None and done % summary_every == 0 and _is_main():
                    nnx.update(model, _host_copy(state["params"]), _host_copy(state["rest"]))
                    model.eval()
                    logger.images(done, task.summary_fn(model, local))
                    model.train()
                if eval_every and task.eval_fn is not None and done % eval_every == 0 and not stop:
                    nnx.update(model, _host_copy(state["params"]), _host_copy(state["rest"]))
                    try:
                        logger.validation(done, task.eval_fn(model))  # every process: evaluation is collective
                    except distributed.Preempted:  # notice during validation: abandon it, checkpoint this step
                        if not is_ckpt:
                            ckpt.save(done, state, data, metrics=last_metrics)
                        stop = True
                    model.train()
                if stop:
                    preempted_at = done
                    break
    except BaseException:
        try:  # the error in flight is the one to report; a failing close must not replace it
            ckpt.close()
        except Exception as close_err:  # noqa: BLE001
            logging.warning("[%s] %s", name, close_err)
        raise
    else:
        ckpt.close()  # waits for the last (async) checkpoint write; raises CheckpointWriteError if it failed
    finally:
        logger.close()
        # Write the latest state back (also when stopping on a non-finite loss: skipped updates keep it good).
        nnx.update(model, state["params"], state["rest"])
    if preempted_at is not None:
        barrier(f"handjax-preempted:{name}")  # nobody exits before every part of the checkpoint is final
        if _is_main():
            print(f"[{name}] preemption notice (SIGTERM): checkpoint of step {preempted_at} written to "
                  f"{ckpt.directory}; stopping. Run the same command again to resume.", flush=True)
        raise Preempted(name, preempted_at, ckpt.directory)
    return last_metrics
