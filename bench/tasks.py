"""A task set for faithfulness on the demo model: IOI (names and templates varied), factual recall,
induction and subject-verb agreement. Each prompt has an answer and a contrast; `correct(model)`
keeps the prompts whose top prediction is the answer (and, for IOI, the indirect object beats the
subject).

The prompts used while developing lmtt_widget.effects (the IOI prompt of the tests, "The capital
of France is", "The keys to the cabinet") are left out, so the benchmark is held out from them.
"""

from __future__ import annotations

import itertools
import random
from typing import NamedTuple

import torch


class Prompt(NamedTuple):
    task: str
    text: str
    answer: str  # one token, with its leading space
    contrast: str | None  # None: the runner-up


NAMES = ["Tom", "Sarah", "James", "Anna", "David", "Lisa", "Michael", "Emma", "Paul", "Kate", "Mark", "Alice",
         "Peter", "Laura", "Robert", "Susan", "Daniel", "Rachel", "Chris", "Linda", "Jack", "Helen", "Ben", "Grace"]
IOI_TEMPLATES = [
    "When {a} and {b} went to the park, {b} gave a ball to",
    "After {a} and {b} arrived at the office, {b} handed a letter to",
    "Then {a} and {b} had lunch at the cafe, and {b} passed the salt to",
    "While {a} and {b} were working at the school, {b} sent a message to",
    "Yesterday {a} and {b} visited the museum, and {b} showed a photo to",
    "When {a} and {b} got home, {b} gave the keys to",
]
CAPITALS = [("Germany", "Berlin"), ("Italy", "Rome"), ("Japan", "Tokyo"), ("Spain", "Madrid"), ("Russia", "Moscow"),
            ("Egypt", "Cairo"), ("England", "London"), ("Greece", "Athens"), ("Canada", "Ottawa"),
            ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin")]
FACT_TEMPLATES = ["The capital of {country} is", "{country}'s capital city is", "The capital city of {country} is"]
WORDS = ["apple", "river", "stone", "cloud", "paper", "window", "garden", "silver", "music", "doctor", "forest",
         "candle", "mirror", "bottle", "planet", "rabbit"]
SINGULAR = ["key", "book", "dog", "teacher", "car", "letter", "painting", "student"]
PLURAL = ["keys", "books", "dogs", "teachers", "cars", "letters", "paintings", "students"]
PLACES = ["on the table", "near the door", "in the box", "by the window", "next to the chairs", "behind the houses"]


def candidates(seed: int = 0) -> list[Prompt]:
    rng = random.Random(seed)
    out = []
    pairs = list(itertools.permutations(NAMES, 2))
    rng.shuffle(pairs)
    for i, (a, b) in enumerate(pairs[:24]):
        out.append(Prompt("ioi", IOI_TEMPLATES[i % len(IOI_TEMPLATES)].format(a=a, b=b), f" {a}", f" {b}"))
    for i, (country, city) in enumerate(CAPITALS):
        out.append(Prompt("facts", FACT_TEMPLATES[i % len(FACT_TEMPLATES)].format(country=country), f" {city}", None))
    for _ in range(24):
        words = rng.sample(WORDS, 6)
        cut = rng.randrange(2, 5)
        text = f"List: {' '.join(words)}. List: {' '.join(words[:cut])}"
        out.append(Prompt("induction", text, f" {words[cut]}", None))
    subjects = [(noun, " is", " are") for noun in SINGULAR] + [(noun, " are", " is") for noun in PLURAL]
    rng.shuffle(subjects)
    for i, (noun, answer, contrast) in enumerate(subjects * 2):
        out.append(Prompt("agreement", f"The {noun} {PLACES[i % len(PLACES)]}", answer, contrast))
    return out


def correct(model, prompts: list[Prompt]) -> list[Prompt]:
    """The prompts whose top prediction at the last token is the answer (ahead of the contrast)."""
    from lmtt_widget.tracing import exclusive

    kept = []
    tok = model.tokenizer
    for p in prompts:
        ids = torch.tensor([tok(p.text)["input_ids"]])
        with torch.no_grad(), exclusive(model):
            logits = model._module(ids).logits[0, -1]
        answer = tok(p.answer, add_special_tokens=False)["input_ids"]
        if len(answer) == 1 and int(logits.argmax()) == answer[0]:
            kept.append(p)
    return kept
