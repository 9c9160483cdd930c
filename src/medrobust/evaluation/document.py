"""A small document model that renders to markdown and to one self-contained HTML page.

The report and the model card are built once as blocks (headings, paragraphs, tables, lists,
images) and rendered twice: ``report.md`` / ``model_card.md`` for a terminal or a pull request, and
``report.html`` for a person — inline CSS, every image embedded as base64, no script, no font and no
stylesheet from any network, so it opens offline exactly as it was written.

Inline markup in texts: ``**bold**`` and ```code```.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1.5rem; color: #1b1f24; line-height: 1.45; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #1b1f24; padding-bottom: .3rem; }
h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ccd; padding-bottom: .2rem; }
h3 { font-size: 1.05rem; margin-top: 1.3rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .88rem; }
th, td { border: 1px solid #ccd; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { background: #f2f3f5; padding: 0 .25rem; border-radius: 3px; font-size: .85em; }
img { max-width: 100%; border: 1px solid #dde; margin: .4rem 0; }
.pass { color: #0a6b2d; font-weight: 600; } .fail { color: #b00020; font-weight: 600; }
.banner { padding: .7rem 1rem; border-radius: 6px; font-size: 1.05rem; margin: 1rem 0; }
.banner.pass { background: #e6f4ea; } .banner.fail { background: #fdecea; }
"""


def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = out.replace("PASS", '<span class="pass">PASS</span>').replace("FAIL", '<span class="fail">FAIL</span>')
    return out


@dataclass
class Document:
    """Blocks in order; :meth:`markdown` and :meth:`html` render them.

    Attributes:
        title: the document's title (the first heading).
        blocks: ``(kind, payload)`` pairs: ``h2``/``h3``/``p``/``banner`` (text), ``ul`` (texts),
            ``table`` ((header, rows)), ``img`` ((file name, alt text)), ``doc`` (a nested document).
    """

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h2(self, text: str) -> Document:
        """Append a section heading."""
        self.blocks.append(("h2", text))
        return self

    def h3(self, text: str) -> Document:
        """Append a sub-section heading."""
        self.blocks.append(("h3", text))
        return self

    def p(self, text: str) -> Document:
        """Append a paragraph."""
        self.blocks.append(("p", text))
        return self

    def banner(self, text: str, passed: bool) -> Document:
        """Append the decision banner (green when ``passed``).

        Args:
            text: the decision in one line.
            passed: whether the gates passed.
        """
        self.blocks.append(("banner", (text, passed)))
        return self

    def ul(self, items: list[str]) -> Document:
        """Append a bulleted list."""
        self.blocks.append(("ul", list(items)))
        return self

    def table(self, header: list[str], rows: list[list[Any]]) -> Document:
        """Append a table (cells are rendered with ``str``).

        Args:
            header: the column titles.
            rows: the cells, row by row.
        """
        self.blocks.append(("table", (list(header), [[str(c) for c in r] for r in rows])))
        return self

    def img(self, name: str, alt: str) -> Document:
        """Append an image: ``name`` is a file next to the rendered document.

        Args:
            name: the image file's name (embedded as base64 in the HTML, linked in the markdown).
            alt: the alternative text.
        """
        self.blocks.append(("img", (name, alt)))
        return self

    def include(self, other: Document) -> Document:
        """Append another document as a section (its title becomes an ``h2``)."""
        self.blocks.append(("doc", other))
        return self

    def markdown(self, level: int = 1) -> str:
        """The document as markdown (images link to their files)."""
        lines = [f"{'#' * level} {self.title}", ""]
        for kind, payload in self.blocks:
            if kind in ("h2", "h3"):
                lines += [f"{'#' * (level + (1 if kind == 'h2' else 2))} {payload}", ""]
            elif kind == "p":
                lines += [payload, ""]
            elif kind == "banner":
                lines += [f"**{payload[0]}**", ""]
            elif kind == "ul":
                lines += [f"- {item}" for item in payload] + [""]
            elif kind == "table":
                header, rows = payload
                lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows] + [""]
            elif kind == "img":
                lines += [f"![{payload[1]}]({payload[0]})", ""]
            elif kind == "doc":
                lines += [payload.markdown(level + 1), ""]
        return "\n".join(lines).rstrip() + "\n"

    def _html_body(self, folder: Path, level: int) -> list[str]:
        parts = [f"<h{level}>{_inline_html(self.title)}</h{level}>"]
        for kind, payload in self.blocks:
            if kind in ("h2", "h3"):
                n = min(level + (1 if kind == "h2" else 2), 6)
                parts.append(f"<h{n}>{_inline_html(payload)}</h{n}>")
            elif kind == "p":
                parts.append(f"<p>{_inline_html(payload)}</p>")
            elif kind == "banner":
                parts.append(f'<div class="banner {"pass" if payload[1] else "fail"}">{_inline_html(payload[0])}</div>')
            elif kind == "ul":
                parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in payload) + "</ul>")
            elif kind == "table":
                header, rows = payload
                head = "".join(f"<th>{_inline_html(h)}</th>" for h in header)
                body = "".join("<tr>" + "".join(
                    f'<td class="num">{_inline_html(c)}</td>' if re.match(r"^[-\d.]+( \[|$)", c) else
                    f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in rows)
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "img":
                name, alt = payload
                path = folder / name
                if path.is_file():
                    data = base64.b64encode(path.read_bytes()).decode("ascii")
                    parts.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">')
            elif kind == "doc":
                parts += payload._html_body(folder, level + 1)
        return parts

    def html(self, folder: str | Path) -> str:
        """The document as one self-contained HTML page; images are read from ``folder`` and embedded."""
        body = "\n".join(self._html_body(Path(folder), 1))
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


__all__ = ["CSS", "Document"]
