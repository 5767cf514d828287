#!/usr/bin/env bash
# Make .venv hold the app's requirements, and with --dev also the test tools (and the Dask extra they test).
# Any number of runs, in any order, with or without --dev: nothing already installed is installed again and
# nothing is removed (each requirements file is installed once per content hash; pip installs incrementally).
# SEQMATCH_VENV_CACHE=DIR keeps the venv in DIR (one per hash of requirements.txt) and links .venv to it
# (CI reuses it between runs on the same machine). PIP_ARGS adds pip options (e.g. --no-index --find-links W).
set -euo pipefail
cd "$(dirname "$0")/.."
files=(requirements.txt)
[ "${1:-}" = "--dev" ] && files+=(requirements-cluster.txt requirements-dev.txt)
python=${PYTHON:-python3}
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

if [ -n "${SEQMATCH_VENV_CACHE:-}" ]; then
  target="$SEQMATCH_VENV_CACHE/venv-$(hash_of requirements.txt)"
else
  target=.venv
fi
if [ ! -x "$target/bin/python" ]; then
  echo "creating $target" >&2
  mkdir -p "$(dirname "$target")"
  "$python" -m venv "$target"
fi
for file in "${files[@]}"; do
  stamp="$target/.seqmatch-$file-$(hash_of "$file")"
  if [ ! -f "$stamp" ]; then
    echo "installing $file into $target (torch is large: a few minutes the first time)" >&2
    # shellcheck disable=SC2086
    "$target/bin/pip" install --disable-pip-version-check -q ${PIP_ARGS:-} -r "$file"
    touch "$stamp"
  fi
done
if [ "$target" != .venv ]; then
  rm -rf .venv
  ln -s "$target" .venv
fi
echo "ready: .venv (${files[*]})" >&2
