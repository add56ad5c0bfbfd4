"""Real servers on 127.0.0.1 (free port, token auth, no browser): JupyterLab 4, Notebook 7 and
marimo; and one chromium per test module."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "browser"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from chromium import ARTIFACTS, launched_chromium, missing  # noqa: E402

ALLOW_ROOT = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def installed(command: str) -> bool:
    return shutil.which(command, path=str(Path(sys.executable).parent)) is not None


@contextlib.contextmanager
def serving(argv: list[str], root: Path, home: Path, ready: str, name: str, env: dict | None = None):
    """Run `argv` in `root` until it answers `ready` (a URL), then yield; stop it afterwards.
    Its output goes to home/server.log, shown if it does not start."""
    log = open(home / "server.log", "w")
    server = subprocess.Popen(argv, cwd=root, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(ready, timeout=2)
                break
            except OSError as err:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start:\n" + (home / "server.log").read_text()[-3000:]) from err
                time.sleep(0.5)
        yield
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@contextlib.contextmanager
def jupyter(app: str, root: Path, home: Path, *options: str):
    """`jupyter lab` or `jupyter notebook` serving `root`, its settings kept in `home`: (url, token)."""
    port, token = free_port(), secrets.token_hex(16)
    env = {"JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "IPYTHONDIR": str(home / "ipython")}
    argv = [sys.executable, "-m", "jupyter", app, "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
            *ALLOW_ROOT, *options]
    # no "get notified about official Jupyter news?" toast over the page, and no news request
    notification = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True, exist_ok=True)
    notification.write_text('{"fetchNews": "false", "checkForUpdates": false}')
    url = f"http://127.0.0.1:{port}"
    with serving(argv, root, home, f"{url}/api/status?token={token}", f"jupyter {app}", env):
        yield url, token


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """(url, token, root): JupyterLab serving a copy of notebooks/ from a temporary folder."""
    if not installed("jupyter-lab"):
        missing("jupyterlab is not installed (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(ROOT / "notebooks" / "quickstart.ipynb", root / "quickstart.ipynb")
    with jupyter("lab", root, tmp_path_factory.mktemp("home"), "--LabApp.news_url=",
                 "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                 "--LabApp.extension_manager=readonly") as (url, token):
        yield url, token, root


@pytest.fixture(scope="module")
def notebook7(tmp_path_factory):
    """(url, token, root): Notebook 7 (`jupyter notebook`) serving an empty temporary folder."""
    if not installed("jupyter-notebook"):
        missing("notebook is not installed (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("nb7")
    with jupyter("notebook", root, tmp_path_factory.mktemp("home")) as (url, token):
        yield url, token, root


@pytest.fixture(scope="module")
def e2e_page():
    """A chromium page (1500 × 1000) that records and dismisses dialogs in `page.dialogs`, and
    records the hosts of its requests other than 127.0.0.1 in `page.external`."""
    with launched_chromium() as browser:
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.dialogs, page.external = [], set()
        page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: r.url.startswith(("http://127.0.0.1:", "data:", "blob:"))
                or page.external.add(r.url.split("/")[2] if "//" in r.url else r.url[:40]))
        yield page


@pytest.fixture(scope="module")
def lab_page(jupyterlab, e2e_page):
    return e2e_page


@pytest.fixture(scope="module")
def marimo_app(tmp_path_factory):
    """(url, token): `marimo run tests/e2e/marimo_app.py` (a tiny model's widget in mo.ui.anywidget)."""
    if not installed("marimo"):
        missing("marimo is not installed (pip install -e '.[dev]')")
    home = tmp_path_factory.mktemp("marimo-home")
    port, token = free_port(), secrets.token_hex(16)
    env = {"MARIMO_SKIP_UPDATE_CHECK": "1", "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_STATE_HOME": str(home / "state"), "XDG_CACHE_HOME": str(home / "cache")}
    argv = [str(Path(sys.executable).parent / "marimo"), "run", str(ROOT / "tests" / "e2e" / "marimo_app.py"),
            "--host", "127.0.0.1", "--port", str(port), "--headless", "--token-password", token, "--no-sandbox"]
    url = f"http://127.0.0.1:{port}"
    with serving(argv, home, home, f"{url}/health", "marimo", env):
        yield url, token
