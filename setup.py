"""Ships the browser page (``web/``) inside the wheel as ``agent/web``.

Everything else is in pyproject.toml. The page lives at the top of the repository
(the tests and the docs name it there), but a non-editable install has only the
packages: without this copy the server of a wheel install, the Docker image
included, answers 404 at ``/`` (``agent.server.WEB_DIR`` looks in the package
first).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PAGE = Path(__file__).resolve().parent / "web"


class BuildWithPage(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install serves web/ where it is
            shutil.copytree(PAGE, Path(self.build_lib) / "agent" / "web", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithPage})
