"""The batched-T3 benchmark's mechanics on 2-layer models (the real figures come
from the library-size run in docs/benchmarks.md; nothing here times anything)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest import t3_batch

pytestmark = [
    pytest.mark.chatterbox,
    pytest.mark.filterwarnings("ignore:pkg_resources is deprecated as an API:UserWarning"),
]


def test_a_short_run_reports_every_size_and_the_newcomer(tmp_path: Path) -> None:
    out, picture = tmp_path / "t3.json", tmp_path / "t3.png"
    assert t3_batch.main(["--tiny", "--rounds", "1", "--steps", "3", "--sizes", "2",
                          "--json", str(out), "--plot", str(picture)]) == 0  # fmt: skip
    results = json.loads(out.read_text())
    assert set(results["models"]) == {"standard", "turbo"}
    for figures in results["models"].values():
        assert set(figures["by_batch"]) == {"1", "2"}  # B = 1 is always measured
        assert figures["by_batch"]["1"]["ratio_to_1"] == 1.0
        assert all(row["tokens_per_s"] > 0 for row in figures["by_batch"].values())
        newcomer = figures["newcomer"]
        assert newcomer["max_steps_waited_behind_7"] <= 1
        assert newcomer["first_chunk_ms_alone"] > 0 and newcomer["first_chunk_ms_behind_7"] > 0
    assert picture.stat().st_size > 10_000
    assert "| standard | 2 |" in t3_batch.table(results)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        t3_batch.main(["--models", "large"])
