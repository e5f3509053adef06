"""Small server-side SVG charts for the dashboard: bars and a line over labelled points.

No JavaScript and nothing fetched: the SVG is part of the page. Every mark carries its data as
attributes (`data-label`, `data-value`, in the series' own integer units) and a <title>
tooltip, so a test (or a screen reader) can read the numbers back exactly. Pixel positions are
floats; the values themselves never are."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

__all__ = ["bar_chart", "line_chart"]

_WIDTH, _HEIGHT = 640, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 12, 12, 28
_POINTS_MAX = 400
_X_LABELS_MAX = 8


def _frame(*, chart_id: str, title: str, values: Sequence[int], format_value: Callable[[int], str],
           labels: Sequence[str]) -> tuple[list[str], float]:
    """The axes, grid and labels; returns the SVG parts so far and the y-scale (px per unit)."""
    top = max(max(values, default=0), 1)
    scale = (_HEIGHT - _TOP - _BOTTOM) / top
    parts = [f"<svg id='{escape(chart_id)}' class=chart viewBox='0 0 {_WIDTH} {_HEIGHT}' role=img "
             f"aria-label='{escape(title)}' data-max='{top}' xmlns='http://www.w3.org/2000/svg'><title>{escape(title)}</title>"]
    for level in sorted({0, top // 2, top}):  # integer gridlines: no duplicate or fractional labels
        y = _HEIGHT - _BOTTOM - level * scale
        parts.append(f"<line x1={_LEFT} x2={_WIDTH - _RIGHT} y1={y:.1f} y2={y:.1f} stroke='#e5e7eb'/>"
                     f"<text x={_LEFT - 6} y={y + 4:.1f} text-anchor=end font-size=11 fill='#6b7280'>"
                     f"{escape(format_value(level))}</text>")
    step = max(1, -(-len(labels) // _X_LABELS_MAX))
    slot = (_WIDTH - _LEFT - _RIGHT) / max(len(labels), 1)
    for index in range(0, len(labels), step):
        x = _LEFT + slot * (index + 0.5)
        parts.append(f"<text x={x:.1f} y={_HEIGHT - 8} text-anchor=middle font-size=11 fill='#6b7280'>{escape(labels[index])}</text>")
    return parts, scale


def bar_chart(*, points: Sequence[tuple[str, int]], title: str, format_value: Callable[[int], str], chart_id: str,
              color: str = "#2563eb") -> str:
    assert len(points) <= _POINTS_MAX, "a chart is for people: at most a few hundred points"
    assert all(value >= 0 for _, value in points), "bars are drawn from zero up"
    labels, values = [label for label, _ in points], [value for _, value in points]
    parts, scale = _frame(chart_id=chart_id, title=title, values=values, format_value=format_value, labels=labels)
    slot = (_WIDTH - _LEFT - _RIGHT) / max(len(points), 1)
    for index, (label, value) in enumerate(points):
        height = value * scale
        x, y = _LEFT + slot * index + slot * 0.15, _HEIGHT - _BOTTOM - height
        parts.append(f"<rect class=bar x={x:.1f} y={y:.1f} width={slot * 0.7:.1f} height={height:.1f} fill='{color}' "
                     f"data-label='{escape(label)}' data-value='{value}'><title>{escape(label)}: {escape(format_value(value))}</title></rect>")
    parts.append("</svg>")
    return "".join(parts)


def line_chart(*, points: Sequence[tuple[str, int]], title: str, format_value: Callable[[int], str], chart_id: str,
               color: str = "#059669") -> str:
    assert len(points) <= _POINTS_MAX, "a chart is for people: at most a few hundred points"
    labels, values = [label for label, _ in points], [value for _, value in points]
    parts, scale = _frame(chart_id=chart_id, title=title, values=values, format_value=format_value, labels=labels)
    slot = (_WIDTH - _LEFT - _RIGHT) / max(len(points), 1)
    coords = [(_LEFT + slot * (i + 0.5), _HEIGHT - _BOTTOM - v * scale) for i, v in enumerate(values)]
    if coords:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f"<polyline points='{path}' fill=none stroke='{color}' stroke-width=2/>")
    for (x, y), (label, value) in zip(coords, points):
        parts.append(f"<circle class=point cx={x:.1f} cy={y:.1f} r=3.5 fill='{color}' data-label='{escape(label)}' "
                     f"data-value='{value}'><title>{escape(label)}: {escape(format_value(value))}</title></circle>")
    parts.append("</svg>")
    return "".join(parts)
