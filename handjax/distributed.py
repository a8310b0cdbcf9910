"""Multi-process (multi-host) set-up: ``jax.distributed``, barriers and preemption notices.

How a run finds its peers (:func:`initialize`, called by ``handjax.main`` before any other
JAX use), first match wins:

1. explicit values: ``--coordinator_address``, ``--num_processes``, ``--process_id`` (main's
   flags / this function's arguments), each falling back to the environment variables
   ``HANDJAX_COORDINATOR_ADDRESS``, ``HANDJAX_NUM_PROCESSES``, ``HANDJAX_PROCESS_ID``
   (``launch/local_multiprocess.sh`` sets them). All three are then required;
   ``num_processes == 1`` means one process (no ``jax.distributed``).
2. a SLURM job step with more than one task (``srun``; ``SLURM_JOB_ID``, ``SLURM_NTASKS > 1``,
   ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_STEP_NODELIST`` set): JAX's own SLURM detection
   (coordinator = first node of the step, one process per task, GPU ``SLURM_LOCALID``).
3. a Cloud TPU VM (TPU chips on this machine, or the TPU pod environment variables
   ``TPU_WORKER_HOSTNAMES`` / ``TPU_PROCESS_ADDRESSES`` / ``MEGASCALE_COORDINATOR_ADDRESS``):
   JAX's own TPU detection (workers from the VM metadata). On a single-host TPU VM this
   forms a one-process group, which is harmless.
4. otherwise: one process, nothing to do.

``HANDJAX_DISTRIBUTED=off`` disables 2. and 3. (explicit values still apply).

Preemption: SIGTERM (TPU maintenance events, SLURM time limits and preemption, ``kill``) is a
request to stop soon. ``handjax.main`` installs a process-wide handler for the whole run
(:func:`install_preemption_handler`); any unit of work polls :func:`preemption_requested` (a
flag read: free) or calls :func:`check_preemption`, which raises :class:`Preempted`. The
training loop checkpoints the current step first (:class:`PreemptionGuard`); data building
abandons the dataset being written (nothing half-built is left); evaluation abandons its pass
(its results are not written, so a rerun evaluates again). ``handjax.main`` turns
:class:`Preempted` into exit code :data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``: "try
again"), and running the same command again continues: finished stages are not redone and a
training stage resumes from its checkpoint.

With several processes, JAX's preemption service owns SIGTERM (it is started by
``jax.distributed`` and makes every process stop at the same training step, whichever got the
signal); no Python handler is installed, so a notice is acted on at the next training step
(data building and evaluation run to their end first).
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import itertools
import logging
import os
import signal
import socket
import threading
from typing import Callable, Mapping, Optional, TypeVar

import jax
import numpy as np

PREEMPTED_EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL: stopped on a preemption notice after checkpointing

ENV_COORDINATOR = "HANDJAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "HANDJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "HANDJAX_PROCESS_ID"
ENV_AUTO = "HANDJAX_DISTRIBUTED"  # "off" disables cluster auto-detection

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NODELIST")
_TPU_POD_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this process joins the job.

    mode: 'single' (no jax.distributed), 'explicit' (coordinator/num_processes/process_id
    given), 'slurm' or 'tpu' (``jax.distributed.initialize()`` auto-detects the rest).
    """

    mode: str
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None


def _as_int(value, name: str, env: str) -> Optional[int]:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--{name} (or ${env}) must be an integer, got {value!r}") from None


def _explicit_plan(coordinator_address, num_processes, process_id, environ: Mapping[str, str]) -> Optional[Plan]:
    """Plan from explicit values (arguments first, then HANDJAX_* variables); None if none is set."""
    coord = coordinator_address or environ.get(ENV_COORDINATOR) or None
    n = _as_int(num_processes if num_processes is not None else environ.get(ENV_NUM_PROCESSES),
                "num_processes", ENV_NUM_PROCESSES)
    pid = _as_int(process_id if process_id is not None else environ.get(ENV_PROCESS_ID),
                  "process_id", ENV_PROCESS_ID)
    if coord is None and n is None and pid is None:
        return None
    if n is not None and n < 1:
        raise ValueError(f"--num_processes (or ${ENV_NUM_PROCESSES}) must be >= 1, got {n}")
    if n == 1 and pid in (None, 0):
        return Plan("single")
    missing = [f"--{flag} (${env})" for flag, env, v in
               (("coordinator_address", ENV_COORDINATOR, coord), ("num_processes", ENV_NUM_PROCESSES, n),
                ("process_id", ENV_PROCESS_ID, pid)) if v is None]
    if missing:
        raise ValueError(f"multi-process set-up is incomplete: missing {', '.join(missing)}; give all of "
                         f"coordinator address (host:port), number of processes and this process's id")
    if not 0 <= pid < n:
        raise ValueError(f"--process_id (${ENV_PROCESS_ID}) must lie in [0, {n}), got {pid}")
    if ":" not in coord:
        raise ValueError(f"--coordinator_address (${ENV_COORDINATOR}) must be host:port, got {coord!r}")
    return Plan("explicit", coord, n, pid)


def in_slurm_multitask(environ: Mapping[str, str]) -> bool:
    """True inside a SLURM job step (srun) with more than one task."""
    if not all(v in environ for v in _SLURM_VARS):
        return False
    try:
        return int(environ["SLURM_NTASKS"]) > 1
    except ValueError:
        return False


def _tpu_chips_present() -> bool:
    try:  # what JAX itself uses to decide it runs on a Cloud TPU VM (PCI scan; no backend start)
        from jax._src import hardware_utils
        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except Exception:  # noqa: BLE001 -- private API moved: fall back to the TPU device nodes
        return bool(glob.glob("/dev/accel[0-9]*"))


def on_tpu_vm(environ: Mapping[str, str]) -> bool:
    """True on a Cloud TPU VM (pod environment variables set, or TPU chips on this machine)."""
    return any(environ.get(v) for v in _TPU_POD_VARS) or _tpu_chips_present()


def plan(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
         process_id: Optional[int] = None, environ: Optional[Mapping[str, str]] = None) -> Plan:
    """Decide how this process joins the job (see the module docstring); starts nothing."""
    environ = os.environ if environ is None else environ
    explicit = _explicit_plan(coordinator_address, num_processes, process_id, environ)
    if explicit is not None:
        return explicit
    if environ.get(ENV_AUTO, "").lower() in ("off", "0", "false", "no"):
        return Plan("single")
    if in_slurm_multitask(environ):
        return Plan("slurm", num_processes=int(environ["SLURM_NTASKS"]), process_id=int(environ["SLURM_PROCID"]))
    if on_tpu_vm(environ):
        return Plan("tpu")
    return Plan("single")


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, initialization_timeout: int = 300,
               environ: Optional[Mapping[str, str]] = None) -> Plan:
    """Join the multi-process job if there is one (``jax.distributed.initialize``); else a no-op.

    Call before any other JAX use (device queries, arrays). Idempotent. Returns the
    :class:`Plan` that was followed.
    """
    p = plan(coordinator_address, num_processes, process_id, environ)
    if p.mode == "single" or jax.distributed.is_initialized():
        return p
    if p.mode == "explicit":
        jax.distributed.initialize(p.coordinator_address, num_processes=p.num_processes, process_id=p.process_id,
                                   initialization_timeout=initialization_timeout)
    else:  # JAX's cluster detection (SLURM, Cloud TPU) fills in the rest
        jax.distributed.initialize(initialization_timeout=initialization_timeout)
    logging.info("jax.distributed: process %d of %d (%s)", jax.process_index(), jax.process_count(), p.mode)
    return p


def shutdown() -> None:
    """Leave the job (``jax.distributed.shutdown``) if :func:`initialize` joined one."""
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()


def is_main() -> bool:
    """True on the process that logs and writes job-level files (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def first_of_group(keys: np.ndarray) -> np.ndarray:
    """(P,) index of the first row equal to each row of ``keys`` (P, K): e.g. each process's host leader."""
    keys = np.asarray(keys)
    same = (keys[:, None, :] == keys[None, :, :]).all(-1)  # (P, P)
    return same.argmax(axis=1)


def is_first_on_host() -> bool:
    """True on the lowest-numbered process of this machine (hosts told apart by hostname)."""
    if jax.process_count() == 1:
        return True
    from jax.experimental import multihost_utils
    digest = np.frombuffer(hashlib.sha1(socket.gethostname().encode()).digest(), np.uint8)
    hosts = np.asarray(multihost_utils.process_allgather(digest))  # (process_count, 20)
    return int(first_of_group(hosts)[jax.process_index()]) == jax.process_index()


def build_once(build: Callable[[], T], name: str) -> T:
    """Run an idempotent ``build()`` (e.g. preparing a dataset) without races between processes.

    Process 0 builds first; then the first process of every other host (which finds the result
    on a shared filesystem, or builds its own copy on a host-local one); then all remaining
    processes (which find it). Barriers separate the rounds, so no two processes ever write the
    same directory at once. Returns ``build()``'s value on every process.
    """
    if jax.process_count() == 1:
        return build()
    first_on_host = is_first_on_host()
    result = build() if jax.process_index() == 0 else None
    barrier(f"{name}:process0")
    if first_on_host and jax.process_index() != 0:
        result = build()
    barrier(f"{name}:hosts")
    if not first_on_host:
        result = build()
    return result


class Preempted(Exception):
    """A unit of work stopped on a preemption notice (SIGTERM); the same command continues it.

    ``handjax.main`` exits with :data:`PREEMPTED_EXIT_CODE` on it. The training loop raises a
    subclass after checkpointing (``handjax.train.loop.Preempted``).
    """


_NOTICE = threading.Event()  # set by the SIGTERM handler (or when the processes agreed to stop)
_PROCESS_HANDLER = {"installed": False, "previous": None}


def _on_sigterm(signum, frame) -> None:
    del signum, frame
    _NOTICE.set()


def install_preemption_handler() -> bool:
    """Catch SIGTERM for the rest of the run (``handjax.main`` calls it at start-up).

    Single process: a Python handler sets the notice flag; work in progress polls it. Returns
    False (nothing installed) with several processes (JAX's preemption service handles SIGTERM,
    see the module docstring) or off the main thread.
    """
    if jax.distributed.is_initialized() or threading.current_thread() is not threading.main_thread():
        return False
    if not _PROCESS_HANDLER["installed"]:
        _PROCESS_HANDLER["previous"] = signal.signal(signal.SIGTERM, _on_sigterm)
        _PROCESS_HANDLER["installed"] = True
    return True


def uninstall_preemption_handler() -> None:
    """Restore the SIGTERM handler found by :func:`install_preemption_handler`; clear the flag."""
    if _PROCESS_HANDLER["installed"]:
        signal.signal(signal.SIGTERM, _PROCESS_HANDLER["previous"] or signal.SIG_DFL)
        _PROCESS_HANDLER.update(installed=False, previous=None)
    _NOTICE.clear()


def preemption_requested() -> bool:
    """True once a preemption notice (SIGTERM) arrived in this process; a flag read, poll freely."""
    return _NOTICE.is_set()


def check_preemption(what: str) -> None:
    """Raise :class:`Preempted` if a notice arrived: call between the steps of a unit of work
    (``what`` names it, e.g. 'building synthetic_hands/tiny', 'evaluation') that can be abandoned
    and redone from its start by a rerun."""
    if _NOTICE.is_set():
        raise Preempted(f"preemption notice (SIGTERM) during {what}: stopped it (nothing of it is kept); "
                        f"run the same command again to continue")


def all_processes_agree(flag: bool) -> bool:
    """True when ``flag`` is True on every process (a collective with several processes)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))))


_SYNC_CALLS = itertools.count()  # should_stop calls in this process: the same sequence on every process


class PreemptionGuard:
    """Tells the training loop when to checkpoint and stop because of a preemption notice.

    ``with PreemptionGuard() as guard: ... if guard.should_stop(): save; stop``; every process
    calls ``should_stop`` once per step (the same number of times on every process).

    * one process: ``should_stop`` reads the process-wide notice flag (no host
      synchronisation). When ``handjax.main`` has not installed the process-wide handler (a
      library caller), the guard installs one for the duration of the ``with`` block (main
      thread only) and restores the previous handler afterwards.
    * several processes: JAX's preemption sync manager (started by ``jax.distributed``; it
      catches SIGTERM itself) agrees on a common call across processes, whichever process(es)
      got the signal (``multihost_utils.reached_preemption_sync_point``, counted in
      ``should_stop`` calls, which keep increasing across guards). It answers from a local flag
      until a notice arrives, so the per-step cost is negligible.
    """

    def __init__(self):
        self.requested = False
        self._own_handler = False
        self._synced = False

    def __enter__(self) -> "PreemptionGuard":
        self._synced = jax.process_count() > 1
        if not self._synced and not _PROCESS_HANDLER["installed"]:
            self._own_handler = install_preemption_handler()
        return self

    def should_stop(self) -> bool:
        """True when the loop should checkpoint the current step and stop (together on every process)."""
        if self._synced:
            from jax.experimental import multihost_utils
            try:
                self.requested = bool(multihost_utils.reached_preemption_sync_point(next(_SYNC_CALLS)))
            except RuntimeError as e:  # preemption service off (jax_enable_preemption_service=False)
                logging.warning("SIGTERM will not trigger a checkpoint in this multi-process run: %s", e)
                self._synced = False
            if self.requested:
                _NOTICE.set()  # the processes agreed: later units of work see it too
        else:
            self.requested = _NOTICE.is_set()
        return self.requested

    def __exit__(self, *exc) -> None:
        if self._own_handler:
            uninstall_preemption_handler()
            self._own_handler = False
