"""Effects in a real browser, bridged to the Python widget: the contrast picker and the "rank by"
switch set Python's options, edges are coloured by the sign of their effect, the missed edges are
drawn dashed (the legend names both), and the attention and FFN panels show effects beside shares."""

from __future__ import annotations

import pytest

import lmtt_widget as lw
from page_numbers import signed
from tiny import IOI

pytestmark = pytest.mark.browser



def signed_edges(graph) -> tuple[int, int]:
    effects = [d["effect"] for *_, d in graph.edges(data=True) if d["effect"] is not None]
    return sum(e >= 0 for e in effects), sum(e < 0 for e in effects)


def test_contrast_rank_by_and_missed_edges_round_trip(model, page, harness, artifacts):
    run = lw.analyze(model, IOI)
    w = lw.Widget(run, threshold=0.02)
    harness(w)
    # edges coloured by the sign of their effect
    supports, opposes = signed_edges(w.graph)
    assert page.locator("path.edge.supports").count() == supports
    assert page.locator("path.edge.opposes").count() == opposes
    assert supports + opposes > 0
    # the legend says what the colours mean; the missed edges' entry only while they are drawn
    effects_entry = page.locator(".lmtt-legend .entry[data-needs='effects']")
    missed_entry = page.locator(".lmtt-legend .entry[data-needs='missed']")
    assert effects_entry.is_visible() and "supports" in effects_entry.text_content()
    assert not missed_entry.is_visible()
    # the contrast picker: the runner-up by default, the other top predictions at the target
    options = page.locator("select.contrast-select option")
    assert options.first.get_attribute("value") == "" and options.count() == 4  # runner-up, then the 3rd to 5th
    third = int(options.nth(1).get_attribute("value"))
    assert third == int(run.logits[w.target].topk(3).indices[2])
    page.select_option("select.contrast-select", str(third))
    page.wait_for_function(
        f"() => document.querySelector('.metric-line').textContent.includes({w.view.effects.metric!r})")
    assert w.contrast == third and w.effects["contrast_id"] == third
    assert f"{w.effects['value']:.3f}" in page.locator(".metric-line").text_content()
    # rank by effect: the routes kept by |effect|, drawn as Python has them
    page.select_option("select.rank-by", "effect")
    page.wait_for_function("() => document.querySelector('.lmtt-graph').dataset.edges !== undefined")
    assert w.rank_by == "effect" and w.graph.graph["by"] == "effect"
    page.wait_for_function(f"() => document.querySelectorAll('path.edge').length === {w.graph.number_of_edges()}")
    supports, opposes = signed_edges(w.graph)
    assert page.locator("path.edge.supports").count() == supports
    assert page.locator("path.edge.opposes").count() == opposes
    # the missed edges: dashed, those of the effect routes that the share routes leave out
    page.select_option("select.rank-by", "share")
    page.check("input.show-missed")
    missed = w.effects["missed"]
    assert w.show_missed and missed
    page.wait_for_function(f"() => document.querySelectorAll('path.missed-edge').length === {len(missed)}")
    dash = page.evaluate("() => getComputedStyle(document.querySelector('path.missed-edge')).strokeDasharray")
    assert dash not in ("", "none")
    assert page.locator(".lmtt-graph").get_attribute("data-missed") == str(len(missed))
    assert missed_entry.is_visible()
    page.uncheck("input.show-missed")
    page.wait_for_function("() => document.querySelectorAll('path.missed-edge').length === 0")
    assert not missed_entry.is_visible()
    assert page.errors == []
    page.check("input.show-missed")
    page.wait_for_selector("path.missed-edge")
    page.screenshot(path=str(artifacts / "browser-effects.png"), full_page=True)
    # effects off: no colours by sign, the effects' controls disabled; on again: back
    page.uncheck("input.with-effects")
    page.wait_for_function("() => document.querySelectorAll('path.edge.supports, path.edge.opposes').length === 0")
    assert w.with_effects is False and w.effects is None
    assert page.locator("select.rank-by").is_disabled() and page.locator("select.contrast-select").is_disabled()
    assert not effects_entry.is_visible()
    page.check("input.with-effects")
    page.wait_for_function("() => document.querySelectorAll('path.edge.supports, path.edge.opposes').length > 0")
    assert w.with_effects and not page.locator("select.rank-by").is_disabled()


def test_panels_show_effects_beside_shares(model, page, harness, artifacts):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    h = harness(w)
    last = w.target  # an edge into the token whose prediction the effects measure
    w.select("attention", layer=2, source=3, target=last, head=1)
    h.push()
    page.wait_for_selector("canvas.heatmap")
    effects = w.view.effects.edge(2, last, 3).tolist()
    assert max(map(abs, effects)) > 0
    bars = page.locator(".heads .ebar")
    assert bars.count() == len(effects) == w.run.shape.n_heads
    shown = [float(bars.nth(i).get_attribute("data-effect")) for i in range(bars.count())]
    assert shown == pytest.approx(effects, abs=1e-6)
    ups = [("up" in (bars.nth(i).get_attribute("class") or "")) for i in range(bars.count())]
    assert ups == [e >= 0 for e in effects]
    assert page.locator(".heads .hbar").count() == len(effects)  # the shares beside them
    assert f"effect {signed(sum(effects))}" in page.locator(".effect-line").text_content()
    assert w.selected["effects"].tolist() == pytest.approx(effects)
    page.screenshot(path=str(artifacts / "browser-effects-attention-panel.png"), full_page=True)
    w.select("ffn", layer=1, token=last)
    h.push()
    page.wait_for_selector("table.neurons")
    panel = w.panel(w.selection)
    cells = page.locator("table.neurons td.effect").all_text_contents()
    assert cells == [signed(n["effect"]) for n in panel["neurons"]]
    assert signed(panel["ffn_effect"]) in page.locator(".effect-line").text_content()
    assert page.errors == []


@pytest.mark.demo
def test_demo_ioi_routes_by_effect_against_john(demo_model, ioi_run, page, harness, artifacts):
    """IOI, m = logit(" Mary") - logit(" John"): the routes by effect, the missed edges over the
    share routes, and the faithfulness card."""
    w = lw.Widget(ioi_run, contrast=" John", rank_by="effect")
    harness(w)
    assert w.effects["answer"] == " Mary" and w.effects["contrast"] == " John"
    assert page.locator("path.edge").count() == w.graph.number_of_edges()
    page.select_option("select.rank-by", "share")
    page.check("input.show-missed")
    page.wait_for_selector("path.missed-edge")
    page.click("button.faithfulness-run")
    page.wait_for_selector("svg.faith-chart", timeout=120000)
    fractions = {r["by"]: r["fraction"] for r in w.faithfulness["rows"]}
    assert fractions["effect"] > fractions["share"]
    page.screenshot(path=str(artifacts / "browser-effects-demo-ioi.png"), full_page=True)


# pixels of the edges' canvas by colour: green (supports), red (opposes); on the light theme's white,
# the attention blue, the FFN orange and the residual grey are neither
SIGN_PIXELS = """() => {
  const c = document.querySelector('canvas.edges-canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let green = 0, red = 0;
  for (let i = 0; i < d.length; i += 4) {
    const [r, g, b, a] = [d[i], d[i + 1], d[i + 2], d[i + 3]];
    if (a < 40) continue;
    if (g > r + 25 && g > b + 25) green++;
    else if (r > g + 40 && Math.abs(g - b) < 20) red++;
  }
  return [green, red];
}"""


def test_a_graph_painted_on_a_canvas_colours_edges_by_the_sign_of_their_effect(long_run, page, harness, artifacts):
    w = lw.Widget(long_run(220), threshold=0.005)  # thousands of edges: painted on a canvas
    h = harness(w)
    assert page.locator(".lmtt-graph").get_attribute("data-painted") == "canvas"
    supports, opposes = signed_edges(w.graph)
    assert supports > 0 and opposes > 0
    green, red = page.evaluate(SIGN_PIXELS)
    assert green > 100 and red > 100, (green, red)
    page.screenshot(path=str(artifacts / "effects-canvas.png"))
    w.with_effects = False  # the same edges in their kinds' colours
    h.push()
    page.wait_for_function(f"() => ({SIGN_PIXELS})()[0] === 0")
    assert page.evaluate(SIGN_PIXELS) == [0, 0]
