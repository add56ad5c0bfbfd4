"""The protocol between Python and the page is declared once (lmtt_widget/widget/protocol.py): the
TypeScript the page imports is generated from it, every trait holds a value of its declared type,
every command has a handler, and values of the wrong type are refused with where and why."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import lmtt_widget as lw
import tiny
from lmtt_widget.widget import _HANDLERS
from lmtt_widget.widget import protocol as P
from lmtt_widget.widget.export import standalone_html, widget_state
from tiny import IOI

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_typescript_is_generated_from_the_python_declarations():
    committed = (ROOT / "js" / "protocol.generated.ts").read_text(encoding="utf-8")
    assert committed == P.typescript(), "js/protocol.generated.ts is stale: run `make protocol`"
    assert f"export const PROTOCOL_VERSION = {P.PROTOCOL_VERSION};" in committed
    for name in P.TRAITS:
        assert re.search(rf"^  {name}: ", committed, re.M), name
    for name in P.COMMANDS:
        assert re.search(rf"^  {name}: {{ request: ", committed, re.M), name


def test_every_declared_command_has_one_handler_and_the_page_names_each_one():
    assert set(_HANDLERS) == set(P.COMMANDS)
    widget_ts = (ROOT / "js" / "widget.ts").read_text(encoding="utf-8")
    for name in P.COMMANDS:  # each command's refusal and failure texts (FAILURE_TEXT)
        assert re.search(rf"^  {name}: \[", widget_ts, re.M), name


@pytest.mark.parametrize("value, tp, error", [
    ("3", int, "expected an integer, got '3'"),
    (True, int, "expected an integer, got True"),
    (1.5, P.Readout, "expected an object (Readout)"),
    ({"probability": 1, "logit": 2.0}, P.Readout, "missing 'logit_diff'"),
    ({"probability": 1, "logit": 2.0, "logit_diff": 0, "extra": 1}, P.Readout, "unknown 'extra'"),
    ({"kind": "ffn", "layer": "2", "token": 1}, P.Selection, "value.layer: expected an integer, got '2'"),
    ({"kind": "ffn", "token": 1}, P.Selection, "value: missing 'layer'"),
    ({"kind": "head", "layer": 2}, P.Selection,
     "is none of ResidualSelection | AttentionSelection | FfnSelection | NeuronSelection"),
    ({"spec": ["head", 1, 2], "mode": "half"}, P.AblateRequest, "expected 'zero' | 'mean', got 'half'"),
    ({"prompt": None}, P.AnalyzeRequest, "value.prompt: expected a string, got None"),
])
def test_values_of_the_wrong_type_are_refused_with_where_and_why(value, tp, error):
    with pytest.raises(P.ProtocolError, match=re.escape(error)):
        P.check(value, tp)


def test_declared_types_accept_what_they_declare():
    assert P.check({"kind": "ffn", "layer": 2, "token": 1}, P.Selection)  # neuron may be left out
    assert P.check({"spec": ["head", 1, 2, [3, 4]], "mode": "mean"}, P.AblateRequest)
    assert P.check({"dtype": "float32", "shape": [2], "data": b"\0" * 8}, P.Encoded)
    assert P.check(None, P.TRAITS["comparison"]) is None


@pytest.fixture(scope="module")
def widget():
    return lw.Widget(lw.analyze(tiny.load("llama"), IOI), threshold=0.01)


def test_every_trait_of_a_busy_widget_holds_its_declared_type(widget):
    widget.select("attention", layer=1, source=2, target=5)
    widget.ablate(("head", 1, 2))
    widget.measure_faithfulness(k=2, draws=1)
    state = widget_state(widget)
    assert set(state) == set(P.TRAITS)
    for name, tp in P.TRAITS.items():
        P.check(state[name], tp, name)  # raises if not
    assert state["protocol"] == P.PROTOCOL_VERSION
    assert state["comparison"] is not None and state["faithfulness"] is not None and len(state["interventions"]) == 1


def test_a_trait_refuses_a_value_of_the_wrong_type(widget):
    import traitlets

    with pytest.raises(traitlets.TraitError, match="info: expected an object"):
        widget.info = "not info"
    assert isinstance(widget.info, dict)


def test_an_exported_page_says_which_protocol_it_carries(widget):
    page = standalone_html(widget_state(widget), "t")
    assert f'<meta name="lmtt-protocol" content="{P.PROTOCOL_VERSION}">' in page
    assert f'"protocol": {P.PROTOCOL_VERSION}' in page
