"""The panels in a real browser, bridged to the Python widget: after an ablation the selected
component's panel says so and shows its clean values; tables never overflow the panel; "more"
lists more; the maps have labels on both axes, read out the value under the pointer, zoom, pan and
crop, follow dark themes, and are images (a canvas), never an element per cell, at T=4096; the
all-heads view chooses a head."""

from __future__ import annotations

import re

import pytest
from page_actions import ablate

import lmtt_widget as lw
from page_numbers import fmt
from tiny import IOI

pytestmark = pytest.mark.browser

EDGE = {"kind": "attention", "layer": 1, "source": 3, "target": 9, "head": 2}

# the colour of a canvas pixel, at a point given in CSS px from its top left
PIXEL = """([sel, x, y]) => {
  const c = document.querySelectorAll(sel)[0], dpr = c.width / c.getBoundingClientRect().width;
  return [...c.getContext('2d').getImageData(Math.floor(x * dpr), Math.floor(y * dpr), 1, 1).data].slice(0, 3);
}"""


def show_edge(w, h, page, edge=EDGE) -> None:
    w.select(**edge)
    h.push()
    page.wait_for_selector("figure.map canvas.heatmap")


def test_an_ablated_heads_panel_says_so_and_shows_its_clean_values(model, page, harness, artifacts):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    h = harness(w)
    show_edge(w, h, page)
    ablate(page, ["head", 1, 2])
    page.wait_for_selector(".lmtt-panel .intervened")
    note = page.locator(".lmtt-panel .intervened").text_content()
    assert note.startswith("Ablated in the run shown (head L1.2") and "values in the clean run" in note
    clean = w.run.clean
    assert float(w.run.head_contributions(1, 2).abs().sum()) == 0  # blank in the run shown
    promoted = page.locator(".effects .effect.up").first.locator("li .num").all_text_contents()
    logits = clean.head_logits(1, 2, 9, 3, k=8).promoted
    assert promoted == [fmt(v, 2) if abs(v) >= 0.01 else f"{v:.2g}" for _, v in logits]
    # the importance map is not blank: its cell of the edge has the ramp's colour, not the background
    assert float(clean.head_contributions(1, 2).sum()) > 0
    inked = page.locator("figure.map").nth(1).locator("canvas").evaluate(
        "c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
        " for (let i = 0; i < d.length; i += 4) if (d[i] !== d[0] || d[i + 1] !== d[1] || d[i + 2] !== d[2]) n++;"
        " return n; }")
    assert inked > 0
    page.screenshot(path=str(artifacts / "panels-ablated-head.png"))
    # an FFN block ablated at its token: the same, and no token listed with a zero value
    ablate(page, ["ffn", 2, [6]])
    page.wait_for_function("() => document.querySelectorAll('.ablation').length === 2")
    w.select("ffn", layer=2, token=6)
    h.push()
    page.wait_for_selector("table.neurons tbody tr")
    assert "FFN block L2 at 6" in page.locator(".lmtt-panel .intervened").text_content()
    values = page.locator(".lmtt-panel ul.effect li .num").all_text_contents()
    assert values and all(float(v) != 0 for v in values)


def test_tables_fit_the_panel_with_the_full_text_on_hover(model, page, harness, artifacts):
    page.set_viewport_size({"width": 1000, "height": 900})
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    h = harness(w)
    w.select("ffn", layer=2, token=6)
    h.push()
    page.wait_for_selector("table.neurons tbody tr")
    page.click(".lmtt-panel button.more")
    page.wait_for_function("() => document.querySelectorAll('table.neurons tbody tr').length === 20")
    panel = page.locator(".lmtt-panel")
    assert panel.evaluate("p => p.scrollWidth <= p.clientWidth")
    cut = panel.evaluate("""p => [...p.querySelectorAll('td, li .tok')].filter((c) => c.scrollWidth > c.clientWidth + 1)
        .map((c) => [c.textContent, c.title])""")
    assert cut  # the token lists are longer than their columns: cut, with the whole list in the title
    for text, title in cut:
        assert title and (title == text or title.startswith('"'))
    boxes = panel.evaluate("p => { const r = p.getBoundingClientRect(); return [...p.querySelectorAll('td')]"
                           ".every((c) => c.getBoundingClientRect().right <= r.right + 0.5); }")
    assert boxes
    page.screenshot(path=str(artifacts / "panels-ffn-more.png"))


def test_more_lists_the_longer_lists(model, page, harness):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    h = harness(w)
    w.select("residual", stage="post", layer=1, token=5)
    h.push()
    page.wait_for_selector("table.lens tbody tr")
    assert page.locator("table.lens tbody tr").count() == 10
    page.click(".lmtt-panel button.more")
    page.wait_for_function("() => document.querySelectorAll('table.lens tbody tr').length === 30")
    assert page.locator(".effects .effect.up li").count() == 15
    page.click(".lmtt-panel button.more")  # fewer again
    page.wait_for_function("() => document.querySelectorAll('table.lens tbody tr').length === 10")


def test_maps_have_labels_read_out_values_zoom_pan_and_crop(model, page, harness, artifacts):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    h = harness(w)
    show_edge(w, h, page, {**EDGE, "layer": 2, "source": 5, "target": 20})
    figure = page.locator("figure.map").first
    def rows():
        return figure.locator(".map-rows .map-label").evaluate_all(
            "ls => ls.map(l => [Number(l.dataset.row), l.getBoundingClientRect().top])")
    cols = figure.locator(".map-cols .map-label").evaluate_all("ls => ls.map(l => Number(l.dataset.col))")
    focus = w.panel(w.selection)["focus"]
    assert [r for r, _ in rows()] == focus and cols == focus  # cropped to the tokens that matter, every one labelled
    # the value under the pointer
    canvas = figure.locator("canvas")
    box = canvas.bounding_box()
    cell = box["width"] / len(focus)
    i, j = focus.index(20), focus.index(5)
    page.mouse.move(box["x"] + (j + 0.5) * cell, box["y"] + (i + 0.5) * cell)
    readout = figure.locator(".map-readout").text_content()
    value = float(w.run.attention_pattern(2)[w.selection["head"]][20, 5])
    assert readout == f'target 20 "{w.run.tokens[20]}" ← source 5 "{w.run.tokens[5]}": {fmt(value, 4)}'
    # zoom about the pointer: cells grow, fewer rows in view; the cell under the pointer stays
    before = rows()
    for _ in range(3):
        page.mouse.wheel(0, -200)
    after = rows()
    assert len(after) < len(before) and after[1][1] - after[0][1] > before[1][1] - before[0][1]
    page.mouse.move(box["x"] + (j + 0.5) * cell + 1, box["y"] + (i + 0.5) * cell)
    assert figure.locator(".map-readout").text_content() == readout
    # pan: drag the map up, later rows come into view
    first = after[0][0]
    page.mouse.down()
    page.mouse.move(box["x"] + (j + 0.5) * cell + 1, box["y"] + 5, steps=4)
    page.mouse.up()
    assert rows()[0][0] > first
    page.screenshot(path=str(artifacts / "panels-map-zoomed.png"))
    # every token: the crop's button
    figure.locator("button.map-crop").click()
    assert len(rows()) > 0 and figure.locator("figcaption").count() == 1
    all_cols = figure.locator(".map-cols .map-label").evaluate_all("ls => ls.map(l => Number(l.dataset.col))")
    assert all_cols[0] == 0 and len(all_cols) >= 12  # thinned to stay readable, from the first token


def test_all_heads_view_chooses_a_head(model, page, harness):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    h = harness(w)
    show_edge(w, h, page)
    heads = page.locator("figure.all-heads")
    assert heads.locator(".map-rows .map-label").all_text_contents() == ["h0", "h1", "h2", "h3"]
    heads.locator("canvas").scroll_into_view_if_needed()
    box = heads.locator("canvas").bounding_box()
    page.mouse.click(box["x"] + 5, box["y"] + box["height"] * (3.5 / 4))
    page.wait_for_function("() => document.querySelector('.heads button.head.active')?.dataset.head === '3'")
    assert w.selection["head"] == 3


@pytest.mark.parametrize("theme", ["prefers-dark", "jupyterlab-dark"])
def test_maps_follow_a_dark_theme(model, page, harness, artifacts, theme):
    if theme == "prefers-dark":
        page.emulate_media(color_scheme="dark")
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    h = harness(w)
    if theme == "jupyterlab-dark":  # the variables JupyterLab's dark theme sets on the page
        page.evaluate("""() => { const s = document.documentElement.style;
          for (const [k, v] of Object.entries({'--jp-layout-color0': '#111111', '--jp-layout-color1': '#2a2a2a',
            '--jp-layout-color2': '#383838', '--jp-ui-font-color0': '#f0f0f0', '--jp-ui-font-color2': '#aaaaaa',
            '--jp-border-color1': '#555555', '--jp-info-color1': '#4fc3f7'})) s.setProperty(k, v); }""")
    show_edge(w, h, page)
    background = page.locator(".lmtt").evaluate("e => getComputedStyle(e).backgroundColor")
    expected = {"prefers-dark": "rgb(13, 17, 23)", "jupyterlab-dark": "rgb(17, 17, 17)"}[theme]
    assert background == expected
    # a cell of value 0 (a source after its target) has the background's colour; the edge's cell is lighter
    box = page.locator("figure.map canvas.heatmap").first.bounding_box()
    zero = page.evaluate(PIXEL, ["figure.map canvas.heatmap", box["width"] - 2, 2])
    assert f"rgb({zero[0]}, {zero[1]}, {zero[2]})" == expected
    top = page.evaluate(PIXEL, ["figure.map canvas.heatmap", 2, 2])  # token 0 attending to itself: 1
    assert sum(top) > sum(zero) + 150
    page.screenshot(path=str(artifacts / f"panels-{theme}.png"))


def test_a_4096_token_attention_panel_is_images_not_cells(long_run, page, harness, artifacts):
    w = lw.Widget(long_run(4096), threshold=0.005)
    h = harness(w)
    show_edge(w, h, page, {"kind": "attention", "layer": 1, "source": 4000, "target": 4095, "head": None})
    panel = page.locator(".lmtt-panel")
    assert panel.locator("canvas").count() == 5  # 2 maps, 2 rows, all heads
    assert panel.evaluate("p => p.querySelectorAll('*').length") < 1000
    caption = panel.locator("figure.map").nth(2).locator("figcaption").text_content()
    assert re.search(r"all 4096 sources", caption)
    assert panel.evaluate("p => p.scrollWidth <= p.clientWidth")
    page.screenshot(path=str(artifacts / "panels-4096.png"))


@pytest.mark.demo
def test_long_tokens_are_cut_in_the_demo_models_tables(demo_model, page, harness, artifacts):
    code = "def f(x):\n        return x\n\n\n\n" + " " * 16 + "# the end" + "=" * 24 + "\nprint(f(2))"
    w = lw.Widget(lw.analyze(demo_model, code))
    h = harness(w)
    long = max(range(w.run.n_tokens), key=lambda t: len(w.run.tokens[t]))
    assert len(w.run.tokens[long]) >= 8  # e.g. a run of spaces
    w.select("ffn", layer=20, token=long)
    h.push()
    page.wait_for_selector("table.neurons tbody tr", timeout=120_000)
    panel = page.locator(".lmtt-panel")
    assert panel.evaluate("p => p.scrollWidth <= p.clientWidth")
    w.select("residual", stage="post", layer=29, token=long)
    h.push()
    page.wait_for_selector("table.lens tbody tr")
    assert panel.evaluate("p => p.scrollWidth <= p.clientWidth")
    page.screenshot(path=str(artifacts / "panels-demo-long-tokens.png"))
