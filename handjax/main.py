"""handjax entry point: flags, config, data, dispatch.

  python -m handjax.main --config configs/tempclr.py --workdir /tmp/tempclr
  python -m handjax.main --config configs/tempclr.py:pretrain=false --config.finetune.num_steps=2000 --workdir ...
"""
from __future__ import annotations

import importlib
import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (with optional ':arg=val,...').",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard logs and results.")
flags.mark_flags_as_required(["config", "workdir"])

SYSTEMS = {"tempclr": "handjax.train.tempclr"}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # keep library INFO chatter (orbax, tfds) out of the progress lines
    import jax

    from data_pipelines.factory import make_data_factory

    cfg = _CONFIG.value
    workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
    if cfg.system not in SYSTEMS:
        raise app.UsageError(f"config key 'system': unknown system {cfg.system!r}; known: {sorted(SYSTEMS)}")
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as fh:
            fh.write(cfg.to_json_best_effort(indent=2))
        print(f"config written to {os.path.join(workdir, 'config.json')}", flush=True)
    data = make_data_factory(cfg.data, seed=cfg.seed)
    results = importlib.import_module(SYSTEMS[cfg.system]).run(cfg, workdir, data)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as fh:
            json.dump(results, fh, indent=2, default=float)
        print(f"\nTensorBoard logs: tensorboard --logdir {workdir}\n"
              f"checkpoints: {workdir}/<stage>/checkpoints\nresults: {workdir}/results.json", flush=True)


if __name__ == "__main__":
    app.run(main)
