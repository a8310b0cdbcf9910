"""handjax entry point: flags, config, data, dispatch.

  python -m handjax.main --config configs/tempclr.py --workdir /tmp/tempclr
  python -m handjax.main --config configs/tempclr.py:pretrain=false --config.finetune.num_steps=2000 --workdir ...

Multi-process (one command per process; see ``handjax.distributed`` and ``launch/``):

  python -m handjax.main --config ... --workdir gs://bucket/run \\
      --coordinator_address=host0:12345 --num_processes=2 --process_id=0|1

(or the ``HANDJAX_*`` environment variables; SLURM and Cloud TPU pods are detected without
them). Only process 0 prints progress and writes config.json / results.json / TensorBoard
files; checkpoints are written by all processes together.

``HANDJAX_MALLOC=default`` keeps glibc's default allocator behaviour (see
``handjax.host_memory``); ``HANDJAX_COMPILATION_CACHE=off`` disables the compilation cache.

Exit codes: 0 done; 75 (``handjax.distributed.PREEMPTED_EXIT_CODE``) stopped on a
preemption notice (SIGTERM) after writing a checkpoint: run the same command to resume.
"""
from __future__ import annotations

import importlib
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (with optional ':arg=val,...').",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory (or gs:// URL) for checkpoints, TensorBoard logs and "
                               "results.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0's "
                                   "coordinator (default $HANDJAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes "
                                      "(default $HANDJAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's id in [0, num_processes) "
                                   "(default $HANDJAX_PROCESS_ID).")
flags.mark_flags_as_required(["config", "workdir"])

SYSTEMS = {"tempclr": "handjax.train.tempclr"}


def _write_text(path: str, text: str) -> None:
    """Write a job-level file (local path or gs:// URL)."""
    from etils import epath
    epath.Path(path).write_text(text)


def _enable_compilation_cache():
    """Reuse compiled train steps across runs and stages (HANDJAX_COMPILATION_CACHE=off disables it)."""
    import jax

    path = os.environ.get("HANDJAX_COMPILATION_CACHE", os.path.expanduser("~/.cache/handjax/jax"))
    if path.lower() != "off":
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # keep library INFO chatter (orbax, tfds) out of the progress lines
    from handjax import host_memory

    host_memory.keep_freed_memory()  # before jax: XLA-CPU's per-step buffers are reused, not re-faulted
    from handjax import distributed

    try:  # before any other JAX use
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None

    _enable_compilation_cache()

    from data_pipelines.factory import make_data_factory
    from handjax.models.checkpoint import resolve_path
    from handjax.train.loop import Preempted

    cfg = _CONFIG.value
    workdir = resolve_path(_WORKDIR.value)
    if cfg.system not in SYSTEMS:
        raise app.UsageError(f"config key 'system': unknown system {cfg.system!r}; known: {sorted(SYSTEMS)}")
    main_process = distributed.is_main()
    if main_process:
        from etils import epath
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        _write_text(os.path.join(workdir, "config.json"), cfg.to_json_best_effort(indent=2))
        print(f"config written to {os.path.join(workdir, 'config.json')}", flush=True)
    data = make_data_factory(cfg.data, seed=cfg.seed)
    try:
        results = importlib.import_module(SYSTEMS[cfg.system]).run(cfg, workdir, data)
    except Preempted as e:
        if main_process:
            print(f"{e}; exiting with code {distributed.PREEMPTED_EXIT_CODE}", flush=True)
        distributed.shutdown()
        sys.exit(distributed.PREEMPTED_EXIT_CODE)
    if main_process:
        _write_text(os.path.join(workdir, "results.json"), json.dumps(results, indent=2, default=float))
        print(f"\nTensorBoard logs: tensorboard --logdir {workdir}\n"
              f"checkpoints: {workdir}/<stage>/checkpoints\nresults: {workdir}/results.json", flush=True)
    distributed.shutdown()


if __name__ == "__main__":
    app.run(main)
