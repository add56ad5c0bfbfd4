"""Routes over a dataset with named positions that come in different orders in different prompts
(IOI templates "A and B ..., B gave" and "B and A ..., B gave"): roles line up by name, and an
edge between two names counts only in the prompts where its source comes first."""

import pytest
import torch

import lmtt_widget as lw
import tiny

TEMPLATES = ["When {io} and {s} went to the store, {s} gave a drink to",  # IO before S1
             "When {s} and {io} went to the store, {s} gave a drink to"]  # S1 before IO
PAIRS = [("Mary", "John"), ("John", "Mary")]


@pytest.fixture(scope="module")
def runs_and_positions():
    model = tiny.load("llama")
    prompts = [(template.format(io=io, s=s), io, s) for template in TEMPLATES for io, s in PAIRS]
    runs = lw.analyze_many(model, [text for text, _, _ in prompts])
    positions = []
    for run, (_, io, s) in zip(runs, prompts):
        at_s = [p for p, token in enumerate(run.tokens) if token == f" {s}"]
        at_io = run.tokens.index(f" {io}")
        named = {"IO": at_io, "S1": at_s[0], "S2": at_s[1], "END": -1}
        # each prompt's dict in the order its positions come, as a template's code would write it
        positions.append(dict(sorted(named.items(), key=lambda item: item[1] % run.n_tokens)))
    assert [list(named) for named in positions] == [["IO", "S1", "S2", "END"]] * 2 + [["S1", "IO", "S2", "END"]] * 2
    return runs, positions


def aligned(run, layer, at):
    """[n, n, H]: a run's shares between the positions `at` (target, source), in that order; 0 where
    a source comes after its target (no such edge in a causal model)."""
    return run.layers[layer].dense()[at][:, at]


def test_names_line_up_whatever_their_order_in_each_prompt(runs_and_positions):
    runs, positions = runs_and_positions
    agg = lw.aggregate(runs, positions)
    names = ["IO", "S1", "S2", "END"]
    assert agg.tokens == names  # positions[0]'s order
    at = [[run.position(named[name]) for name in names] for run, named in zip(runs, positions)]
    assert agg.index.tolist() == at
    for layer in range(agg.shape.n_layers):
        stack = torch.stack([aligned(run, layer, a) for run, a in zip(runs, at)])  # [prompts, n, n, H]
        torch.testing.assert_close(agg.layers[layer].dense(), stack.mean(0))
        edges = agg.layers[layer].edges
        torch.testing.assert_close(agg.spread[layer].edges,
                                   stack.sum(-1).std(0, correction=0)[edges[:, 0], edges[:, 1]], atol=1e-6, rtol=1e-4)
        ffn = torch.stack([run.layers[layer].ffn[a] for run, a in zip(runs, at)])
        torch.testing.assert_close(agg.layers[layer].ffn, ffn.mean(0))


def test_an_edge_counts_only_where_its_source_comes_first(runs_and_positions):
    runs, positions = runs_and_positions
    agg = lw.aggregate(runs, positions)
    io, s1, s2 = (agg.tokens.index(name) for name in ("IO", "S1", "S2"))
    layer = 1
    first_io = [named["IO"] < named["S1"] for named in positions]
    assert first_io == [True, True, False, False]

    def mean_share(target, source):
        return float(agg.edge_contributions(layer, target, source).sum())

    def share_in(run, named, target, source):
        return float(run.edge_contributions(layer, named[target], named[source]).sum())

    # S2 <- IO: IO comes before S2 in every prompt, before or after S1
    expected = sum(share_in(run, named, "S2", "IO") for run, named in zip(runs, positions)) / len(runs)
    assert mean_share(s2, io) == pytest.approx(expected) and expected > 0
    # S1 <- IO only in the prompts where IO comes first, IO <- S1 only in the others; each mean over all prompts
    for (target, source), where in [(("S1", "IO"), first_io), (("IO", "S1"), [not f for f in first_io])]:
        shares = [share_in(run, named, target, source) if holds else 0.0
                  for run, named, holds in zip(runs, positions, where)]
        assert sum(shares) > 0
        index = agg.tokens.index
        assert mean_share(index(target), index(source)) == pytest.approx(sum(shares) / len(runs))
    # the prompts behind an edge in the routes are among those where it can exist
    graph = agg.graph(token=s2, threshold=0.005, renormalize=False)
    between = [(u, v, data) for u, v, kind, data in graph.edges(keys=True, data=True)
               if kind == "attention" and {u[2], v[2]} == {io, s1}]
    assert between
    for u, _, data in between:
        holds = first_io if u[2] == io else [not f for f in first_io]
        assert data["prompts"] and all(holds[r] for r in data["prompts"]) and data["support"] <= 0.5


def test_names_that_differ_or_share_a_position_are_refused(runs_and_positions):
    runs, positions = runs_and_positions
    renamed = positions[:3] + [{"S": 2, "IO": 4, "S2": 10, "END": -1}]
    with pytest.raises(lw.LmttError, match=r"positions\[3\] must name \['IO', 'S1', 'S2', 'END'\], in any order .*"
                                           r"missing \['S1'\], not in positions\[0\] \['S'\]"):
        lw.aggregate(runs, renamed)
    clash = positions[:3] + [{"S1": 2, "IO": 4, "S2": 4, "END": -1}]
    with pytest.raises(lw.LmttError, match=r"in prompt 3, 'IO' and 'S2' are both at position 4"):
        lw.aggregate(runs, clash)
    end_twice = positions[:3] + [{"S1": 2, "IO": 4, "S2": runs[3].n_tokens - 1, "END": -1}]
    with pytest.raises(lw.LmttError, match=rf"'S2' and 'END' are both at position {runs[3].n_tokens - 1}"):
        lw.aggregate(runs, end_twice)


def test_the_widget_selects_an_edge_that_runs_backwards_in_the_aggregates_order(runs_and_positions):
    runs, positions = runs_and_positions
    w = lw.Widget(lw.aggregate(runs, positions), threshold=0.005)
    io, s1 = w.run.tokens.index("IO"), w.run.tokens.index("S1")
    assert s1 > io
    w.select("attention", layer=1, source=s1, target=io)  # IO <- S1: in the prompts where S1 comes first
    assert w.selection["source"] == s1 and w.selection["target"] == io
    rows = w.panel(w.selection)["rows"]
    first_io = {r: named["IO"] < named["S1"] for r, named in enumerate(positions)}
    # the prompts where the edge cannot exist have none of it; the others have their own share
    for row in rows:
        run, named = runs[row["index"]], positions[row["index"]]
        expected = 0.0 if first_io[row["index"]] else float(
            run.edge_contributions(1, run.position(named["IO"]), run.position(named["S1"])).sum())
        assert row["share"] == pytest.approx(expected)
    assert any(row["share"] > 0 for row in rows)
    with pytest.raises(lw.LmttError, match="no neurons or experts to select"):
        w.select("neuron", layer=1, token=io, neuron=0)


def test_runs_of_a_model_of_the_same_shape_with_other_weights_are_refused(runs_and_positions, tmp_path):
    runs, _ = runs_and_positions
    other_weights = lw.analyze(tiny.load("llama", seed=1), TEMPLATES[0].format(io="Mary", s="John"), progress=False)
    assert other_weights.shape == runs[0].shape
    with pytest.raises(lw.LmttError, match="run 1 is of another model than run 0: the same architecture with other "
                                           "weights"):
        lw.aggregate([runs[0], other_weights])
    # the same weights are one model: loaded again, or a run loaded from its file without the model
    again = lw.analyze(tiny.load("llama"), TEMPLATES[0].format(io="Mary", s="John"), progress=False)
    runs[1].to_file(tmp_path / "run.lmtt")
    agg = lw.aggregate([runs[0], again, lw.load_run(tmp_path / "run.lmtt")])
    torch.testing.assert_close(agg.layers[1].ffn, torch.stack([r.layers[1].ffn[-agg.n_tokens:]
                                                               for r in (runs[0], runs[0], runs[1])]).mean(0))
    other_weights.to_file(tmp_path / "other.lmtt")
    with pytest.raises(lw.LmttError, match="run 1 is of another model than run 0"):
        lw.aggregate([runs[0], lw.load_run(tmp_path / "other.lmtt")])


def test_position_names_are_strings(runs_and_positions):
    runs, positions = runs_and_positions
    with pytest.raises(lw.LmttError, match=r"position names must be strings, got 1 in positions\[0\]"):
        lw.aggregate(runs, [{1: p["IO"], "END": -1} for p in positions])


def test_an_aggregate_of_runs_loaded_without_their_model_names_its_predictions_and_shows(runs_and_positions,
                                                                                         tmp_path):
    runs, positions = runs_and_positions
    for r, run in enumerate(runs):
        run.to_file(tmp_path / f"{r}.lmtt", activations=False)
    loaded = [lw.load_run(tmp_path / f"{r}.lmtt") for r in range(len(runs))]
    live, shared = lw.aggregate(runs, positions), lw.aggregate(loaded, positions)
    # the mean predictions name tokens that only some of the files kept
    first_file = set(loaded[0].saved.vocab)
    assert any(int(i) not in first_file for i in shared.top_predictions(5)[1].reshape(-1))
    assert shared.top_tokens(-1, k=5) == live.top_tokens(-1, k=5)
    w = lw.show(shared, threshold=0.01)
    assert w.info["tokens"] == ["IO", "S1", "S2", "END"] and w.info["aggregate"] == len(runs)


def test_an_aggregates_edges_name_their_positions(runs_and_positions):
    runs, positions = runs_and_positions
    named = lw.aggregate(runs, positions).edges(token=3, threshold=0.005)  # the routes to END
    assert set(named.target_token) <= {"IO", "S1", "S2", "END"} and "END" in set(named.target_token)
    assert list(named.source_token) == [["IO", "S1", "S2", "END"][p] for p in named.source]
    # lined up from the end: a position is named by the token all prompts have there, else by its offset
    by_end = lw.aggregate(runs)
    from_end = by_end.edges(threshold=0.005)
    assert by_end.tokens[-1] == " to" and any(name.startswith("[-") for name in by_end.tokens)  # the names differ
    assert list(from_end.source_token) == [by_end.tokens[p] for p in from_end.source]
    assert set(from_end[from_end.target == len(by_end.tokens) - 1].target_token) == {" to"}
