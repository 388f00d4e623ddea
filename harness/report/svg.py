"""Inline SVG pictures for the HTML report: output grids, scatter plots and an outcome bar.

Everything is built as text here (no plotting library, nothing fetched): each function returns a
complete ``<svg>`` element as :class:`markupsafe.Markup` with every piece of data text escaped.
Element ids (hatch patterns) carry a caller-given suffix because inline SVG ids share the HTML
document's id space.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from harness.trial import ACCEPTED, CHANGED, NONFINITE, OK, OUTCOMES, PADDING

GRID_COLORS = {OK: "#d9f2df", CHANGED: "#f59e0b", NONFINITE: "#dc2626", PADDING: "#d1d5db", ACCEPTED: "#60a5fa"}
GRID_LABELS = {OK: "ok", CHANGED: "outside the bound / bits changed", NONFINITE: "NaN / Inf, wrong",
               ACCEPTED: "Inf, accepted overflow", PADDING: "padding"}
GRID_SEVERITY = {PADDING: 0, OK: 1, ACCEPTED: 2, CHANGED: 3, NONFINITE: 4}
"""Which code a pooled cell shows: the most severe of its elements (as ``harness.checks.status_grid``)."""
OUTCOME_COLORS = {"pass": "#16a34a", "fail": "#dc2626", "crash": "#7c3aed", "skip": "#9ca3af"}
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#ff9da7",
           "#e15759", "#bab0ac", "#1f3a93", "#8c6d1f", "#17becf", "#6b3e26", "#bcbd22", "#d62790",
           "#3f3f3f", "#2ca02c", "#9467bd", "#ff7f0e")
"""Series colours (Tableau 10, then ten more)."""
MARKERS = ("circle", "square", "triangle", "diamond", "triangle-down")
"""Marker shapes; a series is a (colour, marker) pair, so 32 backends never share a look."""
_STYLE_COLORS = PALETTE[:10]


def series_styles(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """A distinct (colour, marker) pair for every name, in the given order: ten colours times five
    markers give 50 pairs; beyond that the colours continue around the hue circle (golden-angle
    steps), so no two series ever share both colour and marker."""
    out: dict[str, tuple[str, str]] = {}
    n_pairs = len(_STYLE_COLORS) * len(MARKERS)
    for i, name in enumerate(names):
        marker = MARKERS[(i // len(_STYLE_COLORS)) % len(MARKERS)]
        if i < n_pairs:
            color = _STYLE_COLORS[i % len(_STYLE_COLORS)]
        else:
            hue = ((i - n_pairs) * 137.508) % 360
            color = f"hsl({hue:.1f}, 62%, {38 + 14 * (((i - n_pairs) // 7) % 2)}%)"
        out[name] = (color, marker)
    return out


def _marker_shape(marker: str, cx: float, cy: float, r: float, attrs: str, tip: str = "") -> str:
    if marker == "square":
        return (f'<rect x="{_f(cx - r * 0.9)}" y="{_f(cy - r * 0.9)}" width="{_f(1.8 * r)}" height="{_f(1.8 * r)}" '
                f'{attrs}>{tip}</rect>')
    if marker in ("triangle", "triangle-down", "diamond"):
        if marker == "triangle":
            pts = [(cx, cy - 1.2 * r), (cx + 1.1 * r, cy + 0.8 * r), (cx - 1.1 * r, cy + 0.8 * r)]
        elif marker == "triangle-down":
            pts = [(cx, cy + 1.2 * r), (cx + 1.1 * r, cy - 0.8 * r), (cx - 1.1 * r, cy - 0.8 * r)]
        else:
            pts = [(cx, cy - 1.25 * r), (cx + 1.1 * r, cy), (cx, cy + 1.25 * r), (cx - 1.1 * r, cy)]
        return f'<polygon points="{" ".join(f"{_f(x)},{_f(y)}" for x, y in pts)}" {attrs}>{tip}</polygon>'
    return f'<circle cx="{_f(cx)}" cy="{_f(cy)}" r="{_f(r)}" {attrs}>{tip}</circle>'


def marker_svg(style: tuple[str, str] | str, size: float = 12) -> Markup:
    """A small inline picture of a series' colour and marker (legends, table rows)."""
    color, marker = (style, "circle") if isinstance(style, str) else style
    r = size * 0.36
    return Markup(f'<svg class="marker" width="{_f(size)}" height="{_f(size)}" viewBox="0 0 {_f(size)} {_f(size)}" '
                  f'aria-hidden="true">{_marker_shape(marker, size / 2, size / 2, r, f"fill={_q(color)}")}</svg>')


def _q(v: str) -> str:
    return '"' + str(escape(v)) + '"'

_MAX_GRID_CELLS = 60_000
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def _f(x: float) -> str:
    """A coordinate with at most two decimals (keeps the SVG small)."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _hatch(pid: str) -> str:
    return (f'<pattern id="{pid}" width="6" height="6" patternUnits="userSpaceOnUse" '
            f'patternTransform="rotate(45)"><rect width="6" height="6" fill="{GRID_COLORS[PADDING]}"/>'
            f'<line x1="0" y1="0" x2="0" y2="6" stroke="#9ca3af" stroke-width="2"/></pattern>')


class GridError(ValueError):
    """``measure.grid`` does not have the documented shape."""


@dataclass(frozen=True)
class Grid:
    cells: list[list[int]]
    real_rows: int        # displayed rows that hold real output rows
    real_cols: int
    row_step: int         # output rows per displayed row
    col_step: int
    m: int                # real output rows / columns (logical)
    n: int

    @property
    def rows(self) -> int:
        return len(self.cells)

    @property
    def cols(self) -> int:
        return len(self.cells[0]) if self.cells else 0


def parse_grid(g: Mapping) -> Grid:
    """Check ``measure.grid`` and derive how many displayed rows/columns are real (not padding)."""
    if not isinstance(g, Mapping):
        raise GridError(f"grid is {type(g).__name__}, expected an object")
    cells = g.get("cells")
    if not isinstance(cells, list) or not cells or not all(isinstance(r, list) for r in cells):
        raise GridError("grid.cells must be a non-empty list of rows")
    width = len(cells[0])
    if width == 0 or any(len(r) != width for r in cells):
        raise GridError("grid.cells rows must all have the same, non-zero length")
    values: set = set()
    for r in cells:
        values.update(r)  # few distinct values: check those, not every cell
    if any(type(c) is not int or c not in GRID_COLORS for c in values):
        raise GridError(f"grid.cells holds a value that is not a cell code {sorted(GRID_COLORS)}")

    def pos(key: str, default: int) -> int:
        v = g.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise GridError(f"grid.{key}={v!r} must be a positive integer")
        return v

    row_step, col_step = pos("row_step", 1), pos("col_step", 1)
    m = pos("real_rows", len(cells) * row_step)
    n = pos("real_cols", width * col_step)
    real_r = min(len(cells), math.ceil(m / row_step))
    real_c = min(width, math.ceil(n / col_step))
    grid = Grid(cells, real_r, real_c, row_step, col_step, m, n)
    return _shrink(grid) if grid.rows * grid.cols > _MAX_GRID_CELLS else grid


def _shrink(grid: Grid) -> Grid:
    """Pool a grid too large to draw, keeping the most severe code of each block (``GRID_SEVERITY``)
    and keeping real and padding cells in separate blocks (so padding never hides an ok cell)."""
    factor = math.ceil(math.sqrt(grid.rows * grid.cols / _MAX_GRID_CELLS))

    def spans(real: int, total: int) -> list[range]:
        return [range(s, min(s + factor, real)) for s in range(0, real, factor)] + \
            [range(s, min(s + factor, total)) for s in range(real, total, factor)]

    rs, cs = spans(grid.real_rows, grid.rows), spans(grid.real_cols, grid.cols)
    cells = [[max((grid.cells[i][j] for i in r for j in c), key=GRID_SEVERITY.__getitem__) for c in cs]
             for r in rs]
    return Grid(cells, math.ceil(grid.real_rows / factor), math.ceil(grid.real_cols / factor),
                grid.row_step * factor, grid.col_step * factor, grid.m, grid.n)


def grid_svg(grid: Grid, uid: str, *, max_width: float = 640, max_height: float = 320) -> Markup:
    """The output matrix as coloured cells; padding rows/columns sit apart, hatched, after a gap."""
    s = max(3.0, min(16.0, max_width / grid.cols, max_height / grid.rows))
    gap = 8.0
    left, top = 64.0, 30.0
    rr, rc = grid.real_rows, grid.real_cols
    pad_r, pad_c = grid.rows - rr, grid.cols - rc

    def x(j: int) -> float:
        return left + j * s + (gap if j >= rc else 0)

    def y(i: int) -> float:
        return top + i * s + (gap if i >= rr else 0)

    width = x(grid.cols - 1) + s + (56 if pad_c else 12)
    height = y(grid.rows - 1) + s + 8
    hatch = f"hatch-{uid}"
    out = [f'<svg class="grid" width="{_f(width)}" height="{_f(height)}" viewBox="0 0 {_f(width)} {_f(height)}" '
           f'role="img" {_FONT}><title>{escape(f"output grid {grid.m} x {grid.n}")}</title>'
           f'<defs>{_hatch(hatch)}</defs>']
    real_w, real_h = rc * s, rr * s
    # backgrounds: real block (ok colour), padding blocks (hatched)
    out.append(f'<rect x="{_f(left)}" y="{_f(top)}" width="{_f(real_w)}" height="{_f(real_h)}" '
               f'fill="{GRID_COLORS[OK]}"/>')
    if pad_c:
        out.append(f'<rect x="{_f(x(rc))}" y="{_f(top)}" width="{_f(pad_c * s)}" height="{_f(real_h)}" '
                   f'fill="url(#{hatch})"/>')
    if pad_r:
        out.append(f'<rect x="{_f(left)}" y="{_f(y(rr))}" width="{_f(real_w)}" height="{_f(pad_r * s)}" '
                   f'fill="url(#{hatch})"/>')
    if pad_r and pad_c:
        out.append(f'<rect x="{_f(x(rc))}" y="{_f(y(rr))}" width="{_f(pad_c * s)}" height="{_f(pad_r * s)}" '
                   f'fill="url(#{hatch})"/>')
    # non-ok cells as one path per code, drawn in cell units (short coordinates) and merged into
    # horizontal runs that never cross the real/padding gap
    g = round(gap / s, 3)
    runs: dict[int, list[str]] = {ACCEPTED: [], CHANGED: [], NONFINITE: [], PADDING: []}
    for i, row in enumerate(grid.cells):
        yy = _f(i + g) if i >= rr else str(i)
        j = 0
        while j < len(row):
            code = row[j]
            end = j + 1
            while end < len(row) and row[end] == code and (end < rc) == (j < rc):
                end += 1
            if code != OK and not (code == PADDING and (i >= rr or j >= rc)):
                xx = _f(j + g) if j >= rc else str(j)
                runs[code].append(f"M{xx} {yy}h{end - j}v1h-{end - j}z")
            j = end
    paths = "".join(f'<path d="{"".join(parts)}" fill="{GRID_COLORS[code]}"/>' for code, parts in runs.items() if parts)
    if paths:
        out.append(f'<g transform="translate({_f(left)} {_f(top)}) scale({_f(s)})">{paths}</g>')
    # faint cell lines when cells are large enough to tell apart
    if s >= 6:
        lines = []
        for i in range(1, grid.rows):
            if i != rr:
                lines.append(f"M{_f(left)} {_f(y(i))}H{_f(x(grid.cols - 1) + s)}")
        for j in range(1, grid.cols):
            if j != rc:
                lines.append(f"M{_f(x(j))} {_f(top)}V{_f(y(grid.rows - 1) + s)}")
        out.append(f'<path d="{" ".join(lines)}" stroke="#ffffff" stroke-width="0.6" fill="none"/>')
    # separators between real and padding
    if pad_r:
        yy = top + real_h + gap / 2
        out.append(f'<line x1="{_f(left - 6)}" y1="{_f(yy)}" x2="{_f(x(grid.cols - 1) + s + 4)}" y2="{_f(yy)}" '
                   f'stroke="#374151" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{_f(left - 6)}" y="{_f(y(rr) + min(pad_r * s, 24) / 2 + 4)}" text-anchor="end" '
                   f'fill="#6b7280">m pad</text>')
    if pad_c:
        xx = left + real_w + gap / 2
        out.append(f'<line x1="{_f(xx)}" y1="{_f(top - 6)}" x2="{_f(xx)}" y2="{_f(y(grid.rows - 1) + s + 4)}" '
                   f'stroke="#374151" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{_f(x(rc))}" y="{_f(top - 8)}" fill="#6b7280">n pad</text>')
    # axis labels: first and last real row / column
    out.append(f'<text x="{_f(left - 6)}" y="{_f(top + min(s, real_h) / 2 + 4)}" text-anchor="end">0</text>')
    if rr > 1:
        out.append(f'<text x="{_f(left - 6)}" y="{_f(top + real_h - min(s, real_h) / 2 + 4)}" '
                   f'text-anchor="end">{grid.m - 1}</text>')
    out.append(f'<text x="{_f(left)}" y="{_f(top - 8)}">0</text>')
    if rc > 1:
        out.append(f'<text x="{_f(left + real_w)}" y="{_f(top - 8)}" text-anchor="end">{grid.n - 1}</text>')
    out.append(f'<text x="4" y="{_f(top - 8)}" fill="#6b7280">row \\ col</text>')
    out.append("</svg>")
    return Markup("".join(out))


def grid_legend_svg(uid: str) -> Markup:
    """Swatches for the cell codes (one legend per report)."""
    hatch = f"hatch-{uid}"
    items = []
    xpos = 0.0
    for code in (OK, CHANGED, NONFINITE, ACCEPTED, PADDING):
        fill = f"url(#{hatch})" if code == PADDING else GRID_COLORS[code]
        label = GRID_LABELS[code]
        items.append(f'<rect x="{_f(xpos)}" y="3" width="14" height="14" fill="{fill}" stroke="#9ca3af" '
                     f'stroke-width="0.5"/><text x="{_f(xpos + 19)}" y="14">{escape(label)}</text>')
        xpos += 19 + 6.5 * len(label) + 18
    return Markup(f'<svg class="legend" width="{_f(xpos)}" height="20" {_FONT} role="img">'
                  f'<title>grid legend</title><defs>{_hatch(hatch)}</defs>{"".join(items)}</svg>')


@dataclass(frozen=True)
class Point:
    x: float
    y: float | None          # None: not a number (NaN or infinite error)
    series: str
    failed: bool = False
    label: str = ""


def _log_ticks(lo: int, hi: int, max_labels: int) -> list[int]:
    step = max(1, math.ceil((hi - lo + 1) / max_labels))
    return list(range(lo, hi + 1, step))


def _y_label(e: int) -> str:
    return f"{10.0 ** e:g}" if -2 <= e <= 3 else f"1e{e}"


def _x_label(e: int) -> str:
    v = 2 ** e
    return f"{v // 1024}k" if v >= 4096 and v % 1024 == 0 else str(v)


def scatter_svg(points: Sequence[Point], colors: Mapping[str, str | tuple[str, str]], *, x_label: str, y_label: str,
                bound: float | None = 1.0, width: float = 580, height: float = 340) -> Markup:
    """A log2(x) / log10(y) scatter plot; non-finite y values sit in a band above the plot and values
    below the axis floor on its bottom edge.  ``bound`` draws a dashed horizontal line."""
    ml, mr, mt, mb = 58.0, 92.0, 30.0, 42.0
    pw, ph = width - ml - mr, height - mt - mb
    xs = [p.x for p in points if p.x > 0]
    ys = [p.y for p in points if p.y is not None and p.y > 0 and math.isfinite(p.y)]
    xlo = math.floor(math.log2(min(xs))) if xs else 0
    xhi = math.ceil(math.log2(max(xs))) if xs else 10
    if xhi - xlo < 2:
        xlo, xhi = xlo - 1, xhi + 1
    ylo = min(math.floor(math.log10(min(ys))) if ys else -3, -1)
    yhi = max(math.ceil(math.log10(max(ys))) if ys else 1, 1)
    ylo = max(ylo, yhi - 12)

    # axis spans with some air so no point sits on the frame
    x0, x1 = xlo - 0.35, xhi + 0.35
    y0, y1 = ylo - 0.25, yhi + 0.25

    def px(lv: float) -> float:
        return ml + (lv - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        lv = min(max(math.log10(v), ylo), yhi) if v > 0 else ylo
        return mt + (y1 - lv) / (y1 - y0) * ph

    series = sorted({p.series for p in points})
    offset = {s: (i - (len(series) - 1) / 2) * 0.05 * (xhi - xlo) / 10 for i, s in enumerate(series)}
    out = [f'<svg class="plot" width="{_f(width)}" height="{_f(height)}" viewBox="0 0 {_f(width)} {_f(height)}" '
           f'role="img" {_FONT}><title>{escape(f"{y_label} versus {x_label}")}</title>',
           f'<rect x="{_f(ml)}" y="{_f(mt)}" width="{_f(pw)}" height="{_f(ph)}" fill="#fafafa" stroke="#d1d5db"/>']
    for e in _log_ticks(ylo, yhi, 8):
        yy = py(10.0 ** e)
        out.append(f'<line x1="{_f(ml)}" y1="{_f(yy)}" x2="{_f(ml + pw)}" y2="{_f(yy)}" stroke="#e5e7eb"/>'
                   f'<text x="{_f(ml - 6)}" y="{_f(yy + 4)}" text-anchor="end">{_y_label(e)}</text>')
    for e in _log_ticks(xlo, xhi, 12):
        xx = px(e)
        out.append(f'<line x1="{_f(xx)}" y1="{_f(mt)}" x2="{_f(xx)}" y2="{_f(mt + ph)}" stroke="#e5e7eb"/>'
                   f'<text x="{_f(xx)}" y="{_f(mt + ph + 16)}" text-anchor="middle">{_x_label(e)}</text>')
    if bound is not None and bound > 0:
        yb = py(bound)
        out.append(f'<line x1="{_f(ml)}" y1="{_f(yb)}" x2="{_f(ml + pw)}" y2="{_f(yb)}" stroke="#991b1b" '
                   f'stroke-width="1.5" stroke-dasharray="6 4"/>'
                   f'<text x="{_f(ml + pw + 6)}" y="{_f(yb + 4)}" fill="#991b1b">bound = {bound:g}</text>')
    band = mt - 14
    if any(p.y is None for p in points):
        out.append(f'<text x="{_f(ml + pw + 6)}" y="{_f(band + 4)}" fill="#dc2626">NaN / Inf</text>')
    for p in points:
        if p.x <= 0:
            continue
        cx = px(math.log2(p.x) + offset[p.series])
        style = colors.get(p.series, "#6b7280")
        color, marker = (style, "circle") if isinstance(style, str) else style
        tip = f"<title>{escape(p.label)}</title>" if p.label else ""
        if p.y is None or not math.isfinite(p.y):
            out.append(f'<path d="M{_f(cx - 4)} {_f(band - 4)}l8 8m0 -8l-8 8" stroke="{color}" '
                       f'stroke-width="2">{tip}</path>')
            continue
        stroke = ' stroke="#111827" stroke-width="1.2"' if p.failed else ""
        out.append(_marker_shape(marker, cx, py(p.y), 3.6, f'fill={_q(color)} fill-opacity="0.75"{stroke}', tip))
    out.append(f'<text x="{_f(ml + pw / 2)}" y="{_f(height - 6)}" text-anchor="middle">{escape(x_label)} '
               f'(log2)</text>')
    out.append(f'<text transform="translate(14 {_f(mt + ph / 2)}) rotate(-90)" text-anchor="middle">'
               f'{escape(y_label)} (log10)</text>')
    out.append("</svg>")
    return Markup("".join(out))


def outcome_bar_svg(counts: Mapping[str, int], *, width: float = 640, height: float = 18) -> Markup:
    """A stacked bar of outcome counts (pass, fail, crash, skip)."""
    total = sum(counts.values())
    out = [f'<svg class="bar" width="{_f(width)}" height="{_f(height)}" role="img" {_FONT}>'
           f'<title>{escape(", ".join(f"{k} {v}" for k, v in counts.items()))}</title>']
    if total == 0:
        out.append(f'<rect width="{_f(width)}" height="{_f(height)}" fill="#e5e7eb"/>')
    else:
        xpos = 0.0
        for key in OUTCOMES:
            w = counts.get(key, 0) / total * width
            if w > 0:
                out.append(f'<rect x="{_f(xpos)}" width="{_f(w)}" height="{_f(height)}" '
                           f'fill="{OUTCOME_COLORS[key]}"/>')
                xpos += w
    out.append("</svg>")
    return Markup("".join(out))
