"""A mixture of experts in a real browser, bridged to the Python widget: the FFN panel of an MoE
layer lists its experts (the shared one last), a click on an expert opens its panel (its neurons,
its write), "back" returns to the experts, and the expert's ablation is offered."""

from __future__ import annotations

import pytest

import lmtt_widget as lw
import tiny
from page_numbers import fmt
from tiny import IOI

pytestmark = pytest.mark.browser

LAYER, TOKEN = 0, 6  # tests/tiny.py: qwen2_moe's layer 0 is a mixture with a shared expert


def test_the_experts_of_a_mixture_and_an_experts_own_panel(page, harness, artifacts):
    page.set_viewport_size({"width": 1100, "height": 900})
    run = lw.analyze(tiny.load("qwen2_moe"), IOI, progress=False)
    w = lw.Widget(run, threshold=0.01)
    h = harness(w)
    w.select("ffn", layer=LAYER, token=TOKEN)
    h.push()
    page.wait_for_selector("table.experts tbody tr")
    experts = run.expert_contributions(LAYER, TOKEN)
    rows = page.locator("table.experts tbody tr")
    assert rows.evaluate_all("rs => rs.map((r) => r.dataset.expert)") == [
        "shared" if e.expert is None else str(e.expert) for e in experts]
    weights = rows.evaluate_all("rs => rs.map((r) => r.cells[1].textContent)")
    assert weights == [fmt(e.weight, 2) for e in experts]
    assert page.locator("table.neurons:not(.experts)").count() == 0  # a mixture has no layer-wide neurons
    page.screenshot(path=str(artifacts / "experts-ffn-panel.png"))
    # a click opens the expert's own panel, and Python's selection follows
    first = experts[0].expert
    rows.first.click()
    page.wait_for_selector(f".lmtt-panel h3:text-is('Expert {first} of layer {LAYER}')")
    page.wait_for_function("() => document.querySelectorAll('.lmtt-panel table.neurons tbody tr').length > 0")
    assert w.selection == {"kind": "expert", "layer": LAYER, "token": TOKEN, "expert": first}
    neurons = run.expert_neuron_contributions(LAYER, TOKEN, first, k=10)
    shown = page.locator(".lmtt-panel table.neurons tbody tr").evaluate_all("rs => rs.map((r) => +r.dataset.neuron)")
    assert shown == [n.index for n in neurons]
    assert page.locator(".lmtt-panel").evaluate("p => p.scrollWidth <= p.clientWidth")
    labels = page.locator("select, option, button").all_text_contents()
    assert any(f"expert {first} of layer {LAYER}" in text for text in labels)  # its ablation is offered
    page.screenshot(path=str(artifacts / "experts-expert-panel.png"))
    page.click(f".lmtt-panel button.link:text-is('the experts of layer {LAYER}')")
    page.wait_for_selector("table.experts tbody tr")
    assert w.selection["kind"] == "ffn"
