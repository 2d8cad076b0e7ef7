"""Small server-side SVG charts for the dashboard (no JavaScript, no CDN).

`line_chart` draws one line per series over time, `bar_chart` one bar per label. Both
return an SVG string built only from numbers and escaped text, safe to insert into a
page with `Markup`.
"""
from __future__ import annotations

import math
from datetime import datetime
from html import escape

#: Colour-blind-friendly palette (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def _fmt_pct(v: float) -> str:
    if v == 0:
        return "0%"
    digits = 0 if abs(v) >= 0.1 else 1 if abs(v) >= 0.01 else 2
    return f"{100 * v:.{digits}f}%"


def _tick_labels(ticks: list[float], percent: bool) -> list[str]:
    """Tick labels with the fewest decimals that show every tick exactly (the same for all)."""
    values = [100 * t if percent else t for t in ticks]
    digits = next((d for d in range(5) if all(abs(round(v, d) - v) < 1e-9 * max(1.0, abs(v)) for v in values)), 4)
    return [f"{v:.{digits}f}" + ("%" if percent else "") for v in values]


def _nice_max(v: float, steps: int = 4) -> float:
    """The smallest round number (1, 2, 2.5 or 5 times a power of ten per step) at or above v."""
    if v <= 0:
        return 1.0
    raw = v / steps
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * power >= raw * (1 - 1e-9):
            return m * power * steps
    return 10 * power * steps


def line_chart(series: dict[str, list[tuple[datetime, float]]], width: int = 720, height: int = 280,
               y_label: str = "", percent: bool = True, time_format: str = "%m-%d") -> str:
    """Lines over time: `series` maps a name to (time, value) points (sorted here)."""
    pad_l, pad_r, pad_t, pad_b = 56, 150, 16, 36
    pts = [(t, v) for s in series.values() for t, v in s]
    if not pts:
        return _empty(width, height, "no data yet")
    t0, t1 = min(t for t, _ in pts), max(t for t, _ in pts)
    span = (t1 - t0).total_seconds() or 1.0
    y_max = _nice_max(max(v for _, v in pts))
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b

    def x(t: datetime) -> float:
        return pad_l + (pw * (t - t0).total_seconds() / span if t1 != t0 else pw / 2)

    def y(v: float) -> float:
        return pad_t + ph * (1 - v / y_max)

    fmt = _fmt_pct if percent else (lambda v: f"{v:.3g}")
    ticks = [y_max * i / 4 for i in range(5)]
    out = [_open(width, height)]
    for v, label in zip(ticks, _tick_labels(ticks, percent)):  # horizontal grid and y ticks
        out.append(f'<line x1="{pad_l}" x2="{pad_l + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{pad_l - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">{escape(label)}</text>')
    for i in range(5 if t1 != t0 else 1):  # x ticks
        t = t0 + (t1 - t0) * (i / 4 if t1 != t0 else 0)
        out.append(f'<text x="{x(t):.1f}" y="{height - 12}" text-anchor="middle" font-size="11">{escape(t.strftime(time_format))}</text>')
    if y_label:
        out.append(f'<text x="12" y="{pad_t + ph / 2:.1f}" font-size="11" transform="rotate(-90 12 {pad_t + ph / 2:.1f})" '
                   f'text-anchor="middle">{escape(y_label)}</text>')
    for i, (name, points) in enumerate(sorted(series.items())):
        colour = PALETTE[i % len(PALETTE)]
        points = sorted(points)
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        for t, v in points:
            out.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"><title>{escape(name)} '
                       f'{escape(t.strftime("%Y-%m-%d %H:%M"))}: {escape(fmt(v))}</title></circle>')
        ly = pad_t + 14 + 18 * i
        out.append(f'<rect x="{pad_l + pw + 12}" y="{ly - 9}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{pad_l + pw + 30}" y="{ly + 1}" font-size="12">{escape(name[:18])}</text>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(bars: list[tuple[str, float, str]], width: int = 720, height: int = 280, percent: bool = True) -> str:
    """One bar per (label, value, note); the note (e.g. "12 of 40") is printed above the bar."""
    if not bars:
        return _empty(width, height, "no verdicts yet")
    pad_l, pad_r, pad_t, pad_b = 56, 16, 24, 48
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b
    y_max = max(1.0 if percent else 0.0, max(v for _, v, _ in bars)) or 1.0
    fmt = _fmt_pct if percent else (lambda v: f"{v:.3g}")
    slot = pw / len(bars)
    bw = min(80.0, slot * 0.7)
    out = [_open(width, height)]
    for i in range(5):
        v = y_max * i / 4
        yy = pad_t + ph * (1 - v / y_max)
        out.append(f'<line x1="{pad_l}" x2="{pad_l + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{pad_l - 6}" y="{yy + 4:.1f}" text-anchor="end" font-size="11">{escape(fmt(v))}</text>')
    for i, (label, value, note) in enumerate(bars):
        cx = pad_l + slot * (i + 0.5)
        h = ph * value / y_max
        colour = PALETTE[i % len(PALETTE)]
        out.append(f'<rect x="{cx - bw / 2:.1f}" y="{pad_t + ph - h:.1f}" width="{bw:.1f}" height="{h:.1f}" fill="{colour}">'
                   f'<title>{escape(label)}: {escape(fmt(value))} ({escape(note)})</title></rect>')
        out.append(f'<text x="{cx:.1f}" y="{pad_t + ph - h - 6:.1f}" text-anchor="middle" font-size="11">'
                   f'{escape(fmt(value))} ({escape(note)})</text>')
        out.append(f'<text x="{cx:.1f}" y="{height - 26}" text-anchor="middle" font-size="11">{escape(label[:16])}</text>')
    out.append("</svg>")
    return "".join(out)


def _open(width: int, height: int) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'role="img" class="chart" font-family="sans-serif">')


def _empty(width: int, height: int, text: str) -> str:
    return (_open(width, height) + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="14" fill="#666">'
            f"{escape(text)}</text></svg>")
