"""A non-editable install (a wheel, as the Docker image has) serves the browser page."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_the_page_and_the_server_finds_it(tmp_path: Path) -> None:
    # No build isolation: the test must not need the network for setuptools.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", str(REPO), "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp_path.glob("voiceforge-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    pages = [p.relative_to(REPO / "web").as_posix() for p in (REPO / "web").rglob("*")
             if p.is_file()]
    assert pages and not [p for p in pages if f"agent/web/{p}" not in names]
    # Imported from the installed copy, not this checkout: WEB_DIR is inside it.
    found = subprocess.run(
        [sys.executable, "-c", "import agent.server as s; print(s.__file__); print(s.WEB_DIR)"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert found.returncode == 0, found.stderr[-2000:]
    module, web_dir = found.stdout.split()
    assert Path(module).is_relative_to(tmp_path / "site")
    assert Path(web_dir) == tmp_path / "site" / "agent" / "web"
    assert (Path(web_dir) / "index.html").is_file()
