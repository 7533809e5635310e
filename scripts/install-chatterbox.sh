#!/bin/sh
# Install chatterbox-tts 0.1.7 into a virtualenv that keeps its own torch.
#
#   scripts/install-chatterbox.sh [VENV]        (default .venv; idempotent)
#
# chatterbox-tts pins torch==2.6.0, torchaudio==2.6.0 and numpy<2 (Python < 3.13);
# VoiceForge runs on torch 2.13.0 and numpy 2, which chatterbox works with. So:
#  1. its requirements (requirements/chatterbox.txt) go in under a constraints file
#     that holds torch, numpy, and setuptools<81 (resemble-perth imports
#     pkg_resources, which setuptools 81 removed);
#  2. chatterbox-tts itself goes in with --no-deps;
#  3. torchaudio: no 2.13 build exists, and the newest one on PyPI is built for
#     another torch, so its compiled extension fails to load and `import torchaudio`
#     raises. Chatterbox and Perth only use its pure-Python parts (Resample,
#     Spectrogram), which work without the extension: when it cannot load, the
#     script renames it (*.so -> *.so.disabled) so torchaudio imports without it.
# CONSTRAINTS=path overrides the constraints file (a GPU image pins its CUDA torch).
set -eu
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY="$VENV/bin/python"
CONSTRAINTS=${CONSTRAINTS:-requirements/chatterbox-cpu-constraints.txt}

"$PY" -m pip install --quiet -c "$CONSTRAINTS" -r requirements/chatterbox.txt
"$PY" -m pip install --quiet --no-deps chatterbox-tts==0.1.7

if ! "$PY" -c "import torchaudio" >/dev/null 2>&1; then
  lib=$("$PY" -c "import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec('torchaudio').origin), 'lib'))")
  echo "==> torchaudio's compiled extension does not load with this torch: disabling it in $lib"
  for so in "$lib"/*.so; do
    [ -e "$so" ] && mv "$so" "$so.disabled"
  done
fi
"$PY" -W ignore -c "import torch, numpy, chatterbox.tts, perth, vocos.heads; assert perth.PerthImplicitWatermarker is not None; print('chatterbox-tts ready: torch', torch.__version__, 'numpy', numpy.__version__)"
