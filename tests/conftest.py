import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub here: fail at once instead of retrying

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/tiny.py

from tiny import IOI  # noqa: E402 (tests/ on the path first)


@pytest.fixture(scope="module")
def model():
    """A tiny random Llama (tests/tiny.py), built once per test module: fast, and every feature
    works on it. A module that needs another model defines its own `model`."""
    import tiny

    return tiny.load("llama")


@pytest.fixture(scope="session")
def demo_model():
    """The offline demo model (SmolLM2-135M-Instruct), loaded once for the whole session."""
    import lmtt_widget

    return lmtt_widget.load_model()


@pytest.fixture(scope="session")
def ioi_run(demo_model):
    import lmtt_widget

    return lmtt_widget.analyze(demo_model, IOI)
