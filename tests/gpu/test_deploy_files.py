"""The GPU deployment files: compose.yaml validates, the Dockerfile says what it must.

``make test`` installs Debian's docker-compose (system-deps), which validates a
compose file without a Docker engine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_compose_file_validates_with_the_example_env(tmp_path: Path) -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.fail("docker-compose is missing: run `make system-deps` (apt: docker-compose)")
    for name in ("compose.yaml", "Dockerfile"):
        shutil.copy(REPO / name, tmp_path / name)
    # compose.yaml reads .env (ignored by git); the committed example stands in for it.
    shutil.copy(REPO / ".env.example", tmp_path / ".env")
    result = subprocess.run(
        [compose, "-f", "compose.yaml", "config"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = result.stdout
    assert "--enable-prefix-caching" in config
    # Pre-quantised FP8 weights: quantising at load time first reads all 131 GB of BF16.
    assert "--model=RedHatAI/Llama-3.3-70B-Instruct-FP8-dynamic" in config
    assert "--quantization" not in config
    assert "--kv-cache-dtype=fp8" in config
    assert "--max-num-seqs=128" in config
    assert "--max-num-batched-tokens=8192" in config
    assert "--enable-auto-tool-choice" in config
    assert "--tool-call-parser=llama3_json" in config
    assert "--tensor-parallel-size=2" in config
    assert "--served-model-name=llama-3.3-70b" in config
    assert "image: vllm/vllm-openai:v0.31.0" in config
    assert "VOICEFORGE_LLM_URL: http://vllm:8000/v1" in config
    assert config.count("driver: nvidia") == 2
    # Explicit GPUs, disjoint: vLLM's ranks on 0 and 1, the agent alone on 2.
    vllm_gpus, agent_gpus = _device_ids(config)
    assert vllm_gpus == {"0", "1"} and agent_gpus == {"2"}
    assert "count:" not in config
    assert "VLLM_API_KEY: change-me-vllm-key" in config
    # Plain HTTP is published on loopback only unless the operator says otherwise.
    assert "- 127.0.0.1:8000:8000/tcp" in config
    assert "- 8000:8000" not in config


def _device_ids(config: str) -> tuple[set[str], set[str]]:
    """The GPU ids each service reserves, vLLM's first (from `compose config`, whose
    output lists each service's `device_ids:` followed by `- 'ID'` lines)."""
    reserved: dict[str, set[str]] = {}
    service = ""
    lines = config.splitlines()
    for index, line in enumerate(lines):
        if re.fullmatch(r"  [a-z-]+:", line):
            service = line.strip().rstrip(":")
        elif line.strip() == "device_ids:":
            for item in lines[index + 1 :]:
                if not item.strip().startswith("- "):
                    break
                ids = item.strip()[2:].strip("'\"")
                reserved.setdefault(service, set()).update(i.strip() for i in ids.split(","))
    return reserved.get("vllm", set()), reserved.get("agent", set())


def test_env_file_is_ignored_and_the_example_is_not() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=REPO, check=False, timeout=30
    )
    assert ignored.returncode == 0
    example = subprocess.run(
        ["git", "check-ignore", "-q", ".env.example"], cwd=REPO, check=False, timeout=30
    )
    assert example.returncode == 1


def test_dockerfile_is_a_non_root_cuda_image_with_a_health_check() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "\nFROM nvidia/cuda:12." in dockerfile
    assert "cudnn-runtime-ubuntu22.04" in dockerfile
    assert "'.[gpu]'" in dockerfile and "docker/gpu-overrides.txt" in dockerfile
    assert "\nUSER voiceforge\n" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile


def test_gpu_extra_and_overrides_name_the_gpu_engines() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    extra = " ".join(project["project"]["optional-dependencies"]["gpu"])
    for package in ("chatterbox-tts", "vocos", "faster-whisper"):
        assert package in extra
    overrides = (REPO / "docker" / "gpu-overrides.txt").read_text().split()
    assert "torch==2.6.0" in overrides


@pytest.mark.filterwarnings("ignore:pkg_resources is deprecated as an API:UserWarning")
def test_the_gpu_extra_keeps_the_setuptools_perths_watermarker_imports() -> None:
    """resemble-perth imports pkg_resources (gone in setuptools 82) without declaring
    setuptools: the gpu extra must bring a setuptools that still has it, or the
    image's watermarker (and gpu_bench's library baseline) cannot import."""
    import importlib.metadata
    import importlib.util

    from packaging.requirements import Requirement
    from packaging.version import Version

    spec = importlib.util.find_spec("perth")
    if spec is None or spec.origin is None:
        pytest.fail("resemble-perth is missing: run `make test` (it installs chatterbox-tts)")
    perth_net = Path(spec.origin).parent / "perth_net" / "__init__.py"
    assert "pkg_resources" in perth_net.read_text(), "Perth no longer needs the pin"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    extra = [Requirement(line) for line in project["project"]["optional-dependencies"]["gpu"]]
    pins = [requirement.specifier for requirement in extra if requirement.name == "setuptools"]
    assert pins, "the gpu extra does not pin setuptools"
    assert not pins[0].contains(Version("82.0.0")), "setuptools 82 has no pkg_resources"
    # The resolved set here satisfies the same pin, and the watermarker imports with it.
    assert pins[0].contains(Version(importlib.metadata.version("setuptools")))
    import perth

    assert perth.PerthImplicitWatermarker is not None
