"""Many prompts in a real browser, bridged to the Python widget: the prompt selector switches the
run shown (and the text box adds to it), Generate continues the prompt with the model's own
tokens and the graph marks them, and an aggregate lists the prompts behind a clicked edge, each
of which opens on its own."""

from __future__ import annotations

import pytest

import lmtt_widget as lw
from tiny import IOI

pytestmark = pytest.mark.browser

PROMPTS = [IOI, "The capital of France is",
           "Hello world"]


def token_labels(page) -> int:
    return page.locator("text.token-label").count()


def test_the_prompt_selector_switches_prompts_and_the_text_box_adds_one(model, page, harness, artifacts):
    w = lw.show(model, PROMPTS, threshold=0.02)
    harness(w)
    options = page.locator("select.prompt-select option")
    assert options.count() == 3 and page.locator("select.prompt-select").input_value() == "0"
    assert token_labels(page) == w.run.n_tokens
    page.select_option("select.prompt-select", "1")
    page.wait_for_function(f"() => document.querySelectorAll('text.token-label').length === "
                           f"{len(model.tokenizer(PROMPTS[1])['input_ids'])}")
    assert w.run.prompt == PROMPTS[1] and w.prompt_list["current"] == 1
    assert options.nth(1).text_content().startswith("✓") and options.nth(2).text_content().startswith(" ")
    # the text box adds to the list
    page.fill("textarea.prompt", "Mary and John")
    page.click("button.analyze")
    page.wait_for_function("() => document.querySelectorAll('select.prompt-select option').length === 4")
    assert w.prompts == [*PROMPTS, "Mary and John"] and page.locator("select.prompt-select").input_value() == "3"
    page.screenshot(path=str(artifacts / "browser-prompts.png"), full_page=True)
    assert page.errors == []


def test_generate_continues_the_prompt_and_marks_the_new_tokens(model, page, harness, artifacts):
    w = lw.Widget(lw.analyze(model, PROMPTS[1]), threshold=0.02)
    harness(w)
    page.fill("input.max-new-tokens", "4")
    page.click("button.generate")
    page.wait_for_selector("g.token.generated")
    expected = lw.generate(model, PROMPTS[1], max_new_tokens=4)
    assert w.run.input_ids.tolist() == expected.input_ids.tolist()
    assert page.locator("g.token.generated").count() == len(w.run.generated) == len(expected.generated)
    assert "Generated" in page.locator(".message .text").text_content()
    last = w.run.generated.stop - 1  # a generated token's routes: pick it as the target
    page.click(f"g.target-cell[data-target='{last - 1}']")
    page.wait_for_function(f"() => document.querySelector('select.target-select').value === '{last - 1}'")
    assert w.target == last - 1
    page.screenshot(path=str(artifacts / "browser-generate.png"), full_page=True)
    assert page.errors == []


def test_an_aggregate_lists_the_prompts_behind_an_edge_and_opens_each(model, page, harness, artifacts):
    texts = [f"When {a} and {b} went to the store, {b} gave a drink to"
             for a, b in [("Mary", "John"), ("John", "Mary"), ("Tom", "Alice")]]
    agg = lw.aggregate(lw.analyze_many(model, texts), [{"IO": 1, "S1": 3, "S2": -5, "END": -1}] * 3)
    w = lw.show(agg, threshold=0.01)
    h = harness(w)
    assert page.locator("select.prompt-select").input_value() == "aggregate"
    assert page.locator("text.token-label").all_text_contents() == ["IO", "S1", "S2", "END"]
    h.click_edge("attention")
    page.wait_for_selector("table.prompt-rows")
    assert page.locator("table.prompt-rows tbody tr").count() == 3
    first = int(page.locator("table.prompt-rows tbody tr").first.get_attribute("data-index"))
    page.screenshot(path=str(artifacts / "browser-aggregate.png"), full_page=True)
    page.locator("table.prompt-rows button.open-prompt").first.click()
    page.wait_for_function(f"() => document.querySelector('select.prompt-select').value === '{first}'")
    assert w.run.prompt == agg.runs[first].prompt and token_labels(page) == agg.runs[first].n_tokens
    assert w.run is not agg.runs[first]  # a copy: what is traced for the panels stays with the widget
    page.select_option("select.prompt-select", "aggregate")
    page.wait_for_function("() => document.querySelectorAll('text.token-label').length === 4")
    assert w.run is agg
    assert page.errors == []
