"""A report as a list of blocks, written both as Markdown and as one self-contained HTML page.

Tables arrive already formatted (strings), so both outputs show exactly the same numbers.
Figures are PNG files: linked from the Markdown, embedded as base64 in the HTML.
"""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path

import pandas as pd

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


class Document:
    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple[str, object]] = []

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def text(self, text: str) -> None:
        """A paragraph; `code` spans are the only markup."""
        self.blocks.append(("text", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("bullets", items))

    def table(self, frame: pd.DataFrame) -> None:
        self.blocks.append(("table", frame.astype(str)))

    def figure(self, png: Path, caption: str) -> None:
        self.blocks.append(("figure", (Path(png), caption)))

    def figures(self) -> list[Path]:
        return [content[0] for kind, content in self.blocks if kind == "figure"]

    def markdown(self, directory: Path) -> str:
        """Markdown with figure links relative to `directory` (where the file will be)."""
        parts = [f"# {self.title}"]
        for kind, content in self.blocks:
            if kind == "heading":
                parts.append(f"## {content}")
            elif kind == "text":
                parts.append(content)
            elif kind == "bullets":
                parts.append("\n".join(f"- {item}" for item in content))
            elif kind == "table":
                parts.append(content.to_markdown(index=False, disable_numparse=True))
            else:
                png, caption = content
                parts.append(f"![{caption}]({Path(os.path.relpath(png, directory)).as_posix()})"
                             f"\n\n*{caption}*")
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        parts = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, content in self.blocks:
            if kind == "heading":
                parts.append(f"<h2>{html.escape(content)}</h2>")
            elif kind == "text":
                parts.append(f"<p>{_inline(content)}</p>")
            elif kind == "bullets":
                parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in content) + "</ul>")
            elif kind == "table":
                parts.append(content.to_html(index=False, border=0))
            else:
                png, caption = content
                data = base64.b64encode(png.read_bytes()).decode("ascii")
                parts.append(f'<figure><img src="data:image/png;base64,{data}" '
                             f'alt="{html.escape(caption)}"><figcaption>'
                             f"{html.escape(caption)}</figcaption></figure>")
        body = "\n".join(parts)
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head>\n"
                f"<body>\n{body}\n</body></html>\n")


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
