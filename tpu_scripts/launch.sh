#!/usr/bin/env bash
# Runs one training job on all hosts at once; arguments are jaxbatch config overrides.
source "$(dirname "$0")/common.sh"
tpu ssh "$TPU_NAME" --worker=all --command="cd $REMOTE_DIR && python -m jaxbatch train distributed.auto=true $*"
