"""Released PyTorch checkpoints -> handjax model-only checkpoints: TempCLR and torchvision ResNets.

TempCLR (eth-ait/tempclr, tempclr.md sections 1-2)
---------------------------------------------------
A release folder ``<TempCLR_release>/{FreiHAND_model|HO3D_model}/checkpoints/``
holds ``latest_checkpoint``, a text file whose content is the path of the real
checkpoint (``tempclr_freihand`` / ``tempclr_ho3d``), and that checkpoint: a
``torch.save`` dict ``{'model': state_dict, 'optimizer': ..., 'iteration': ...}``.
The FreiHAND model is ResNet-50 (features F = 2048), the HO3D model ResNet-18
(F = 512); both regress P = 109 parameters with a 3-stage shared MLP
(F + 109 -> 1024 -> 1024 -> 109).

State-dict key -> ``handjax.models.tempclr.TempCLRModel`` path:

=========================================  ==================================  ==========================
TempCLR key                                handjax path                        transform
=========================================  ==================================  ==========================
``backbone.*`` (torchvision names)         ``backbone.*``                      ``torchvision_resnet_rules``
``regressor.module.layer_000.0.weight``    ``regressor.layers[0].kernel``      (1024, F+109) -> transpose
``regressor.module.layer_NNN.0.weight``    ``regressor.layers[NNN].kernel``    (out, in) -> (in, out)
``regressor.module.layer_NNN.0.bias``      ``regressor.layers[NNN].bias``      none
``regressor.module.output_layer.*``        ``regressor.output_layer.*``        as above
``regressor.mean_param`` [1, 109]          ``regressor.mean_param`` (109,)     reshape (x0 of the stages)
=========================================  ==================================  ==========================

Deliberately unused (each with a reason in the report): the parameter-layout
buffers ``*_idxs``, the construction-time means ``*_mean`` and ``param_mean``
(the forward pass starts from ``regressor.mean_param``), the 6D decoders'
``mean`` (bookkeeping only), BatchNorm step counters, a contrastive
``projection_head`` if present (training only) and every MANO buffer
(``model.*``: licensed data, never copied; MANO comes from the user's own file
or the built-in hand model at run time).

Conversion is strict: every tensor of the state dict is used exactly once or
ignored with a reason, every leaf of the model is written, shapes must match;
all violations are reported together, naming the keys
(:class:`handjax.convert.ConversionError`). No torch is needed.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
from flax import nnx

from handjax.convert.common import ConversionReport, fill_from_state_dict, open_release, write_conversion
from handjax.convert.mapping import Ignore, Rule
from handjax.convert.rules_torchvision import torchvision_resnet_rules
from handjax.models.resnet import RESNET_SPECS, ResNet  # RESNET_SPECS: depth -> (block kind, blocks per stage)
from handjax.models.tempclr import NUM_PARAMS, TempCLRModel

POINTER_NAME = "latest_checkpoint"
TEMPCLR_HIDDEN = (1024, 1024)
TEMPCLR_NUM_STAGES = 3
_POINTER_MAX_BYTES = 4096


# ----------------------------------------------------------------------------
# depth detection
# ----------------------------------------------------------------------------


def resnet_feature_dim(depth: int) -> int:
    """Pooled feature width F of a torchvision ResNet: 512 (BasicBlock) or 2048 (Bottleneck)."""
    if depth not in RESNET_SPECS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth!r}")
    return 2048 if RESNET_SPECS[depth][0] == "bottleneck" else 512


def detect_resnet_depth(state_dict: Mapping[str, Any], prefix: str = "", source_name: str = "state dict") -> int:
    """Depth (18, 34 or 50) of the torchvision ResNet whose keys sit under ``prefix``.

    Counts the blocks ``<prefix>layer<L>.<i>.*`` of each stage and looks for a
    Bottleneck ``conv3``. Raises ValueError naming ``source_name`` when there
    are no such keys or the block layout is not a supported torchvision ResNet.
    """
    block = re.compile(re.escape(prefix) + r"layer([1-4])\.(\d+)\.(.+)")
    blocks: dict[int, set[int]] = {stage: set() for stage in range(1, 5)}
    bottleneck = False
    for key in state_dict:
        m = block.fullmatch(key)
        if m:
            blocks[int(m.group(1))].add(int(m.group(2)))
            bottleneck |= m.group(3) == "conv3.weight"
    if not any(blocks.values()):
        first = list(state_dict)[:5]
        raise ValueError(f"{source_name}: no '{prefix}layer<L>.<i>.*' keys, so this is not a torchvision ResNet "
                         f"state dict under prefix {prefix!r} (first keys: {first})")
    counts = tuple(max(b) + 1 if b else 0 for b in blocks.values())
    kind = "bottleneck" if bottleneck else "basic"
    for depth, spec in RESNET_SPECS.items():
        if spec == (kind, counts):
            return depth
    known = ", ".join(f"ResNet-{d}: {k} {c}" for d, (k, c) in RESNET_SPECS.items())
    raise ValueError(f"{source_name}: '{prefix}layer*' keys describe {kind} blocks {counts} per stage, "
                     f"which is no supported ResNet ({known})")


def detect_tempclr_depth(state_dict: Mapping[str, Any], source_name: str = "state dict") -> int:
    """Backbone depth of a TempCLR state dict: 50 (FreiHAND model) or 18 (HO3D model).

    Read from the ``backbone.layer*`` keys (``backbone.layer1.0.conv3.weight``
    exists only in the Bottleneck ResNet-50); the regressor's input width
    (2157 = 2048 + 109 vs 621 = 512 + 109) is checked against it during the
    mapping (see :func:`tempclr_rules`).
    """
    return detect_resnet_depth(state_dict, "backbone.", source_name)


# ----------------------------------------------------------------------------
# rules
# ----------------------------------------------------------------------------

_PARTS = r"(?:wrist_pose|hand_pose|betas|camera)"


def _first_layer_linear(depth: int):
    """'linear' transform for the regressor's first layer, checking its input width F + 109."""
    feat = resnet_feature_dim(depth)
    width = feat + NUM_PARAMS

    def first_layer_linear(x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != width:
            got = x.shape[1] if x.ndim == 2 else x.shape
            raise ValueError(f"expected a (hidden, {width}) weight: input = ResNet-{depth} features ({feat}) + "
                             f"{NUM_PARAMS} parameters, got shape {x.shape} (input width {got}); "
                             "is the checkpoint from a different backbone?")
        return x.T

    return first_layer_linear


def mean_param_row(x: np.ndarray) -> np.ndarray:
    """TempCLR's ``regressor.mean_param`` buffer [1, P] -> handjax's (P,)."""
    if x.ndim != 2 or x.shape[0] != 1:
        raise ValueError(f"expected a [1, P] row vector, got shape {x.shape}")
    return x.reshape(-1)


def _regressor_layer(match: re.Match) -> tuple:
    """``regressor.module.layer_NNN.0.<w>`` -> ``('regressor', 'layers', NNN, kernel|bias)``."""
    return "regressor", "layers", int(match.group(1)), "kernel" if match.group(2) == "weight" else "bias"


def tempclr_rules(depth: int) -> list[Rule | Ignore]:
    """Mapping of a TempCLR ``MANORegressor`` state dict onto ``TempCLRModel(depth)`` (module docstring).

    depth: backbone depth (18, 34, 50); fixes the expected input width of
    ``regressor.module.layer_000.0.weight`` (F + 109).
    """
    resnet_feature_dim(depth)  # validates depth
    mano = "MANO buffer: licensed, taken from the user's MANO file or the built-in model"
    return [
        Ignore(rf"{_PARTS}_idxs", "index buffer of the 109-d parameter layout (fixed in handjax.models.tempclr)"),
        Ignore(rf"{_PARTS}_mean", "construction-time mean of one parameter group: not used in the forward pass "
                                  "(x0 is regressor.mean_param)"),
        Ignore(r"param_mean", "HMRLikeRegressor's copy of the mean vector: not used in the forward pass "
                              "(x0 is regressor.mean_param)"),
        Ignore(r"(?:wrist_pose|hand_pose)_decoder\.mean", "6D decoder mean: bookkeeping only, unused in forward"),
        Ignore(r"model\.parents", f"{mano} (kinematic tree)"),
        Ignore(r"model\.extra_joint_selector\.(?:bcs|face_ids)",
               f"{mano} (fingertip faces/barycentrics; handjax's 'tempclr' convention uses the same tip "
               "vertices 318, 443, 671, 554, 720)"),
        Ignore(r"projection_head\..+", "contrastive projection head: training only, not built at inference"),
        *torchvision_resnet_rules("backbone.", "backbone"),
        Rule(r"regressor\.module\.layer_(000)\.0\.(weight)", _regressor_layer, _first_layer_linear(depth)),
        Rule(r"regressor\.module\.layer_(\d{3})\.0\.(weight)", _regressor_layer, "linear"),
        Rule(r"regressor\.module\.layer_(\d{3})\.0\.(bias)", _regressor_layer, "identity"),
        Rule(r"regressor\.module\.output_layer\.weight", "regressor.output_layer.kernel", "linear"),
        Rule(r"regressor\.module\.output_layer\.bias", "regressor.output_layer.bias", "identity"),
        Rule(r"regressor\.mean_param", "regressor.mean_param", mean_param_row),
    ]


# ----------------------------------------------------------------------------
# checkpoint location
# ----------------------------------------------------------------------------


def _read_pointer(pointer: str) -> str:
    """The path stored in a ``latest_checkpoint`` file (stripped), with clear errors."""
    with open(pointer, "rb") as fh:
        raw = fh.read(_POINTER_MAX_BYTES + 1)
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = None
    if text is None or len(raw) > _POINTER_MAX_BYTES or "\n" in text or "\0" in text:
        raise ValueError(f"{pointer}: expected a short text file holding one checkpoint path "
                         "(TempCLR's latest_checkpoint); pass the checkpoint file itself instead")
    if not text:
        raise ValueError(f"{pointer}: empty; expected the path of the checkpoint file")
    return text


def resolve_checkpoint(path: str | os.PathLike) -> tuple[str, Optional[str]]:
    """``(checkpoint file, latest_checkpoint file or None)``; see :func:`locate_checkpoint`."""
    file, pointer, _ = locate_checkpoint(path)
    return file, pointer


def locate_checkpoint(path: str | os.PathLike) -> tuple[str, Optional[str], Optional[str]]:
    """``(checkpoint file, latest_checkpoint file or None, note or None)`` for a file, a pointer or a folder.

    path: the checkpoint file; a ``latest_checkpoint`` text file; or the folder
    holding one. The pointer's path is tried, in order: as written when
    absolute, or relative to the pointer's folder; then the file of the same
    name BESIDE the pointer (upstream's checkpointer writes the full save path,
    e.g. ``/home/<author>/.../checkpoints/tempclr_freihand``, which does not
    exist on another machine, and a relative path only resolves from the
    author's working directory); then, for a relative path, the current
    directory (the original code's resolution). The result does not depend on
    the working directory when the released folder is intact. Falling back is
    reported in the note. Raises FileNotFoundError naming every location tried.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        pointer = os.path.join(path, POINTER_NAME)
        if not os.path.isfile(pointer):
            listing = sorted(os.listdir(path))[:10]
            raise FileNotFoundError(f"{path}: no '{POINTER_NAME}' file in this folder (found {listing}); pass the "
                                    "checkpoint file itself or TempCLR's checkpoints folder")
    elif os.path.isfile(path):
        if os.path.basename(path) != POINTER_NAME:
            return os.path.abspath(path), None, None
        pointer = path
    else:
        raise FileNotFoundError(f"checkpoint not found: {path}")
    pointer = os.path.abspath(pointer)
    target = _read_pointer(pointer)
    folder = os.path.dirname(pointer)
    written = target if os.path.isabs(target) else os.path.join(folder, target)
    beside = os.path.join(folder, os.path.basename(target.replace("\\", "/")))
    candidates = [(written, None),
                  (beside, f"{pointer} points to {target!r}, which is not a file here; using the file of that name "
                           f"beside the pointer, {beside}")]
    if not os.path.isabs(target):
        cwd = os.path.abspath(target)
        candidates.append((cwd, f"{pointer} points to the relative path {target!r}; resolved against the current "
                                f"directory: {cwd}"))
    for candidate, note in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate), pointer, (None if candidate == written else note)
    tried = list(dict.fromkeys(c for c, _ in candidates))
    raise FileNotFoundError(f"{pointer} points to {target!r}, which is not a file (tried {tried}); pass the "
                            f"checkpoint file itself with --checkpoint")


# ----------------------------------------------------------------------------
# conversion
# ----------------------------------------------------------------------------


class TempCLRConversionReport(ConversionReport):
    """The shared :class:`~handjax.convert.common.ConversionReport`, naming TempCLR's regressor head."""

    def model_line(self) -> str:
        return (f"model: ResNet-{self.depth} + TempCLR regressor (hidden {list(TEMPCLR_HIDDEN)}, "
                f"{TEMPCLR_NUM_STAGES} stages)")


def build_tempclr_model(depth: int, seed: int = 0, abstract: bool = False):
    """``TempCLRModel`` with the released configuration: hidden (1024, 1024), 3 stages, no projection head.

    abstract: shapes only (``nnx.eval_shape``; no initialisation compute), e.g.
    as the target of :func:`fill_from_state_dict` or ``load_model``.
    """
    resnet_feature_dim(depth)
    make = lambda: TempCLRModel(backbone=f"resnet{depth}", rngs=nnx.Rngs(seed), num_stages=TEMPCLR_NUM_STAGES,
                                hidden=TEMPCLR_HIDDEN, projection=None)
    return nnx.eval_shape(make) if abstract else make()


def tempclr_model_from_state_dict(state_dict: Mapping[str, np.ndarray], depth: Optional[int] = None,
                                  source_name: str = "state dict"):
    """``(model, depth, MappingReport)``: a ``TempCLRModel`` holding the state dict's weights.

    state_dict: TempCLR's flat ``model`` state dict as numpy arrays. depth:
    backbone depth, detected from the keys when None (a given depth must agree).
    Raises ConversionError listing missing, unused and wrong-shape keys.
    """
    detected = detect_tempclr_depth(state_dict, source_name)
    if depth is not None and int(depth) != detected:
        raise ValueError(f"{source_name}: depth {depth} was asked for, but the backbone keys describe "
                         f"a ResNet-{detected}")
    model, report = fill_from_state_dict(build_tempclr_model(detected, abstract=True), state_dict,
                                         tempclr_rules(detected), source_name=source_name)
    return model, detected, report


def convert_tempclr(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> ConversionReport:
    """Convert a released TempCLR checkpoint into a handjax model-only checkpoint at ``out_dir``.

    checkpoint: the checkpoint file, its ``latest_checkpoint`` or the folder
    holding that (see :func:`locate_checkpoint`). Reads it without torch
    (non-tensor objects stay inert), takes the ``model`` state dict, detects
    the depth, fills a ``TempCLRModel(depth, hidden=(1024, 1024), 3 stages)``
    strictly and writes it with ``handjax.models.checkpoint.save_model``, with
    meta ``{'system': 'tempclr', 'depth', 'source', ...}`` and
    ``conversion_report.txt``. The result loads with
    ``handjax.train.loop.restore_model`` (config ``eval.checkpoint`` /
    ``finetune.init_from`` with ``model.hidden=(1024, 1024)``, ``model.depth``).
    Returns the :class:`ConversionReport`.
    """
    path, pointer, note = locate_checkpoint(checkpoint)
    release = open_release(path, out_dir, expected="TempCLR's checkpoint file", nested_keys=("model", "state_dict"))
    model, depth, mapping = tempclr_model_from_state_dict(release.state_dict, source_name=path)
    meta = {"system": "tempclr", "depth": depth, "source": path, "pointer": pointer,
            "hidden": list(TEMPCLR_HIDDEN), "num_stages": TEMPCLR_NUM_STAGES, "projection": None,
            "iteration": release.int_entry("iteration"),
            "converter": "handjax.convert.tempclr.convert_tempclr"}
    report = TempCLRConversionReport("tempclr", path, pointer, depth, release.load, release.extract, mapping, meta,
                                     notes=[note] if note else [])
    write_conversion(model, release.out_dir, meta, report)
    return report


def convert_torchvision_resnet(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
                               depth: Optional[int] = None) -> ConversionReport:
    """Convert torchvision ResNet weights (e.g. ``resnet50-0676ba61.pth``) into a handjax ResNet checkpoint.

    The state dict may be plain or wrapped (``state_dict`` / ``model`` ...,
    ``module.`` prefix). depth: 18, 34 or 50, detected when None (a given
    depth must agree). ``fc.*`` is ignored (handjax's ResNet has no
    classifier). Load the result with
    ``handjax.models.checkpoint.load_model(ResNet(depth, rngs=...), out_dir)``.
    """
    release = open_release(checkpoint, out_dir, expected="a torchvision .pth file",
                           nested_keys=("state_dict", "model", "model_state_dict", "net", "network", "weights",
                                        "params"))
    path = release.path
    detected = detect_resnet_depth(release.state_dict, "", path)
    if depth is not None and int(depth) != detected:
        raise ValueError(f"{path}: --depth {depth} was given, but the keys describe a ResNet-{detected}")
    abstract = nnx.eval_shape(lambda: ResNet(detected, rngs=nnx.Rngs(0)))
    model, mapping = fill_from_state_dict(abstract, release.state_dict, torchvision_resnet_rules(), source_name=path)
    meta = {"system": "torchvision-resnet", "depth": detected, "source": path,
            "converter": "handjax.convert.tempclr.convert_torchvision_resnet"}
    report = ConversionReport("torchvision-resnet", path, None, detected, release.load, release.extract, mapping,
                              meta)
    write_conversion(model, release.out_dir, meta, report)
    return report
