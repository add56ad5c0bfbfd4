"""The built bundle in a real browser (Debian's chromium), bridged to the Python widget: clicks in
the page must arrive in the Python traits, and Python's answers must show in the page."""

from __future__ import annotations

import pytest

import lmtt_widget as lw
from tiny import IOI

pytestmark = pytest.mark.browser

XSS = "<img src=x onerror=alert(1)>"


def visible(token: str) -> str:
    return token.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


def test_bundle_renders_the_routes_graph(model, page, harness, artifacts):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    harness(w)
    assert page.locator("path.edge").count() == w.graph.number_of_edges()
    attention = sum(1 for *_, k in w.graph.edges(keys=True) if k == "attention")
    assert page.locator("path.edge.attention").count() == attention
    assert page.locator("circle.node").count() == w.graph.number_of_nodes()
    labels = page.locator("text.token-label").all_text_contents()
    assert len(labels) == w.run.n_tokens
    assert labels[2] == visible(w.run.tokens[2])[:8]
    assert page.locator("text.layer-label").all_text_contents() == ["L0", "L1", "L2", "emb"]
    label_y = [float(y) for y in
               page.locator("text.layer-label").evaluate_all("ts => ts.map(t => t.getAttribute('y'))")]
    assert label_y[0] > label_y[1] > label_y[2] and label_y[3] > label_y[0]  # layers go up, the embedding at the bottom
    assert page.locator(".target-cell.active").get_attribute("data-target") == str(w.run.n_tokens - 1)
    assert page.locator(".facts .model").text_content() == "LlamaForCausalLM"
    assert page.errors == []
    assert [u for u in page.requests if not u.startswith(("about:", "data:"))] == []
    page.screenshot(path=str(artifacts / "browser-graph.png"))


def test_clicking_a_node_selects_it_in_python_and_shows_the_logit_lens(model, page, harness, artifacts):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    harness(w)
    node = page.locator("circle.node.post").first
    index = int(node.get_attribute("data-node"))
    node.click()
    page.wait_for_selector("table.lens tbody tr")
    stage, layer, token = list(w.graph.nodes)[index]
    assert stage == "post"
    assert w.selection == {"kind": "residual", "stage": "post", "layer": layer, "token": token}
    lens = w.run.logit_lens(layer, token, "post", k=10)
    shown = page.locator("table.lens tbody td.tok").all_text_contents()
    assert shown == [visible(t.token) for t in lens]
    assert page.locator(".sel-ring").count() == 1
    page.screenshot(path=str(artifacts / "browser-residual-panel.png"))


def test_clicking_an_edge_selects_it_in_python_and_shows_the_heads(model, page, harness, artifacts):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    h = harness(w)
    point = h.click_edge("attention", cross_token=True)
    page.wait_for_selector("canvas.heatmap")
    edges = list(w.graph.edges(keys=True, data=True))
    u, v, key, data = edges[int(point["edge"])]
    assert key == "attention"
    heads = data["heads"]
    assert w.selection == {"kind": "attention", "layer": v[1], "source": u[2], "target": v[2],
                           "head": max(range(len(heads)), key=heads.__getitem__)}
    assert page.locator(".heads button.head").count() == 4
    assert page.locator(".heads button.head.active").get_attribute("data-head") == str(w.selection["head"])
    page.screenshot(path=str(artifacts / "browser-attention-panel.png"))
    # choosing another head in the panel goes back to Python too
    other = (w.selection["head"] + 1) % 4
    page.locator(f".heads button.head[data-head='{other}']").click()
    page.wait_for_selector(f".heads button.head.active[data-head='{other}']")
    assert w.selection["head"] == other


def test_clicking_an_ffn_node_lists_neurons_and_a_neuron_selects_it(model, page, harness, artifacts):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    harness(w)
    page.locator("circle.node.ffn").first.click()
    page.wait_for_selector("table.neurons tbody tr")
    assert w.selection["kind"] == "ffn" and w.selection["neuron"] is None
    expected = w.run.neuron_contributions(w.selection["layer"], w.selection["token"], k=10)
    rows = page.locator("table.neurons tbody tr")
    assert [int(r) for r in rows.evaluate_all("rs => rs.map(r => r.dataset.neuron)")] == [n.index for n in expected]
    page.screenshot(path=str(artifacts / "browser-ffn-panel.png"))
    rows.nth(1).click()  # a neuron is a selection of its own
    page.wait_for_selector("canvas.activation-strip")
    layer, token = w.selection["layer"], w.selection["token"]
    assert w.selection == {"kind": "neuron", "layer": layer, "token": token, "neuron": expected[1].index}
    acts = w.run.neuron_activations(layer)[:, expected[1].index]
    strongest = page.locator("ol.strongest li").evaluate_all("ls => ls.map(l => Number(l.dataset.position))")
    assert strongest == acts.abs().argsort(descending=True)[:len(strongest)].tolist()
    page.screenshot(path=str(artifacts / "browser-neuron-panel.png"))
    page.locator("button.link").click()  # back to its FFN block, the neuron's row marked
    page.wait_for_selector("table.neurons tr.active")
    assert w.selection["kind"] == "ffn" and w.selection["neuron"] == expected[1].index


def test_selection_set_in_python_is_highlighted(model, page, harness):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    h = harness(w)
    w.select("attention", layer=2, source=3, target=9, head=1)
    h.push()
    page.wait_for_selector("canvas.heatmap")
    assert page.locator(".sel-edge").count() == 1
    assert "layer 2" in page.locator(".lmtt-panel h3").text_content()
    assert page.locator(".heads button.head.active").get_attribute("data-head") == "1"


def test_choosing_a_target_redraws_its_routes(model, page, harness):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    harness(w)
    page.locator(".target-cell[data-target='6']").click()
    page.wait_for_selector(".target-cell.active[data-target='6']")
    assert w.target == 6 and w.graph.graph["target"] == 6
    assert page.locator("path.edge").count() == w.graph.number_of_edges()


def test_bad_selection_from_the_page_is_refused_visibly(model, page, harness):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    harness(w)
    # past the page's own check, as a stale or hand-made frontend would send it
    page.evaluate("() => { lmttModel.set('selection', {kind: 'ffn', layer: 42, token: 0, neuron: null}); "
                  "lmttModel.save_changes(); }")
    page.wait_for_function("() => document.querySelector('.lmtt .message').textContent.includes('Refused')")
    assert w.selection is None
    assert "layer 42 is out of range" in page.locator(".lmtt .message.error").text_content()


def test_xss_prompt_is_text_and_runs_nothing(model, page, harness, artifacts):
    w = lw.Widget(lw.analyze(model, XSS), threshold=0.01)
    harness(w)
    assert page.locator(".lmtt img").count() == 0
    assert "".join(page.locator("text.token-label").all_text_contents()).startswith("<img")
    assert page.locator("textarea.prompt").input_value() == XSS
    # and through the prompt box, analysed in Python
    page.fill("textarea.prompt", XSS + " again")
    page.click("button.analyze")
    page.wait_for_function("() => document.querySelector('.lmtt .message').textContent.startsWith('Analysed')")
    assert w.run.prompt == XSS + " again"
    page.locator("circle.node.post").last.click()
    page.wait_for_selector("table.lens")
    page.wait_for_timeout(200)
    assert page.dialogs == [] and page.locator("img").count() == 0 and page.errors == []
    page.screenshot(path=str(artifacts / "browser-xss.png"))


def test_analysis_error_shows_and_keeps_the_graph(model, page, harness):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    harness(w)
    edges = page.locator("path.edge").count()
    page.fill("textarea.prompt", "   ")
    page.click("button.analyze")
    page.wait_for_function("() => document.querySelector('.lmtt .message').textContent.includes('Could not analyse')")
    assert "prompt is empty" in page.locator(".lmtt .message").text_content()
    assert page.locator("path.edge").count() == edges and w.run.prompt == IOI


def test_saved_html_works_offline(model, page, tmp_path, artifacts):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    path = w.save_html(tmp_path / "saved.html")
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("path.edge").count() == w.graph.number_of_edges()
    height = page.locator(".lmtt-graph").evaluate("e => getComputedStyle(e).height")
    assert height == "560px"  # the stylesheet, inline, applies under the page's CSP
    # the residual stream at the target was saved with the page
    target = w.target
    last = [i for i, n in enumerate(w.graph.nodes) if n == ("post", 2, target)][0]
    page.locator(f"circle.node[data-node='{last}']").click()
    page.wait_for_selector("table.lens tbody tr")
    top = visible(w.run.logit_lens(2, target, "post")[0].token)
    assert page.locator("table.lens td.tok").first.text_content() == top
    # an FFN block was not: the page says so
    page.locator("circle.node.ffn").first.click()
    page.wait_for_selector(".lmtt-panel .unavailable")
    assert "needs a live kernel" in page.locator(".lmtt-panel .unavailable").text_content()
    assert "need a live kernel" in page.locator(".export-note").text_content()
    assert page.locator("button.analyze").is_disabled()
    assert page.locator(".lmtt-controls input[type=range]").is_disabled()
    page.locator(".target-cell[data-target='3']").click()
    assert "needs a live kernel" in page.locator(".lmtt .message").text_content()
    assert [u for u in page.requests if not u.startswith("file:")] == [] and page.errors == []
    page.screenshot(path=str(artifacts / "browser-export.png"))


@pytest.mark.demo
def test_demo_model_graph_screenshot(demo_model, page, harness, artifacts):
    w = lw.Widget(lw.analyze(demo_model, IOI))
    h = harness(w)
    assert page.locator("path.edge").count() == w.graph.number_of_edges()
    assert w.info["tokens"][-1] == " to"
    page.screenshot(path=str(artifacts / "browser-demo-graph.png"))
    h.click_edge("attention", cross_token=True)
    page.wait_for_selector("canvas.heatmap")
    assert w.selection["kind"] == "attention" and w.selection["source"] < w.selection["target"]
    page.screenshot(path=str(artifacts / "browser-demo-attention.png"))


def test_keyboard_moves_a_cursor_and_selects(model, page, harness):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    harness(w)
    last = w.run.n_tokens - 1
    page.focus(".lmtt-graph")
    page.keyboard.press("Enter")  # the cursor starts at the top of the target's stream
    page.wait_for_selector("table.lens")
    assert w.selection == {"kind": "residual", "stage": "post", "layer": 2, "token": last}
    for key in ("ArrowDown", "ArrowLeft", "ArrowLeft", "Enter"):
        page.keyboard.press(key)
    page.wait_for_function(f"() => document.querySelector('.lmtt').dataset.panel === 'residual/mid/2/{last - 2}/1'")
    assert w.selection == {"kind": "residual", "stage": "mid", "layer": 2, "token": last - 2}
