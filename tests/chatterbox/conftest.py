"""The small random-weight Chatterbox engine the streaming tests share (one per run:
writing and loading the checkpoint is the slow part)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chatterbox.tiny_model import TinyChatterbox


@pytest.fixture(scope="package")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyChatterbox]:
    from tests.chatterbox.tiny_model import tiny_engine, write_checkpoint, write_reference_wav

    root = tmp_path_factory.mktemp("chatterbox")
    voices_dir = root / "voices"
    voices_dir.mkdir()
    write_reference_wav(voices_dir / "alice.wav", pitch_hz=210.0)
    write_reference_wav(voices_dir / "bob.wav", pitch_hz=110.0)
    builtin = write_reference_wav(root / "builtin.wav", pitch_hz=150.0)
    config = write_checkpoint(root / "checkpoint", builtin)
    engine = tiny_engine(root / "checkpoint", voices_dir)
    yield TinyChatterbox(root / "checkpoint", voices_dir, config, engine)
    engine.close()


