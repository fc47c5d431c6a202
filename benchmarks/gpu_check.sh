#!/usr/bin/env bash
# The GPU check (issue 12, item 6): one call on a CUDA machine, one markdown table. Details: benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh                  # the check (about 5-8 min on one H100/H200); --help for options
#   bash benchmarks/gpu_check.sh --smoke          # every row at tiny sizes on the CPU: tests the script
#
# The table goes to stdout and to --out FILE (default $OUT/gpu_check.md when $OUT is set, as on the device tool's
# machines). No network: packages that machine lacks travel as wheels in .whl/ (see BENCHMARKS.md, "GPU check")
# and are installed to a scratch folder. It changes no GPU setting.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site .whl/*.whl
  export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
args=("$@")
has_out=0
for arg in "$@"; do
  case $arg in --out|--out=*) has_out=1 ;; esac
done
if [ $has_out = 0 ] && [ -n "${OUT:-}" ]; then args+=(--out "$OUT/gpu_check.md"); fi
exec "$PY" benchmarks/gpu_check.py "${args[@]}"
