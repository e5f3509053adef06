#!/usr/bin/env bash
# Build apss.pyz: APSS and every dependency in one zipapp (shiv), run with a plain `python3 apss.pyz
# serve --port 8000` on a machine with no pip and no venv. Compiled dependencies (msgspec, uvloop,
# httptools, cryptography) make it specific to the Python version and platform that built it:
# build with the interpreter you will run it with (PYTHON=python3.12 scripts/build_pyz.sh).
#
#   scripts/build_pyz.sh [OUTPUT]        (default: dist/apss.pyz)
#
# Needs shiv (`pip install -e '.[test]'` has it) and PyPI or a pip cache holding the dependencies.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${1:-$repo/dist/apss.pyz}")"
python="${PYTHON:-python3}"
mkdir -p "$(dirname "$out")"
# --reproducible: the same sources give the same bytes; -c apss: the console script is the entry point.
"$python" -m shiv --compressed --reproducible --console-script apss --output-file "$out" \
  --python "/usr/bin/env python3" "$repo" --quiet --disable-pip-version-check --root-user-action=ignore
echo "built $out ($(du -h "$out" | cut -f1)); run it with: python3 $out serve --port 8000" >&2
