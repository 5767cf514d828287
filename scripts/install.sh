#!/usr/bin/env bash
# Create .venv with the runtime requirements (--dev: also the test tools).
# With SEQMATCH_VENV_CACHE set, the venv is built once per requirements hash in that folder
# and .venv becomes a link to it (CI reuses it between runs on the same machine).
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=requirements.txt
[ "${1:-}" = "--dev" ] && requirements=requirements-dev.txt
python=${PYTHON:-python3}
key=$(cat requirements.txt "$requirements" | sha256sum | cut -c1-16)

if [ -n "${SEQMATCH_VENV_CACHE:-}" ]; then
  target="$SEQMATCH_VENV_CACHE/venv-$key"
else
  target=.venv
fi
stamp="$target/.seqmatch-requirements-$key"
if [ ! -f "$stamp" ]; then
  echo "installing $requirements into $target (torch is large: a few minutes the first time)" >&2
  rm -rf "$target"
  mkdir -p "$(dirname "$target")"
  "$python" -m venv "$target"
  "$target/bin/pip" install --disable-pip-version-check -q -r "$requirements"
  touch "$stamp"
fi
if [ "$target" != .venv ]; then
  rm -rf .venv
  ln -s "$target" .venv
fi
echo "ready: .venv ($requirements)" >&2
