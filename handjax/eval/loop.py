"""One evaluation loop for every system.

``evaluate(predict, model, batches, mesh, evaluator)`` jits the system's predict function
over the device mesh (images sharded on 'data', the model replicated), gathers the labels of
every process so that each process sees the whole global batch, and feeds the predictions and
labels to a named evaluator (``handjax.eval.evaluators``); padded samples carry ``valid=False``
and evaluators ignore them. Every process must call it together (the predictions are global).

``predict(model, images) -> dict of arrays`` (batch axis 0); ``model`` may be None for
baselines that ignore the images (e.g. the mean pose).
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable, Optional, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from handjax.distributed import check_preemption
from handjax.sharding import gather_labels, global_batch, replicate


def compile_predict(predict: Callable, model, mesh) -> Callable:
    """``images (global, sharded) -> predictions (replicated)``, jitted with the model's state as an argument."""
    replicated = NamedSharding(mesh, P())
    if model is None:
        step = jax.jit(lambda images: predict(None, images), out_shardings=replicated)
        return step
    model.eval()
    graphdef, state = nnx.split(model)
    # a restored model-only checkpoint lives on one device; the images are sharded over the mesh
    state = replicate(state, mesh)

    @functools.partial(jax.jit, out_shardings=replicated)
    def step(state, images):
        return predict(nnx.merge(graphdef, state), images)

    return lambda images: step(state, images)


def evaluate(predict: Callable, model, batches: Iterable[dict], mesh, evaluator,
             collectors: Sequence = (), inputs: Sequence[str] = ("image",),
             max_batches: Optional[int] = None) -> dict:
    """Run ``predict`` over a finite iterator of process-local batches; returns ``evaluator.result()``.

    ``inputs``: batch keys passed to the model (sharded); everything else is a label.
    ``collectors``: objects with ``add(pred, labels)`` that also receive every batch (e.g. a
    pred.json writer). ``max_batches`` stops early (validation during training).
    """
    step = compile_predict(predict, model, mesh)
    for i, local in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        check_preemption("evaluation")  # SIGTERM: abandon the pass (no partial results; a rerun evaluates again)
        if len(inputs) == 1:
            args = (global_batch({"x": local[inputs[0]]}, mesh)["x"],)
        else:
            args = (global_batch({k: local[k] for k in inputs}, mesh),)
        pred = jax.tree.map(np.asarray, jax.device_get(step(*args)))  # the whole global batch, on every process
        labels = gather_labels(local)
        if "valid" not in labels:
            labels = dict(labels, valid=np.ones(len(next(iter(pred.values()))), bool))
        evaluator.add(pred, labels)
        for c in collectors:
            c.add(pred, labels)
    return evaluator.result()
