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

Exit codes: 0 done; 1 an error (expected mistakes such as an unknown config key, a bad value
or a missing file print one line naming the key or file; ``--verbose`` or
``HANDJAX_TRACEBACK=1`` shows the traceback); 75 (``handjax.distributed.PREEMPTED_EXIT_CODE``)
stopped on a preemption notice (SIGTERM), at any point of the run (start-up, data building,
training after writing a checkpoint, evaluation): run the same command to continue.
"""
from __future__ import annotations

import json
import os
import pickle
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from handjax import cli

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
_VERBOSE = flags.DEFINE_boolean("verbose", False, "Show the full traceback of errors (also HANDJAX_TRACEBACK=1).")
flags.mark_flags_as_required(["config", "workdir"])

TRACEBACK_ENV = "HANDJAX_TRACEBACK"
TRACEBACK_HINT = "(for the traceback: rerun with --verbose, or set HANDJAX_TRACEBACK=1)"
# expected mistakes (bad config values, missing or damaged files, unwritable paths, a diverging loss): one
# clear message. Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (ValueError, OSError, pickle.UnpicklingError, FloatingPointError)


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


def _verbose(argv=None) -> bool:
    if os.environ.get(TRACEBACK_ENV, "").lower() not in ("", "0", "false", "no", "off"):
        return True
    if argv is not None:  # before the flags are parsed
        return any(a in ("--verbose", "--verbose=true", "--verbose=1") for a in argv)
    return bool(_VERBOSE.value)


def _fail(message: str) -> None:
    cli.fail("handjax", message, TRACEBACK_HINT)


def parse_flags(argv):
    """absl's flag parsing; an unknown ``--config.<key>`` is one line naming the flag (``handjax.cli``)."""
    return cli.parse_flags(argv, "handjax", _verbose(argv), TRACEBACK_HINT)


def main(argv):
    """Entry point: :func:`run_main`, with preemption (exit 75) and expected errors (one line)."""
    from handjax import distributed

    try:
        run_main(argv)
    except distributed.Preempted as e:
        if distributed.is_main():
            print(f"{e}; exiting with code {distributed.PREEMPTED_EXIT_CODE}", flush=True)
        distributed.shutdown()
        sys.exit(distributed.PREEMPTED_EXIT_CODE)
    except EXPECTED_ERRORS as e:
        if _verbose():
            raise
        _fail(str(e) or type(e).__name__)


def run_main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # keep library INFO chatter (orbax, tfds) out of the progress lines
    from handjax import host_memory

    host_memory.keep_freed_memory()  # before jax: XLA-CPU's per-step buffers are reused, not re-faulted
    from handjax import distributed

    try:  # before any other JAX use
        plan = distributed.plan(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        if plan.mode == "single":  # SIGTERM from here on: stop cleanly (exit 75); several processes: JAX's
            distributed.install_preemption_handler()  # preemption service takes SIGTERM at initialize
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None

    _enable_compilation_cache()

    from data_pipelines.factory import make_data_factory
    from handjax.models.checkpoint import resolve_path

    cfg = _CONFIG.value
    workdir = resolve_path(_WORKDIR.value)
    from etils import epath
    if epath.Path(workdir).exists() and not epath.Path(workdir).is_dir():
        raise NotADirectoryError(f"--workdir must be a directory: {workdir} is a file")
    from handjax.train import runner
    from handjax.train.system import get_system

    try:
        system = get_system(cfg.system)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    main_process = distributed.is_main()
    if main_process:
        from etils import epath
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        _write_text(os.path.join(workdir, "config.json"), cfg.to_json_best_effort(indent=2))
        print(f"config written to {os.path.join(workdir, 'config.json')}", flush=True)
    distributed.check_preemption("start-up")
    if system.check is not None:  # the system's config checks (e.g. TempCLR's MANO guard) before any data is built
        system.check(cfg)
    data = make_data_factory(cfg.data, seed=cfg.seed)  # may build the data set (abandoned on SIGTERM)
    distributed.check_preemption("start-up (after preparing the data)")
    results = runner.run(system, cfg, workdir, data)  # Preempted: exit 75 in main()
    if main_process:
        _write_text(os.path.join(workdir, "results.json"), json.dumps(results, indent=2, default=float))
        print(f"\nTensorBoard logs: tensorboard --logdir {workdir}\n"
              f"checkpoints: {workdir}/<stage>/checkpoints\nresults: {workdir}/results.json", flush=True)
    distributed.shutdown()


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
