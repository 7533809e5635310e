# The agent's GPU image: batched faster-whisper on CUDA, Chatterbox TTS, the vLLM client.
# vLLM itself runs in the official vllm/vllm-openai image (compose.yaml): its torch
# pin conflicts with chatterbox-tts's torch==2.6.0, so the two never share an env.
#
#   docker build -t voiceforge-gpu .
#   docker compose up            # with vLLM beside it; see docs/deploy-gpu.md
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_COMPILE_BYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libsndfile1 \
 && rm -rf /var/lib/apt/lists/*

# uv installs Python 3.11 (Ubuntu 22.04 ships 3.10) and resolves the gpu extra with
# the torch override (docker/gpu-overrides.txt; scripts/check-gpu-deps.sh checks it).
COPY --from=ghcr.io/astral-sh/uv:0.5.31 /uv /usr/local/bin/uv
RUN uv venv --python 3.11 /opt/venv

WORKDIR /app
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY docker/gpu-overrides.txt docker/gpu-overrides.txt
COPY agent agent
COPY pipeline pipeline
COPY web web
# The gpu extra brings setuptools<82: Perth's watermarker imports pkg_resources.
RUN uv pip install --no-cache --override docker/gpu-overrides.txt '.[gpu]'

# Non-root; model downloads (Whisper, Chatterbox) go to the mounted cache volume.
RUN useradd --create-home --uid 10001 voiceforge \
 && mkdir -p /cache && chown voiceforge /cache
USER voiceforge
ENV HF_HOME=/cache/huggingface \
    VOICEFORGE_CACHE=/cache/voiceforge \
    VOICEFORGE_PROFILE=gpu \
    VOICEFORGE_HOST=0.0.0.0 \
    VOICEFORGE_PORT=8000

EXPOSE 8000
# Loading the models takes minutes on first start (downloads into /cache).
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"

CMD ["voiceforge", "serve", "--profile", "gpu"]
