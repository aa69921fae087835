"""The report as a list of blocks, rendered to Markdown and to one self-contained HTML page.

Blocks: :class:`Heading`, :class:`Text` (inline Markdown: only ``**bold**`` and ```code```),
:class:`Table` (a Markdown pipe table as :func:`distillrank.evaluation.tables.results_table`
writes it, plus any legend lines after it) and :class:`Figure` (a PNG path relative to the report
folder). The HTML embeds every PNG as a base64 ``data:`` URI, so the page is one file.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Text:
    text: str


@dataclass
class Table:
    markdown: str


@dataclass
class Figure:
    path: str  # relative to the report folder, e.g. figures/margin_mse-training.png
    caption: str


Block = Heading | Text | Table | Figure


def to_markdown(blocks: list[Block]) -> str:
    """The blocks as a Markdown document (figures as relative image links)."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Text):
            parts.append(block.text)
        elif isinstance(block, Table):
            parts.append(block.markdown.rstrip("\n"))
        else:
            parts.append(f"![{block.caption}]({block.path})")
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def table_html(markdown: str) -> str:
    """A Markdown pipe table (header, alignment row, rows) as an HTML table; lines after it as paragraphs."""
    lines = [line for line in markdown.splitlines() if line.strip()]
    rows = [line for line in lines if line.lstrip().startswith("|")]
    rest = [line for line in lines if not line.lstrip().startswith("|")]
    if len(rows) < 2:
        return "".join(f"<p>{_inline(line)}</p>\n" for line in lines)
    header, align_row, body = _cells(rows[0]), _cells(rows[1]), [_cells(r) for r in rows[2:]]
    align = ["right" if a.endswith(":") else "left" for a in align_row]
    out = [
        "<table>",
        "<thead><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in header) + "</tr></thead>",
        "<tbody>",
    ]
    for cells in body:
        out.append(
            "<tr>"
            + "".join(
                f'<td style="text-align:{align[i] if i < len(align) else "left"}">{_inline(c)}</td>'
                for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    out.append("</tbody></table>")
    return "\n".join(out) + "\n" + "".join(f"<p class='legend'>{_inline(line)}</p>\n" for line in rest)


_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f3f3f3; }
code { background: #f3f3f3; padding: 0 0.2em; }
img { max-width: 100%; }
figure { margin: 1em 0; }
figcaption, .legend { color: #555; font-size: 0.85em; }
"""


def to_html(blocks: list[Block], root: Path, title: str) -> str:
    """The blocks as one HTML page; figures are read from ``root / path`` and embedded."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            body.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Table):
            body.append(table_html(block.markdown))
        else:
            data = base64.b64encode((root / block.path).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.caption)}">'
                f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
            )
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{_STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )
