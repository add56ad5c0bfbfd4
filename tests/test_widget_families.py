"""The widget on every supported family (tests/tiny.py): each selection kind's panel and tensors,
the exported page's panels, an ablation offered by a panel and applied from the page, all on tiny
random models whose norms and biases matter. No browser."""

from __future__ import annotations

import pytest
import torch
from test_widget import invoke

import lmtt_widget as lw
import tiny
from lmtt_widget.widget import selections
from lmtt_widget.widget.export import preloaded_panels
from tiny import IOI


@pytest.fixture(scope="module", params=tiny.FAMILIES + tiny.NEW_FAMILIES)
def widget(request):
    return lw.Widget(lw.analyze(tiny.load(request.param), IOI, progress=False), threshold=0.01)


def test_every_kind_of_panel_and_the_export(widget):
    run, token = widget.run, 6
    last = run.shape.n_layers - 1
    sels = [{"kind": "residual", "stage": "post", "layer": last, "token": token},
            {"kind": "attention", "layer": last, "source": token - 2, "target": token},
            {"kind": "ffn", "layer": last, "token": token}]
    if run.has_experts(last):
        sels.append({"kind": "expert", "layer": last, "token": token,
                     "expert": run.expert_contributions(last, token)[0].expert})
    else:
        sels.append({"kind": "neuron", "layer": last, "token": token,
                     "neuron": run.neuron_contributions(last, token, k=1)[0].index})
    for sel in sels:
        widget.selection = sel
        data = widget.panel(widget.selection)
        assert data["selection"] == widget.selection and data["intervened"] is None
        tensors = widget.selected
        assert all(bool(torch.isfinite(v).all()) for v in tensors.values() if isinstance(v, torch.Tensor)), sel
    # the ffn panel of the last layer: experts for a mixture, neurons otherwise, with their effects
    ffn = widget.panel(sels[2])
    rows = ffn["experts"] if run.has_experts(last) else ffn["neurons"]
    assert rows and all("effect" in r for r in rows) and "ffn_effect" in ffn
    panels = preloaded_panels(widget.view)
    assert len(panels) >= 1 + run.shape.n_layers and all("selection" in p for p in panels.values())


def test_an_offered_ablation_applied_from_the_page_changes_the_run_shown(widget):
    run = widget.run
    widget.selection = {"kind": "attention", "layer": 1, "source": 2, "target": run.n_tokens - 1}
    offer = widget.selection_info["ablations"][0]  # this edge, its head
    reply = invoke(widget, "ablate", {"spec": offer["spec"], "mode": "zero"})
    assert reply["ok"], reply
    assert widget.run.clean is run and widget.interventions and widget.comparison is not None
    data = widget.panel(widget.selection)
    assert data["intervened"]["how"] == "ablated"  # its panel shows the clean values, and says so
    assert data["shares"] == selections.KINDS["attention"].panel(
        run, widget.selection, widget.view.options | selections.amounts(None) | {"routes": []})["shares"]
