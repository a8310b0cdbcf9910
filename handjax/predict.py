r"""Predict hands on your own images: meshes, MANO parameters, cameras, overlays.

  python -m handjax.predict --config configs/tempclr.py --checkpoint RUN/finetune --images photos/ --out preds/ \
      [--boxes boxes.json] [--config.mano.model_path=...] [--batch_size 16] [--focal_length F] [--bbox_pad 1.5]

``--checkpoint``: a training stage folder (``RUN/finetune``) or a model-only checkpoint
(``python -m handjax.convert``); the config must build the same network (a mismatch is an
error listing the differing keys). ``--images``: folders, glob patterns or files (repeatable;
further paths after the flags, e.g. from a shell glob, are images too). ``--boxes``: hand boxes
per image (format: ``handjax.inference``); without it each image is one right hand filling
the image. Left hands are predicted by a right-hand model on mirrored crops and mirrored back.

Outputs in ``--out`` per image: ``<name>_<side>.obj`` (camera-space metres, MANO faces),
``<name>.json`` (MANO pose / betas, camera K and translation, 3-D joints, 2-D joints in original
pixels, handedness, model and checkpoint, ``files``: what was written), ``<name>_overlay.png``, and a
system's further images ``<name>_<label>.png`` (``Predictor.extra_images``: DIGIT's part maps,
InterWild's box / skeleton / mesh renders); then ``index.html`` (a contact sheet) and ``summary.json``. The last line printed is ``N images, M hands, K failed: names``.

Exit codes: 0 every image predicted; 2 some images failed (unreadable or truncated files, boxes
outside the image; each named in the summary line, in ``summary.json`` and ``index.html``; the
other images' outputs are written); 1 an error that stops the command, normally before any
prediction (bad flag, config, boxes file or checkpoint: one line naming it; ``--verbose`` shows
the traceback).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from handjax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (with optional ':arg=val,...').",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Training stage folder (RUN/finetune) or model-only "
                                  "checkpoint (python -m handjax.convert).")
_IMAGES = flags.DEFINE_multi_string("images", None, "Image folder, glob pattern or file (JPEG/PNG); repeatable.")
_OUT = flags.DEFINE_string("out", None, "Output folder.")
_BOXES = flags.DEFINE_string("boxes", None, "JSON file of hand boxes per image (see handjax.inference).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Crops per forward pass (fixed; the last batch is padded).")
_FOCAL = flags.DEFINE_float("focal_length", 0.0, "Focal length in ORIGINAL image pixels of the exported pinhole "
                            "camera; <= 0: max(height, width) of each image.")
_PAD = flags.DEFINE_float("bbox_pad", 1.5, "Crop side / longer side of a hand box.")
_ZOOM = flags.DEFINE_integer("overlay_zoom", 1, "Enlarge the overlay PNGs by this integer factor (small images).")
_SUBJECT = flags.DEFINE_string("subject_shape", None, "JSON {\"betas\": [10 numbers]} of the person's calibrated "
                               "shape, for systems that take one (personalize); sets config key "
                               "predict.subject_shape.")
_VERBOSE = flags.DEFINE_boolean("verbose", False, "Show the full traceback of errors.")
_PROGRESS = flags.DEFINE_boolean("progress", True, "Show a progress bar.")
flags.mark_flags_as_required(["config", "checkpoint", "images", "out"])

EXIT_PARTIAL = 2  # some images failed; the others' outputs are written


def _fail(message: str) -> None:
    cli.fail("handjax.predict", message)


def parse_flags(argv):
    """absl's flag parsing; an unknown ``--config.<key>`` is one line naming the flag (``handjax.cli``)."""
    return cli.parse_flags(argv, "handjax.predict", any(a in ("--verbose", "--verbose=true") for a in argv))


def check_mano(cfg, checkpoint: str) -> None:
    """A converted upstream release (model-only checkpoint whose metadata names its ``converter``) was
    trained with the real MANO: predicting with the built-in hand (``mano.model_path`` empty) is an
    error unless ``mano.allow_builtin``, as in training and evaluation."""
    from handjax.models.checkpoint import is_model_checkpoint, read_meta

    mano_cfg = cfg.get("mano") or {}
    if mano_cfg.get("model_path") or mano_cfg.get("allow_builtin", False) or not is_model_checkpoint(checkpoint):
        return
    converter = read_meta(checkpoint).get("converter")
    if converter:
        raise ValueError(f"--checkpoint {checkpoint} was converted from a released model ({converter}) trained with "
                         f"the real MANO, but config key mano.model_path is empty (the built-in hand would give "
                         f"wrong meshes): pass --config.mano.model_path=<folder of MANO_RIGHT.pkl> (from "
                         f"https://mano.is.tue.mpg.de), or --config.mano.allow_builtin=true to use the built-in "
                         f"hand anyway")


def load_predictor(cfg, checkpoint: str):
    """The config's system predictor with ``checkpoint`` loaded; returns (predictor, step).

    step: the training step restored (-1 for a model-only checkpoint). Raises ValueError naming
    the checkpoint and the differing keys when it does not fit the model built from the config.
    """
    from handjax.train.loop import restore_model
    from handjax.train.system import get_system

    system = get_system(cfg.system)
    check_mano(cfg, checkpoint)
    if system.predictor is None:
        raise ValueError(f"config key 'system': {cfg.system!r} registers no predictor")
    predictor = system.predictor(cfg)
    try:
        step = restore_model(predictor.model, checkpoint)
    except FileNotFoundError as e:
        raise ValueError(f"--checkpoint {checkpoint}: {e}") from None
    except ValueError as e:
        raise ValueError(f"--checkpoint {checkpoint}: {e}") from None
    return predictor, step


def predict_main(argv) -> int:
    """Run the command; returns its exit code (0, or EXIT_PARTIAL when some images failed)."""
    from handjax import inference
    from handjax.models.checkpoint import resolve_path

    logging.set_verbosity(logging.WARNING)
    cfg = _CONFIG.value
    if _SUBJECT.value:
        if "subject_shape" not in (cfg.get("predict") or {}):
            raise ValueError(f"--subject_shape: system {cfg.system!r} takes no subject shape (its config has no key "
                             f"predict.subject_shape)")
        cfg.predict.subject_shape = _SUBJECT.value
    inputs = list(_IMAGES.value) + list(argv[1:])
    for extra in argv[1:]:
        if extra.startswith("-"):
            raise app.UsageError(f"unknown argument {extra}")
    paths = inference.list_images(inputs)
    boxes = inference.load_boxes(_BOXES.value) if _BOXES.value else None
    checkpoint = resolve_path(_CHECKPOINT.value)
    predictor, step = load_predictor(cfg, checkpoint)
    meta = {"system": str(cfg.system), "model": dict(predictor.meta), "model_config": cfg.model.to_dict(),
            "checkpoint": checkpoint, "checkpoint_step": int(step)}
    if _BOXES.value:
        meta["boxes_file"] = os.path.abspath(_BOXES.value)
    print(f"{len(paths)} images; checkpoint {checkpoint}" + (f" (step {step})" if step >= 0 else " (model only)"),
          flush=True)
    summary = inference.run(predictor, paths, _OUT.value, boxes=boxes, batch_size=_BATCH.value,
                            focal_length=_FOCAL.value, bbox_pad=_PAD.value, overlay_zoom=_ZOOM.value, meta=meta,
                            progress=_PROGRESS.value)
    print(f"outputs in {os.path.abspath(_OUT.value)} (contact sheet: index.html)", flush=True)
    print(summary.line(), flush=True)
    return EXIT_PARTIAL if summary.failed else 0


def main(argv):
    try:
        code = predict_main(argv)
    except (ValueError, OSError) as e:
        if _VERBOSE.value:
            raise
        _fail(str(e) or type(e).__name__)
    sys.exit(code)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
