"""Hatchling build hook: bundles the frontend (js/ -> lmtt_widget/static/) when the bundles are missing.

The bundles are build outputs, not kept in git, so `pip install .` or `pip wheel .` from a fresh clone
runs `npm ci` and `npm run build` here (Node.js >= 18 with npm must be on PATH). A checkout that already
has them (`make js` keeps them in step with js/) is packaged as it is; so is an sdist, which carries them.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

STATIC = Path("lmtt_widget") / "static"
BUNDLES = ("widget.js", "standalone.js", "widget.css")  # what package.json's "build" script writes


class FrontendBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        if all((root / STATIC / name).is_file() for name in BUNDLES):
            return
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(f"lmtt-widget: the frontend bundles ({', '.join(BUNDLES)}) are missing in {STATIC}/ "
                               "and npm is not on PATH to build them; install Node.js >= 18 with npm")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=root, check=True)
        subprocess.run([npm, "run", "build"], cwd=root, check=True)
        missing = [name for name in BUNDLES if not (root / STATIC / name).is_file()]
        if missing:
            raise RuntimeError(f"lmtt-widget: `npm run build` did not write {', '.join(missing)} to {STATIC}/")
