"""The method's exactness on tiny random models of every supported family."""

import pytest
import torch

import lmtt_widget as lw
import tiny
from lmtt_widget import vocab
from lmtt_widget.contributions import head_outputs
from lmtt_widget.run import w_o
from lmtt_widget.tracing import neuron_activations

PROMPT = "When Mary and John went to the store, John gave"


@pytest.fixture(scope="module", params=tiny.FAMILIES)
def run(request):
    return lw.analyze(tiny.load(request.param), PROMPT)


def test_the_trace_matches_the_plain_forward_pass(run):
    with torch.no_grad():
        logits = run.hf_model(run.input_ids[None]).logits[0]
    torch.testing.assert_close(run.logits, logits.float(), rtol=1e-5, atol=1e-5)


def test_blocks_sum_to_the_residual_stream(run):
    c = run.capture
    for layer in range(run.shape.n_layers):
        torch.testing.assert_close(c.resid[layer] + c.attn_out[layer] + c.ffn_out[layer], c.resid[layer + 1],
                                   rtol=1e-5, atol=1e-5)


def test_head_source_parts_reconstruct_the_attention_output(run):
    for layer in range(run.shape.n_layers):
        u = head_outputs(w_o(run.hf_model, run.family, run.shape, layer), run.capture.values[layer], run.shape.n_heads)
        z = run.attention_pattern(layer).permute(1, 2, 0)[..., None] * u[None]  # [T, T, H, d]
        bias = run.family.modules(run.hf_model, layer)["out_proj"].bias
        total = z.sum((1, 2)) + (0 if bias is None else bias.detach())
        torch.testing.assert_close(total, run.capture.attn_out[layer], rtol=1e-4, atol=1e-5)


def test_head_output_summed_over_heads_is_the_attention_output_less_its_bias(run):
    layer, target = run.shape.n_layers - 1, run.n_tokens - 1
    total = sum(run.head_output(layer, h, target) for h in range(run.shape.n_heads))
    bias = run.family.modules(run.hf_model, layer)["out_proj"].bias
    expected = run.capture.attn_out[layer][target] - (0 if bias is None else bias.detach())
    torch.testing.assert_close(total, expected, rtol=1e-4, atol=1e-5)
    by_source = sum(run.head_output(layer, 1, target, s) for s in range(run.n_tokens))
    torch.testing.assert_close(by_source, run.head_output(layer, 1, target), rtol=1e-4, atol=1e-6)


def test_every_whole_sums_to_one_and_future_sources_are_zero(run):
    T = run.n_tokens
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for layer in range(run.shape.n_layers):
        heads, attn_res = run.attention_contributions(layer)
        ffn, ffn_res = run.ffn_contributions(layer)
        assert heads.shape == (T, T, run.shape.n_heads)
        assert torch.all(heads[future] == 0)
        assert torch.all(heads >= 0) and torch.all(ffn >= 0) and not torch.isnan(heads).any()
        if run.shape.parallel:
            torch.testing.assert_close(heads.sum((1, 2)) + ffn + attn_res, torch.ones(T))
            assert torch.equal(attn_res, ffn_res)
        else:
            torch.testing.assert_close(heads.sum((1, 2)) + attn_res, torch.ones(T))
            torch.testing.assert_close(ffn + ffn_res, torch.ones(T))


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_shares_follow_the_proximity_formula(run, distance):
    if distance != run.distance:
        run = lw.analyze(run.model, run.prompt, distance=distance)
    order = {"l1": 1, "l2": 2}[distance]
    layer, i = 1, run.n_tokens - 1
    c = run.capture
    x, attn = c.resid[layer][i], c.attn_out[layer][i]
    whole = c.resid[layer + 1][i] if run.shape.parallel else x + attn
    u = head_outputs(w_o(run.hf_model, run.family, run.shape, layer), c.values[layer], run.shape.n_heads)
    z = run.attention_pattern(layer)[:, i, :].T[..., None] * u  # [T_source, H, d]
    parts = [x] + list(z.reshape(-1, z.shape[-1]))
    if run.shape.parallel:
        parts.append(c.ffn_out[layer][i])
    prox = torch.stack([(whole.norm(p=order) - (whole - p).norm(p=order)).clamp_min(0) for p in parts])
    expected = prox / prox.sum()
    heads, residual = run.attention_contributions(layer)
    assert residual[i] == pytest.approx(float(expected[0]), rel=1e-4)
    torch.testing.assert_close(heads[i].reshape(-1), expected[1:1 + z.shape[0] * z.shape[1]], rtol=1e-4, atol=1e-6)


def test_direct_logit_effects_add_up_to_the_logits(run):
    """Linearised through the final norm with the real scale, the embedding plus every block's
    update (plus the norm's bias) gives back the model's logits: nothing is lost or counted twice."""
    i = run.n_tokens - 1
    c = run.capture
    updates = [c.resid[0][i]] + [c.attn_out[n][i] for n in range(run.shape.n_layers)] + [
        c.ffn_out[n][i] for n in range(run.shape.n_layers)]
    total = sum(vocab.direct_logits(run.hf_model, run.family, u, c.resid[-1][i]) for u in updates)
    norm = run.family.get(run.hf_model, "final_norm")
    head = run.hf_model.get_output_embeddings()
    if getattr(norm, "bias", None) is not None:
        total = total + head.weight.detach() @ norm.bias.detach()
    if getattr(head, "bias", None) is not None:
        total = total + head.bias.detach()
    torch.testing.assert_close(total, run.logits[i], rtol=1e-4, atol=1e-4)


def test_neuron_writes_reconstruct_the_ffn_update(run):
    layer, i = 0, run.n_tokens - 1
    writes = run.neuron_writes(layer, i)
    bias = run.family.modules(run.hf_model, layer)["ffn_out_proj"].bias
    total = writes.sum(0) + (0 if bias is None else bias.detach())
    torch.testing.assert_close(total, run.capture.ffn_out[layer][i].float(), rtol=1e-4, atol=1e-5)
    shares, residual = run.neuron_shares(layer, i)
    assert float(shares.sum() + residual) == pytest.approx(1.0, abs=1e-5)
    top = run.neuron_contributions(layer, i, k=3)
    assert [n.share for n in top] == sorted((n.share for n in top), reverse=True)
    assert top[0].share == pytest.approx(float(shares.max()))
    assert top[0].activation == pytest.approx(float(run.neuron_activations(layer)[i, top[0].index]))


def test_neuron_logits_are_scaled_by_the_activation(run):
    layer, i = 0, run.n_tokens - 1
    n = run.neuron_contributions(layer, i, k=1)[0].index
    effect = run.neuron_logits(layer, n, i, k=3)
    w_out_row = run.neuron_writes(layer, i)[n] / run.neuron_activations(layer)[i, n]
    unit = vocab.direct_logits(run.hf_model, run.family, w_out_row, run.capture.resid[-1][i])
    act = float(run.neuron_activations(layer)[i, n])
    assert effect.promoted[0][1] == pytest.approx(float((act * unit).max()), rel=1e-4)
    assert effect.suppressed[0][1] == pytest.approx(float((act * unit).min()), rel=1e-4)


def test_the_analysis_trace_keeps_every_layers_neurons_within_the_budget(run, monkeypatch):
    expected = []
    for layer in range(run.shape.n_layers):  # each layer's activations, traced on its own
        expected.append(neuron_activations(run.model, run.family, run.shape, run.input_ids, [layer])[layer])
    fresh = lw.analyze(run.model, run.prompt)
    monkeypatch.setattr(fresh.model, "trace", lambda *a, **k: pytest.fail("traced again"))
    for layer in range(run.shape.n_layers):
        torch.testing.assert_close(fresh.neuron_activations(layer), expected[layer])
    monkeypatch.undo()
    tight = lw.analyze(run.model, run.prompt, budget_bytes=expected[0].numel() * 4)  # one layer's worth
    assert tight.capture.neurons == {}
    torch.testing.assert_close(tight.neuron_activations(1), expected[1])
    assert list(tight._neuron_cache) == [1]
