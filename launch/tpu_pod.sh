#!/usr/bin/env bash
# Train handjax on every worker of a Cloud TPU VM (a pod slice: one process per worker VM).
#
#   TPU_NAME=hands-v4-32 ZONE=us-central2-b BUCKET=gs://my-bucket \
#     launch/tpu_pod.sh [--create] [--delete] -- --config configs/tempclr.py --config.finetune.batch_size=256
#
# What it does, from this checkout on your workstation (needs gcloud, logged in):
#   1. --create: create the TPU VM (ACCELERATOR_TYPE, RUNTIME_VERSION; SPOT=1 for a spot VM).
#   2. copy the checkout (git-tracked and untracked-but-not-ignored files) to every worker.
#   3. install on every worker: a Python 3.11 venv with `pip install -e . "jax[tpu]==0.10.2" gcsfs
#      google-cloud-storage` (gcsfs: gs:// paths for etils/grain; google-cloud-storage: gs:// TensorBoard).
#      SKIP_INSTALL=1 skips this on later runs.
#   4. run `python -m handjax.main ARGS --workdir $WORKDIR` on all workers at once
#      (`gcloud compute tpus tpu-vm ssh --worker=all`). No coordinator flags are needed:
#      handjax.distributed detects the TPU VM and jax.distributed.initialize() finds the workers.
#   5. --delete: delete the TPU VM when the run ends (whatever its outcome).
#
# Environment:
#   TPU_NAME, ZONE        (required) the TPU VM and its zone; PROJECT: gcloud project (default: gcloud's)
#   BUCKET                gs:// bucket for outputs (required unless WORKDIR is set)
#   RUN_NAME              default handjax-<UTC date-time>; WORKDIR default $BUCKET/handjax/runs/$RUN_NAME
#                         (checkpoints, TensorBoard, config.json, results.json). Reuse the same WORKDIR to resume.
#   DATA_DIR              TFDS_DATA_DIR on the workers (default /tmp/tfds on each worker's disk; the
#                         synthetic data set is built there by the first process of every worker). grain
#                         reads array_record files from local paths only (array_record has no gs:// reader
#                         yet), so for datasets kept in a bucket set GCSFUSE_BUCKET=my-bucket: it is mounted
#                         at /mnt/gcs on every worker (gcsfuse) and DATA_DIR can be /mnt/gcs/tfds.
#   ACCELERATOR_TYPE      for --create (default v4-32); RUNTIME_VERSION (default tpu-ubuntu2204-base)
#   REMOTE_DIR            code location on the workers (default handjax, i.e. ~/handjax)
#   PYTHON_BIN            Python 3.11 on the workers (default python3.11; installed with apt if missing)
#
# Preemption / maintenance: workers get SIGTERM, agree on a step, write a checkpoint to WORKDIR and
# exit 75; the script then exits 75 too. Run it again (same RUN_NAME or WORKDIR, with SKIP_INSTALL=1
# and without --create if the VM still exists) and training resumes from that checkpoint.
set -euo pipefail

CREATE=0
DELETE=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --create) CREATE=1; shift ;;
    --delete) DELETE=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done

: "${TPU_NAME:?set TPU_NAME (the TPU VM name)}"
: "${ZONE:?set ZONE (e.g. us-central2-b)}"
RUN_NAME="${RUN_NAME:-handjax-$(date -u +%Y%m%d-%H%M%S)}"
if [[ -z "${WORKDIR:-}" ]]; then
  : "${BUCKET:?set BUCKET (gs://...) or WORKDIR}"
  WORKDIR="${BUCKET%/}/handjax/runs/$RUN_NAME"
fi
DATA_DIR="${DATA_DIR:-/tmp/tfds}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
REMOTE_DIR="${REMOTE_DIR:-handjax}"
PYTHON_BIN="${PYTHON_BIN:-python3.11}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

gcloud_tpu() {  # gcloud_tpu VERB ARGS...: gcloud compute tpus tpu-vm VERB ... in $ZONE (and $PROJECT)
  local verb="$1"
  shift
  gcloud compute tpus tpu-vm "$verb" "$@" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"}
}

on_all_workers() {  # on_all_workers COMMAND: run a shell command on every worker, in parallel
  gcloud_tpu ssh "$TPU_NAME" --worker=all --command="$1"
}

tarball=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {  # remove the local tarball; with --delete, delete the TPU VM
  if [[ -n "$tarball" ]]; then
    rm -f "$tarball"
  fi
  if [[ $DELETE -eq 1 ]]; then
    gcloud_tpu delete "$TPU_NAME" --quiet
  fi
}
trap cleanup EXIT

if [[ $CREATE -eq 1 ]]; then
  echo "tpu_pod.sh: creating $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION) in $ZONE" >&2
  spot=()
  if [[ "${SPOT:-0}" == 1 ]]; then
    spot=(--spot)
  fi
  gcloud_tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${spot[@]}"
fi

echo "tpu_pod.sh: copying $ROOT to $TPU_NAME:~/$REMOTE_DIR on all workers" >&2
tarball="$(mktemp -t handjax-XXXXXX.tar.gz)"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -czf "$tarball")
gcloud_tpu scp "$tarball" "$TPU_NAME:handjax.tar.gz" --worker=all
on_all_workers "mkdir -p ~/$REMOTE_DIR && tar -xzf ~/handjax.tar.gz -C ~/$REMOTE_DIR && rm ~/handjax.tar.gz"

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  echo "tpu_pod.sh: installing (venv ~/$REMOTE_DIR/.venv, jax[tpu]) on all workers" >&2
  on_all_workers "set -e; cd ~/$REMOTE_DIR
    if ! command -v $PYTHON_BIN >/dev/null; then
      sudo apt-get update -qq && sudo apt-get install -y -qq ${PYTHON_BIN}-venv
    fi
    $PYTHON_BIN -m venv .venv
    .venv/bin/pip install -q -U pip
    .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2' gcsfs google-cloud-storage"
fi

if [[ -n "${GCSFUSE_BUCKET:-}" ]]; then
  echo "tpu_pod.sh: mounting gs://$GCSFUSE_BUCKET at /mnt/gcs on all workers" >&2
  on_all_workers "set -e; command -v gcsfuse >/dev/null || { echo 'gcsfuse is not installed on this worker' >&2; exit 1; }
    sudo mkdir -p /mnt/gcs && sudo chown \$USER /mnt/gcs
    mountpoint -q /mnt/gcs || gcsfuse --implicit-dirs $GCSFUSE_BUCKET /mnt/gcs"
fi

args=""
for a in "$@"; do
  args+=" $(printf '%q' "$a")"
done
echo "tpu_pod.sh: running on all workers; workdir $WORKDIR" >&2
rc=0
on_all_workers "cd ~/$REMOTE_DIR && TFDS_DATA_DIR=$(printf '%q' "$DATA_DIR") \
  .venv/bin/python -m handjax.main --workdir=$(printf '%q' "$WORKDIR")$args" || rc=$?
if [[ $rc -ne 0 ]]; then
  # 75: the workers stopped on a preemption notice after checkpointing (gcloud passes the status on)
  echo "tpu_pod.sh: workers exited with status $rc; to resume from the last checkpoint rerun with" \
       "WORKDIR=$WORKDIR SKIP_INSTALL=1 (and without --create)" >&2
fi
exit "$rc"
