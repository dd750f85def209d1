"""Build hooks: ship the console's `web/` inside the package, and stamp the version.

The metadata lives in pyproject.toml; this copies `web/` to `appliance/web` in the build, so a
wheel (and anything installed from it) finds the console's files next to the code (a checkout,
or an editable install, reads `web/` where it is: appliance/console/assets.py). It also writes
`appliance/_stamp.json` (version and commit, appliance/version.py) into the wheel and the sdist,
which have no git to ask at run time.
"""

import json
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from appliance.version import stamp  # noqa: E402


def _write_stamp(package_dir: Path) -> None:
    (package_dir / "_stamp.json").write_text(json.dumps(stamp()) + "\n")


class BuildWithWeb(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "appliance"
        source = HERE / "web"
        if source.is_dir():
            shutil.copytree(source, target / "web", dirs_exist_ok=True)
        if not getattr(self, "editable_mode", False):  # an editable install asks git
            _write_stamp(target)


class SdistWithStamp(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        stamp_path = Path(base_dir) / "appliance" / "_stamp.json"
        stamp_path.unlink(missing_ok=True)  # a hard link to a stamp in the tree, if any
        _write_stamp(stamp_path.parent)


setup(cmdclass={"build_py": BuildWithWeb, "sdist": SdistWithStamp})
