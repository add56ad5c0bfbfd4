"""The routes graph's contract, and the method's reference values for threshold-and-renormalise."""

import networkx as nx
import pytest
import torch

import lmtt_widget as lw
import tiny
from lmtt_widget.contributions import threshold_renormalize
from lmtt_widget.graph import layer_edges

PROMPT = "The capital of France is Paris. The capital of Italy is"


def test_threshold_renormalize_reference_values():
    parts, residual = threshold_renormalize(torch.tensor([[0.05, 0.15], [0.05, 0.05]]), torch.tensor([0.8, 0.9]), 0.1)
    torch.testing.assert_close(parts, torch.tensor([[0.0, 0.157894], [0.0, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(residual, torch.tensor([0.842105, 1.0]), atol=1e-6, rtol=0)


def test_threshold_renormalize_gives_the_residual_everything_when_nothing_survives():
    parts, residual = threshold_renormalize(torch.tensor([[0.03, 0.03]]), torch.tensor([0.02]), 0.04)
    assert parts.tolist() == [[0.0, 0.0]] and residual.tolist() == [1.0]


@pytest.fixture(scope="module", params=["llama", "gpt_neox", "gpt2"])
def run(request):
    return lw.analyze(tiny.load(request.param, seed=3), PROMPT)


def test_graph_contract(run):
    threshold = 0.02
    g = run.graph(token=-1, threshold=threshold)
    assert isinstance(g, nx.MultiDiGraph)
    last = run.shape.n_layers - 1
    top = ("post", last, run.n_tokens - 1)
    assert top in g
    stages = {"embed", "ffn", "post"} | (set() if run.shape.parallel else {"mid"})
    for node, data in g.nodes(data=True):
        assert data["stage"] == node[0] in stages
        assert data["layer"] == node[1] and data["token"] == node[2]
        assert data["label"] == run.tokens[node[2]]
        assert (data["layer"] == -1) == (data["stage"] == "embed")
        assert node == top or g.out_degree(node) > 0  # every node leads somewhere
        assert nx.has_path(g, node, top)  # ... to the prediction
    for u, v, key, data in g.edges(keys=True, data=True):
        assert key == data["kind"] in {"attention", "residual", "ffn"}
        assert data["weight"] > threshold
        if data["kind"] == "attention":
            assert len(data["heads"]) == run.shape.n_heads
            assert sum(data["heads"]) == pytest.approx(data["weight"], rel=1e-5)
            assert (u[2], v[2]) == (data["source"], data["target"]) and u[2] <= v[2]
        else:
            assert u[2] == v[2]


def test_self_attention_and_residual_are_two_edges(run):
    g = run.full_graph(threshold=0.01, renormalize=False)
    into = "post" if run.shape.parallel else "mid"
    both = [(u, v) for u, v, k in g.edges(keys=True) if k == "attention" and u[2] == v[2] and v[0] == into
            and g.has_edge(u, v, "residual")]
    assert both, "expected some token to attend to itself above 0.01 besides its residual edge"
    u, v = both[0]
    assert g.edges[u, v, "attention"]["weight"] != g.edges[u, v, "residual"]["weight"]


def test_edge_weights_are_the_summed_head_shares(run):
    g = run.full_graph(threshold=0.01, renormalize=False)
    heads, residual = run.attention_contributions(2)
    into = "post" if run.shape.parallel else "mid"
    for u, v, data in g.edges(data=True):
        if data["kind"] == "attention" and v[1] == 2:
            assert data["weight"] == pytest.approx(float(heads[v[2], u[2]].sum()), rel=1e-5)
        if data["kind"] == "residual" and v == (into, 2, v[2]):
            assert data["weight"] == pytest.approx(float(residual[v[2]]), rel=1e-5)


def test_renormalised_wholes_sum_to_one(run):
    for layer in range(run.shape.n_layers):
        e = layer_edges(run, layer, 0.04, renormalize=True)
        attn_total = e.attention.sum(1) + e.attn_residual + (e.ffn if run.shape.parallel else 0)
        torch.testing.assert_close(attn_total, torch.ones(run.n_tokens))
        kept = torch.cat([e.attention.flatten(), e.ffn, e.attn_residual])
        assert torch.all((kept == 0) | (kept > 0.04))


def test_routes_are_the_reachable_part_of_the_full_graph(run):
    threshold = 0.03
    full = run.full_graph(threshold=threshold)
    for token in (run.n_tokens - 1, 2):
        routes = run.graph(token=token, threshold=threshold)
        top = ("post", run.shape.n_layers - 1, token)
        reachable = nx.ancestors(full, top) | {top}
        assert set(routes.nodes) == reachable
        expected = {(u, v, k) for u, v, k in full.edges(keys=True) if v in reachable}
        assert set(routes.edges(keys=True)) == expected


def test_another_target_or_threshold_does_not_rerun_the_model(run, monkeypatch):
    monkeypatch.setattr(run.model, "trace", lambda *a, **k: pytest.fail("the model ran again"))
    assert run.graph(token=0, threshold=0.1).number_of_nodes() >= 1
