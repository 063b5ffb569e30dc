# shellcheck shell=bash
# Shared by the TPU scripts (sourced). Settings come from the environment; every script takes --dry-run,
# which prints the gcloud commands instead of running them.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR=${ACCELERATOR:-v5litepod-8}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
REMOTE_DIR=${REMOTE_DIR:-jaxbatch}
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

# Runs a shell command on every worker of the slice at once.
on_all_workers() { tpu ssh "$TPU_NAME" --worker=all --command="$1"; }
