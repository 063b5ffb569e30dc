#!/usr/bin/env bash
# Creates the TPU VM slice.
source "$(dirname "$0")/common.sh"
tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
