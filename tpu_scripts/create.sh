#!/usr/bin/env bash
# Creates the TPU VM slice: on demand (default), --spot, or --queued (a queued resource, which waits for
# capacity; --valid-for 6h bounds the wait); with SLICES=N, N slices of $ACCELERATOR as one queued resource
# (multislice: $TPU_NAME-0 ... joined by the data-center network). Usage: create.sh [--spot] [--queued
# [--valid-for D]] [--dry-run]
source "$(dirname "$0")/common.sh"
mode=on-demand valid_for=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --spot) mode=spot ;;
    --queued) mode=queued ;;
    --valid-for) valid_for=$2; shift ;;
    --dry-run) DRY_RUN=1 ;;
    *) echo "create.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ "$SLICES" -gt 1 && "$mode" != queued ]]; then
  if [[ "$mode" == spot ]]; then SPOT=1; fi
  mode=queued  # several slices come only as one queued resource
fi
if [[ "$mode" == queued ]]; then
  extra=()
  if [[ -n "$valid_for" ]]; then extra+=(--valid-until-duration="$valid_for"); fi
  if [[ "${SPOT:-0}" == 1 ]]; then extra+=(--spot); fi
  if [[ "$SLICES" -gt 1 ]]; then
    extra+=(--node-count="$SLICES" --node-prefix="$TPU_NAME")
  else
    extra+=(--node-id="$TPU_NAME")
  fi
  run "${GCLOUD[@]}" compute tpus queued-resources create "$TPU_NAME-qr" --zone="$ZONE" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${extra[@]}"
  # wait until the slice exists (a queued resource turns ACTIVE when capacity is granted)
  if [[ "$DRY_RUN" == 0 ]]; then
    until [[ "$("${GCLOUD[@]}" compute tpus queued-resources describe "$TPU_NAME-qr" --zone="$ZONE" \
              --format='value(state.state)')" == ACTIVE ]]; do
      sleep 60
    done
  fi
elif [[ "$mode" == spot ]]; then
  tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" --spot
else
  tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
fi
