#!/usr/bin/env bash
# Deletes the slice.
source "$(dirname "$0")/common.sh"
tpu delete "$TPU_NAME" --quiet
