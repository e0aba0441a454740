"""Server-rendered SVG charts: plain attributes (no inline style), so the page's CSP stays strict."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup


def bar_chart(rows: Sequence[tuple[str, float]], *, title: str, width: int = 640, bar_height: int = 28) -> Markup:
    """A horizontal bar per row, its value written beside it; scales to the container's width."""
    label_w, pad = 120, 8
    top = 30
    height = top + len(rows) * (bar_height + pad) + pad
    biggest = max((v for _, v in rows), default=0.0) or 1.0
    span = width - label_w - 70
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-labelledby="chart-title" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f'<title id="chart-title">{escape(title)}</title>',
        f'<text x="0" y="18" font-size="16" fill="#1f2d3d">{escape(title)}</text>',
    ]
    for i, (name, value) in enumerate(rows):
        y = top + i * (bar_height + pad)
        w = max(1, round(span * value / biggest))
        shown = f"{value:g}"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_height * 0.68:.0f}" font-size="14" text-anchor="end" '
            f'fill="#1f2d3d">{escape(name)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_height}" rx="3" fill="#b71c1c"/>'
            f'<text x="{label_w + w + 6}" y="{y + bar_height * 0.68:.0f}" font-size="14" fill="#1f2d3d">'
            f"{escape(shown)}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
