"""Build hook: ship the console's `web/` (templates, static files) inside the package.

The metadata lives in pyproject.toml; this only copies `web/` to `appliance/web` in the build,
so a wheel (and anything installed from it) finds the console's files next to the code.
A checkout (editable install) reads `web/` where it is (appliance/console/assets.py).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithWeb(build_py):
    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "web"
        if source.is_dir():
            target = Path(self.build_lib) / "appliance" / "web"
            shutil.copytree(source, target, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithWeb})
