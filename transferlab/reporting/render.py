"""Rendering a report: sections of text, tables and images into self-contained HTML and Markdown."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.io import write_text


@dataclass
class Section:
    """One part of a report: a title, paragraphs, an optional table and an optional image."""

    title: str
    text: str = ""  # paragraphs (plain text)
    table: list[list[str]] | None = None  # first row is the header
    image: Path | None = None
    commands: list[str] | None = None  # shell lines, shown as code
    box: bool = False  # the report's opening summary: framed


def _table_html(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _table_md(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}
.note{color:#555;font-size:.9em}code{background:#f3f3f3;padding:0 .3em}
.box{border:2px solid #2b6cb0;border-radius:6px;background:#f5f9ff;padding:0 1.2em .6em;margin:1.2em 0}
.box h2{border:none}pre{background:#f3f3f3;padding:.5em .8em;overflow-x:auto}pre code{padding:0}"""


def thumbnail(square: np.ndarray, side: int = 160) -> str:
    """A uint8 image (H, W, 3) as a base64 JPEG of ``side`` px, for pages that embed their images."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(square)).resize((side, side)).save(buf, "JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def render(title: str, sections: list[Section], out: Path) -> tuple[Path, Path]:
    """Write report.html (images embedded) and report.md (images in plots/)."""
    parts_html = [f"<h1>{html.escape(title)}</h1>"]
    parts_md = [f"# {title}"]
    for s in sections:
        parts_html.append("<div class='box'>" if s.box else "")
        parts_html.append(f"<h2>{html.escape(s.title)}</h2>")
        parts_md.append(f"\n## {s.title}\n")
        for para in filter(None, s.text.split("\n\n")):
            parts_html.append(f"<p>{html.escape(para)}</p>")
            parts_md.append(para + "\n")
        if s.table:
            parts_html.append(_table_html(s.table))
            parts_md.append(_table_md(s.table) + "\n")
        if s.image is not None:
            data = base64.b64encode(s.image.read_bytes()).decode()
            parts_html.append(f'<img alt="{html.escape(s.title)}" src="data:image/png;base64,{data}">')
            parts_md.append(f"![{s.title}]({s.image.relative_to(out).as_posix()})\n")
        if s.commands:
            parts_html.append("<pre><code>" + html.escape("\n".join(s.commands)) + "</code></pre>")
            parts_md.append("```\n" + "\n".join(s.commands) + "\n```\n")
        parts_html.append("</div>" if s.box else "")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts_html)}</body></html>")
    write_text(out / "report.html", page)
    write_text(out / "report.md", "\n".join(parts_md) + "\n")
    return out / "report.html", out / "report.md"
