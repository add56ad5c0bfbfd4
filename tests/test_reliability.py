"""Threads, odd input types, the command line and an unreachable hub: clear answers, not library tracebacks."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import lmtt_widget as lw
import tiny
from lmtt_widget.remote import analyze_compact

PROMPTS = ["When Mary and John went to the store, John gave a drink to", "The capital of France is Paris. The"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model():
    return tiny.load("llama")


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
