"""Turn a config's ``data`` section into iterator factories for the training recipes.

``make_data_factory(cfg.data, seed)`` returns ``data(split, mode, batch_size, train, seed)``:
* ``train=True``: an infinite, shuffled, augmented, checkpointable grain iterator of
  process-local batches (per-process batch = global batch / process count);
* ``train=False``: one pass over the split in order, without augmentation (left hands
  still mirrored into right ones when ``augment.flip`` says so), the last batch padded
  by repeating its last sample and marked with ``valid`` (B,) bool.
"""
from __future__ import annotations

import os
from typing import Iterator

import jax
import numpy as np

from data_pipelines.pipeline import make_dataset

BUILDERS = ("synthetic_hands",)


def _builder_dir(data_cfg) -> str:
    if data_cfg.name == "synthetic_hands":
        from data_pipelines.synthetic_hands import ensure_built

        data_dir = data_cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or None
        return ensure_built(data_cfg.builder_config, data_dir)
    raise ValueError(
        f"config key data.name={data_cfg.name!r}: no dataset builder of that name is available yet "
        f"(available: {list(BUILDERS)}); set --config.data.name=synthetic_hands")


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
    out["valid"] = np.arange(batch_size) < n
    return out


def make_data_factory(data_cfg, seed: int = 0):
    builder_dir = _builder_dir(data_cfg)
    augment = dict(data_cfg.augment)
    image_size = int(data_cfg.image_size)
    workers = int(data_cfg.get("num_workers", 0))

    def data(split: str, mode: str, batch_size: int, train: bool, seed: int = seed):
        local = _per_process(batch_size)
        if train:
            ds = make_dataset(builder_dir, split, mode=mode, batch_size=local, image_size=image_size,
                              augment=augment, seed=seed, num_workers=workers, window=int(data_cfg.window),
                              k=2, num_negatives=int(data_cfg.extra_negatives))
            return iter(ds)
        eval_aug = {"flip": augment.get("flip", "none")}
        ds = make_dataset(builder_dir, split, mode=mode, batch_size=1, image_size=image_size, augment=eval_aug,
                          seed=0, shuffle=False, num_epochs=1)
        return _padded_batches(ds, local)

    data.builder_dir = builder_dir
    return data
