"""A system is a declaration: its stages (each with its model, loss and data request), its
evaluation and its predictor. :mod:`handjax.train.runner` runs any system; this module only
holds the declaration types and the registry of systems by name.

A reader opening ``handjax/train/<system>.py`` sees, in order: the model it builds from
registered parts (``handjax.models.registry``), its loss terms (``handjax.losses.terms`` plus
its own), its stages, its evaluator and its predictor, ending in ``SYSTEM = System(...)``.

Stage configs (``cfg.<stage name>``) are read by the runner: ``num_steps``, ``batch_size``,
``optim``, ``log_every``, ``checkpoint_every``, ``keep_checkpoints``, ``summary_every``,
``init_from`` (a checkpoint to start from), ``loss_weights`` (checked against the stage's
``loss_terms``), ``split`` (default ``train``), ``eval_every`` / ``eval_split`` /
``eval_batches`` (validation during training, written to TensorBoard), ``data`` (data keys
of this stage's training data on top of ``cfg.data``).

Stage kinds: :class:`TrainStage` (gradient training through ``handjax.train.loop``),
:class:`EvalStage` (a model evaluated over batches with trivial baselines) and :class:`Stage`
(anything else, e.g. calibration or inference-time optimisation: a ``run(ctx, models)`` callable).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

SYSTEMS = {  # name -> module defining SYSTEM
    "tempclr": "handjax.train.tempclr",
    "digit": "handjax.train.digit",
    "personalize": "handjax.train.personalize",
    "photometric": "handjax.train.photometric",
    "interwild": "handjax.train.interwild",
}


@dataclasses.dataclass
class StageContext:
    """What a stage's builders get: the config, this stage's config and seed, the mesh, workdirs."""

    cfg: Any
    name: str
    stage_cfg: Any
    seed: int
    mesh: Any
    workdir: str
    stage_dir: str
    data: Callable  # the data factory: data(split, mode, batch_size, train, seed, **sampling)


@dataclasses.dataclass(frozen=True)
class TrainStage:
    """A training stage.

    task(ctx) -> handjax.train.loop.Task: builds the stage's model (seeded by ``ctx.seed``) and loss.
    data: the data request: ``mode`` plus its sampling parameters (forwarded to the data factory),
      or ``data(ctx) -> request`` when it depends on the config.
    init_from: the stage whose final checkpoint initialises this one when both run in one job
      (``cfg.<stage>.init_from`` overrides it with any checkpoint path).
    init(ctx, model, path) -> str: loads ``path`` (a stage workdir or a model-only checkpoint)
      into the stage's model and returns a one-line description; default: the whole model.
    loss_terms: the names allowed in ``cfg.<stage>.loss_weights``.
    seed_from: the stage whose seed this one takes (default: its own, ``cfg.seed`` + its index), so
      that two stages compared with each other (a control and a variant) see the same data order and
      random draws.
    """

    name: str
    task: Callable[[StageContext], Any]
    data: Any = dataclasses.field(default_factory=lambda: {"mode": "frame"})  # Mapping or ctx -> Mapping
    init_from: str = ""
    init: Optional[Callable[[StageContext, Any, str], str]] = None
    loss_terms: Tuple[str, ...] = ()
    seed_from: str = ""


@dataclasses.dataclass(frozen=True)
class EvalStage:
    """An evaluation stage: the model of ``model_from`` (trained in this job, or restored from
    ``cfg.<name>.checkpoint`` / the job's ``<model_from>`` folder) and trivial baselines.

    model(ctx) -> a freshly built model of the evaluated kind (weights are restored into it).
    predict(ctx) -> ``predict(model, images) -> dict`` of numpy-able arrays for the evaluator.
    baselines(ctx) -> {row name: predict function ignoring its model argument}.
    evaluator(ctx) -> a ``handjax.eval.evaluators`` evaluator (a fresh one per call).
    label(ctx, trained_here) -> the table row name of the evaluated model.
    table(rows, ctx) -> the printed table.
    collectors(ctx) -> objects receiving every batch (``add(pred, labels)``); finish(ctx, collectors)
      writes their files (e.g. pred.json) and returns entries for the job's results (or None).
    inputs: the batch keys the predict function gets (one key: its array; several: a dict of them),
      e.g. ("image", "K", "object_id") for a model that places a known object with the intrinsics.
    """

    name: str
    model_from: str
    model: Callable[[StageContext], Any]
    predict: Callable[[StageContext], Callable]
    evaluator: Callable[[StageContext], Any]
    baselines: Callable[[StageContext], Dict[str, Callable]] = lambda ctx: {}
    label: Callable[[StageContext, bool], str] = lambda ctx, trained_here: "trained"
    table: Optional[Callable[[Dict[str, dict], StageContext], str]] = None
    collectors: Callable[[StageContext], Sequence] = lambda ctx: ()
    finish: Optional[Callable[[StageContext, Sequence], Optional[dict]]] = None
    inputs: Tuple[str, ...] = ("image",)


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stage that neither trains by gradient nor evaluates a model on batches (e.g. a shape
    calibration or a per-image optimisation): ``run(ctx, models) -> metrics``.

    ``models`` holds what earlier stages of this job left (training stages: their trained model
    under their name; a ``Stage`` may add entries); a stage that needs an earlier one's output
    reads it from ``models`` or from that stage's folder ``<workdir>/<name>``. ``requires`` names
    those stages: the runner checks before any stage runs that each is in the job or has its
    folder, naming the config key ``stages``. The runner creates ``ctx.stage_dir`` and records the
    returned metrics in the job's results; the stage runs again in full when the job is rerun.
    """

    name: str
    run: Callable[[StageContext, Dict[str, Any]], dict]
    requires: Tuple[str, ...] = ()


@dataclasses.dataclass
class Predictor:
    """What ``python -m handjax.predict`` needs from a system.

    model: the network, built from the config (predict.py loads the checkpoint into it).
    image_size: side of the square crop the model takes (ImageNet-normalised RGB).
    predict(model, images (B, S, S, 3)) -> {side: HandOutput} with sides among ``sides``.
    sides: the hands the model predicts; a single right-hand model gets left hands as mirrored crops.
    faces: side -> (F, 3) int mesh faces of the MANO model used.
    finds_boxes: the system locates hands itself (the whole image is its input).
    postprocess(outputs, extras, affine) -> (sides to export, JSON entries) (finds_boxes systems; optional):
      ``predict`` may return an ``"extras"`` dict of (B, ...) arrays beside the hands; per image, this gets
      the hands' fields, those extras (numpy, no batch axis) and the crop affine (original -> input pixels),
      and decides which hands are exported (e.g. a box-confidence threshold) and what the image's JSON adds.
    extra_images(view: PredictionView) -> {label: uint8 image} (optional): a system's further per-image files,
      written by ``python -m handjax.predict`` as ``<name>_<label>.png`` (lossless) and listed in the image's JSON
      (``files``) and in ``index.html``. An (H, W) image is written as an 8-bit grey PNG (e.g. class ids), an
      (H, W, 3) one as RGB. Called per crop whose ``predict`` output has ``"extras"``.
    """

    model: Any
    image_size: int
    predict: Callable
    faces: Dict[str, np.ndarray]
    sides: Tuple[str, ...] = ("right",)
    finds_boxes: bool = False
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)
    postprocess: Optional[Callable] = None
    extra_images: Optional[Callable[["PredictionView"], Dict[str, np.ndarray]]] = None


@dataclasses.dataclass(frozen=True)
class PredictionView:
    """What :attr:`Predictor.extra_images` gets for one crop of one image.

    image: (H, W, 3) uint8, the ORIGINAL image. hands: the exported hands of this crop
    (``handjax.inference.HandResult``: side, K, vertices, faces, joints3d, joints2d in original pixels,
    convention). extras: the predictor's ``"extras"`` arrays of this crop (numpy, no batch axis).
    affine: (3, 3) original pixel -> input pixel. record: the JSON entries ``postprocess`` added
    (empty without one). canvas: drawing helpers over the original image at the overlay zoom
    (``handjax.inference.Canvas``: ``base()``, ``to_display(uv)``, ``meshes(hands, depth_offsets=...)``,
    ``skeletons(hands, image)``), handed in so that systems need not import the predict layer.
    """

    image: np.ndarray
    hands: Sequence[Any]
    extras: Mapping[str, np.ndarray]
    affine: np.ndarray
    record: Mapping[str, Any]
    canvas: Any


@dataclasses.dataclass(frozen=True)
class System:
    """name; stages in their order of execution; predictor(cfg) -> Predictor; check(cfg): extra
    config checks run before any stage."""

    name: str
    stages: Tuple[Any, ...]
    predictor: Optional[Callable[[Any], Predictor]] = None
    check: Optional[Callable[[Any], None]] = None

    def __post_init__(self):
        names = [s.name for s in self.stages]
        for s in self.stages:
            for field in ("seed_from", "init_from"):
                other = getattr(s, field, "")
                if other and other not in names:
                    raise ValueError(f"system {self.name!r}: stage {s.name!r} has {field}={other!r}, which is not "
                                     f"one of its stages {names}")

    def stage(self, name: str):
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def stage_names(self) -> Tuple[str, ...]:
        return tuple(s.name for s in self.stages)


def get_system(name: str) -> System:
    """The registered system ``name`` (config key ``system``)."""
    if name not in SYSTEMS:
        raise ValueError(f"config key 'system': unknown system {name!r}; known: {', '.join(sorted(SYSTEMS))}")
    return importlib.import_module(SYSTEMS[name]).SYSTEM
