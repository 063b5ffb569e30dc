#!/usr/bin/env bash
# Deletes the slice (and its queued resource, if it came from one). Usage: delete.sh [--queued] [--dry-run]
source "$(dirname "$0")/common.sh"
queued=0
for arg in "$@"; do
  case "$arg" in
    --queued) queued=1 ;;
    --dry-run) DRY_RUN=1 ;;
    *) echo "delete.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
if [[ "$queued" == 1 || "$SLICES" -gt 1 ]]; then  # a multislice job is always a queued resource
  run "${GCLOUD[@]}" compute tpus queued-resources delete "$TPU_NAME-qr" --zone="$ZONE" --force --quiet
else
  tpu delete "$TPU_NAME" --quiet
fi
