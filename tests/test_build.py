"""The package as users get it: the stylesheet reaches both the notebook widget and the exported page."""

from __future__ import annotations

import lmtt_widget
from lmtt_widget.widget.export import WIDGET_CSS, standalone_html


def test_the_widget_and_the_exported_page_use_the_one_stylesheet():
    css = WIDGET_CSS.read_text(encoding="utf-8")
    assert ".lmtt-graph{" in css and "--jp-ui-font-color0" in css
    assert str(lmtt_widget.Widget._css) == css  # what anywidget sends to the notebook
    page = standalone_html({}, "a page")
    assert page.count(css) == 1
    assert f"<style>{css}</style>" in page.split("</head>")[0]
