"""Model-only checkpoints: the weights of an NNX model, without optimizer or iterator state.

Layout: ``<directory>/model`` (Orbax, ``{"params": ..., "rest": ...}``: trainable parameters and
the other model state such as BatchNorm statistics) and ``<directory>/handjax_model.json``
(what built the model: system, config keys). Written by the converters
(``python -m handjax.convert``) and by :func:`save_model`; read by evaluation, fine-tuning
(``init_from``) and ``python -m handjax.predict``. Lives below ``handjax.train`` so that the
converters and the predictor do not import the trainer.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Tuple

import jax
import orbax.checkpoint as ocp
from flax import nnx

MODEL_META = "handjax_model.json"
MODEL_ITEM = "model"


def resolve_path(path: str) -> str:
    """Absolute local path, or a URL (gs://...) unchanged."""
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def model_state(model) -> dict:
    """``{"params": trainable parameters, "rest": every other variable}`` of an NNX model."""
    return {"params": nnx.state(model, nnx.Param), "rest": nnx.state(model, nnx.Not(nnx.Param))}


def save_model(model, directory: str, meta: dict) -> None:
    """Write ``model``'s weights to ``directory`` with ``meta`` (what built it: system, config keys)."""
    directory = resolve_path(directory)
    os.makedirs(directory, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(directory, MODEL_ITEM), model_state(model), force=True)
    with open(os.path.join(directory, MODEL_META), "w") as fh:
        json.dump(meta, fh, indent=2)


def is_model_checkpoint(directory: str) -> bool:
    return os.path.isfile(os.path.join(resolve_path(directory), MODEL_META))


def _flat_shapes(tree) -> Dict[str, Tuple[int, ...]]:
    """'params/backbone/conv1/kernel' -> shape, for arrays and Orbax array metadata alike."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)
        out[key] = tuple(getattr(leaf, "shape", ()))
    return out


def state_differences(saved, expected) -> List[str]:
    """Human-readable differences between two trees of shapes: missing, unexpected, mismatched keys."""
    a, b = _flat_shapes(saved), _flat_shapes(expected)
    lines = [f"  missing from the checkpoint: {k} {b[k]}" for k in sorted(set(b) - set(a))]
    lines += [f"  not in the model: {k} {a[k]}" for k in sorted(set(a) - set(b))]
    lines += [f"  shape {a[k]} in the checkpoint, {b[k]} in the model: {k}"
              for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    return lines


def check_matches(saved_tree, expected_tree, what: str, max_lines: int = 20) -> None:
    """Raise ValueError listing the differing keys when ``saved_tree`` does not fit ``expected_tree``."""
    diff = state_differences(saved_tree, expected_tree)
    if diff:
        shown = diff[:max_lines] + ([f"  ... and {len(diff) - max_lines} more"] if len(diff) > max_lines else [])
        raise ValueError(f"{what} does not match the model built from the config ({len(diff)} differing keys; "
                         f"check model settings such as the backbone depth and head sizes):\n" + "\n".join(shown))


def read_meta(directory: str) -> dict:
    path = os.path.join(resolve_path(directory), MODEL_META)
    try:
        with open(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def load_model(model, directory: str) -> dict:
    """Load a :func:`save_model` checkpoint into ``model``; returns its metadata.

    Raises FileNotFoundError naming the directory if it holds no model checkpoint, and
    ValueError listing the differing keys if the saved weights do not fit ``model``.
    """
    directory = resolve_path(directory)
    if not is_model_checkpoint(directory):
        raise FileNotFoundError(f"{directory}: not a model checkpoint (no {MODEL_META})")
    meta = read_meta(directory)
    path = os.path.join(directory, MODEL_ITEM)
    target = model_state(model)
    with ocp.StandardCheckpointer() as ckptr:
        saved = ckptr.metadata(path)
        check_matches(getattr(getattr(saved, "item_metadata", saved), "tree", saved), target,
                      f"model checkpoint {directory}")
        state = ckptr.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, target))
    nnx.update(model, state["params"], state["rest"])
    return meta
