# shellcheck shell=bash
# Shared by the TPU scripts (sourced). Settings come from the environment; every script takes --dry-run,
# which prints the gcloud commands instead of running them.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR=${ACCELERATOR:-v5litepod-8}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
REMOTE_DIR=${REMOTE_DIR:-jaxbatch}
SLICES=${SLICES:-1}
if ! [[ "$SLICES" =~ ^[1-9][0-9]*$ ]]; then echo "SLICES=$SLICES: a number of slices, 1 or more" >&2; exit 2; fi
DRY_RUN=${DRY_RUN:-0}
GCLOUD=(gcloud)
if [[ -n "${PROJECT:-}" ]]; then GCLOUD+=(--project="$PROJECT"); fi

# Runs a command, or prints it (shell-quoted) under --dry-run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

tpu() { run "${GCLOUD[@]}" compute tpus tpu-vm "$@" --zone="$ZONE"; }

# The TPU VMs of the job: the slice $TPU_NAME, or with SLICES=N (multislice) the N slices a queued resource
# names $TPU_NAME-0 ... $TPU_NAME-(N-1), joined by the data-center network.
nodes() {
  if [[ "$SLICES" -gt 1 ]]; then
    for ((i = 0; i < SLICES; i++)); do echo "$TPU_NAME-$i"; done
  else
    echo "$TPU_NAME"
  fi
}

# Runs a shell command on every worker of every slice at once (a multislice job's processes start together);
# fails if it failed anywhere.
on_all_workers() {
  local node status=0 pids=()
  for node in $(nodes); do
    if [[ "$DRY_RUN" == 1 ]]; then
      tpu ssh "$node" --worker=all --command="$1"
    else
      tpu ssh "$node" --worker=all --command="$1" &
      pids+=("$!")
    fi
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
  done
  return "$status"
}
