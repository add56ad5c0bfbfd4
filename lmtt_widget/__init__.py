"""lmtt-widget: information flow routes of a Transformer LM's prediction, in the notebook.

    import lmtt_widget as lw
    model = lw.load_model()                    # the offline demo model
    run = lw.analyze(model, "The capital of France is")
    run.top_tokens(), run.graph()              # prediction, routes to it
"""

from .aggregate import Aggregate, aggregate
from .errors import LmttError
from .generation import generate
from .interventions import code, compare, patch
from .many import analyze_many
from .models import load_model
from .remote import analyze_compact, analyze_compact_many
from .run import Run, Shares, analyze, load_run
from .widget import Widget, show, show_pair

__all__ = [
    "Aggregate", "LmttError", "Run", "Shares", "Widget", "aggregate", "analyze", "analyze_compact",
    "analyze_compact_many", "analyze_many", "code", "compare", "generate", "load_model", "load_run", "patch", "show",
    "show_pair",
]
__version__ = "0.1.0"
