"""Figures a person reads: a run's progress.svg and `nas plot`'s anytime curves of several runs.

One layout (axes with names and ticks, a legend, an outlier-robust y range) drawn on one of two
canvases: SVG text, or a PNG through Pillow (a core dependency, for the images datasets).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from xml.sax.saxutils import escape

from raynas.common import ConfigError
from raynas.controller.runtime.rundir import PLOT, SPEC, RunDirectory

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
GREY = "#7f7f7f"
FAILED = "#d62728"
X_AXES = ("evaluations", "time")
FORMATS = (".svg", ".png")


@dataclass
class Series:
    """One thing drawn: `line` (best so far: a step line), `dots` (filled), `hollow` (open circles,
    each with its note), or `hline` (a level across the plot, such as the benchmark's optimum).
    `width`: a line's stroke; None widens earlier lines so that one another covers still shows."""

    label: str
    kind: str
    color: str
    points: list[tuple[float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    width: float | None = None


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round values (1, 2, 2.5 or 5 times a power of ten apart) that cover [lo, hi] about `count` times."""
    if not hi > lo:
        return [lo]
    rough = (hi - lo) / count
    power = 10 ** math.floor(math.log10(rough))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= rough)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def robust_range(values: Sequence[float]) -> tuple[float, float]:
    """A y range for `values` that one bad evaluation cannot squash: below Tukey's far-out fence
    (the lower quartile less 3 interquartile ranges) values are left out of it (the figure marks
    them at its bottom edge); the top always holds the largest value, the best so far. With fewer
    than 8 values there are no quartiles worth the name, and the range is the values'."""
    values = sorted(values)
    lo, hi = values[0], values[-1]
    if len(values) >= 8:
        q1, q3 = _quantile(values, 0.25), _quantile(values, 0.75)
        fence = q1 - 3 * (q3 - q1)
        lo = min(v for v in values if v >= fence)
    if math.isclose(lo, hi):
        lo, hi = lo - 0.5 * max(abs(lo), 1) * 0.1, hi + 0.5 * max(abs(hi), 1) * 0.1
    pad = 0.06 * (hi - lo)
    return lo - pad, hi + pad


def _quantile(ordered: Sequence[float], q: float) -> float:
    at = q * (len(ordered) - 1)
    below = math.floor(at)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (at - below)


def _label(value: float) -> str:
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.2g}"
    return f"{value:.6g}"


def figure_path(path: str | Path, field: str = "out") -> Path:
    """`path` if a figure can be written there (SVG or PNG, by its extension), checked before the
    work that makes the figure."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(field, f"{path} must end in .svg or .png (the format follows the extension)")
    return path


class Figure:
    """A titled plot of series against named axes, laid out in pixels for any canvas."""

    LEFT, RIGHT, TOP, BOTTOM = 64, 16, 36, 46

    def __init__(self, title: str, xlabel: str, ylabel: str, width: int = 900, height: int = 420, legend: int = 220):
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.width, self.height, self.LEGEND = width, height, legend
        self.series: list[Series] = []
        self.failures: list[float] = []

    def add(self, series: Series) -> Series:
        self.series.append(series)
        return series

    def fail(self, xs: Iterable[float]) -> None:
        """Mark evaluations that failed at these x positions, on the x axis."""
        self.failures += list(xs)

    def draw(self, canvas: Canvas) -> None:
        ys = [y for s in self.series if s.kind != "hline" for _, y in s.points]
        levels = [y for s in self.series if s.kind == "hline" for _, y in s.points]
        xs = [x for s in self.series if s.kind != "hline" for x, _ in s.points] + self.failures
        lo, hi = robust_range(ys) if ys else (0.0, 1.0)
        if levels:  # a level (the benchmark's optimum) stays in view, off the frame
            room = 0.04 * (hi - lo)
            lo, hi = min(lo, min(levels) - room), max(hi, max(levels) + room)
        x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
        if math.isclose(x_lo, x_hi):
            x_lo, x_hi = x_lo - 1, x_hi + 1
        left, right = self.LEFT, self.width - self.LEGEND - self.RIGHT
        top, bottom = self.TOP, self.height - self.BOTTOM

        def px(x: float) -> float:
            return left + (right - left) * (x - x_lo) / (x_hi - x_lo)

        def py(y: float) -> float:
            return bottom - (bottom - top) * (min(max(y, lo), hi) - lo) / (hi - lo)

        canvas.rect(0, 0, self.width, self.height, "white")
        canvas.text(left, 20, self.title, size=13, cls="title")
        with canvas.group("x-axis"):
            canvas.line(left, bottom, right, bottom, "black")
            for t in nice_ticks(x_lo, x_hi, 8):
                canvas.line(px(t), bottom, px(t), bottom + 4, "black")
                canvas.line(px(t), top, px(t), bottom, "#e6e6e6")
                canvas.text(px(t), bottom + 16, _label(t), anchor="middle", cls="tick")
            canvas.text((left + right) / 2, self.height - 8, self.xlabel, anchor="middle", cls="axis-label")
        with canvas.group("y-axis"):
            canvas.line(left, top, left, bottom, "black")
            for t in nice_ticks(lo, hi, 6):
                canvas.line(left - 4, py(t), left, py(t), "black")
                canvas.line(left, py(t), right, py(t), "#e6e6e6")
                canvas.text(left - 6, py(t) + 4, _label(t), anchor="end", cls="tick")
            canvas.text(14, (top + bottom) / 2, self.ylabel, anchor="middle", rotate=True, cls="axis-label")
        legend: list[tuple[str, str, str]] = []
        clipped = 0
        # Runs that found the same children draw the same curve: earlier lines are wider, so that
        # one that another covers still shows at its edges.
        lines = [s for s in self.series if s.kind == "line"]
        for s in self.series:
            with canvas.group("series", s.label):
                if s.kind == "hline":
                    canvas.line(left, py(s.points[0][1]), right, py(s.points[0][1]), s.color, dash=True)
                elif s.kind == "line":
                    steps = [s.points[0]] + [p for a, b in zip(s.points, s.points[1:]) for p in ((b[0], a[1]), b)]
                    canvas.polyline([(px(x), py(y)) for x, y in steps], s.color,
                                    s.width or 1.8 + 1.6 * (len(lines) - 1 - lines.index(s)))
                else:
                    for i, (x, y) in enumerate(s.points):
                        if y < lo:  # below the range: a triangle at the bottom edge, pointing down
                            clipped += 1
                            canvas.polygon([(px(x) - 4, bottom - 7), (px(x) + 4, bottom - 7), (px(x), bottom - 1)],
                                           s.color, cls="clipped")
                            continue
                        canvas.circle(px(x), py(y), 2.6, None if s.kind == "hollow" else s.color, s.color)
                        if i < len(s.notes):
                            canvas.text(px(x) + 4, py(y) + 3, s.notes[i], size=8, color=GREY)
            legend.append((s.kind, s.color, s.label))
        if self.failures:
            with canvas.group("series", "failed"):
                for x in self.failures:
                    canvas.line(px(x) - 3, bottom + 3, px(x) + 3, bottom - 3, FAILED)
                    canvas.line(px(x) - 3, bottom - 3, px(x) + 3, bottom + 3, FAILED)
            legend.append(("cross", FAILED, f"failed ({len(self.failures)})"))
        if clipped:
            below = min(y for s in self.series if s.kind in ("dots", "hollow") for _, y in s.points)
            legend.append(("clipped", GREY, f"below the range: {clipped} (lowest {_label(below)})"))
        with canvas.group("legend"):
            x0 = self.width - self.LEGEND + 4
            for row, (kind, color, label) in enumerate(legend):
                y = top + 8 + 18 * row
                if kind in ("line", "hline"):
                    canvas.line(x0, y - 4, x0 + 18, y - 4, color, dash=kind == "hline")
                elif kind == "cross":
                    canvas.line(x0 + 6, y - 7, x0 + 12, y - 1, color)
                    canvas.line(x0 + 6, y - 1, x0 + 12, y - 7, color)
                elif kind == "clipped":
                    canvas.polygon([(x0 + 5, y - 8), (x0 + 13, y - 8), (x0 + 9, y - 1)], color)
                else:
                    canvas.circle(x0 + 9, y - 4, 2.6, None if kind == "hollow" else color, color)
                canvas.text(x0 + 24, y, label, cls="legend-label")

    def svg(self) -> str:
        canvas = SvgCanvas(self.width, self.height)
        self.draw(canvas)
        return canvas.finish()

    def save(self, path: str | Path) -> Path:
        """Write the figure as SVG or PNG, by the file's extension."""
        path = figure_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".svg":
            path.write_text(self.svg())
        else:
            canvas = PngCanvas(self.width, self.height)
            self.draw(canvas)
            canvas.image.save(path)
        return path


class Canvas(Protocol):
    """What a figure draws with; `group` names what it holds, for readers of an SVG."""

    def group(self, cls: str, label: str | None = None): ...
    def rect(self, x: float, y: float, w: float, h: float, fill: str) -> None: ...
    def line(self, x1: float, y1: float, x2: float, y2: float, color: str, dash: bool = False) -> None: ...
    def polyline(self, points: list[tuple[float, float]], color: str, width: float) -> None: ...
    def polygon(self, points: list[tuple[float, float]], fill: str, cls: str | None = None) -> None: ...
    def circle(self, x: float, y: float, r: float, fill: str | None, stroke: str) -> None: ...
    def text(self, x: float, y: float, s: str, anchor: str = "start", size: int = 11, color: str = "black",
             rotate: bool = False, cls: str | None = None) -> None: ...


class _Group:
    def __init__(self, enter=None, leave=None):
        self.enter, self.leave = enter, leave

    def __enter__(self):
        if self.enter:
            self.enter()

    def __exit__(self, *exc):
        if self.leave:
            self.leave()


class SvgCanvas:
    def __init__(self, width: int, height: int):
        self.parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                      f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">']

    def group(self, cls, label=None):
        attrs = f' class="{cls}"' + (f' data-label="{escape(label, {chr(34): "&quot;"})}"' if label else "")
        return _Group(lambda: self.parts.append(f"<g{attrs}>"), lambda: self.parts.append("</g>"))

    def rect(self, x, y, w, h, fill):
        self.parts.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}"/>')

    def line(self, x1, y1, x2, y2, color, dash=False):
        style = ' stroke-dasharray="6 4"' if dash else ""
        self.parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}"{style}/>')

    def polyline(self, points, color, width):
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        self.parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="{width:g}"/>')

    def polygon(self, points, fill, cls=None):
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        self.parts.append(f'<polygon points="{coords}" fill="{fill}"' + (f' class="{cls}"' if cls else "") + "/>")

    def circle(self, x, y, r, fill, stroke):
        self.parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill or "none"}" stroke="{stroke}"/>')

    def text(self, x, y, s, anchor="start", size=11, color="black", rotate=False, cls=None):
        turn = f' transform="rotate(-90 {x:.1f} {y:.1f})"' if rotate else ""
        klass = f' class="{cls}"' if cls else ""
        self.parts.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
                          f'fill="{color}"{turn}{klass}>{escape(s)}</text>')

    def finish(self) -> str:
        return "\n".join([*self.parts, "</svg>"]) + "\n"


class PngCanvas:
    """The same drawing on a Pillow image, at twice the size for legible text."""

    SCALE = 2

    def __init__(self, width: int, height: int):
        from PIL import Image, ImageDraw, ImageFont

        self._font = ImageFont.load_default
        self.image = Image.new("RGB", (width * self.SCALE, height * self.SCALE), "white")
        self.draw = ImageDraw.Draw(self.image)
        self._image = Image

    def group(self, cls, label=None):
        return _Group()

    def _xy(self, points):
        return [(x * self.SCALE, y * self.SCALE) for x, y in points]

    def rect(self, x, y, w, h, fill):
        self.draw.rectangle(self._xy([(x, y), (x + w, y + h)]), fill=fill)

    def line(self, x1, y1, x2, y2, color, dash=False):
        if not dash:
            self.draw.line(self._xy([(x1, y1), (x2, y2)]), fill=color, width=self.SCALE)
            return
        length = math.hypot(x2 - x1, y2 - y1) or 1
        for start in range(0, int(length), 10):
            a, b = start / length, min(start + 6, length) / length
            self.draw.line(self._xy([(x1 + (x2 - x1) * a, y1 + (y2 - y1) * a),
                                     (x1 + (x2 - x1) * b, y1 + (y2 - y1) * b)]), fill=color, width=self.SCALE)

    def polyline(self, points, color, width):
        self.draw.line(self._xy(points), fill=color, width=round(width * self.SCALE))

    def polygon(self, points, fill, cls=None):
        self.draw.polygon(self._xy(points), fill=fill)

    def circle(self, x, y, r, fill, stroke):
        s = self.SCALE
        self.draw.ellipse([(x - r) * s, (y - r) * s, (x + r) * s, (y + r) * s], fill=fill, outline=stroke, width=s)

    def text(self, x, y, s, anchor="start", size=11, color="black", rotate=False, cls=None):
        font = self._font(size=size * self.SCALE)
        where = {"start": "ls", "middle": "ms", "end": "rs"}[anchor]
        if not rotate:
            self.draw.text((x * self.SCALE, y * self.SCALE), s, fill=color, font=font, anchor=where)
            return
        left, top, right, bottom = self.draw.textbbox((0, 0), s, font=font)
        label = self._image.new("RGBA", (right - left + 2, bottom - top + 2), (255, 255, 255, 0))
        from PIL import ImageDraw

        ImageDraw.Draw(label).text((-left, -top), s, fill=color, font=font)
        turned = label.rotate(90, expand=True)
        self.image.paste(turned, (int(x * self.SCALE - turned.width / 2), int(y * self.SCALE - turned.height / 2)),
                         turned)


# -- the figures ----------------------------------------------------------------------------------


def best_so_far(points: Iterable[tuple[float, float, float]]) -> list[tuple[float, float]]:
    """From (x, reward, shown) in order: (x, what is shown of the best reward up to x), where the best
    changed and at the last x. `shown` is the reward itself, or a figure of the same child (NB201:
    the 200-epoch test accuracy of the child chosen by its 12-epoch validation accuracy)."""
    out: list[tuple[float, float]] = []
    best, shown = -math.inf, None
    points = list(points)
    for i, (x, reward, value) in enumerate(points):
        if reward > best:
            best, shown = reward, value
            out.append((x, shown))
        elif i == len(points) - 1:
            out.append((x, shown))
    return out


def progress_figure(records: list[dict[str, Any]]) -> Figure:
    """A run's reward per evaluation, best so far and failures. When a scheduler stopped children
    early (evaluations of several budgets), hollow dots are those stopped at a rung (labelled with
    the epochs they reached) and the line is the best of the full-budget children, the ones a
    search's result is chosen from."""
    rewards = [(r["index"], r["reward"], (r.get("metrics") or {}).get("budget")) for r in records
               if r.get("reward") is not None]
    full = max((b for _, _, b in rewards if b is not None), default=None)
    staged = len({b for _, _, b in rewards}) > 1
    fig = Figure("reward per evaluation and best so far", "evaluation (index)", "reward", width=820, height=360,
                 legend=240)
    finished = [(i, v) for i, v, b in rewards if not staged or b == full]
    if staged:
        stopped = [(i, v, b) for i, v, b in rewards if b != full]
        fig.add(Series("stopped at a rung (epochs)", "hollow", GREY, [(i, v) for i, v, _ in stopped],
                       [f"{b:g}" if isinstance(b, (int, float)) else "?" for _, _, b in stopped]))
    fig.add(Series(f"reward, full {full:g} epochs" if staged else "reward", "dots", COLORS[0], finished))
    if finished:
        fig.add(Series("best so far", "line", COLORS[1], best_so_far((i, v, v) for i, v in sorted(finished))))
    fig.fail(r["index"] for r in records if r.get("reward") is None)
    return fig


def write_progress(run: RunDirectory, records: list[dict[str, Any]]) -> None:
    """A run's progress.svg."""
    (run.path / PLOT).write_text(progress_figure(records).svg())


def anytime_figure(runs: Sequence[str | Path], x: str = "evaluations") -> Figure:
    """Best so far of several runs on one figure, against evaluations finished or seconds since each
    search was created. When NAS-Bench-201's table scored every run, the curves are what its paper
    plots: the 200-epoch test accuracy of the child with the best reward so far, with the table's
    optimum as a line."""
    if x not in X_AXES:
        raise ConfigError("x", f"unknown x axis {x!r}", X_AXES)
    loaded = []
    for path in runs:
        run = RunDirectory(path)
        if not (run.path / SPEC).is_file():
            raise ConfigError("run", f"{run.path} is not a search's run directory (no spec.json)")
        loaded.append((run, run.spec(), run.evaluations()))
    if not loaded:
        raise ConfigError("run", "nas plot needs at least one run directory")
    datasets = {_table_dataset(spec, records) for _, spec, records in loaded}
    table = None not in datasets
    xlabel = "evaluations finished" if x == "evaluations" else "seconds since the search started"
    ylabel = "test accuracy (200 epochs) of the best so far" if table else "best reward so far"
    fig = Figure(f"{ylabel} against {xlabel}", xlabel, ylabel, legend=320)
    for n, (run, spec, records) in enumerate(loaded):
        start = (run.path / SPEC).stat().st_mtime
        at = [k + 1 if x == "evaluations" else r.get("finished_at", start) - start for k, r in enumerate(records)]
        ok = [(at[k], r["reward"], r["metrics"]["test_acc_200ep"] / 100.0 if table else r["reward"])
              for k, r in enumerate(records) if r.get("reward") is not None]
        label = f"{run.path.name} ({spec.get('strategy', '?')}, {len(records)} evaluations)"
        fig.add(Series(label, "line", COLORS[n % len(COLORS)], best_so_far(ok)))
        fig.fail(at[k] for k, r in enumerate(records) if r.get("reward") is None)
    if table:
        for dataset in sorted(datasets):
            value = _nb201_optimum(dataset)
            fig.add(Series(f"NB201 optimum, {dataset} ({value:.4f})", "hline", "#000000", [(0, value)]))
    return fig


def _table_dataset(spec: dict[str, Any], records: list[dict[str, Any]]) -> str | None:
    """The NAS-Bench-201 dataset whose table scored a run, or None."""
    scored = [r.get("metrics") or {} for r in records if r.get("reward") is not None]
    if spec.get("evaluator") != "table" or not scored or not all("test_acc_200ep" in m for m in scored):
        return None
    return scored[0].get("dataset")


def _nb201_optimum(dataset: str) -> float:
    from raynas.workers.evaluation.table import load_table

    return load_table(dataset).optimum()["test_acc_200ep"] / 100.0
