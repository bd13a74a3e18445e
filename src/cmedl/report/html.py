"""The report page: sections of text, tables and figures rendered into one self-contained HTML file.

Every figure is saved as a PNG under ``figures/`` (for papers) and embedded in ``index.html`` as a
base64 data URI, so the page opens offline and keeps working when copied alone. Every table is
written as a CSV under ``tables/`` and rendered as an HTML table. A section that could not be made
says what is missing (:attr:`Section.missing`) instead of failing the report. The page holds no
external reference (no script, font or style sheet from the network); its one inline script marks
images that failed to decode, so a broken figure is visible (and found by the browser test).
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from cmedl.io import atomic_path
from cmedl.io.outputs import writing


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display), imported on first use: each
    section that draws starts with ``plt = pyplot()``."""
    import matplotlib  # lazy: matplotlib (~0.5 s) only when a report is made

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    return plt


@dataclass
class Section:
    """One section of the report: ``blocks`` are HTML fragments in order; ``missing`` lists what could
    not be reported (one line each, shown in a notice)."""

    key: str
    title: str
    blocks: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def has_content(self) -> bool:
        return bool(self.blocks)

    def text(self, text: str) -> None:
        self.blocks.append(f"<p>{html.escape(text)}</p>")

    def note(self, text: str) -> None:
        self.blocks.append(f'<p class="note">{html.escape(text)}</p>')


class Writer:
    """Writes the report's PNG and CSV files under ``out`` and renders them as HTML fragments."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.files: list[Path] = []

    def figure(self, fig: object, name: str, caption: str = "", dpi: int = 90) -> str:
        """Save a matplotlib figure as ``figures/<name>.png`` and return an ``<figure>`` with it embedded."""
        import matplotlib.pyplot as plt  # lazy: matplotlib (~0.5 s) only when a report is made

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)  # type: ignore[attr-defined]
        plt.close(fig)  # type: ignore[arg-type]
        data = buf.getvalue()
        path = self.out / "figures" / f"{name}.png"
        with writing(path), atomic_path(path) as tmp:
            tmp.write_bytes(data)
        self.files.append(path)
        b64 = base64.b64encode(data).decode("ascii")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        return (f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{b64}">'
                f'{cap}<a class="png" href="figures/{html.escape(name)}.png">PNG</a></figure>')

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]], name: str | None = None,
              caption: str = "") -> str:
        """Render a table (and write it as ``tables/<name>.csv`` when ``name`` is given)."""
        link = ""
        if name is not None:
            path = self.out / "tables" / f"{name}.csv"
            with writing(path), atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(headers)
                w.writerows([[str(c) for c in r] for r in rows])
            self.files.append(path)
            link = f' <a class="csv" href="tables/{html.escape(name)}.csv">CSV</a>'
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        cap = f"<caption>{html.escape(caption)}{link}</caption>" if caption or link else ""
        return f'<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;
padding:0 1.5em 3em;color:#1d232a;line-height:1.45}
h1{margin-top:1em}h2{border-bottom:2px solid #d8dee4;padding-bottom:.2em;margin-top:2em}
nav ul{columns:3;padding-left:1.2em}table{border-collapse:collapse;margin:.8em 0;font-size:.88em}
th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:right}th{background:#f3f5f7}
td:first-child,th:first-child{text-align:left}caption{text-align:left;font-weight:600;padding:.3em 0}
figure{display:inline-block;margin:.6em 1em .6em 0;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #e1e4e8}figcaption{font-size:.85em;max-width:60em}
.note{color:#57606a;font-size:.9em}.missing{background:#fff8c5;border-left:4px solid #d4a72c;padding:.4em .8em}
.png,.csv{font-size:.8em;margin-left:.5em}img.broken{outline:4px solid red}
"""

_SCRIPT = """
window.addEventListener('load',function(){var n=0;document.querySelectorAll('img').forEach(function(i){
if(!i.complete||i.naturalWidth===0){i.classList.add('broken');n++;}});
document.body.setAttribute('data-broken-images',String(n));
document.body.setAttribute('data-images',String(document.images.length));});
"""


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole page: a table of contents, then every section (content, then what is missing)."""
    nav = "".join(f'<li><a href="#{s.key}">{html.escape(s.title)}</a></li>' for s in sections)
    parts = []
    for s in sections:
        body = "\n".join(s.blocks)
        if s.missing:
            items = "".join(f"<li>{html.escape(m)}</li>" for m in s.missing)
            body += f'\n<div class="missing"><strong>Not reported:</strong><ul>{items}</ul></div>'
        status = "content" if s.has_content else "missing-only"
        parts.append(f'<section id="{s.key}" data-status="{status}"><h2>{html.escape(s.title)}</h2>\n{body}\n</section>')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>\n"
        f"<h1>{html.escape(title)}</h1><p class=\"note\">{html.escape(subtitle)}</p>"
        f"<nav><ul>{nav}</ul></nav>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def write_page(path: Path, page: str) -> Path:
    with writing(path), atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
