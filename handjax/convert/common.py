"""What every release converter shares: reading a released torch checkpoint, the report, writing the result.

A converter (``handjax.convert.<system>``) does four things, three of them here:

1. :func:`open_release` checks the ``--checkpoint`` file and the ``--out`` folder, reads the file
   without torch (restricted unpickler: non-tensor objects stay inert placeholders) and takes the
   model's state dict out of it (:func:`load_state_dict`) -> a :class:`Release`;
2. the system's own module maps the state dict onto its model, strictly
   (:func:`fill_from_state_dict` with the system's rules);
3. it describes what it did in a :class:`ConversionReport`;
4. :func:`write_conversion` writes the model-only checkpoint
   (``handjax.models.checkpoint.save_model``) and ``conversion_report.txt`` into the output folder.

Every error names the file or flag and what was expected.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from handjax.convert.mapping import Ignore, MappingReport, Rule, apply_rules, flatten_tree, path_str
from handjax.convert.state_dict import ExtractReport, extract_state_dict
from handjax.convert.torch_reader import LoadReport, PlaceholderWarning, load_torch_checkpoint
from handjax.models.checkpoint import is_model_checkpoint, save_model

REPORT_FILE = "conversion_report.txt"


# ----------------------------------------------------------------------------
# the report
# ----------------------------------------------------------------------------


@dataclass
class ConversionReport:
    """Everything one conversion did.

    system: e.g. 'tempclr', 'interwild'; checkpoint: the file read; pointer: a
    ``latest_checkpoint`` file followed to it (or None); out_dir: where the
    model-only checkpoint was written (None if not written); depth: backbone
    depth; load / extract / mapping: reports of the three steps; meta: the
    metadata saved with the checkpoint; notes: lines shown under the title.
    A system with more to say about its model overrides :meth:`model_line`.
    """

    system: str
    checkpoint: str
    pointer: Optional[str]
    depth: int
    load: LoadReport
    extract: ExtractReport
    mapping: MappingReport
    meta: dict = field(default_factory=dict)
    out_dir: Optional[str] = None
    notes: list = field(default_factory=list)

    def model_line(self) -> str:
        """The report's ``model:`` line (without indentation)."""
        return f"model: ResNet-{self.depth}"

    def summary(self, per_tensor: bool = True) -> str:
        """Readable report; ``per_tensor`` lists every tensor (assigned or ignored, with the reason)."""
        via = f" (via {self.pointer})" if self.pointer else ""
        lines = [f"{self.system}: {self.checkpoint}{via}"] + [f"  note: {n}" for n in self.notes]
        lines.append("  " + self.load.summary().replace("\n", "\n  "))
        if self.extract.nested_path or self.extract.stripped_prefixes:
            lines.append(f"  state dict under {'/'.join(self.extract.nested_path) or 'the root'}"
                         + (f", prefixes stripped: {list(self.extract.stripped_prefixes)}"
                            if self.extract.stripped_prefixes else ""))
        for entry in self.extract.skipped:
            lines.append(f"  skipped non-tensor entry {entry}")
        lines.append("  " + self.model_line())
        lines.append("  " + self.mapping.summary().replace("\n", "\n  "))
        if per_tensor:
            lines += [f"    used     {src} -> {dst} [{tr}]" for src, dst, tr in self.mapping.assigned]
            lines += [f"    ignored  {src}: {reason}" for src, reason in self.mapping.ignored]
            lines += [f"    cast     {entry}" for entry in self.mapping.cast]
        if self.out_dir:
            lines.append(f"written: {self.out_dir} (handjax model-only checkpoint)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------
# reading a release
# ----------------------------------------------------------------------------


def load_state_dict(path: str, nested_keys: Sequence[str], prefixes_to_strip: Sequence[str] = ("module.",),
                    contents: str = "a checkpoint dict or state dict"):
    """``(obj, state dict, LoadReport, ExtractReport)`` of the ``torch.save`` file ``path``, torch-free.

    obj: the whole unpickled object (e.g. ``{'epoch', 'network', 'optimizer'}``); the state dict
    (``{key: np.ndarray}``) is found under the first of ``nested_keys`` present (or is ``obj``
    itself), with ``prefixes_to_strip`` removed from every key (see
    :func:`handjax.convert.state_dict.extract_state_dict`). Placeholder warnings are not shown:
    the LoadReport lists the placeholders. Raises ValueError naming ``path`` when the file holds no
    dict (``contents`` says what was expected) or no usable state dict.
    """
    with warnings.catch_warnings():  # placeholders are listed in the report instead
        warnings.simplefilter("ignore", PlaceholderWarning)
        obj, load_report = load_torch_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected {contents}, got {type(obj).__name__}")
    try:
        state_dict, extract_report = extract_state_dict(obj, prefixes_to_strip=tuple(prefixes_to_strip),
                                                        nested_keys=tuple(nested_keys))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e
    return obj, state_dict, load_report, extract_report


def prepare_out_dir(out_dir: str | os.PathLike, checkpoint: str) -> str:
    """Absolute ``out_dir`` (the ``--out`` flag), checked but not created.

    Refuses a file, a non-empty folder that is not a handjax model checkpoint (an earlier
    conversion may be overwritten) and the folder of the source ``checkpoint``
    (FileExistsError naming the folder).
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.isfile(out_dir):
        raise FileExistsError(f"--out {out_dir} is a file; expected a (new) directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not is_model_checkpoint(out_dir):
        raise FileExistsError(f"--out {out_dir} exists, is not empty and is not a handjax model checkpoint; "
                              "refusing to write into it")
    if os.path.dirname(checkpoint) == out_dir:
        raise FileExistsError(f"--out {out_dir} is the folder of the source checkpoint; choose another directory")
    return out_dir


@dataclass(frozen=True)
class Release:
    """A released checkpoint, opened by :func:`open_release`.

    path: the absolute checkpoint file; out_dir: the checked absolute output folder; obj: the
    whole unpickled object; state_dict: ``{key: np.ndarray}`` (prefixes stripped); load / extract:
    the reports of reading the file and extracting the state dict.
    """

    path: str
    out_dir: str
    obj: Mapping
    state_dict: dict
    load: LoadReport
    extract: ExtractReport

    def int_entry(self, key: str) -> Optional[int]:
        """``obj[key]`` when it is an int (e.g. 'epoch', 'iteration'), else None (also when absent)."""
        value = self.obj.get(key)
        return value if isinstance(value, int) else None


def open_release(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, expected: str,
                 nested_keys: Sequence[str], prefixes_to_strip: Sequence[str] = ("module.",),
                 contents: str = "a checkpoint dict or state dict") -> Release:
    """The preamble of every converter: check ``--checkpoint`` and ``--out``, read the file, extract the state dict.

    checkpoint: the released file (a folder is an IsADirectoryError, a missing file a
    FileNotFoundError, both naming the path and ``expected``, e.g. ``'snapshot_<epoch>.pth'``).
    out_dir: checked by :func:`prepare_out_dir` before the (possibly large) file is read.
    nested_keys / prefixes_to_strip / contents: see :func:`load_state_dict`.
    """
    path = os.path.abspath(os.fspath(checkpoint))
    if os.path.isdir(path):
        raise IsADirectoryError(f"--checkpoint {path} is a folder; expected {expected}")
    out = prepare_out_dir(out_dir, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--checkpoint {path}: no such file (expected {expected})")
    obj, state_dict, load_report, extract_report = load_state_dict(path, nested_keys, prefixes_to_strip, contents)
    return Release(path, out, obj, state_dict, load_report, extract_report)


# ----------------------------------------------------------------------------
# filling the model, writing the result
# ----------------------------------------------------------------------------


def fill_from_state_dict(abstract_model, state_dict: Mapping[str, np.ndarray], rules: list[Rule | Ignore], *,
                         source_name: str = "state dict"):
    """``(model, MappingReport)``: ``abstract_model``'s graph with EVERY variable taken from ``state_dict``.

    abstract_model: an nnx module, typically from ``nnx.eval_shape`` (nothing is
    initialised, so conversion costs no random-init compilation). All variables
    (Param, BatchStat, Buffer, ...) are targets of the strict mapping, so a
    variable no rule fills is reported as missing (ConversionError). float
    sources are cast to the target float dtype (listed in ``report.cast``).
    """
    graphdef, state = nnx.split(abstract_model)
    tree, report = apply_rules(state_dict, rules, nnx.to_pure_dict(state), allow_cast=True, source_name=source_name)
    unfilled = [path_str(p) for p, leaf in flatten_tree(tree).items() if isinstance(leaf, jax.ShapeDtypeStruct)]
    if unfilled:  # only leaves kept by the MANO guard can get here; this model must not have any
        raise ValueError(f"{source_name}: model variables left without a value: {unfilled}")
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, tree))
    return nnx.merge(graphdef, state), report


def write_conversion(model, out_dir: str, meta: dict, report: ConversionReport) -> None:
    """Write ``model`` as a handjax model-only checkpoint with ``meta`` to ``out_dir`` (from
    :func:`prepare_out_dir`), set ``report.out_dir`` and write the full per-tensor report to
    ``<out_dir>/conversion_report.txt``."""
    save_model(model, out_dir, meta)
    report.out_dir = out_dir
    with open(os.path.join(out_dir, REPORT_FILE), "w") as fh:
        fh.write(report.summary(per_tensor=True) + "\n")


__all__ = ["ConversionReport", "Release", "fill_from_state_dict", "load_state_dict", "open_release",
           "prepare_out_dir", "write_conversion"]
