"""Threads, odd input types, the command line and an unreachable hub: clear answers, not library tracebacks."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

import lmtt_widget as lw
import tiny
from lmtt_widget.remote import analyze_compact
from tiny import IOI

PROMPTS = [IOI, "The capital of France is Paris. The"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(model):
    return lw.analyze(model, PROMPTS[0])


# -- two threads, one model ------------------------------------------------------------------


def in_threads(calls):
    """Run each call in its own thread, started together; their results (or the errors they raised)."""
    results = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def work(i):
        start.wait()
        try:
            results[i] = calls[i]()
        except Exception as error:  # noqa: BLE001 - handed back to the test
            results[i] = error

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_two_threads_analysing_one_model_give_what_sequential_runs_give(model):
    sequential = [lw.analyze(model, prompt) for prompt in PROMPTS]
    for _ in range(3):
        threaded = in_threads([lambda p=prompt: lw.analyze(model, p) for prompt in PROMPTS])
        for got, want in zip(threaded, sequential):
            assert isinstance(got, lw.Run), got
            torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
            for layer in range(want.shape.n_layers):
                torch.testing.assert_close(got.attention_contributions(layer), want.attention_contributions(layer),
                                           rtol=0, atol=0)


def test_an_analysis_and_a_compact_one_in_two_threads(model):
    want_run, want_compact = lw.analyze(model, PROMPTS[0]), analyze_compact(model, PROMPTS[1], floor=0.0)
    got_run, got_compact = in_threads([lambda: lw.analyze(model, PROMPTS[0]),
                                       lambda: analyze_compact(model, PROMPTS[1], floor=0.0)])
    assert isinstance(got_run, lw.Run) and isinstance(got_compact, lw.Shares), (got_run, got_compact)
    torch.testing.assert_close(got_run.logits, want_run.logits, rtol=0, atol=0)
    torch.testing.assert_close(got_compact.attention_contributions(1), want_compact.attention_contributions(1))


# -- input a library would refuse with its own traceback, or accept silently -------------------

TOP_K_CALLS = {
    "run.top_tokens": lambda r, k: r.top_tokens(k=k),
    "run.logit_lens": lambda r, k: r.logit_lens(1, -1, k=k),
    "run.neuron_contributions": lambda r, k: r.neuron_contributions(1, -1, k=k),
    "run.head_logits": lambda r, k: r.head_logits(1, 0, -1, k=k),
    "run.block_logits": lambda r, k: r.block_logits(1, -1, k=k),
    "run.neuron_logits": lambda r, k: r.neuron_logits(1, 3, -1, k=k),
    "shares.top_tokens": lambda r, k: analyze_compact(r.model, PROMPTS[0]).top_tokens(k=k),
}


@pytest.mark.parametrize("call", TOP_K_CALLS)
@pytest.mark.parametrize("k", [-1, 0, 2.5, True, "3"])
def test_k_must_be_a_positive_integer(run, call, k):
    with pytest.raises(lw.LmttError, match=f"k must be a positive integer, got {k!r}"):
        TOP_K_CALLS[call](run, k)


@pytest.mark.parametrize("call", TOP_K_CALLS)
def test_k_may_be_a_numpy_or_tensor_integer(run, call):
    want = TOP_K_CALLS[call](run, 3)
    assert TOP_K_CALLS[call](run, np.int64(3)) == want
    assert TOP_K_CALLS[call](run, torch.tensor(3)) == want


def test_compact_analysis_refuses_a_bad_k(model):
    with pytest.raises(lw.LmttError, match="k must be a positive integer, got -1"):
        analyze_compact(model, PROMPTS[0], k=-1)


@pytest.mark.parametrize("prompt, index, code", [("abc\ud800", 3, "D800"), ("\udcff and more", 0, "DCFF")])
def test_a_lone_surrogate_in_the_prompt_is_named_with_its_place(model, prompt, index, code):
    for analysis in (lw.analyze, analyze_compact):
        with pytest.raises(lw.LmttError, match=rf"prompt contains a lone surrogate \(U\+{code}\) at index {index}"):
            analysis(model, prompt)


@pytest.mark.parametrize("budget", ["big", -5, 0, 1e6, None])
def test_the_budget_must_be_a_positive_integer(model, budget):
    for analysis in (lw.analyze, analyze_compact):
        with pytest.raises(lw.LmttError, match=f"budget_bytes must be a positive integer, got {budget!r}"):
            analysis(model, PROMPTS[0], budget_bytes=budget)


def test_a_numpy_budget_is_a_budget(model):
    torch.testing.assert_close(lw.analyze(model, PROMPTS[0], budget_bytes=np.int64(20_000)).attention_contributions(1),
                               lw.analyze(model, PROMPTS[0], budget_bytes=20_000).attention_contributions(1))


@pytest.mark.parametrize("device", ["foo", "cuda:99", 1.5])
def test_an_unknown_or_missing_device_is_named_before_anything_loads(device):
    with pytest.raises(lw.LmttError, match=rf"device {device!r} is not .*available here: cpu"):
        lw.load_model(tiny.hf_model("gpt2"), tokenizer=tiny.tokenizer(), device=device)
    with pytest.raises(lw.LmttError, match=rf"device {device!r} is not"):  # not "model directory not found"
        lw.load_model("/no/such/dir", device=device)


def test_numpy_and_tensor_integers_are_indexes(run):
    torch.testing.assert_close(run.attention_contributions(np.int64(1)), run.attention_contributions(1))
    torch.testing.assert_close(run.ffn_contributions(torch.tensor(-1)), run.ffn_contributions(-1))
    assert run.top_tokens(position=np.int32(2), k=3) == run.top_tokens(position=2, k=3)
    assert run.head_logits(torch.tensor(1), np.int64(2), np.int16(-1), source=torch.tensor(0)) == \
        run.head_logits(1, 2, -1, source=0)
    assert run.neuron_logits(np.int64(1), torch.tensor(3), np.int64(-1)) == run.neuron_logits(1, 3, -1)
    picked = run.neuron_contributions(1, -1, k=1)[0].index
    assert run.neuron_logits(1, torch.tensor([5, picked]).max(), -1) == run.neuron_logits(1, max(5, picked), -1)
    assert run.graph(token=np.int64(-1)).edges == run.graph(token=-1).edges


@pytest.mark.parametrize("index, shown", [(1.5, "1.5"), (True, "True"), (np.float64(1.0), "np.float64"),
                                          (torch.tensor(1.0), "tensor"), (torch.tensor([1, 2]), "tensor"),
                                          (np.bool_(True), "np.True_"), (torch.tensor(True), "tensor"), ("1", "'1'")])
def test_what_is_not_one_integer_is_refused_as_an_index(run, index, shown):
    with pytest.raises(lw.LmttError, match=f"layer must be an integer, got {shown}"):
        run.attention_contributions(index)


def test_numpy_thresholds_and_floors_are_numbers(run, model):
    for threshold in (np.float32(0.05), np.float64(0.05)):
        assert run.graph(threshold=threshold).edges == run.graph(threshold=0.05).edges
    floored = lw.analyze(model, PROMPTS[0], floor=np.float32(0.02))
    assert floored.floor == pytest.approx(0.02) and type(floored.floor) is float
    assert analyze_compact(model, PROMPTS[0], floor=np.float64(0.02)).floor == 0.02


@pytest.mark.parametrize("value", ["0.05", True, np.bool_(True), 0.05j, None, [0.05], float("nan")])
def test_what_is_not_a_real_number_is_refused_as_threshold_or_floor(run, model, value):
    with pytest.raises(lw.LmttError, match=r"threshold must be a number in \(0, 1\)"):
        run.graph(threshold=value)
    if value is not None:  # floor=None: the budget decides
        with pytest.raises(lw.LmttError, match=r"floor must be a number in \[0, 1\)"):
            lw.analyze(model, PROMPTS[0], floor=value)


# -- an unreachable model hub ----------------------------------------------------------------


def python(code: str, **env_changes) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with this checkout's package; env_changes None: unset."""
    env = {**os.environ, "PYTHONPATH": REPO}
    for name, value in env_changes.items():
        env.pop(name, None) if value is None else env.__setitem__(name, value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


LOAD_A_HUB_ID = """
import time, lmtt_widget as lw
start = time.perf_counter()
try:
    lw.load_model("someone/some-model")
except lw.LmttError as error:
    print(error)
print(f"took {time.perf_counter() - start:.1f} s")
"""


@pytest.mark.parametrize("offline", [None, "1"])  # None: not in offline mode, a quick check finds no hub
def test_an_unreachable_hub_is_said_at_once_with_the_way_out(offline):
    if offline is None:
        reachable = python("from lmtt_widget.models import _hub_unreachable; print(_hub_unreachable())",
                           HF_HUB_OFFLINE=None)
        if reachable.stdout.strip() == "None":
            pytest.skip("the model hub is reachable from here")
    done = python(LOAD_A_HUB_ID, HF_HUB_OFFLINE=offline, TRANSFORMERS_OFFLINE=None)
    print(done.stdout.splitlines()[-1])  # the time: a figure for the report, not a test
    message = done.stdout.splitlines()[0]
    assert message.startswith("could not load a causal LM from 'someone/some-model': the model hub is unreachable")
    assert ("offline mode: HF_HUB_OFFLINE" in message) == (offline == "1")
    assert "load it from a local directory" in message.lower() and "gguf" in message.lower()


# -- the command line ------------------------------------------------------------------------


def cli(*args) -> subprocess.CompletedProcess:
    return python(f"import sys; from lmtt_widget.__main__ import main; sys.exit(main({list(args)!r}))")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny model and its tokenizer as save_pretrained writes them: what --model reads."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    tiny.hf_model("llama").save_pretrained(directory)
    tiny.tokenizer().save_pretrained(directory)
    return directory


def assert_error(done: subprocess.CompletedProcess, message: str):
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]  # lines before it: transformers' progress bars, if a model loaded
    assert last.startswith("error: ") and message in last, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("output, message", [
    ("missing-dir/routes.html", "missing-dir does not exist"),
    ("", "it is a directory"),  # tmp_path itself
    ("a-file/routes.html", "a-file does not exist"),
    ("/sys/routes.html", "cannot write /sys/routes.html"),  # no one may create files there, root neither
])
def test_export_refuses_an_unwritable_output_before_loading_anything(tmp_path, output, message):
    (tmp_path / "a-file").write_text("not a directory")
    target = output if output.startswith("/") else str(tmp_path / output)
    assert_error(cli("export", "Mary and John", "-o", target, "--model", "/no/such/model"), message)


@pytest.mark.parametrize("command", [["export", "Mary and John", "-o", "routes.html"], ["demo"]])
def test_a_missing_model_is_one_line_on_stderr(tmp_path, command):
    command = [str(tmp_path / c) if c == "routes.html" else c for c in command]
    assert_error(cli(*command, "--model", "/no/such/model"), "model directory not found: /no/such/model")
    assert not (tmp_path / "routes.html").exists()


def test_export_and_demo_with_a_saved_model(tmp_path, model_dir):
    output = tmp_path / "routes.html"
    done = cli("export", "Mary and John went", "-o", str(output), "--model", str(model_dir))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {output}") and output.stat().st_size > 10_000
    done = cli("demo", "Mary and John went", "--model", str(model_dir))
    assert done.returncode == 0 and "prediction:" in done.stdout, done.stderr


def test_bad_input_is_one_line_and_leaves_no_file(tmp_path, model_dir):
    output = tmp_path / "routes.html"
    for command in (["export", "Mary", "-o", str(output)], ["demo", "Mary"]):  # checked before the model loads
        done = cli(*command, "--model", "/no/such/model", "--threshold", "2")
        assert_error(done, "threshold must be a number in (0, 1), got 2.0")
        assert done.stderr.startswith("error: ")
    assert_error(cli("export", "\udcff", "-o", str(output), "--model", str(model_dir)),
                 "lone surrogate (U+DCFF) at index 0")
    assert not output.exists()


def test_the_demo_prompt_stays_importable_from_the_command_line_module():
    from lmtt_widget.__main__ import DEMO_PROMPT

    assert "Mary" in DEMO_PROMPT
