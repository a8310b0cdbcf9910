#!/usr/bin/env bash
# Run a multi-process (multi-host style) handjax job on this one machine: N processes joined by
# jax.distributed through a coordinator on 127.0.0.1, each with K CPU devices. The same code
# paths as a TPU pod or a multi-node GPU job, runnable anywhere.
#
#   launch/local_multiprocess.sh [-n NUM_PROCESSES] [-d DEVICES_PER_PROCESS] [--] COMMAND [ARGS...]
#
#   launch/local_multiprocess.sh -n 2 -d 4 -- .venv/bin/python -m handjax.main \
#       --config configs/tempclr.py:size=tiny --workdir /tmp/handjax-2proc
#
# Options / environment:
#   -n, NUM_PROCESSES        processes to start (default 2)
#   -d, DEVICES_PER_PROCESS  CPU devices per process (default 4): XLA_FLAGS=--xla_force_host_platform_device_count
#   -p, PORT                 coordinator port on 127.0.0.1 (default: a free port)
#   LOG_DIR                  if set, process i writes its stdout+stderr to $LOG_DIR/process_i.log
#                            (default: all processes share this terminal; only process 0 prints progress)
#   PYTHON                   interpreter used to find a free port (default python3)
# Each process gets HANDJAX_COORDINATOR_ADDRESS, HANDJAX_NUM_PROCESSES, HANDJAX_PROCESS_ID (read by
# handjax.distributed.initialize), JAX_PLATFORMS=cpu and the XLA flag above.
#
# Signals: SIGTERM / SIGINT to this script are forwarded to every process (SIGTERM is a preemption
# notice: handjax checkpoints the current step and exits with 75). If one process fails, the
# others are sent SIGTERM, then SIGKILL after GRACE_SECONDS (default 30). On exit the script
# SIGKILLs whatever its children left running (not possible if the script itself gets SIGKILL).
# Exit status: the status of the first process that failed (other than 75); else 75 if any process
# stopped on a preemption notice; else 0.
set -euo pipefail

PREEMPTED=75
NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-4}"
PORT="${PORT:-}"
GRACE_SECONDS="${GRACE_SECONDS:-30}"
PYTHON="${PYTHON:-python3}"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) NUM_PROCESSES="$2"; shift 2 ;;
    -d) DEVICES_PER_PROCESS="$2"; shift 2 ;;
    -p) PORT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "local_multiprocess.sh: no command given (e.g. -- python -m handjax.main --config ... --workdir ...)" >&2
  exit 2
fi
if ! [[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ && "$DEVICES_PER_PROCESS" =~ ^[1-9][0-9]*$ ]]; then
  echo "local_multiprocess.sh: -n and -d must be positive integers, got '$NUM_PROCESSES' and '$DEVICES_PER_PROCESS'" >&2
  exit 2
fi
if [[ -z "$PORT" ]]; then
  PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

pids=()
statuses=()

signal_all() {  # signal_all SIG: send SIG to every child still running
  local pid
  for pid in "${pids[@]}"; do
    kill -s "$1" "$pid" 2>/dev/null || true
  done
}
# shellcheck disable=SC2317  # invoked by the EXIT trap
kill_leftovers() {  # SIGKILL each child's whole process group (it and e.g. its data-loader workers)
  local pid
  for pid in "${pids[@]}"; do
    kill -s KILL -- "-$pid" 2>/dev/null || true
  done
}
set -m  # job control: every child gets its own process group (pgid = pid), reachable as a group
trap 'signal_all TERM' TERM
trap 'signal_all INT' INT
trap kill_leftovers EXIT

if [[ -n "${LOG_DIR:-}" ]]; then
  mkdir -p "$LOG_DIR"
fi
start_process() {  # start_process I COMMAND...: process I in the background
  local i="$1"
  shift
  export HANDJAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT" HANDJAX_NUM_PROCESSES="$NUM_PROCESSES" \
         HANDJAX_PROCESS_ID="$i" JAX_PLATFORMS=cpu \
         XLA_FLAGS="${BASE_XLA_FLAGS} --xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
  if [[ -n "${LOG_DIR:-}" ]]; then
    "$@" > "$LOG_DIR/process_$i.log" 2>&1 &
  else
    "$@" &
  fi
  pids+=("$!")
  statuses+=("")
}

BASE_XLA_FLAGS="${XLA_FLAGS:-}"
for ((i = 0; i < NUM_PROCESSES; i++)); do
  start_process "$i" "$@"
done
echo "local_multiprocess.sh: started $NUM_PROCESSES processes (pids ${pids[*]}), coordinator 127.0.0.1:$PORT," \
     "$DEVICES_PER_PROCESS CPU devices each" >&2

# Reap children as they finish; on the first failure stop the others (they would wait for it forever).
deadline=""
first_failure=""
running=$NUM_PROCESSES
while ((running > 0)); do
  for i in "${!pids[@]}"; do
    if [[ -n "${statuses[$i]}" ]] || kill -0 "${pids[$i]}" 2>/dev/null; then
      continue  # already reaped, or still running
    fi
    rc=0
    wait "${pids[$i]}" || rc=$?
    statuses[i]=$rc
    running=$((running - 1))
    if [[ $rc -ne 0 && $rc -ne $PREEMPTED && -z "$deadline" ]]; then
      echo "local_multiprocess.sh: process $i exited with status $rc; stopping the others" >&2
      first_failure=$rc
      signal_all TERM
      deadline=$((SECONDS + GRACE_SECONDS))
    fi
  done
  if [[ -n "$deadline" && $SECONDS -ge $deadline ]]; then
    signal_all KILL
  fi
  if ((running > 0)); then
    sleep 0.2
  fi
done

if [[ -n "$first_failure" ]]; then
  exit "$first_failure"
fi
for rc in "${statuses[@]}"; do
  if [[ $rc -ne 0 ]]; then
    exit "$rc"  # only 75 (preempted) can be left here
  fi
done
exit 0
