"""Turn a config's ``data`` section into iterator factories for the training recipes.

``make_data_factory(cfg.data, seed)`` returns ``data(split, mode, batch_size, train, seed)``:
* ``train=True``: an infinite, shuffled, augmented, checkpointable grain iterator of
  process-local batches (per-process batch = global batch / process count);
* ``train=False``: one pass over the split in order, without augmentation (left hands
  still mirrored into right ones when ``augment.flip`` says so), the last batch padded
  by repeating its last sample and marked with ``valid`` (B,) bool.

Real datasets (``data.name`` 'freihand' | 'ho3d'): ``data.builder_config`` ('default' | 'gs'
for FreiHAND, 'v2' | 'v3' for HO3D), ``data.data_dir`` (tfds data dir), optional
``data.manual_dir`` (the raw download, built into ``data_dir`` when the dataset is not built
yet) and optional ``data.mano_model`` (your MANO_RIGHT pkl: its ``hands_mean`` turns
FreiHAND's relative finger poses absolute, else their pose/shape losses are masked; for HO3D
it is used at build time for vertices). Evaluation crops follow TempCLR (``EVAL_CROP``:
FreiHAND the whole image, HO3D a square of 2 x the longer side of ``handBoundingBox``),
overridable with ``data.eval_crop`` (dict of ``crop_from`` / ``bbox_pad``).
"""
from __future__ import annotations

import os
from typing import Iterator

import jax
import numpy as np

from data_pipelines.pipeline import FrameSource, make_dataset

BUILDERS = ("synthetic_hands", "freihand", "ho3d")
DEFAULT_BUILDER_CONFIG = {"freihand": "default", "ho3d": "v2"}
EVAL_CROP = {"freihand": dict(crop_from="image", bbox_pad=1.0), "ho3d": dict(crop_from="bbox", bbox_pad=2.0)}


def _builder_dir(data_cfg) -> str:
    if data_cfg.name == "synthetic_hands":
        from data_pipelines.synthetic_hands import ensure_built

        from handjax.distributed import build_once

        data_dir = data_cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or None
        # multi-process: process 0 builds first, the others wait (no two writers of one directory)
        return build_once(lambda: ensure_built(data_cfg.builder_config, data_dir), "handjax-build-synthetic_hands")
    if data_cfg.name in ("freihand", "ho3d"):
        return _real_builder_dir(data_cfg)
    raise ValueError(
        f"config key data.name={data_cfg.name!r}: no dataset builder of that name is available yet "
        f"(available: {list(BUILDERS)}); set --config.data.name=synthetic_hands")


def _real_builder_dir(data_cfg) -> str:
    """FreiHAND / HO3D builder directory, built from ``data.manual_dir`` when missing."""
    import importlib

    from handjax.distributed import build_once

    module = importlib.import_module(f"data_pipelines.{data_cfg.name}")
    config = data_cfg.get("builder_config") or DEFAULT_BUILDER_CONFIG[data_cfg.name]
    if config == "default" and data_cfg.name == "ho3d":  # the generic recipe default names no release
        config = DEFAULT_BUILDER_CONFIG["ho3d"]
    data_dir = data_cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or None
    manual_dir = data_cfg.get("manual_dir") or None
    extra = {"mano_model": data_cfg.get("mano_model") or None} if data_cfg.name == "ho3d" else {}
    return build_once(lambda: module.ensure_built(config, data_dir, manual_dir, **extra),
                      f"handjax-build-{data_cfg.name}")


def _hand_mean(data_cfg):
    """hands_mean (45,) of ``data.mano_model`` for datasets storing relative finger poses."""
    path = data_cfg.get("mano_model") or ""
    if data_cfg.name != "freihand" or not path:
        return None
    from handjax import mano

    return np.asarray(mano.load_model(path, "right").hands_mean)


def _per_process(batch_size: int) -> int:
    n = jax.process_count()
    if batch_size % n:
        raise ValueError(f"global batch size {batch_size} is not divisible by the {n} processes")
    return batch_size // n


def _padded_batches(ds, batch_size: int) -> Iterator[dict]:
    """Re-batch a batch-1 dataset into fixed-size batches, padding the last one."""
    buf = []
    for item in ds:
        buf.append(item)
        if len(buf) == batch_size:
            yield _stack(buf, batch_size)
            buf = []
    if buf:
        yield _stack(buf, batch_size)


def _stack(items, batch_size):
    n = len(items)
    items = items + [items[-1]] * (batch_size - n)
    out = {k: np.concatenate([it[k] for it in items]) for k in items[0]}
    out["valid"] = (np.arange(batch_size) < n) & out.get("valid", True)  # batch padding and shard padding
    return out


def make_data_factory(data_cfg, seed: int = 0):
    builder_dir = _builder_dir(data_cfg)
    augment = dict(data_cfg.augment)
    image_size = int(data_cfg.image_size)
    workers = int(data_cfg.get("num_workers", 0))
    hand_mean = _hand_mean(data_cfg)
    eval_crop = dict(EVAL_CROP.get(data_cfg.name, {}), **dict(data_cfg.get("eval_crop") or {}))

    def data(split: str, mode: str, batch_size: int, train: bool, seed: int = seed):
        local = _per_process(batch_size)
        source = FrameSource(builder_dir, split, hand_mean)
        if train:
            ds = make_dataset(source, split, mode=mode, batch_size=local, image_size=image_size,
                              augment=augment, seed=seed, num_workers=workers, window=int(data_cfg.window),
                              k=2, num_negatives=int(data_cfg.extra_negatives))
            return iter(ds)
        eval_aug = {"flip": augment.get("flip", "none"), **eval_crop}
        ds = make_dataset(source, split, mode=mode, batch_size=1, image_size=image_size, augment=eval_aug,
                          seed=0, shuffle=False, num_epochs=1, pad_shards=True)
        return _padded_batches(ds, local)

    data.builder_dir = builder_dir
    return data
