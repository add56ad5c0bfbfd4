"""The widget's Python side: traits, the binary payload, selections and their tensors, panels,
refusals, re-analysis, the commands from the page (each answered by one typed reply, malformed
ones included) and the HTML export. Tiny random models; no browser."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import lmtt_widget as lw
import tiny
from lmtt_widget.widget import protocol as P
from lmtt_widget.widget import serialize as S
from lmtt_widget.widget.export import standalone_html, widget_state
from tiny import IOI


@pytest.fixture()
def widget(model):
    return lw.Widget(lw.analyze(model, IOI), threshold=0.01)


class Comm:
    """Records what the widget sends to the frontend."""

    kernel = object()
    comm_id = "test"

    def __init__(self):
        self.sent = []

    def send(self, data=None, buffers=None, **_):
        self.sent.append((data, list(buffers or [])))

    def on_msg(self, _):
        pass

    def close(self, *_, **__):
        pass


def from_frontend(w, state):
    """A trait update as the frontend sends it."""
    w._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}}, "buffers": []})


def command(name: str, request, id: str = "c-1", **envelope) -> dict:
    """A command message as the page sends it (protocol.Command); `envelope` overrides its fields."""
    return {"kind": "lmtt-command", "protocol": P.PROTOCOL_VERSION, "id": id, "name": name,
            "request": request, **envelope}


def send(w, content) -> tuple[dict, list[bytes]]:
    """Send `content` as a custom message from the page; the one reply the widget sends back
    (with its "buffer_paths") and its binary buffers. No reply, or more than one, fails."""
    comm = Comm()
    w.comm = comm
    w._handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})
    replies = [(data["content"], buffers) for data, buffers in comm.sent if data.get("method") == "custom"]
    assert len(replies) == 1, f"expected one reply, got {replies!r}"
    return replies[0]


def invoke(w, name: str, request, id: str = "c-1") -> dict:
    """Run one command as the page does; its reply, which carries the command's id."""
    reply, _ = send(w, command(name, request, id))
    assert reply["kind"] == "lmtt-reply" and reply["id"] == id
    return reply


def refused(reply: dict, kind: str = "refused") -> str:
    """The message of an error reply of `kind` ("refused" or "malformed")."""
    assert reply["ok"] is False and "result" not in reply and reply["error"]["kind"] == kind, reply
    return reply["error"]["message"]


# -- traits and payload ------------------------------------------------------------------------

def test_traits_describe_the_run(widget):
    run = widget.run
    assert widget.target == run.n_tokens - 1
    assert widget.threshold == 0.01 and widget.renormalize is True and widget.normalize_lens is True
    info = widget.info
    assert info["tokens"] == run.tokens and info["prompt"] == IOI
    assert (info["n_layers"], info["n_heads"], info["n_kv_heads"], info["d_model"]) == (3, 4, 2, 32)
    assert info["n_params"] == sum(p.numel() for p in run.hf_model.parameters())
    top = run.top_tokens(position=5, k=S.TOP_K)
    assert info["predictions"]["tokens"][5] == [t for t, _ in top]
    probs = S.to_numpy(info["predictions"]["probs"])
    assert probs.shape == (run.n_tokens, S.TOP_K)
    np.testing.assert_allclose(probs[5], [p for _, p in top], rtol=1e-6)


def test_payload_is_binary_and_round_trips_to_the_graph(widget):
    payload = widget.payload
    for group in ("nodes", "edges"):
        for encoded in payload[group].values():
            assert isinstance(encoded["data"], bytes)
    g, back = widget.graph, S.payload_graph(payload)
    assert set(back.nodes) == set(g.nodes)
    assert sorted(back.edges(keys=True)) == sorted(g.edges(keys=True))
    for u, v, k, d in g.edges(keys=True, data=True):
        assert back.edges[u, v, k]["weight"] == pytest.approx(d["weight"], rel=1e-6)
        if k == "attention":
            np.testing.assert_allclose(back.edges[u, v, k]["heads"], d["heads"], rtol=1e-6)
    n_attention = sum(1 for *_, k in g.edges(keys=True) if k == "attention")
    assert n_attention > 0 and S.to_numpy(payload["heads"]).shape == (n_attention, 4)
    assert payload["target"] == widget.target and payload["threshold"] == 0.01


def test_payload_crosses_as_buffers_not_json_lists(widget):
    comm = Comm()
    widget.comm = comm
    widget.target = 4
    [(msg, buffers)] = [s for s in comm.sent if "payload" in s[0].get("state", {})]
    assert len(buffers) >= 9  # nodes (3), edges (5), heads (1)
    assert ["payload", "edges", "weight", "data"] in msg["buffer_paths"]
    text = json.dumps(msg["state"])
    assert len(text) < 2000  # the arrays themselves are not in the JSON


def test_array_round_trip_keeps_values_and_dtypes():
    x = torch.randn(3, 5)
    back = S.to_numpy(S.array(x))
    assert back.dtype == np.float32 and back.shape == (3, 5)
    np.testing.assert_array_equal(back, x.numpy())
    ids = S.to_numpy(S.array([1, 70000, 3], "uint32"))
    assert ids.tolist() == [1, 70000, 3]
    b64 = S.encode_text(S.array(x))
    assert isinstance(b64["data"]["__b64__"], str)
    np.testing.assert_array_equal(S.to_numpy({**b64, "data": b64["data"]["__b64__"]}), x.numpy())


def test_view_traits_recompute_the_graph(widget):
    before = widget.graph
    widget.target = 3
    assert widget.graph.graph["target"] == 3 and widget.payload["target"] == 3
    assert all(v[2] <= 3 for v in widget.graph.nodes)
    widget.threshold = 0.2
    assert widget.graph.number_of_edges() < before.number_of_edges()
    assert all(d["weight"] > 0.2 for *_, d in widget.graph.edges(data=True))
    widget.renormalize = False
    assert widget.payload["renormalize"] is False


def test_bad_view_values_from_python_raise(widget):
    with pytest.raises(lw.LmttError, match="threshold"):
        widget.threshold = 1.5
    with pytest.raises(lw.LmttError, match="out of range"):
        widget.target = 99
    assert widget.threshold == 0.01 and widget.target == widget.run.n_tokens - 1


def test_unknown_keyword_is_rejected(model):
    with pytest.raises(TypeError, match="treshold"):
        lw.Widget(lw.analyze(model, IOI), treshold=0.1)


# -- selections --------------------------------------------------------------------------------

def test_attention_selection_fills_the_largest_head_and_returns_tensors(widget):
    run = widget.run
    shares = run.attention_contributions(1)[0]
    widget.selection = {"kind": "attention", "layer": 1, "source": 2, "target": 7}
    head = int(shares[7, 2].argmax())
    assert widget.selection == {"kind": "attention", "layer": 1, "source": 2, "target": 7, "head": head}
    sel = widget.selected
    probs = run.attention_pattern(1)[head].float()
    torch.testing.assert_close(sel["attention_row"], probs[7])
    torch.testing.assert_close(sel["attention_pattern"], probs)
    torch.testing.assert_close(sel["shares"], shares[7, 2])
    torch.testing.assert_close(sel["importance"], shares[:, :, head])
    torch.testing.assert_close(sel["head_output"], run.head_output(1, head, 7, 2))
    # the head's output summed over sources is the sum of its per-source outputs
    total = sum(run.head_output(1, head, 7, j) for j in range(8))
    torch.testing.assert_close(sel["head_output_total"], total, atol=1e-5, rtol=1e-4)


def test_residual_selection_returns_the_stream(widget):
    run = widget.run
    widget.select("residual", stage="mid", layer=2, token=-1)
    assert widget.selection == {"kind": "residual", "stage": "mid", "layer": 2, "token": run.n_tokens - 1}
    sel = widget.selected
    expected = run.capture.resid[2][-1] + run.capture.attn_out[2][-1]
    torch.testing.assert_close(sel["residual"], expected)
    assert [t.token for t in sel["logit_lens"]] == [t.token for t in run.logit_lens(2, -1, "mid", k=10)]
    widget.select("residual", stage="embed", layer=5, token=0)  # the embedding has no layer
    assert widget.selection["layer"] == -1
    torch.testing.assert_close(widget.selected["residual"], run.capture.resid[0][0])


def test_ffn_selection_returns_neurons(widget):
    run = widget.run
    widget.select("ffn", layer=1, token=4, neuron=7)
    sel = widget.selected
    acts = run.neuron_activations(1)[4]
    assert sel["activations"].shape == (48,) and sel["neuron_shares"].shape == (48,)
    assert float(sel["neuron_shares"].sum() + sel["residual_share"]) == pytest.approx(1.0, abs=1e-5)
    assert float(sel["neuron_activation"]) == pytest.approx(float(acts[7]))
    torch.testing.assert_close(sel["neuron_output"], run.neuron_writes(1, 4)[7])
    torch.testing.assert_close(sel["ffn_output"], run.capture.ffn_out[1][4])
    assert widget.select() == {}
    assert widget.selection is None and widget.selection_info is None and widget.selected == {}


@pytest.mark.parametrize("bad, message", [
    ({"kind": "residual", "stage": "post", "layer": 3, "token": 0}, "layer 3 is out of range"),
    ({"kind": "attention", "layer": 0, "source": 5, "target": 2}, "comes after target"),
    ({"kind": "attention", "layer": 0, "source": 0, "target": 2, "head": 4}, "head 4 is out of range"),
    ({"kind": "ffn", "layer": 0, "token": 99}, "position 99 is out of range"),
    ({"kind": "ffn", "layer": 0, "token": 1, "neuron": 48}, "neuron 48 is out of range"),
    ({"kind": "edge", "layer": 0}, "selection kind must be"),
    ({"kind": "residual", "stage": "post", "token": 0}, "missing 'layer'"),
])
def test_bad_selection_from_python_raises_and_keeps_the_old_one(widget, bad, message):
    widget.select("residual", stage="post", layer=0, token=1)
    with pytest.raises(lw.LmttError, match=message):
        widget.selection = bad
    assert widget.selection == {"kind": "residual", "stage": "post", "layer": 0, "token": 1}


def test_bad_selection_from_the_frontend_is_refused_with_a_notice(widget):
    comm = Comm()
    widget.comm = comm
    widget.select("ffn", layer=0, token=1)
    info = widget.selection_info
    comm.sent.clear()
    from_frontend(widget, {"selection": {"kind": "ffn", "layer": 7, "token": 1}})
    assert widget.selection == {"kind": "ffn", "layer": 0, "token": 1, "neuron": None}
    assert widget.selection_info == info
    assert widget.notice["level"] == "error"
    assert widget.notice["text"].startswith("Refused selection: layer 7 is out of range")
    # the frontend is told the selection it keeps, and the notice
    states = [d["state"] for d, _ in comm.sent if d.get("method") == "update"]
    assert any((s.get("selection") or {}).get("layer") == 0 for s in states)
    assert any(s.get("notice") == widget.notice for s in states)
    from_frontend(widget, {"selection": {"kind": "ffn", "layer": 2, "token": 3}})
    assert widget.selection["layer"] == 2 and widget.notice is None


def test_selection_from_the_frontend_reaches_python_and_callbacks(widget):
    seen = []
    widget.on_select(seen.append)
    from_frontend(widget, {"selection": {"kind": "attention", "layer": 2, "source": 1, "target": 3, "head": None}})
    assert widget.selection["head"] is not None and widget.selection["layer"] == 2
    assert seen == [widget.selection]


# -- lazy panels ------------------------------------------------------------------------------

def test_panel_request_is_answered_with_binary_maps(widget):
    run = widget.run
    selection = {"kind": "attention", "layer": 1, "source": 2, "target": 5, "head": 3}
    reply, buffers = send(widget, command("panel", {"selection": selection}, id="v-1"))
    assert reply["kind"] == "lmtt-reply" and reply["id"] == "v-1" and reply["ok"] is True
    assert reply["result"]["selection"] == selection
    paths = reply["buffer_paths"]
    # shares, effects, positions, pattern, importance, the target's rows, every head's row
    assert len(paths) == len(buffers) == 8
    json.dumps(reply)  # every array crossed as a buffer: what is left is plain JSON
    effects = np.frombuffer(bytes(buffers[paths.index(["result", "effects", "data"])]), dtype="<f4")
    np.testing.assert_allclose(effects, widget.view.effects.edge(1, 5, 2).numpy(), rtol=1e-6)
    pattern = np.frombuffer(bytes(buffers[paths.index(["result", "pattern", "data"])]), dtype="<f4")
    pattern = pattern.reshape(run.n_tokens, -1)
    np.testing.assert_allclose(pattern, run.attention_pattern(1)[3].float().numpy(), rtol=1e-6)
    top = run.head_logits(1, 3, 5, 2, k=8).promoted[0]
    assert reply["result"]["from_source"]["promoted"][0] == [top[0], pytest.approx(top[1])]


def test_panel_errors_are_answered_not_raised(widget):
    selection = {"kind": "residual", "stage": "post", "layer": 30, "token": 0}
    reply, buffers = send(widget, command("panel", {"selection": selection}, id="p-9"))
    assert reply["id"] == "p-9" and "layer 30 is out of range" in refused(reply)
    assert reply["buffer_paths"] == [] and buffers == []


def test_residual_panel_follows_normalize_lens(widget):
    run = widget.run
    sel = {"kind": "residual", "stage": "post", "layer": 1, "token": 2}
    with_norm = widget.panel(sel)
    assert [b["block"] for b in with_norm["blocks"]] == ["ffn"]
    assert with_norm["lens"][0]["token"] == run.logit_lens(1, 2, "post", k=10)[0].token
    widget.normalize_lens = False
    raw = widget.panel(sel)
    assert raw["normalized"] is False
    raw_top = run.logit_lens(1, 2, "post", k=10, normalize=False)[0]
    assert raw["lens"][0]["probability"] == pytest.approx(raw_top.probability)


def test_ffn_panel_lists_top_neurons_with_their_tokens(widget):
    run = widget.run
    data = widget.panel({"kind": "ffn", "layer": 2, "token": 6})
    expected = run.neuron_contributions(2, 6, k=10)
    assert [n["index"] for n in data["neurons"]] == [n.index for n in expected]
    first = data["neurons"][0]
    assert first["promoted"][0][0] == run.neuron_logits(2, first["index"], 6, k=5).promoted[0][0]
    assert data["ffn_share"] == pytest.approx(float(run.ffn_contributions(2)[0][6]))


# -- re-analysis --------------------------------------------------------------------------------

def test_analyze_command_replaces_the_run(widget):
    reply = invoke(widget, "analyze", {"prompt": "The capital of France is"})
    assert widget.run.prompt == "The capital of France is"
    assert reply["ok"] is True and reply["result"]["n_tokens"] == widget.run.n_tokens
    assert widget.info["tokens"] == widget.run.tokens and widget.target == widget.run.n_tokens - 1
    assert widget.busy == "" and widget.notice is None


def test_analysis_error_is_answered_and_keeps_the_previous_graph(widget):
    view, before = widget.view, widget_state(widget)
    tokens, edges = widget.info["tokens"], widget.graph.number_of_edges()
    assert "prompt is empty" in refused(invoke(widget, "analyze", {"prompt": "   "}))
    assert widget.info["tokens"] == tokens and widget.graph.number_of_edges() == edges and widget.busy == ""
    # the tiny model reads 64 tokens
    assert "at most 64" in refused(invoke(widget, "analyze", {"prompt": "word " * 80}))
    assert widget.view is view and widget_state(widget) == before


def test_show_uses_widget_options(model):
    w = lw.show(model, "The capital of France is", threshold=0.02, target=2)
    assert isinstance(w, lw.Widget) and w.threshold == 0.02 and w.target == 2


# -- export -------------------------------------------------------------------------------------

def test_save_html_is_self_contained_and_carries_panels(widget, tmp_path):
    widget.select("attention", layer=2, source=1, target=5)
    path = widget.save_html(tmp_path / "w.html")
    text = path.read_text()
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
    state = re.search(r'<script type="application/json" id="lmtt-state">(.*?)</script>', text, re.S).group(1)
    state = json.loads(state)
    keys = set(state["preloaded"])
    head = widget.selection["head"]
    assert widget.view.panel_key(widget.selection) == f"attention/2/1/5/{head}/{widget.target}/null/1"
    assert widget.view.panel_key(widget.selection) in keys
    assert f"residual/post/2/{widget.target}/1" in keys and f"residual/embed/-1/{widget.target}/1" in keys
    assert state["payload"]["edges"]["weight"]["data"]["__b64__"]


def test_export_escapes_markup_in_the_state(model):
    w = lw.Widget(lw.analyze(model, "</script><img src=x onerror=alert(1)>"))
    text = standalone_html(widget_state(w), "t")
    body = text.split('id="lmtt-state">', 1)[1].split("</script>", 1)[0]
    assert "<" not in body and ">" not in body


def test_export_command_writes_an_offline_page(monkeypatch, tmp_path, capsys):
    from lmtt_widget.__main__ import main

    tiny_model = tiny.load("llama")
    monkeypatch.setattr(lw, "load_model", lambda name=None: tiny_model)
    out = tmp_path / "routes.html"
    assert main(["export", "The capital of France is", "-o", str(out), "--threshold", "0.02", "--target", "2"]) == 0
    text = out.read_text()
    state = json.loads(re.search(r'id="lmtt-state">(.*?)</script>', text, re.S).group(1))
    assert state["target"] == 2 and state["threshold"] == 0.02
    assert "residual/post/0/2/1" in state["preloaded"]
    assert "wrote" in capsys.readouterr().out
    assert main(["export", "  ", "-o", str(tmp_path / "bad.html")]) == 2
    assert "prompt is empty" in capsys.readouterr().err and not (tmp_path / "bad.html").exists()


# -- commands: every message gets one typed reply ---------------------------------------------

NO_ID = {k: v for k, v in command("panel", {"selection": None}).items() if k != "id"}


@pytest.mark.parametrize("content, reply_id, why", [
    pytest.param("ablate head 0 1", None, "expected an object", id="not a dict"),
    pytest.param(["panel"], None, "expected an object", id="a list"),
    pytest.param(NO_ID, None, "missing 'id'", id="no id"),
    pytest.param(command("swap", {}, id=9), None, "id: expected a string", id="id not a string"),
    pytest.param(command("swap", {}, kind="lmtt-reply"), "c-1", "lmtt-command", id="not a command"),
    pytest.param(command("explode", {}), "c-1", "unknown command 'explode'", id="unknown name"),
    pytest.param(command("swap", {}, protocol=P.PROTOCOL_VERSION + 1), "c-1",
                 f"protocol {P.PROTOCOL_VERSION + 1}", id="other protocol version"),
    pytest.param({k: v for k, v in command("swap", {}).items() if k != "protocol"}, "c-1", "missing 'protocol'",
                 id="no protocol version"),
    pytest.param(command("panel", "x"), "c-1", "request: expected an object", id="request a string"),
    pytest.param(command("panel", {"selection": "x"}), "c-1", "request.selection", id="selection a string"),
    pytest.param(command("analyze", {"prompt": None}), "c-1", "request.prompt: expected a string", id="prompt null"),
    pytest.param(command("analyze", {}), "c-1", "missing 'prompt'", id="no prompt"),
    pytest.param(command("panel", {"selection": {"kind": "ffn", "token": 1}}), "c-1", "missing 'layer'",
                 id="selection without layer"),
    pytest.param(command("ablate", {"spec": ["head", 0, 1]}), "c-1", "missing 'mode'", id="ablate without mode"),
    pytest.param(command("undo", {"index": "last"}), "c-1", "request.index: expected an integer", id="index a string"),
    pytest.param(command("undo", {"index": 0, "all": True}), "c-1", "unknown 'all'", id="unknown field"),
])
def test_every_malformed_message_gets_a_typed_error_reply_and_changes_nothing(widget, content, reply_id, why):
    widget.select("ffn", layer=0, token=1)
    view, before = widget.view, widget_state(widget)
    reply = widget.handle_command(content)  # answers, never raises
    assert reply["kind"] == "lmtt-reply" and reply["id"] == reply_id
    message = refused(reply, "malformed")
    assert why in message and len(message.split()) >= 3  # a sentence, not a bare key
    sent, buffers = send(widget, content)  # the same reply reaches the page, never silence
    assert sent == {**reply, "buffer_paths": []} and buffers == []
    assert widget.view is view and widget_state(widget) == before
    assert widget.run.prompt == IOI  # `prompt: null` was not analysed as the text "None"


def test_each_reply_carries_its_commands_id(widget):
    ok = invoke(widget, "panel", {"selection": {"kind": "ffn", "layer": 0, "token": 1}}, id="a-1")
    assert ok["ok"] is True and ok["result"]["selection"]["layer"] == 0
    bad = {"selection": {"kind": "ffn", "layer": 9, "token": 1}}
    assert "layer 9 is out of range" in refused(invoke(widget, "panel", bad, id="a-2"))
    assert "unknown command" in refused(invoke(widget, "sing", {}, id="a-3"), "malformed")
    assert "request" in refused(invoke(widget, "panel", "x", id="a-4"), "malformed")


@pytest.mark.parametrize("name, body, why", [
    ("panel", {"selection": {"kind": "attention", "layer": 0, "source": 5, "target": 2, "head": None}},
     "comes after target"),
    ("analyze", {"prompt": "   "}, "prompt is empty"),
    ("ablate", {"spec": ["head", 0, 4], "mode": "zero"}, "head 4 is out of range"),
    ("ablate", {"spec": ["ffn", 1], "mode": "zero"}, "already ablated"),
    ("undo", {"index": 3}, "intervention 3 is out of range"),
    ("patch", {"node": ["post", 0, 1]}, "needs a second prompt"),
    ("unpatch", {"index": -1}, "no patch to undo"),
    ("swap", {}, "no other prompt"),
    ("pair", {"prompt": "Hello there"}, "tokens long"),
    ("faithfulness", {"k": 0, "mode": "zero"}, "k must be a positive integer"),
])
def test_a_refused_command_leaves_every_trait_as_it_was(widget, name, body, why):
    widget.ablate(("ffn", 1))
    widget.select("attention", layer=1, source=2, target=5)
    view, before = widget.view, widget_state(widget)
    assert why in refused(invoke(widget, name, body))
    assert widget.view is view and widget_state(widget) == before
