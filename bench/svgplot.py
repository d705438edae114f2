"""A minimal line/scatter chart as a standalone SVG file, for the benchmark READMEs.

No plotting library is installed here (and plotly's static export needs kaleido and a browser),
so the reproductions draw their figures with this: axes, ticks, labelled series, a legend.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]


@dataclass
class Series:
    label: str
    x: list[float]
    y: list[float]
    style: str = "line+marker"  # "line", "marker", "line+marker", "dashed"
    color: str | None = None


@dataclass
class Panel:
    title: str
    x_label: str
    y_label: str
    series: list[Series] = field(default_factory=list)


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def render(panels: list[Panel], width: int = 460, height: int = 340) -> str:
    """Panels side by side in one SVG document."""
    margin_left, margin_right, margin_top, margin_bottom = 62, 16, 30, 46
    total_width = width * len(panels)
    legend_rows = max(len(p.series) for p in panels)
    total_height = height + 18 * legend_rows + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_width}" height="{total_height}" '
           f'font-family="sans-serif" font-size="12">', '<rect width="100%" height="100%" fill="white"/>']  # fmt: skip
    for index, panel in enumerate(panels):
        x0 = index * width
        xs = [v for s in panel.series for v in s.x if math.isfinite(v)]
        ys = [v for s in panel.series for v in s.y if math.isfinite(v)]
        x_lo, x_hi = min(xs), max(xs)
        y_lo, y_hi = min(ys), max(ys)
        pad = 0.05 * (y_hi - y_lo or 1.0)
        y_lo, y_hi = y_lo - pad, y_hi + pad
        plot_w = width - margin_left - margin_right
        plot_h = height - margin_top - margin_bottom

        def px(x, x0=x0, x_lo=x_lo, x_hi=x_hi, plot_w=plot_w):
            return x0 + margin_left + (x - x_lo) / ((x_hi - x_lo) or 1.0) * plot_w

        def py(y, y_lo=y_lo, y_hi=y_hi, plot_h=plot_h):
            return margin_top + plot_h - (y - y_lo) / ((y_hi - y_lo) or 1.0) * plot_h

        out.append(
            f'<text x="{x0 + width / 2}" y="18" text-anchor="middle" font-weight="bold">{html.escape(panel.title)}</text>'
        )
        out.append(
            f'<rect x="{x0 + margin_left}" y="{margin_top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>'
        )
        for tick in _ticks(x_lo, x_hi):
            out.append(
                f'<line x1="{px(tick):.1f}" x2="{px(tick):.1f}" y1="{margin_top + plot_h}" y2="{margin_top + plot_h + 4}" stroke="#444"/>'
            )
            out.append(
                f'<text x="{px(tick):.1f}" y="{margin_top + plot_h + 16}" text-anchor="middle">{tick:g}</text>'
            )
        for tick in _ticks(y_lo, y_hi):
            out.append(
                f'<line x1="{x0 + margin_left - 4}" x2="{x0 + margin_left + plot_w}" y1="{py(tick):.1f}" y2="{py(tick):.1f}" stroke="#ddd"/>'
            )
            out.append(
                f'<text x="{x0 + margin_left - 6}" y="{py(tick) + 4:.1f}" text-anchor="end">{tick:.3g}</text>'
            )
        out.append(
            f'<text x="{x0 + margin_left + plot_w / 2}" y="{margin_top + plot_h + 34}" text-anchor="middle">{html.escape(panel.x_label)}</text>'
        )
        out.append(
            f'<text transform="translate({x0 + 14},{margin_top + plot_h / 2}) rotate(-90)" text-anchor="middle">{html.escape(panel.y_label)}</text>'
        )
        for number, s in enumerate(panel.series):
            color = s.color or PALETTE[number % len(PALETTE)]
            points = [
                (px(x), py(y)) for x, y in zip(s.x, s.y, strict=True) if math.isfinite(x) and math.isfinite(y)
            ]
            if "line" in s.style or s.style == "dashed":
                dash = ' stroke-dasharray="5,4"' if s.style == "dashed" else ""
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
                out.append(
                    f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"{dash}/>'
                )
            if "marker" in s.style:
                out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in points)
            legend_y = height + 14 + 18 * number
            out.append(f'<line x1="{x0 + margin_left}" x2="{x0 + margin_left + 22}" y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="{color}" stroke-width="2"'
                       + (' stroke-dasharray="5,4"' if s.style == "dashed" else "") + "/>")  # fmt: skip
            out.append(f'<text x="{x0 + margin_left + 28}" y="{legend_y}">{html.escape(s.label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
