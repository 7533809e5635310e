"""Model resolution: packaged paths, and the GGUF assembled from PyPI wheel parts."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from pipeline import models
from pipeline.errors import ModelLoadError
from pipeline.tiers import FAST_TIER, tier_named


def _parts(tmp_path: Path, contents: list[bytes]) -> list[Path]:
    paths = []
    for index, content in enumerate(contents, 1):
        path = tmp_path / f"part{index:02d}.bin"
        path.write_bytes(content)
        paths.append(path)
    return paths


def test_packaged_model_paths_exist() -> None:
    whisper = models.whisper_model_dir()
    assert (whisper / "model.bin").is_file()
    assert (whisper / "config.json").is_file()
    onnx, config = models.piper_voice_paths()
    assert onnx.is_file() and onnx.suffix == ".onnx"
    assert config.is_file() and config.name == onnx.name + ".json"


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOICEFORGE_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path
    monkeypatch.delenv("VOICEFORGE_CACHE")
    assert models.cache_dir() == Path.home() / ".cache" / "voiceforge"


def test_concat_verifies_and_marks(tmp_path: Path) -> None:
    contents = [b"alpha" * 1000, b"", b"beta" * 333, b"gamma"]
    joined = b"".join(contents)
    destination = tmp_path / "models" / "model.gguf"
    lines: list[str] = []
    result = models.concat_files_and_verify(
        _parts(tmp_path, contents),
        destination,
        expected_size=len(joined),
        expected_sha256=hashlib.sha256(joined).hexdigest(),
        progress=lines.append,
    )
    assert result == destination
    assert destination.read_bytes() == joined
    assert models.is_verified(destination, len(joined), hashlib.sha256(joined).hexdigest())
    assert lines == ["verifying sha256"]
    assert sorted(p.name for p in destination.parent.iterdir()) == [
        "model.gguf",
        "model.gguf.sha256-ok",
    ]


@pytest.mark.parametrize("corrupt", ["flipped byte", "truncated part"])
def test_corrupted_part_raises_and_leaves_nothing(tmp_path: Path, corrupt: str) -> None:
    contents = [b"a" * 4096, b"b" * 4096, b"c" * 4096]
    joined = b"".join(contents)
    expected_sha = hashlib.sha256(joined).hexdigest()
    bad = list(contents)
    bad[1] = b"b" * 2047 + b"X" + b"b" * 2048 if corrupt == "flipped byte" else b"b" * 4000
    destination = tmp_path / "models" / "model.gguf"
    with pytest.raises(ModelLoadError) as caught:
        models.concat_files_and_verify(
            _parts(tmp_path, bad),
            destination,
            expected_size=len(joined),
            expected_sha256=expected_sha,
        )
    message = str(caught.value)
    assert expected_sha in message and str(len(joined)) in message
    assert hashlib.sha256(b"".join(bad)).hexdigest() in message
    assert not caught.value.transient
    assert list(destination.parent.iterdir()) == []


def test_marker_makes_second_run_instant(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A file of the right size with its marker is trusted without hashing or downloading."""
    monkeypatch.setenv("VOICEFORGE_CACHE", str(tmp_path))
    gguf = tier_named(FAST_TIER).llm
    target = models.assembled_path(gguf)
    target.parent.mkdir(parents=True)
    with target.open("wb") as sparse:
        sparse.truncate(gguf.size)
    assert not models.is_verified(target, gguf.size, gguf.sha256)
    target.with_name(target.name + ".sha256-ok").write_text(gguf.sha256 + "\n")
    lines: list[str] = []
    assert models.ensure_fast_gguf(progress=lines.append) == target
    assert lines == []
    assert not (tmp_path / "wheels").exists()


def test_ensure_fast_gguf_returns_the_verified_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real model (fetched from PyPI once; later runs use the cache)."""
    lines: list[str] = []
    path = models.ensure_fast_gguf(progress=lines.append)
    gguf = tier_named(FAST_TIER).llm
    assert path.stat().st_size == gguf.size
    assert path.with_name(path.name + ".sha256-ok").read_text().strip() == gguf.sha256
    with path.open("rb") as gguf:
        assert gguf.read(4) == b"GGUF"
    # Once verified, it is neither fetched, assembled nor hashed again.
    def not_again(*args: object, **kwargs: object) -> None:
        raise AssertionError("the verified model was fetched or hashed again")

    monkeypatch.setattr(models, "_fetch_wheels", not_again)
    monkeypatch.setattr(models, "concat_and_verify", not_again)
    monkeypatch.setattr(models.hashlib, "sha256", not_again)
    assert models.ensure_fast_gguf(progress=lines.append) == path


def test_smart_turn_model_is_taken_out_of_the_wheel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Only the one member is read; the wheel's code is never installed or imported."""
    monkeypatch.setenv("VOICEFORGE_CACHE", str(tmp_path))
    content = b"onnx bytes " * 1000
    monkeypatch.setattr(models, "SMART_TURN_SIZE", len(content))
    monkeypatch.setattr(models, "SMART_TURN_SHA256", hashlib.sha256(content).hexdigest())
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "pipecat_ai-1.14.0-py3-none-any.whl", "w") as archive:
        archive.writestr(models.SMART_TURN_MEMBER, content)
        archive.writestr("pipecat/__init__.py", "raise SystemExit\n")
    lines: list[str] = []
    path = models.ensure_smart_turn_model(progress=lines.append)
    assert path == models.smart_turn_model_path() == tmp_path / "models" / models.SMART_TURN_NAME
    assert path.read_bytes() == content
    assert lines[0] == (
        f"assembling {models.SMART_TURN_NAME}: part 1/1 from pipecat-ai (10.7 KiB of 10.7 KiB)"
    )
    assert lines[1:2] == ["verifying sha256"]
    assert lines[2].startswith(f"model ready at {path} (")
    assert len(lines) == 3
    assert models.ensure_smart_turn_model(progress=lines.append) == path
    assert len(lines) == 3  # the marker made the second call a lookup


def test_a_smart_turn_wheel_with_other_bytes_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOICEFORGE_CACHE", str(tmp_path))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "pipecat_ai-1.14.0-py3-none-any.whl", "w") as archive:
        archive.writestr(models.SMART_TURN_MEMBER, b"not the model")
    with pytest.raises(ModelLoadError, match=models.SMART_TURN_SHA256) as caught:
        models.ensure_smart_turn_model(progress=None)
    assert "package pipecat-ai==1.14.0" in str(caught.value)
    assert not (tmp_path / "models" / models.SMART_TURN_NAME).exists()


def test_ensure_smart_turn_model_returns_the_verified_model() -> None:
    """The real file (fetched from PyPI once; later runs use the cache)."""
    path = models.ensure_smart_turn_model(progress=None)
    assert path.stat().st_size == models.SMART_TURN_SIZE
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == models.SMART_TURN_SHA256
