#!/usr/bin/env bash
# Runs one training job on all workers at once (JAX finds the coordinator and process ids from the TPU
# metadata: distributed.auto=true); arguments are jaxbatch config overrides. Each worker logs to
# $REMOTE_DIR/logs/worker-<id>.log. When the run stops with exit 75 (preempted or stopped with a checkpoint)
# it is launched again, up to --retries times, and resumes from its last checkpoint; any other failure
# (bad config: 2, divergence: 3, a crash) is not retried and is the script's exit code.
# Usage: launch.sh [--retries N] [--dry-run] key=value ...
source "$(dirname "$0")/common.sh"
EXIT_STOPPED=75  # jaxbatch train: stopped with a checkpoint to resume from (preemption notice, Ctrl-C, stop_after)
retries=3
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --retries) retries=$2; shift ;;
    --dry-run) DRY_RUN=1 ;;
    *) args+=("$1") ;;
  esac
  shift
done
overrides=$(printf '%q ' "${args[@]}")
# On each worker: run, log, and report the exit code on a line of its own (gcloud's own status only says
# whether some worker failed, not how).
remote="cd $REMOTE_DIR && . .venv/bin/activate && mkdir -p logs && \
id=\$(python3 -c 'import socket; print(socket.gethostname())'); \
python -m jaxbatch train distributed.auto=true $overrides > logs/worker-\$id.log 2>&1; rc=\$?; \
echo \"jaxbatch-exit \$id \$rc\"; exit \$rc"

attempt=0
while true; do
  attempt=$((attempt + 1))
  echo "launch: attempt $attempt" >&2
  if [[ "$DRY_RUN" == 1 ]]; then
    on_all_workers "$remote"
    exit 0
  fi
  set +e
  output=$(on_all_workers "$remote" 2>&1)
  status=$?
  set -e
  printf '%s\n' "$output"
  codes=$(printf '%s\n' "$output" | awk '/^jaxbatch-exit /{print $3}' | sort -u | tr '\n' ' ')
  if [[ "$status" == 0 ]]; then
    echo "launch: finished on every worker" >&2
    exit 0
  fi
  if [[ "$codes" == "$EXIT_STOPPED " || "$codes" == "0 $EXIT_STOPPED " ]] && [[ $attempt -le $retries ]]; then
    echo "launch: stopped with a checkpoint (exit $EXIT_STOPPED); relaunching to resume" >&2
    continue
  fi
  echo "launch: failed (worker exit codes: ${codes:-none reported}; gcloud status $status); not retried" >&2
  for code in $codes; do
    if [[ "$code" != 0 ]]; then exit "$code"; fi
  done
  exit "$status"
done
