"""A line chart as plain data for an inline SVG (templates/chart.html draws it): pure, so a
template only writes out coordinates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

WIDTH = 720
HEIGHT = 200
PAD_LEFT = 40
PAD_BOTTOM = 20
PAD_TOP = 10


@dataclass(frozen=True)
class Line:
    name: str
    css_class: str
    points: str  # "x,y x,y …" for a polyline
    last: float | None


@dataclass(frozen=True)
class Chart:
    lines: list[Line]
    y_max: float
    start: datetime | None
    end: datetime | None
    width: int = WIDTH
    height: int = HEIGHT
    pad_left: int = PAD_LEFT
    pad_bottom: int = PAD_BOTTOM
    pad_top: int = PAD_TOP

    @property
    def empty(self) -> bool:
        return all(not line.points for line in self.lines)


def line_chart(series: list[tuple[str, str, list[tuple[datetime, float]]]],
               levels: list[tuple[str, str, float]] | None = None) -> Chart:
    """Series (name, css class, points in time order) on one time axis; ``levels`` are constant
    lines (a pool's targets, which are not sampled) drawn across it."""
    levels = levels or []
    times = [when for _name, _css, points in series for when, _value in points]
    values = [value for _name, _css, points in series for _when, value in points] + [v for _n, _c, v in levels]
    if not times:
        return Chart([Line(name, css, "", None) for name, css, _points in series], 0.0, None, None)
    start, end = min(times), max(times)
    span = max((end - start).total_seconds(), 1.0)
    y_max = max(max(values, default=0.0), 1.0)
    plot_w = WIDTH - PAD_LEFT - 4
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP

    def xy(when: datetime, value: float) -> str:
        x = PAD_LEFT + (when - start).total_seconds() / span * plot_w
        y = PAD_TOP + plot_h - value / y_max * plot_h
        return f"{x:.1f},{y:.1f}"

    lines = [Line(name, css, " ".join(xy(w, v) for w, v in points), points[-1][1] if points else None)
             for name, css, points in series]
    lines.extend(Line(name, css, f"{xy(start, value)} {xy(end, value)}", value) for name, css, value in levels)
    return Chart(lines, y_max, start, end)
