"""Long prompts in the real browser: the view as it opens shows every token column the routes pass
through, with token and layer labels at least 8 px high that do not overlap, the graph filling its
box; columns off the routes collapse into gaps that open on a click; an overview strip; the layer
axis stays put; clicks select what is under the pointer at every zoom. Label boxes are measured
in the page (getBoundingClientRect)."""

from __future__ import annotations

import pytest

import lmtt_widget as lw

pytestmark = pytest.mark.browser

# Every visible label's box on screen (clipped by its band: a label outside it is not shown), its
# height as text (getBBox in its own, possibly rotated, frame, times the screen scale), the plot's
# box and the screen position of every node drawn.
MEASURE = """() => {
  const visibleIn = (r, clip) => r.right > clip.left + 0.5 && r.left < clip.right - 0.5
    && r.bottom > clip.top + 0.5 && r.top < clip.bottom - 0.5;
  const boxes = (sel) => [...document.querySelectorAll(sel)].map((el) => {
    const r = el.getBoundingClientRect(), clip = el.ownerSVGElement.getBoundingClientRect();
    return {x0: r.left, x1: r.right, y0: r.top, y1: r.bottom, font: parseFloat(getComputedStyle(el).fontSize),
            high: el.getBBox().height * Math.hypot(el.getScreenCTM().c, el.getScreenCTM().d),
            text: el.textContent, token: el.closest('[data-token]')?.dataset.token ?? null, shown: visibleIn(r, clip)};
  }).filter((b) => b.shown);
  const plot = document.querySelector('.lmtt-svg svg.plot > rect.bg').getBoundingClientRect();
  const labels = ['text.token-label', 'text.layer-label', '.target-cell text', 'text.gap-label'].flatMap(boxes);
  return {labels,
          tokens: boxes('text.token-label'), layers: boxes('text.layer-label'),
          plot: {x0: plot.left, x1: plot.right, y0: plot.top, y1: plot.bottom}};
}"""

# where nodes (stage code, layer, token) are on the screen, whether drawn as elements or painted
SCREEN = """(nodes) => nodes.map(([stage, layer, token]) =>
  document.querySelector('.lmtt-graph').lmttScreenPoint(stage, layer, token))"""
STAGES = ("embed", "mid", "ffn", "post")


def screen_points(page, nodes) -> list[tuple[float, float]]:
    return page.evaluate(SCREEN, [[STAGES.index(stage), layer, token] for stage, layer, token in nodes])


def overlap(a: dict, b: dict) -> float:
    width = min(a["x1"], b["x1"]) - max(a["x0"], b["x0"])
    height = min(a["y1"], b["y1"]) - max(a["y0"], b["y0"])
    return max(0.0, width) * max(0.0, height)


def assert_readable(page, w) -> dict:
    """Labels >= 8 px high (their font and the height of their text), no two overlapping, and
    every node of the routes inside the plot."""
    m = page.evaluate(MEASURE)
    assert m["tokens"] and m["layers"]
    for box in m["labels"]:
        assert box["font"] >= 8 and box["high"] >= 8, box
    labels = m["labels"]
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            assert overlap(a, b) < 0.5, (a, b)
    nodes = list(w.graph.nodes)
    plot = m["plot"]
    outside = [node for node, (x, y) in zip(nodes, screen_points(page, nodes))
               if not (plot["x0"] <= x <= plot["x1"] and plot["y0"] <= y <= plot["y1"])]
    assert outside == []
    m["nodes"] = screen_points(page, nodes)
    return m


@pytest.mark.parametrize(("n_tokens", "threshold"), [(40, 0.04), (40, 0.01), (220, 0.01), (220, 0.005)])
def test_long_prompt_opens_readable_with_every_route_column(long_run, page, harness, artifacts, n_tokens, threshold):
    w = lw.Widget(long_run(n_tokens), threshold=threshold)
    harness(w)
    page.screenshot(path=str(artifacts / f"layout-{n_tokens}-{threshold}.png"))
    m = assert_readable(page, w)
    route_tokens = {node[2] for node in w.graph.nodes}
    labelled = {int(b["token"]) for b in m["tokens"]}
    if len(route_tokens) <= 60:  # room for every route column's label
        assert route_tokens <= labelled
    # the graph fills its box: the layer axis spans the plot's height, the columns its width
    ys = sorted((b["y0"] + b["y1"]) / 2 for b in m["layers"])
    plot = m["plot"]
    assert ys[-1] - ys[0] > 0.8 * (plot["y1"] - plot["y0"])
    xs = [x for x, _ in m["nodes"]]
    if len(route_tokens) > 1:
        assert max(xs) - min(xs) > 0.6 * (plot["x1"] - plot["x0"])


def test_columns_off_the_routes_collapse_into_gaps_that_open(long_run, page, harness, artifacts):
    w = lw.Widget(long_run(220), threshold=0.01)
    harness(w)
    route_tokens = sorted({node[2] for node in w.graph.nodes})
    gaps = page.locator("g.gap")
    labels = page.locator("text.gap-label").all_text_contents()
    counts = [int(text.split()[1]) for text in labels]
    columns = int(page.locator(".lmtt-graph").get_attribute("data-columns"))
    assert gaps.count() == len(labels) and min(counts) >= 2  # a lone token off the routes keeps its column
    assert sum(counts) + columns == 220 and columns < 3 * len(route_tokens)
    first_gap = route_tokens[0] > 1  # tokens before the first route column
    assert first_gap
    n_gaps = gaps.count()
    gaps.first.locator("rect").click()
    page.wait_for_function(f"() => document.querySelectorAll('g.gap').length === {n_gaps - 1}")
    shown = {int(t) for t in page.locator("g.token").evaluate_all("gs => gs.map(g => g.dataset.token)")}
    assert set(range(route_tokens[0])) <= shown  # the opened gap's tokens have their columns (and labels)
    assert_readable_labels_only(page)
    page.screenshot(path=str(artifacts / "layout-gap-opened.png"))
    page.focus(".lmtt-graph")
    page.keyboard.press("0")  # Fit closes it again
    page.wait_for_function(f"() => document.querySelectorAll('g.gap').length === {len(labels)}")


def assert_readable_labels_only(page) -> None:
    m = page.evaluate(MEASURE)
    for i, a in enumerate(m["labels"]):
        assert a["font"] >= 8
        for b in m["labels"][i + 1:]:
            assert overlap(a, b) < 0.5, (a, b)


def test_overview_shows_the_routes_and_the_view_and_moves_it(long_run, page, harness, artifacts):
    w = lw.Widget(long_run(220), threshold=0.01)
    harness(w)
    route_tokens = {node[2] for node in w.graph.nodes}
    ticks = page.locator("path.ov-routes").get_attribute("d").count("M")
    assert ticks == len(route_tokens)
    window = page.locator("rect.ov-window")
    assert (int(window.get_attribute("data-first")), int(window.get_attribute("data-last"))) == (0, 219)
    # zoom in, and the window narrows; a click on the overview moves the view there
    box = page.locator("svg.plot > rect.bg").bounding_box()
    for _ in range(6):
        page.mouse.move(box["x"] + box["width"] - 30, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -300)
    page.wait_for_timeout(100)
    first, last = int(window.get_attribute("data-first")), int(window.get_attribute("data-last"))
    assert last - first < 200 and last == 219  # zoomed at the right end: the target's side
    strip = page.locator("rect.ov-bg").bounding_box()
    page.mouse.click(strip["x"] + 2, strip["y"] + strip["height"] / 2)
    page.wait_for_timeout(100)
    assert int(window.get_attribute("data-first")) == 0
    assert_readable_labels_only(page)
    page.screenshot(path=str(artifacts / "layout-overview-moved.png"))


def test_layer_axis_stays_put_while_panning(long_run, page, harness):
    w = lw.Widget(long_run(220), threshold=0.005)
    harness(w)
    box = page.locator("svg.plot > rect.bg").bounding_box()
    for _ in range(5):
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -300)
    def axis():
        return page.locator("text.layer-label").evaluate_all(
            "ts => ts.map(t => { const r = t.getBoundingClientRect(); return [t.textContent, Math.round(r.left)]; })")
    before = axis()
    tok_before = page.locator("g.token").first.evaluate("g => [g.dataset.token, g.getBoundingClientRect().left]")
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 - 200, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    page.wait_for_timeout(100)
    after = axis()
    assert [x for _, x in after] == [x for _, x in before] and [t for t, _ in after] == [t for t, _ in before]
    moved = page.locator(f"g.token[data-token='{tok_before[0]}']").evaluate("g => g.getBoundingClientRect().left")
    assert moved < tok_before[1] - 150  # the token labels pan with the graph
    assert_readable_labels_only(page)


def test_token_labels_truncate_and_show_the_full_text_on_hover(long_run, page, harness):
    w = lw.Widget(long_run(220), threshold=0.005)
    harness(w)
    titles = page.locator("g.token title").all_text_contents()
    texts = page.locator("g.token text.token-label").all_text_contents()
    tokens = page.locator("g.token").evaluate_all("gs => gs.map(g => Number(g.dataset.token))")
    for t, title, text in zip(tokens, titles, texts):
        full = w.run.tokens[t]
        assert title.endswith(repr(full).replace("'", '"')) or full in title
        assert len(text) <= 6 and (text.endswith("…") or len(full) <= 6)
    label = page.locator("g.token").first
    label.hover()
    tip = page.locator(".lmtt-tooltip")
    assert tip.is_visible() and f"token {tokens[0]} " in tip.text_content()


CLICK_EDGE = """() => {
  const plot = document.querySelector('.lmtt-svg svg.plot > rect.bg').getBoundingClientRect();
  const paths = [...document.querySelectorAll('path.edge.attention')].filter((p) => p.getAttribute('d').includes('C'));
  paths.sort((a, b) => parseFloat(b.getAttribute('stroke-width')) - parseFloat(a.getAttribute('stroke-width')));
  for (const p of paths) {
    const pt = p.getPointAtLength(p.getTotalLength() / 2), m = p.getScreenCTM();
    const x = pt.x * m.a + pt.y * m.c + m.e, y = pt.x * m.b + pt.y * m.d + m.f;
    if (!(x > plot.left + 5 && x < plot.right - 5 && y > plot.top + 5 && y < plot.bottom - 5)) continue;
    const under = document.elementFromPoint(x, y);  // where edges cross, the one on top
    if (under?.matches('path.edge.attention')) return {x, y, edge: Number(under.dataset.edge)};
  }
  return null;
}"""


CLICK_NODE = """() => {
  const plot = document.querySelector('.lmtt-svg svg.plot > rect.bg').getBoundingClientRect();
  for (const c of [...document.querySelectorAll('circle.node.post')].reverse()) {
    const r = c.getBoundingClientRect(), x = (r.left + r.right) / 2, y = (r.top + r.bottom) / 2;
    if (x > plot.left && x < plot.right && y > plot.top && y < plot.bottom && document.elementFromPoint(x, y) === c)
      return {x, y, node: Number(c.dataset.node)};
  }
  return null;
}"""


@pytest.mark.parametrize("zoom", [0, -3, 2])
def test_clicks_select_what_is_under_the_pointer_at_every_zoom(long_run, page, harness, zoom):
    w = lw.Widget(long_run(220), threshold=0.01)  # few edges: SVG elements
    harness(w)
    assert page.locator(".lmtt-graph").get_attribute("data-painted") == "svg"
    box = page.locator("svg.plot > rect.bg").bounding_box()
    [(x, _)] = screen_points(page, [("post", 2, 219)])  # zoom about the target's column
    for _ in range(abs(zoom)):
        page.mouse.move(x, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -300 if zoom > 0 else 300)
    page.wait_for_timeout(100)
    edges = list(w.graph.edges(keys=True, data=True))
    point = page.evaluate(CLICK_EDGE)
    page.mouse.click(point["x"], point["y"])
    page.wait_for_function("() => document.querySelector('.lmtt').dataset.panel?.startsWith('attention/')")
    u, v, key, data = edges[point["edge"]]
    assert (w.selection["kind"], w.selection["layer"], w.selection["source"], w.selection["target"]) == \
        ("attention", v[1], u[2], v[2])
    node = page.evaluate(CLICK_NODE)
    index = node["node"]
    page.mouse.click(node["x"], node["y"])
    page.wait_for_function("() => document.querySelector('.lmtt').dataset.panel?.startsWith('residual/')")
    stage, layer, token = list(w.graph.nodes)[index]
    assert w.selection == {"kind": "residual", "stage": stage, "layer": layer, "token": token}


@pytest.mark.parametrize("zoom", [0, 3])
def test_clicks_on_a_painted_graph_select_the_nearest_edge_or_node(long_run, page, harness, artifacts, zoom):
    w = lw.Widget(long_run(220), threshold=0.005)  # thousands of edges: painted on a canvas
    harness(w)
    assert page.locator(".lmtt-graph").get_attribute("data-painted") == "canvas"
    assert page.locator("path.edge").count() == 0 and page.locator("canvas.edges-canvas").is_visible()
    box = page.locator("svg.plot > rect.bg").bounding_box()
    [(x, _)] = screen_points(page, [("post", 2, 219)])  # zoom about the target's column
    for _ in range(zoom):
        page.mouse.move(x, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -300)
    page.wait_for_timeout(150)
    edges = [(u, v, d) for u, v, k, d in w.graph.edges(keys=True, data=True) if k == "attention" and u[2] != v[2]]
    ends = screen_points(page, [node for u, v, _ in edges for node in (u, v)])
    middles = [((xa + xb) / 2, (ya + yb) / 2) for (xa, ya), (xb, yb) in zip(ends[::2], ends[1::2])]
    inside = [(e, (x, y)) for e, (x, y) in zip(edges, middles)
              if box["x"] + 5 < x < box["x"] + box["width"] - 5 and box["y"] + 5 < y < box["y"] + box["height"] - 5]
    _, (mx, my) = max(inside, key=lambda em: em[0][2]["weight"])  # the heaviest in view
    page.mouse.click(mx, my)  # the middle of its curve
    page.wait_for_function("() => document.querySelector('.lmtt').dataset.panel?.startsWith('attention/')")
    sel = w.selection
    assert sel["kind"] == "attention" and w.graph.has_edge(
        ("embed", -1, sel["source"]) if sel["layer"] == 0 else ("post", sel["layer"] - 1, sel["source"]),
        ("mid", sel["layer"], sel["target"]), "attention")
    node = ("post", 2, 219)
    [(x, y)] = screen_points(page, [node])
    page.mouse.click(x, y)
    page.wait_for_function("() => document.querySelector('.lmtt').dataset.panel?.startsWith('residual/post/2/219')")
    page.mouse.move(x, y + 1)
    assert "residual after the block, layer 2, token 219" in page.locator(".lmtt-tooltip").text_content()
    page.screenshot(path=str(artifacts / f"layout-painted-{zoom}.png"))


@pytest.mark.demo
def test_the_demo_models_routes_at_300_tokens_open_readable_and_clicks_hit(demo_model, page, harness, artifacts):
    import torch

    from lmtt_widget.run import analyze_ids

    text = ("When Mary and John went to the store, John gave a drink to Mary. The capital of France is Paris, "
            "and the capital of Italy is Rome. Tokens, spaces and newlines all count.\n") * 12
    w = lw.Widget(analyze_ids(demo_model, torch.tensor(demo_model.tokenizer(text)["input_ids"][:300]), progress=False))
    harness(w)
    page.screenshot(path=str(artifacts / "layout-demo-300.png"))
    assert_readable(page, w)
    # at the opening (fit) zoom, the middle of the heaviest attention edge in view: an edge, not a residual node
    point = page.evaluate("() => document.querySelector('.lmtt-graph').lmttInView('attention')[0]")
    page.mouse.click(point["x"], point["y"])
    page.wait_for_function("() => document.querySelector('.lmtt').dataset.panel?.startsWith('attention/')")
    sel = w.selection
    source = ("embed", -1, sel["source"]) if sel["layer"] == 0 else ("post", sel["layer"] - 1, sel["source"])
    assert w.graph.has_edge(source, ("mid", sel["layer"], sel["target"]), "attention")
