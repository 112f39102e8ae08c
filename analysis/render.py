"""The report as a small document model, and its two renderings: Markdown (figures as PNG files beside
it) and one self-contained HTML page (figures as base64 PNG data URIs; no external URL, opens offline)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]  # already formatted
    caption: str = ""


@dataclass(frozen=True)
class Picture:
    name: str  # file stem: <name>.png beside report.md
    caption: str
    png: bytes


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)

    def add_picture(self, name: str, caption: str, png: bytes | None) -> None:
        """A figure under the section, unless there was nothing to draw (``png`` None)."""
        if png is not None:
            self.pictures.append(Picture(name, caption, png))


@dataclass
class Document:
    title: str
    question: str
    answer: str  # the opening paragraph after the question
    sections: list[Section]
    footer: str = ""


def to_markdown(doc: Document) -> str:
    out = [f"# {doc.title}", "", f"**{doc.question}** {doc.answer}", ""]
    for s in doc.sections:
        out += [f"## {s.title}", ""]
        for p in s.paragraphs:
            out += [p, ""]
        for t in s.tables:
            out += _md_table(t)
        for pic in s.pictures:
            out += [f"![{pic.caption}]({pic.name}.png)", "", f"*{pic.caption}*", ""]
    if doc.footer:
        out += ["---", "", doc.footer, ""]
    return "\n".join(out)


def _md_table(t: Table) -> list[str]:
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cell(h) for h in t.header) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in t.rows]
    return lines + (["", f"*{t.caption}*"] if t.caption else []) + [""]


CSS = """
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1040px; margin: 2em auto;
       padding: 0 1em; color: #1a1a1a; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
p.answer { font-size: 1.08em; background: #f4f6f8; padding: 0.8em 1em; border-left: 4px solid #4a7ab5; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #d0d0d0; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } caption { caption-side: bottom; font-style: italic; color: #555; padding-top: 0.3em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-style: italic; color: #555; font-size: 0.92em; } footer { color: #777; font-size: 0.85em; }
"""


def to_html(doc: Document) -> str:
    e = html.escape
    body = [
        f"<h1>{e(doc.title)}</h1>",
        f'<p class="answer"><strong>{e(doc.question)}</strong> {_bold(e(doc.answer))}</p>',
    ]
    for s in doc.sections:
        body.append(f"<section><h2>{e(s.title)}</h2>")
        body += [f"<p>{e(p)}</p>" for p in s.paragraphs]
        for t in s.tables:
            head = "".join(f"<th>{e(h)}</th>" for h in t.header)
            rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in t.rows)
            cap = f"<caption>{e(t.caption)}</caption>" if t.caption else ""
            body.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        for pic in s.pictures:
            data = base64.b64encode(pic.png).decode("ascii")
            body.append(
                f'<figure><img alt="{e(pic.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(pic.caption)}</figcaption></figure>"
            )
        body.append("</section>")
    if doc.footer:
        body.append(f"<footer><p>{e(doc.footer)}</p></footer>")
    head = f'<head><meta charset="utf-8"><title>{e(doc.title)}</title><style>{CSS}</style></head>'
    return f'<!DOCTYPE html>\n<html lang="en">{head}\n<body>\n' + "\n".join(body) + "\n</body></html>\n"


def _bold(html: str) -> str:
    """The answer's **verdict** (Markdown bold, the opening's first sentence) as <strong>."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html, count=1)
