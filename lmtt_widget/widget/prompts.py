"""The prompts a widget switches between: a list of texts (w.prompts), the one shown, and the
aggregate the widget came from, if any. Runs already analysed stay at hand in a small cache
shared by the widget's snapshots, so switching back to one is instant. An aggregate's prompt is
shown as a copy of its run (`Run.__copy__`): what the widget traces again for it (activations, for
panels) stays with the copy in the cache and goes with it, the aggregate's runs stay compact.

    lw.show(model, ["When Mary and John ...", "When Tom and Anna ..."])   # a prompt selector
    lw.show(model, "prompts.txt")                                          # one prompt per line
    lw.show(lw.aggregate(runs, positions))                                 # the mean, then each prompt

A prompt the model continued itself (Generate, lw.generate) keeps its token ids and generated
positions with its entry (`Continuation`): analysed again once its run has left the cache (opened
from the list, or its exact text typed in), it is the same tokens with the same positions marked
(its text, tokenized anew, might not give them).
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import pathlib
import re
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace

import torch

from ..aggregate import Aggregate
from ..errors import LmttError, check_index
from ..run import Run

CACHED_RUNS = 8  # runs kept at hand besides the one shown (each holds its activations)
# a string without spaces that ends in one of these names a prompt file, whether it exists or not
PROMPT_FILE_SUFFIXES = (".txt", ".text", ".md", ".csv", ".tsv")


class RunCache:
    """The runs of recently shown prompts, least recently used dropped first: by prompt text, or an
    aggregate's prompt by the aggregate's run (whose copy is shown)."""

    def __init__(self, size: int | None = None):
        self.size = CACHED_RUNS if size is None else size
        self.runs: OrderedDict[Hashable, Run] = OrderedDict()

    def get(self, key: Hashable) -> Run | None:
        if key in self.runs:
            self.runs.move_to_end(key)
        return self.runs.get(key)

    def put(self, run: Run, key: Hashable = None) -> None:
        key = run.prompt if key is None else key
        self.runs[key] = run
        self.runs.move_to_end(key)
        while len(self.runs) > self.size:
            self.runs.popitem(last=False)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.runs


@dataclass(frozen=True)
class Continuation:
    """What a listed prompt that the model continued itself needs to be analysed again as it was."""

    input_ids: tuple[int, ...]  # the prompt's and the generated tokens
    generated: range  # the positions the model wrote (Run.generated)


@dataclass(frozen=True)
class PromptFile:
    """The prompts of a UTF-8 text file, one per line (blank lines skipped), and the line each is on."""

    path: pathlib.Path
    texts: tuple[str, ...]
    lines: tuple[int, ...]  # 1-based, one per text

    @classmethod
    def read(cls, path) -> PromptFile:
        path = pathlib.Path(path).expanduser()
        try:
            data = path.read_bytes().removeprefix(codecs.BOM_UTF8)  # as "utf-8-sig" reads it, byte offsets kept
        except OSError as error:
            raise LmttError(f"cannot read prompts from {path}: {error}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data[:error.start].count(b"\n") + 1
            raise LmttError(f"{path} line {line} is not UTF-8 text ({error.reason}): save the file as UTF-8") from None
        # lines end at "\n" alone (str.splitlines also splits at form feeds, \x85, \u2028, ... within a prompt)
        numbered = [(number, line.removesuffix("\r")) for number, line in enumerate(text.split("\n"), 1)]
        numbered = [(number, line) for number, line in numbered if line.strip()]
        if not numbered:
            raise LmttError(f"{path} has no prompts: write one prompt per line")
        return cls(path, tuple(line for _, line in numbered), tuple(number for number, _ in numbered))

    def where(self, text: str) -> str | None:
        """Where `text` was read ("<path> line <n>", its first line); None if no line is `text`."""
        return next((f"{self.path} line {number}" for line, number in zip(self.texts, self.lines) if line == text),
                    None)


@contextlib.contextmanager
def naming_line(file: PromptFile | None, text: str):
    """A refusal (LmttError) while `text` is analysed names the file and line it was read from, if any."""
    try:
        yield
    except LmttError as error:
        where = None if file is None else file.where(text)
        if where is None:
            raise
        raise LmttError(f"{where}: {error}") from None


@dataclass(frozen=True)
class Prompts:
    """The prompt list of one widget snapshot (see the module docstring)."""

    texts: tuple[str, ...] = ()
    current: int | None = None  # the prompt shown; None: the aggregate, or a run not in the list
    aggregate: Aggregate | None = None  # its runs are the first len(aggregate.runs) prompts
    cache: RunCache = field(default_factory=RunCache, compare=False, repr=False)
    continued: tuple[tuple[str, Continuation], ...] = ()  # (text, its continuation) of the generated prompts
    file: PromptFile | None = None  # the file the listed prompts were read from, if any (its lines named in refusals)

    @classmethod
    def of(cls, shown: Run | Aggregate, texts=None) -> Prompts:
        if isinstance(shown, Aggregate):
            return cls(tuple(_text(run) for run in shown.runs), None, shown)
        if texts is None:
            return cls().showing(shown)
        listed, file = read_prompts(texts)
        return cls(listed, file=file).showing(shown)

    def showing(self, run: Run) -> Prompts:
        """The list once `run` is shown: its prompt added if new, and made the current one."""
        self.cache.put(run)
        texts = self.texts if run.prompt in self.texts else (*self.texts, run.prompt)
        continued = self.continued
        if run.generated is not None and self.continuation(run.prompt) is None:
            continued += ((run.prompt, Continuation(tuple(run.input_ids.tolist()), run.generated)),)
        return replace(self, texts=texts, current=texts.index(run.prompt), continued=continued)

    def listing(self, source) -> Prompts:
        """Another list of prompts (the aggregate's stay first), the one shown current if listed."""
        listed, file = read_prompts(source)
        texts = self.texts[:self.n_aggregated] + listed
        shown = None if self.current is None else self.texts[self.current]
        return replace(self, texts=texts, current=texts.index(shown) if shown in texts else None, file=file,
                       continued=tuple((text, c) for text, c in self.continued if text in texts))

    def continuation(self, text: str) -> Continuation | None:
        """The token ids and generated positions of a listed prompt the model continued itself."""
        return next((c for listed, c in self.continued if listed == text), None)

    @property
    def n_aggregated(self) -> int:
        return 0 if self.aggregate is None else len(self.aggregate.runs)

    def run_at(self, index: int, analyze: Callable[[str | torch.Tensor], Run]) -> tuple[int, Run]:
        """(the index checked, the run of prompt `index`): a copy of the aggregate's (`Run.__copy__`,
        cached), else `run_of` its text."""
        if not self.texts:
            raise LmttError("there are no prompts to open: add some with w.prompts = [...] or the text box")
        index = check_index("prompt", index, len(self.texts))
        if index < self.n_aggregated:
            run = self.aggregate.runs[index]  # type: ignore[union-attr]
            if not isinstance(run, Run):
                raise LmttError(f"prompt {index} of this aggregate has only its shares (lw.analyze_compact): it "
                                "cannot be shown on its own; aggregate runs of lw.analyze or lw.analyze_many")
            shown = self.cache.get(run)
            if shown is None:
                shown = copy.copy(run)  # its own caches: what the panels trace leaves with the cache
                self.cache.put(shown, key=run)
            return index, shown
        return index, self.run_of(self.texts[index], analyze)

    def run_of(self, text: str, analyze: Callable[[str | torch.Tensor], Run]) -> Run:
        """The run of `text` (opened from the list or typed in): a cached one, or analysed now by
        `analyze`, of a listed continuation's token ids (its generated positions marked again)
        where `text` is one, else of the text."""
        cached = self.cache.get(text)
        if cached is not None:
            return cached
        continuation = self.continuation(text)
        if continuation is None:
            with naming_line(self.file, text):
                return analyze(text)
        run = analyze(torch.tensor(continuation.input_ids))
        run.generated = continuation.generated
        return run

    def info(self, aggregate_shown: bool) -> dict:
        """protocol.PromptList of this list."""
        agg = self.aggregate
        return {"prompts": list(self.texts), "current": None if aggregate_shown else self.current,
                "analysed": [i for i, text in enumerate(self.texts) if i < self.n_aggregated or text in self.cache],
                "aggregate": None if agg is None else {"n_prompts": len(agg.runs), "positions": list(agg.tokens),
                                                       "shown": aggregate_shown}}


def _text(run) -> str:
    return getattr(run, "prompt", None) or "".join(run.tokens)


def names_a_file(value) -> bool:
    """Whether `value` is a string naming an existing file (else it is a prompt); a string that
    reads as a file's name (`looks_like_a_path`) but names none is refused, not taken for a prompt."""
    if not isinstance(value, str) or "\n" in value:
        return False
    try:
        if pathlib.Path(value).expanduser().is_file():
            return True
    except (OSError, ValueError):  # a name too long for a path, or with a NUL: a prompt
        return False
    if looks_like_a_path(value):
        raise LmttError(f"no such prompt file: {value!r} (to analyse this text as a prompt, pass it in a list: "
                        "lw.show(model, [text]))")
    return False


def looks_like_a_path(text: str) -> bool:
    """Whether a one-line string reads as a file's name rather than a prompt: its name has a suffix
    (".txt": a letter, then up to 4 letters or digits), and it has no spaces and either a prompt
    file's suffix (PROMPT_FILE_SUFFIXES) or a folder ("data/ioi.json"), or it starts as a path does
    ("/", "~/", "./", "../", "C:\\"), spaces allowed ("~/my prompts.txt"). A web address is a prompt."""
    name = re.split(r"[\\/]", text)[-1]
    if text != text.strip() or "://" in text or not re.search(r"[^.]\.[A-Za-z][A-Za-z0-9]{0,4}$", name):
        return False
    if not any(character.isspace() for character in text):
        return name.lower().endswith(PROMPT_FILE_SUFFIXES) or name != text
    return re.match(r"(/|~/|\.\.?/|[A-Za-z]:[\\/])", text) is not None


def read_prompts(source) -> tuple[tuple[str, ...], PromptFile | None]:
    """(the prompts, the file they were read from or None) of a list (or tuple) of strings, or of a
    text file (a pathlib.Path, a string naming an existing file, or a PromptFile read already): one
    prompt per line, blank lines skipped."""
    if isinstance(source, PromptFile):
        return source.texts, source
    if isinstance(source, pathlib.Path) or names_a_file(source):
        file = PromptFile.read(source)
        return file.texts, file
    if isinstance(source, str) or not isinstance(source, (list, tuple)):
        raise LmttError(f"prompts are a list of strings or a text file (one prompt per line), got "
                        f"{type(source).__name__}" + (" (no such file)" if isinstance(source, str) else ""))
    if not source:
        raise LmttError("the list of prompts is empty: give at least one")
    bad = next((i for i, text in enumerate(source) if not isinstance(text, str) or not text.strip()), None)
    if bad is not None:
        raise LmttError(f"prompt {bad} must be a non-empty string, got {source[bad]!r:.40}")
    return tuple(source), None


def prompts_panel(agg: Aggregate, selection: dict, target: int, threshold: float, renormalize: bool) -> dict:
    """protocol.PromptsPanel: the prompts behind `selection` in the aggregate's routes to `target`."""
    rows = agg.rows(selection, target, threshold, renormalize)
    shares = torch.tensor([row["share"] for row in rows if row["share"] is not None])
    return {"selection": selection, "rows": rows,
            "mean": float(shares.mean()) if len(shares) else None,
            "std": float(shares.std(correction=0)) if len(shares) else None,
            "support": sum(row["in_routes"] for row in rows) / len(rows)}
