"""Browser tests: Debian's chromium driven by Playwright (never `playwright install`).

`Harness` shows a Python `Widget` in a page built from the standalone bundle and bridges the two
like a kernel would: the page's trait updates and custom messages go to the widget, and what the
widget sends back (trait updates, panel replies with binary buffers) goes to the page.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from chromium import ARTIFACTS, launched_chromium  # noqa: E402


@pytest.fixture(scope="module")  # a module's own: two sync Playwrights cannot overlap (tests/e2e has one)
def browser():
    with launched_chromium() as b:
        yield b


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(f"{e}\n{e.stack}"))
    pg.requests = []
    pg.on("request", lambda r: pg.requests.append(r.url))
    yield pg
    context.close()


@pytest.fixture(scope="module")
def long_model():
    """A tiny random Llama that reads 4096 positions, its attention made sharp and strong (queries,
    keys and the output projection scaled up) so that its routes reach distant tokens: the layout
    of long prompts is tested on routes that spread, as a trained model's do."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import lmtt_widget as lw
    import tiny

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tiny.VOCAB, max_position_embeddings=4096, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
    hf = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for block in hf.model.layers:
            block.self_attn.o_proj.weight.mul_(8)
            block.self_attn.q_proj.weight.mul_(4)
            block.self_attn.k_proj.weight.mul_(4)
    return lw.load_model(hf, tokenizer=tiny.tokenizer())


@pytest.fixture(scope="module")
def long_run(long_model):
    """run(n_tokens, offset=0): `long_model` on exactly `n_tokens` tokens of tests/tiny.py's
    corpus, repeated, from token `offset` on."""
    import torch

    import tiny
    from lmtt_widget.run import analyze_ids

    def run(n_tokens: int, offset: int = 0):
        text = " ".join(tiny.CORPUS) * ((n_tokens + offset) // 20 + 2)
        ids = long_model.tokenizer(text)["input_ids"][offset:offset + n_tokens]
        return analyze_ids(long_model, torch.tensor(ids), progress=False)
    return run


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


class RecordingComm:
    """Stands in for the kernel's comm: keeps what the widget sends for the page."""

    kernel = object()
    comm_id = "lmtt-test-comm"

    def on_msg(self, callback):
        pass

    def __init__(self):
        self.sent: list[dict] = []

    def send(self, data=None, buffers=None, **_):
        self.sent.append({**data, "buffers": [base64.b64encode(bytes(b)).decode() for b in (buffers or [])]})

    def take(self) -> list[dict]:
        out, self.sent = self.sent, []
        return out

    def close(self, *_, **__):
        pass


class Harness:
    def __init__(self, page, widget):
        from lmtt_widget.widget.export import standalone_html, widget_state

        self.page, self.widget = page, widget
        self.comm = RecordingComm()
        widget.comm = self.comm
        page.expose_function("lmttBridge", self._bridge)
        page.set_content(standalone_html(widget_state(widget), "lmtt test", bridge=True))
        page.wait_for_selector("body[data-ready='1']")

    def _bridge(self, message: str) -> str:
        msg = json.loads(message)
        data = {"method": msg["method"], "buffer_paths": []}
        if msg["method"] == "update":
            data["state"] = msg["state"]
        else:
            data["content"] = msg["content"]
        self.widget._handle_msg({"content": {"data": data}, "buffers": []})
        replies = []
        for sent in self.comm.take():
            if sent["method"] in ("update", "echo_update"):
                if sent["method"] == "echo_update":
                    continue  # the page already has what it set
                replies.append({"method": "update", "state": sent["state"],
                                "buffer_paths": sent.get("buffer_paths", []), "buffers": sent["buffers"]})
            elif sent["method"] == "custom":
                replies.append({"method": "custom", "content": sent["content"], "buffer_paths": [],
                                "buffers": sent["buffers"]})
        return json.dumps(replies)

    def push(self) -> None:
        """Deliver what Python changed on its own (w.selection = ...) to the page."""
        sent = [s for s in self.comm.take() if s["method"] == "update"]
        replies = [{"method": "update", "state": s["state"], "buffer_paths": s.get("buffer_paths", []),
                    "buffers": s["buffers"]} for s in sent]
        self.page.evaluate("(r) => window.lmttModel.apply(JSON.parse(r))", json.dumps(replies))

    def click_edge(self, kind: str = "attention", cross_token: bool = True) -> None:
        """Click the middle of the heaviest edge of `kind` (between two tokens, if asked)."""
        point = self.page.evaluate(
            """([kind, cross]) => {
                const paths = [...document.querySelectorAll(`path.edge.${kind}`)]
                  .filter((p) => !cross || p.getAttribute('d').includes('C'));
                paths.sort((a, b) =>
                  parseFloat(b.getAttribute('stroke-width')) - parseFloat(a.getAttribute('stroke-width')));
                const p = paths[0];
                const pt = p.getPointAtLength(p.getTotalLength() / 2);
                const m = p.getScreenCTM();
                return { x: pt.x * m.a + pt.y * m.c + m.e, y: pt.x * m.b + pt.y * m.d + m.f, edge: p.dataset.edge };
            }""", [kind, cross_token])
        self.page.mouse.click(point["x"], point["y"])
        return point


@pytest.fixture()
def harness(page):
    return lambda widget: Harness(page, widget)
