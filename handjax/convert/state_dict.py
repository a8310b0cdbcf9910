"""Find the flat tensor dict (``state_dict``) inside a loaded checkpoint object.

Handles the common wrappers:

* plain ``state_dict`` (an OrderedDict of name -> tensor);
* PyTorch Lightning ``{'state_dict': ..., 'optimizer_states': ..., 'epoch': ...}``;
* TempCLR's checkpointer ``{'model': state_dict, 'optimizer': ..., 'scheduler':
  ..., 'iteration': int, 'epoch_number': int}`` (tempclr.md section 2.1);
* other ``{'model_state_dict' | 'net' | 'network' | 'weights' | 'params': ...}``;
* whole pickled ``nn.Module`` objects (``torch.save(model)``), which the reader
  returns as inert placeholders whose state holds ``_parameters``,
  ``_buffers`` and ``_modules``.

Tensors are numpy arrays (from :func:`load_torch_checkpoint`).
"""
from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from handjax.convert.torch_reader import InertObject

DEFAULT_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net", "network", "weights", "params")
DEFAULT_PREFIXES = ("module.", "model.")


@dataclass
class ExtractReport:
    """How the state dict was found.

    nested_path: keys followed from the checkpoint root to the tensor dict;
    stripped_prefixes: prefixes removed from every key (in order);
    skipped: ``'key: type'`` for each non-tensor entry left out;
    cast_to_float32: keys converted from fp16/bf16/fp8 to float32.
    """

    nested_path: tuple[str, ...] = ()
    stripped_prefixes: tuple[str, ...] = ()
    skipped: list[str] = field(default_factory=list)
    cast_to_float32: list[str] = field(default_factory=list)


def _is_module_placeholder(obj: Any) -> bool:
    return isinstance(obj, InertObject) and isinstance(obj.state, Mapping) and "_parameters" in obj.state


def _module_items(module: InertObject, prefix: str):
    """(name, value) pairs of a pickled nn.Module, in torch ``state_dict`` order."""
    state = module.state
    non_persistent = set(state.get("_non_persistent_buffers_set", ()) or ())
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            yield prefix + name, value
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in non_persistent:
            yield prefix + name, value
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if _is_module_placeholder(child):
            yield from _module_items(child, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", child


def _flat_items(obj: Any, prefix: str = ""):
    """(dotted key, leaf) pairs of nested mappings / pickled modules."""
    if _is_module_placeholder(obj):
        yield from _module_items(obj, prefix)
        return
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) or _is_module_placeholder(value):
            yield from _flat_items(value, name + ".")
        else:
            yield name, value


def _descend(obj: Any, nested_keys) -> tuple[Any, tuple[str, ...]]:
    """Follow ``nested_keys`` (first present, repeatedly) down to the tensor dict."""
    path: list[str] = []
    while isinstance(obj, Mapping):
        for key in nested_keys:
            child = obj.get(key)
            if isinstance(child, Mapping) or _is_module_placeholder(child):
                obj = child
                path.append(key)
                break
        else:
            break
    return obj, tuple(path)


def _strip_common_prefixes(keys: list[str], prefixes) -> tuple[list[str], tuple[str, ...]]:
    """Strip each prefix shared by ALL keys, repeating until none applies."""
    stripped: list[str] = []
    changed = True
    while changed and keys:
        changed = False
        for p in prefixes:
            if p and all(k.startswith(p) for k in keys):
                keys = [k[len(p):] for k in keys]
                stripped.append(p)
                changed = True
    return keys, tuple(stripped)


def extract_state_dict(
    obj: Any,
    prefixes_to_strip: tuple[str, ...] = DEFAULT_PREFIXES,
    nested_keys: tuple[str, ...] = DEFAULT_NESTED_KEYS,
    to_float32: bool = True,
) -> tuple[collections.OrderedDict[str, np.ndarray], ExtractReport]:
    """The flat ``{name: np.ndarray}`` state dict inside a loaded checkpoint.

    obj: what :func:`load_torch_checkpoint` returned. The first key of
    ``nested_keys`` whose value is a mapping (or pickled module) is followed,
    repeatedly; nested mappings below that are flattened with ``'.'``.
    Prefixes in ``prefixes_to_strip`` are removed only when ALL keys share
    them. ``to_float32`` casts float16 (and ml_dtypes float8) arrays to
    float32 (bfloat16 is already float32 from the reader). Non-tensor entries
    are skipped and listed in the report.
    """
    if not (isinstance(obj, Mapping) or _is_module_placeholder(obj)):
        raise TypeError(f"extract_state_dict: expected a dict-like checkpoint, got {type(obj).__name__}")
    root, path = _descend(obj, nested_keys)
    report = ExtractReport(nested_path=path)
    tensors: list[tuple[str, np.ndarray]] = []
    for key, value in _flat_items(root):
        if isinstance(value, np.ndarray):
            tensors.append((key, value))
        else:
            report.skipped.append(f"{key}: {type(value).__name__}")
    if not tensors:
        raise ValueError(f"extract_state_dict: no tensors found under {'/'.join(path) or 'the checkpoint root'}")
    keys, report.stripped_prefixes = _strip_common_prefixes([k for k, _ in tensors], prefixes_to_strip)
    out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    for key, (_, value) in zip(keys, tensors):
        if key in out:
            raise ValueError(f"extract_state_dict: duplicate key {key!r} after flattening/prefix stripping")
        if to_float32 and value.dtype.kind in "fV" and value.dtype.itemsize < 4:
            value = value.astype(np.float32)
            report.cast_to_float32.append(key)
        out[key] = value
    return out, report
