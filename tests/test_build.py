"""The package as users get it: the frontend bundles are built at install time (not kept in git),
the stylesheet reaches both the notebook widget and the exported page, and the repository's
package.json leaves Node.js's CommonJS alone (JupyterLab's own Node helpers run under .venv/)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

import lmtt_widget
from lmtt_widget.widget.export import WIDGET_CSS, standalone_html

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ["lmtt_widget/static/widget.js", "lmtt_widget/static/standalone.js", "lmtt_widget/static/widget.css"]


def source_tree(dest: Path) -> None:
    """What a fresh clone of the working tree holds: tracked and untracked-but-not-ignored files,
    so no node_modules/ and no bundles."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():  # a file deleted but not yet staged is still listed
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


@pytest.mark.slow
def test_a_wheel_built_from_a_clean_tree_carries_the_frontend_bundles(tmp_path):
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the source files to copy are unknown")
    src, out = tmp_path / "src", tmp_path / "wheels"
    source_tree(src)
    assert not any((src / b).exists() for b in BUNDLES)  # the hook must make them
    # the env's hatchling (a dev extra): no build backend download
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True)
    (wheel,) = out.glob("lmtt_widget-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert set(BUNDLES) <= names
        assert zf.read("lmtt_widget/static/widget.css").startswith(b".lmtt{")
        assert b"lmtt" in zf.read("lmtt_widget/static/standalone.js")
    assert not [n for n in names if n.startswith(("js/", "node_modules/", "tests/"))]


def test_the_widget_and_the_exported_page_use_the_one_stylesheet():
    css = WIDGET_CSS.read_text(encoding="utf-8")
    assert ".lmtt-graph{" in css and "--jp-ui-font-color0" in css
    assert str(lmtt_widget.Widget._css) == css  # what anywidget sends to the notebook
    page = standalone_html({}, "a page")
    assert page.count(css) == 1
    assert f"<style>{css}</style>" in page.split("</head>")[0]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")
def test_commonjs_scripts_inside_the_repository_still_run():
    """JupyterLab's Node helpers are CommonJS `.js` files under .venv/; a "type": "module" in the
    root package.json would make node treat them as ES modules ("require is not defined")."""
    with tempfile.TemporaryDirectory(dir=REPO, prefix=".venv-node-probe-") as probe:
        script = Path(probe) / "probe.js"
        script.write_text('const path = require("path");\nconsole.log(path.basename(__filename));\n')
        result = subprocess.run(["node", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "probe.js"
