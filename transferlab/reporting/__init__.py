"""Reporting: learning curves and transfer benefits, plots (matplotlib), HTML + Markdown rendering."""

from .compare_report import build_report
from .render import Section, render

__all__ = ["Section", "build_report", "render"]
