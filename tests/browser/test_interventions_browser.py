"""The interventions view in a real browser, bridged to the Python widget: the ablate action
round-trips, the before/after shows the numbers Python computed, undo restores the clean run,
the faithfulness card and the code box show Python's results, and bad input is refused visibly."""

from __future__ import annotations

import pytest

import lmtt_widget as lw
from page_numbers import fmt, signed
from tiny import IOI

pytestmark = pytest.mark.browser



def metric(page, cls: str) -> str:
    return page.locator(f".prediction-change .metric.{cls}").text_content()


def test_ablate_a_head_shows_before_after_and_undo_restores(model, page, harness, artifacts):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    h = harness(w)
    clean_edges = page.locator("path.edge").count()
    assert page.locator("button.ablate").is_disabled()  # nothing selected yet
    w.select("attention", layer=1, source=3, target=9, head=2)
    h.push()
    page.wait_for_selector("canvas.heatmap")
    labels = page.locator("select.ablate-what option").all_text_contents()
    assert labels[0].startswith("edge 3 ") and labels[0].endswith(", head 2") and "head 2 of layer 1" in labels
    page.select_option("select.ablate-what", label="head 2 of layer 1")
    page.click("button.ablate")
    page.wait_for_selector(".prediction-change")
    # Python reran with the head zeroed and shows the intervened run
    assert [a["spec"] for a in w.interventions] == [["head", 1, 2]]
    assert w.run.clean is not None and w.run.interventions[0].kind == "head"
    _, expected = w.run.clean.intervene(("head", 1, 2), position=w.target)
    c = w.comparison
    assert c["after"] == pytest.approx(expected.after._asdict()) and c["token"] == expected.token
    for cls, key, change in (("prob", "probability", "prob_change"), ("logit", "logit", "logit_change"),
                             ("logit-diff", "logit_diff", "logit_diff_change")):
        assert f"{fmt(c['before'][key])} → {fmt(c['after'][key])} ({signed(c[change])})" in metric(page, cls)
    after = page.locator(".tops .after .pred .tok").all_text_contents()
    assert after == [t.replace(" ", "␣") or "∅" for t, _ in c["top_after"][:5]]
    assert page.locator("path.edge").count() == w.graph.number_of_edges()
    assert page.locator(".ablation").count() == 1 and "head L1.2 (zero)" in page.locator(".ablation").text_content()
    # the graph's difference, listed and marked on the graph
    diff = w.graph_diff  # listed: attention edges first, the other kinds on demand
    attention = {s: [c for c in diff[s] if c["kind"] == "attention"] for s in ("appeared", "vanished", "changed")}
    assert sum(map(len, attention.values())) > 0
    assert page.locator("path.diff-mark").count() == sum(map(len, attention.values()))
    assert page.locator("li.change.vanished").count() == len(attention["vanished"])
    assert page.locator("[data-sort='vanished'] h4").text_content().startswith(
        f"{diff['counts']['vanished']['attention']} vanished")
    page.select_option("select.diff-kind", "all")
    assert page.locator("path.diff-mark").count() == sum(len(diff[s]) for s in attention)
    page.select_option("select.diff-kind", "attention")
    # a listed edge selects it (in Python too), with its largest head in the intervened run
    first = next(c for s in ("vanished", "appeared", "changed") for c in attention[s])
    page.locator("li.change.clickable").first.click()
    page.wait_for_function("() => document.querySelector('.lmtt').dataset.panel?.startsWith("
                           f"'attention/{first['target'][1]}/{first['source'][2]}/{first['target'][2]}/')")
    assert ((w.selection["layer"], w.selection["source"], w.selection["target"])
            == (first["target"][1], first["source"][2], first["target"][2]))
    w.select("attention", layer=1, source=3, target=9, head=2)
    h.push()
    # the panel of the selection was reloaded for the intervened run: head 2 reads nothing now
    page.wait_for_selector(".heads button.head.active[data-head='2']")
    assert page.locator("textarea.code-text").input_value() == w.code()
    page.screenshot(path=str(artifacts / "browser-ablate.png"), full_page=True)

    # the clean run's graph while the ablation stays active: the marks stay, the numbers too
    marks = page.locator("path.diff-mark").count()
    page.check("input.show-reference")
    page.wait_for_function(f"() => document.querySelectorAll('path.edge').length === {clean_edges}")
    assert w.show_reference is True and w.graph.number_of_edges() == clean_edges and len(w.interventions) == 1
    assert page.locator("path.diff-mark").count() == marks and page.locator(".prediction-change").count() == 1
    assert "the clean run's routes" in page.locator(".show-reference-label").text_content()
    page.screenshot(path=str(artifacts / "browser-ablate-clean-graph.png"), full_page=True)
    page.uncheck("input.show-reference")
    page.wait_for_function("() => document.querySelectorAll('path.edge').length === "
                           f"{w.run.graph(w.target, w.threshold).number_of_edges()}")
    assert w.show_reference is False

    page.click(".ablation button.undo")
    page.wait_for_function("() => document.querySelectorAll('.ablation').length === 0")
    assert w.interventions == [] and w.run.clean is None and w.comparison is None and w.graph_diff is None
    assert page.locator(".prediction-change").count() == 0 and page.locator("path.diff-mark").count() == 0
    assert page.locator("path.edge").count() == clean_edges
    assert not page.locator(".card.code").is_visible()
    assert page.errors == []


def test_ablate_an_edge_from_a_click_then_another_and_undo_one(model, page, harness):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    h = harness(w)
    h.click_edge("attention", cross_token=True)
    page.wait_for_selector("canvas.heatmap")
    sel = w.selection
    page.select_option("select.ablate-mode", "mean")
    page.click("button.ablate")  # the first choice: this edge, this head
    page.wait_for_selector(".ablation")
    assert w.interventions[0]["spec"] == ["edge", sel["layer"], sel["source"], sel["target"], sel["head"]]
    assert w.interventions[0]["mode"] == "mean"
    # a block, limited to the target's position
    page.select_option("select.ablate-what", label=f"attention block of layer {sel['layer']}")
    page.check("input.ablate-only")
    page.click("button.ablate")
    page.wait_for_function("() => document.querySelectorAll('.ablation').length === 2")
    assert w.interventions[1]["spec"] == ["attention", sel["layer"], [sel["target"]]]
    # undo the first: the second stays, rerun from the clean run
    page.locator(".ablation button.undo").first.click()
    page.wait_for_function("() => document.querySelectorAll('.ablation').length === 1")
    assert [a["spec"] for a in w.interventions] == [["attention", sel["layer"], [sel["target"]]]]
    assert w.interventions[0]["mode"] == "mean"  # the mode chosen stays chosen
    _, expected = w.run.clean.intervene(("attention", sel["layer"], [sel["target"]]), "mean", position=w.target)
    assert w.comparison["after"]["probability"] == pytest.approx(expected.after.probability)
    assert fmt(expected.after.probability) in metric(page, "prob")
    assert page.errors == []


def test_bad_ablation_is_refused_visibly_and_keeps_the_graph(model, page, harness):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    harness(w)
    edges = page.locator("path.edge").count()
    # past the page's own choices, as a stale or hand-made frontend would send it: each command
    # gets its own typed error reply, which the page shows as an error
    invoke = "([name, request]) => document.getElementById('lmtt-root').lmttInvoke(name, request)"
    outcome = page.evaluate(invoke, ["ablate", {"spec": ["head", 42, 0], "mode": "zero"}])
    assert outcome["ok"] is False and outcome["error"]["kind"] == "refused"
    assert "layer 42 is out of range" in outcome["error"]["message"]
    assert page.locator(".lmtt .message.error").text_content().startswith("Refused ablation: layer 42 is out of range")
    outcome = page.evaluate(invoke, ["ablate", {"spec": ["neuron", 0, 100000], "mode": "zero"}])
    assert outcome["error"]["kind"] == "refused" and "neuron 100000" in page.locator(".lmtt .message").text_content()
    outcome = page.evaluate(invoke, ["undo", {"index": 0}])
    assert outcome["error"]["kind"] == "refused"
    assert "no intervention to undo" in page.locator(".lmtt .message").text_content()
    # a request that is not one (a string where an index goes) is answered as malformed
    outcome = page.evaluate(invoke, ["undo", {"index": "first"}])
    assert outcome["error"]["kind"] == "malformed"
    assert "request.index: expected an integer" in outcome["error"]["message"]
    assert w.interventions == [] and w.run.clean is None
    assert page.locator("path.edge").count() == edges and page.locator(".lmtt-graph").is_visible()
    assert page.errors == []


def test_faithfulness_chart_and_code_box_show_what_python_computed(model, page, harness, artifacts):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    h = harness(w)
    w.ablate(("head", 0, 1))
    h.push()
    page.wait_for_selector(".ablation")
    page.fill("input.faith-k", "3")
    page.click("button.faithfulness-run")
    page.wait_for_selector("svg.faith-chart")
    f = w.faithfulness
    assert [(r["by"], r["k"]) for r in f["rows"]] == [("share", 3), ("effect", 3)] and f["position"] == w.target
    # the card leads with the fraction of the best possible, and says how to read it
    lead = page.locator(".faith-lead .fraction .big").all_text_contents()
    assert lead == ["–" if r["fraction"] is None else fmt(r["fraction"], 2) for r in f["rows"]]
    assert page.locator("p.reading").text_content() == f["reading"]
    for r in f["rows"]:
        cells = page.locator(f"table.faith-table tr[data-by='{r['by']}'] td").all_text_contents()
        assert cells[3:] == [fmt(r["drop"]["logit_diff"]), fmt(r["best"]), fmt(r["drop"]["probability"]),
                             f"{fmt(r['random_mean']['logit_diff'])} ± {fmt(r['random_sd']['logit_diff'])}"]
    assert page.locator("svg.faith-chart rect.fbar").count() == 2 + 1 + 2  # each ranking, the best, random
    # the code: the same text as w.code(), selectable, and a copy button that answers
    code = page.locator("textarea.code-text")
    assert code.input_value() == w.code() and "heads_in[:, 8:16] = 0" in code.input_value()
    page.click("button.copy")
    page.wait_for_function("() => document.querySelector('.copy-status').textContent !== ''")
    assert page.locator(".copy-status").text_content() in ("Copied", "Selected: press Ctrl+C to copy")
    assert page.errors == []
    page.screenshot(path=str(artifacts / "browser-faithfulness.png"), full_page=True)


@pytest.mark.demo
def test_demo_ioi_ablate_the_mary_heads(demo_model, ioi_run, page, harness, artifacts):
    """The layer-23 heads with the largest share on " Mary" -> last (bench/faithfulness.py)."""
    w = lw.Widget(ioi_run)
    h = harness(w)
    mary = ioi_run.tokens.index(" Mary")
    shares = ioi_run.attention_contributions(23)[0][w.target, mary]  # [H]
    top = int(shares.argmax())
    w.select("attention", layer=23, source=mary, target=w.target, head=top)
    h.push()
    page.wait_for_selector("canvas.heatmap")
    page.select_option("select.ablate-what", label=f"head {top} of layer 23")
    page.click("button.ablate")
    page.wait_for_selector(".prediction-change", timeout=60000)
    c = w.comparison
    assert c["token"] == " Mary" and c["after"]["probability"] < c["before"]["probability"]
    assert f"{fmt(c['before']['probability'])} → {fmt(c['after']['probability'])}" in metric(page, "prob")
    assert page.locator("select.target-select").input_value() == str(w.target)  # the intervened run keeps its target
    page.click("button.faithfulness-run")
    page.wait_for_selector("svg.faith-chart", timeout=120000)
    assert page.locator("select.target-select").input_value() == str(w.target)
    page.screenshot(path=str(artifacts / "browser-demo-ablate.png"), full_page=True)


def test_saved_page_of_an_intervened_widget_says_so(model, page, tmp_path, artifacts):
    w = lw.Widget(lw.analyze(model, IOI), threshold=0.01)
    w.ablate(("head", 1, 2), ("edge", 2, 3, 9))
    page.goto(w.save_html(tmp_path / "ablated.html").as_uri())
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator(".ablation").count() == 2
    assert fmt(w.comparison["after"]["probability"]) in metric(page, "prob")
    assert page.locator("textarea.code-text").input_value() == w.code()
    assert page.locator("button.ablate").is_disabled() and page.locator(".ablation button.undo").first.is_disabled()
    assert page.locator("button.faithfulness-run").is_disabled()
    assert [u for u in page.requests if not u.startswith("file:")] == [] and page.errors == []
