"""Throughput of the training input pipeline (window mode, augmentation, 128x128 crops).

    python benchmarks/pipeline_bench.py [--data_dir DIR] [--config default] [--workers 0,2]
        [--batch_size 32] [--batches 20] [--image_size 128] [--k 2] [--window 3]

Reads the synthetic_hands build (built first if missing, see
``data_pipelines.synthetic_hands.ensure_built``) and times ``make_pipeline(mode="window",
augment=TRAIN_AUGMENT)`` for each worker count. "first batch" includes iterator / worker
start-up; samples/s and frames/s (samples x k) are measured over the following batches.
Runs under ``absl.app.run``: grain worker processes need parsed absl flags.
"""
from __future__ import annotations

import time

from absl import app, flags

from data_pipelines.pipeline import TRAIN_AUGMENT, make_pipeline
from data_pipelines.synthetic_hands import ensure_built

DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)")
CONFIG = flags.DEFINE_string("config", "default", "synthetic_hands config to read")
WORKERS = flags.DEFINE_list("workers", ["0", "2"], "grain worker counts to compare")
BATCH = flags.DEFINE_integer("batch_size", 32, "samples per batch")
BATCHES = flags.DEFINE_integer("batches", 20, "timed batches per setting")
SIZE = flags.DEFINE_integer("image_size", 128, "crop size")
K = flags.DEFINE_integer("k", 2, "frames per window sample")
WINDOW = flags.DEFINE_integer("window", 3, "temporal window (frames)")


def run_one(builder_dir: str, workers: int) -> dict:
    start = time.perf_counter()
    it = make_pipeline(builder_dir, "train", mode="window", batch_size=BATCH.value, image_size=SIZE.value,
                       augment=TRAIN_AUGMENT, seed=0, shard_index=0, shard_count=1, num_workers=workers,
                       k=K.value, window=WINDOW.value)
    try:
        next(it)
        first = time.perf_counter() - start
        t0 = time.perf_counter()
        for _ in range(BATCHES.value):
            next(it)
        dt = time.perf_counter() - t0
    finally:
        if hasattr(it, "close"):
            it.close()
    samples = BATCHES.value * BATCH.value
    return {"workers": workers, "first": first, "samples_s": samples / dt, "frames_s": samples * K.value / dt}


def main(argv):
    del argv
    builder_dir = ensure_built(CONFIG.value, DATA_DIR.value)
    rows = [run_one(builder_dir, int(w)) for w in WORKERS.value]
    print(f"\nwindow mode, k={K.value}, window={WINDOW.value}, {SIZE.value}x{SIZE.value} crops, "
          f"batch {BATCH.value}, TRAIN_AUGMENT, {BATCHES.value} timed batches; data: {builder_dir}")
    print(f"{'workers':>8} {'first batch [s]':>16} {'samples/s':>10} {'frames/s':>10}")
    for r in rows:
        print(f"{r['workers']:>8} {r['first']:>16.2f} {r['samples_s']:>10.1f} {r['frames_s']:>10.1f}")


if __name__ == "__main__":
    app.run(main)
