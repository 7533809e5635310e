#!/bin/sh
# Dependency-resolution check of the GPU image's install line, without a GPU or Docker:
# resolves '.[gpu]' for Linux x86_64 / Python 3.11 with the image's overrides and
# prints the versions it would install. Nothing is installed; uv fetches package
# metadata only (seconds to a minute, a few MB), not the multi-GB CUDA wheels.
#
#   scripts/check-gpu-deps.sh            # uses uv from PATH, or installs it in a temp venv
#
# It also shows why the image needs the override: plain pip refuses the extra
# because the project pins the CPU torch 2.13.0 and chatterbox-tts pins 2.6.0.
set -eu
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if command -v uv >/dev/null 2>&1; then
  UV=uv
else
  python3 -m venv "$work/tools"
  "$work/tools/bin/pip" install --quiet uv
  UV="$work/tools/bin/uv"
fi
echo "==> plain pip (expected to fail: torch pin conflict)"
python3 -m venv "$work/pip-venv"
if "$work/pip-venv/bin/pip" install --quiet --dry-run --ignore-installed '.[gpu]' \
     >"$work/pip.log" 2>&1; then
  echo "pip resolved '.[gpu]' without the override"
else
  grep -iE "conflict|cannot install|requires torch|torch==" "$work/pip.log" | head -5 || true
fi
echo "==> the Dockerfile's line: uv pip install --override docker/gpu-overrides.txt '.[gpu]'"
"$UV" pip compile pyproject.toml --extra gpu --override docker/gpu-overrides.txt \
  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu --quiet \
  -o "$work/resolved.txt"
grep -E '^(torch|torchaudio|chatterbox-tts|vocos|faster-whisper|ctranslate2|transformers|numpy|onnxruntime|setuptools|resemble-perth)==' \
  "$work/resolved.txt"
# Perth's watermarker imports pkg_resources, gone from setuptools 82.
setuptools_major=$(sed -n 's/^setuptools==\([0-9]*\)\..*/\1/p' "$work/resolved.txt")
if [ -z "$setuptools_major" ] || [ "$setuptools_major" -ge 82 ]; then
  echo "the resolution has no setuptools < 82: Perth's watermarker cannot import" >&2
  exit 1
fi
echo "==> resolved $(grep -cE '^[a-z0-9]' "$work/resolved.txt") packages: OK"
