"""The ``plot`` stage: improvement curves, return against env steps per method with its IQM line and 95% CI band,
from ``curves.csv`` files (over all tasks, per task or per split).
"""

from __future__ import annotations

import csv
import math
import os
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter

from metaimprove.errors import UserError
from metaimprove.evaluation.methods import METHODS
from metaimprove.evaluation.stats import COLUMNS, Band, Curves, common_grid, curve_band, normalize_curves, read_scales


@dataclass
class PlotConfig:
    """Draw improvement curves (IQM with 95% bootstrap CI) from finished runs."""

    runs: list[str] = field(default_factory=list)
    """Run directories (each holding curves.csv) or curves.csv paths; methods from all of them share the plot."""
    out: str = "???"
    """Run directory: curves.png (and curves.pdf) are written there (default runs/plot/<date>_<time>)."""
    per_task: bool = False
    """One panel per task instead of one panel aggregated over tasks."""
    methods: list[str] | None = None
    """Methods to draw, in legend order; None draws every method found."""
    splits: list[str] | None = None
    """Splits to draw (test, ood, ...: the middle part of task names); None draws every split found."""
    per_split: bool = False
    """One panel per split (aggregated over its tasks) instead of one panel over all tasks."""
    budget: float | None = None
    """Env-step budget B, drawn as a dashed vertical line; None draws none."""
    references: str | None = None
    """A reference table (CSV with task, start and reference columns, such as results/references.csv): draw each
    task's normalized score (0 at its start return, 1 at its reference return) instead of raw returns."""
    pdf: bool = False
    """Also write a PDF next to the PNG."""
    reps: int = 2_000
    """Bootstrap replicates per CI."""
    seed: int = 0
    """Bootstrap seed: the same curves and seed give the same bands."""


# ----------------------------------------------------------------------------------------------- read


def read_curves(paths: list[Path]) -> Curves:
    """Read and concatenate ``curves.csv`` files, validating them; any problem is a one-line UserError.

    Rejected: no paths, a missing file, a header without one of :data:`~metaimprove.evaluation.stats.COLUMNS`,
    a row with a missing, non-numeric or non-finite value, and the same (method, task, seed, env_steps)
    twice (e.g. one run listed under two directories), which would make the curve ambiguous.
    """
    unique = list(dict.fromkeys(Path(p).resolve() for p in paths))
    if not unique:
        raise UserError("no curves.csv given: pass runs=[run_dir,...]")
    method: list[str] = []
    task: list[str] = []
    seed: list[int] = []
    env_steps: list[float] = []
    returns: list[float] = []
    seen: dict[tuple[str, str, int, float], str] = {}
    for path in unique:
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        with path.open(newline="") as fh:
            reader = csv.reader(fh)
            header = [name.strip() for name in next(reader, [])]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise UserError(
                    f"{path}: missing column(s) {', '.join(missing)} (header: {','.join(header) or 'empty'}; "
                    f"expected {','.join(COLUMNS)})"
                )
            col = {name: header.index(name) for name in COLUMNS}
            for line_no, row in enumerate(reader, start=2):
                if not any(cell.strip() for cell in row):
                    continue  # blank lines, e.g. a trailing newline
                cells = {name: row[i].strip() if i < len(row) else "" for name, i in col.items()}
                where = f"{path}:{line_no}"
                for name in ("method", "task"):
                    if not cells[name]:
                        raise UserError(f"{where}: column {name} is empty")
                seed_value = _parse_int(cells["seed"], where, "seed")
                steps_value = _parse_float(cells["env_steps"], where, "env_steps")
                return_value = _parse_float(cells["return"], where, "return")
                key = (cells["method"], cells["task"], seed_value, steps_value)
                if key in seen:
                    raise UserError(
                        f"{where}: method {key[0]} task {key[1]} seed {key[2]} env_steps {key[3]:g} "
                        f"is already in {seen[key]}"
                    )
                seen[key] = where
                method.append(cells["method"])
                task.append(cells["task"])
                seed.append(seed_value)
                env_steps.append(steps_value)
                returns.append(return_value)
    if not method:
        raise UserError(f"no evaluation rows in {', '.join(str(p) for p in unique)}")
    return Curves(
        method=np.array(method, dtype=np.str_),
        task=np.array(task, dtype=np.str_),
        seed=np.array(seed, dtype=np.int64),
        env_steps=np.array(env_steps, dtype=np.float64),
        returns=np.array(returns, dtype=np.float64),
    )


def _parse_float(text: str, where: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: column {column} has non-numeric value {text!r}") from None
    if not math.isfinite(value):
        # A NaN/inf return poisons every IQM it enters; it must be fixed where it was produced.
        raise UserError(f"{where}: column {column} has non-finite value {text!r}")
    return value


def _parse_int(text: str, where: str, column: str) -> int:
    value = _parse_float(text, where, column)
    if not value.is_integer():
        raise UserError(f"{where}: column {column} has non-integer value {text!r}")
    return int(value)


# --------------------------------------------------------------------------------------------- colors

# Fixed colors for the methods apply runs (and the names DESIGN.md uses), so every figure agrees on them.
KNOWN_COLORS: dict[str, str] = {name: method.color for name, method in METHODS.items() if method.color is not None}
KNOWN_COLORS.update({alias: KNOWN_COLORS[name] for alias, name in (
    ("metaimprove", "operator"), ("domain_randomized", "dr"), ("nearest_checkpoint", "nearest"),
    ("nearest_checkpoint_noise", "nearest_noise"))})
# Other names hash into colors none of the known methods use.
EXTRA_COLORS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1")
START_SEPARATOR = "@"
"""``<method>@<start>`` (e.g. ``ppo@train_init``): the method from another start, drawn in its color, dashed"""


def _normalize(name: str) -> str:
    return name.split(START_SEPARATOR)[0].strip().lower().replace("-", "_").replace(" ", "_")


def line_style(method: str) -> str:
    """Solid for a method, dashed for the same method from another start (``<method>@<start>``)."""
    return "--" if START_SEPARATOR in method else "-"


def method_colors(methods: list[str]) -> dict[str, str]:
    """A color per method, the same in every figure: fixed for known names, a name hash for the rest.

    ``<method>@<start>`` takes ``<method>``'s color (it is drawn dashed). Two unknown names whose hashes
    collide in one figure are moved apart (the later one takes the next free color), which is the only case
    where a color depends on which other methods are drawn.
    """
    colors: dict[str, str] = {}
    taken: set[str] = set()
    for name in methods:
        known = KNOWN_COLORS.get(_normalize(name))
        if known is not None:
            colors[name] = known
            taken.add(known)
    by_base: dict[str, str] = {}
    for name in methods:
        if name in colors:
            continue
        base = _normalize(name)
        if base not in by_base:
            start = zlib.crc32(base.encode())
            choices = [EXTRA_COLORS[(start + k) % len(EXTRA_COLORS)] for k in range(len(EXTRA_COLORS))]
            by_base[base] = next((c for c in choices if c not in taken), choices[0])
            taken.add(by_base[base])
        colors[name] = by_base[base]
    return colors


# ----------------------------------------------------------------------------------------------- draw


def task_split(task: str) -> str:
    """The split of a task name ``family/split/index`` (the whole name if it has no such parts)."""
    parts = task.split("/")
    return parts[1] if len(parts) == 3 else task


def select_splits(curves: Curves, splits: list[str]) -> Curves:
    """The rows of ``curves`` whose tasks belong to ``splits`` (one-line error naming the splits present)."""
    present = sorted({task_split(t) for t in curves.tasks()})
    unknown = [s for s in splits if s not in present]
    if unknown or not splits:
        raise UserError(f"unknown split(s) {unknown}; the curves have: {', '.join(present)}")
    keep = np.isin([task_split(t) for t in curves.task.tolist()], splits)
    return Curves(curves.method[keep], curves.task[keep], curves.seed[keep], curves.env_steps[keep],
                  curves.returns[keep])


def build_figure(
    curves: Curves,
    per_task: bool = False,
    methods: list[str] | None = None,
    budget: float | None = None,
    reps: int = 2_000,
    seed: int = 0,
    per_split: bool = False,
    value: str = "return",
) -> Figure:
    """The improvement-curve figure: one panel over all tasks, one per task, or one per split; ``value`` names what
    the curves hold (raw returns, or normalized scores)."""
    if per_task and per_split:
        raise UserError("per_task and per_split both set the panels; choose one")
    available = curves.methods()
    if methods is None:
        methods = available
    else:
        unknown = [m for m in methods if m not in available]
        if unknown:
            raise UserError(f"unknown method(s) {', '.join(unknown)}; the curves have: {', '.join(available)}")
        if not methods:
            raise UserError(f"methods=[] selects nothing; the curves have: {', '.join(available)}")
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise UserError(f"budget must be a positive number of env steps, got {budget}")
    colors = method_colors(methods)
    tasks = curves.tasks()
    groups: dict[str | None, Curves] = {None: curves}
    if per_task:
        groups = {task: curves.where(task=task) for task in tasks}
    elif per_split:
        groups = {f"{split} split": select_splits(curves, [split])
                  for split in dict.fromkeys(task_split(t) for t in tasks)}
    panels: list[tuple[str | None, list[Band]]] = []
    for title, group in groups.items():
        bands = []
        for name in methods:
            rows = group.where(method=name)
            if len(rows):
                bands.append(curve_band(rows, common_grid(rows), reps=reps, seed=seed))
        panels.append((title, bands))

    n_cols = min(len(panels), 3)
    n_rows = math.ceil(len(panels) / n_cols)
    # A lone panel still needs room for the legend and title, hence the wider minimum.
    width = max(4.6 * n_cols + 0.6, 7.5)
    fig = Figure(figsize=(width, 3.4 * n_rows + 1.4), layout="constrained")
    # An explicit Agg canvas instead of pyplot: headless, and no global backend switch for the caller.
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True).ravel()
    for ax, (title, bands) in zip(axes, panels, strict=False):
        _draw_panel(ax, bands, colors, budget)
        ax.set_title(title or f"all {len(tasks)} task{'s' if len(tasks) != 1 else ''}", fontsize=10)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for i, ax in enumerate(axes[: len(panels)]):
        if i + n_cols >= len(panels):
            # Bottom of its column (the row below may be partly empty): it carries the shared x axis labels.
            ax.tick_params(labelbottom=True)
            ax.set_xlabel("environment steps")
    for ax in axes[::n_cols]:
        ax.set_ylabel(value)

    # One legend for the figure: the same method has the same color in every panel.
    runs = {name: _run_count(curves.where(method=name)) for name in methods}
    handles = [Line2D([], [], color=colors[m], ls=line_style(m), lw=2, label=f"{m} ({runs[m]})") for m in methods]
    if budget is not None:
        handles.append(Line2D([], [], color="black", ls="--", lw=1, label=f"budget B = {_eng(budget)}"))
    per_row = 2 if n_cols == 1 else 4
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), per_row), frameon=False, fontsize=9)
    fig.suptitle(
        f"{value.capitalize()} vs environment steps\n"
        f"line: IQM over {'seeds' if per_task else 'tasks and seeds'}, shaded: 95% stratified bootstrap CI",
        fontsize=10,
    )
    return fig


def _draw_panel(ax: Axes, bands: list[Band], colors: dict[str, str], budget: float | None) -> None:
    for band in bands:
        color = colors[band.method]
        # Returns change only at evaluations, so the curve is drawn as the step function it is.
        ax.fill_between(band.env_steps, band.lo, band.hi, step="post", color=color, alpha=0.2, lw=0)
        ax.plot(band.env_steps, band.iqm, drawstyle="steps-post", color=color, ls=line_style(band.method), lw=1.8)
    if budget is not None:
        ax.axvline(budget, color="black", ls="--", lw=1)
        # Named on the axes too, so a cropped panel still says which line is the budget.
        ax.annotate(f"B = {_eng(budget)}", (budget, 1.0), xycoords=("data", "axes fraction"), xytext=(-3, -3),
                    textcoords="offset points", ha="right", va="top", fontsize=8)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.grid(alpha=0.3)


def _run_count(rows: Curves) -> str:
    """``"2 tasks × 3 seeds"`` for the legend, so a reader sees how much data is behind each band."""
    n_tasks = len(rows.tasks())
    n_runs = len(set(zip(rows.task.tolist(), rows.seed.tolist(), strict=True)))
    per_task = f"{n_runs // n_tasks} seeds" if n_runs % n_tasks == 0 else f"{n_runs} runs"
    return f"{n_tasks} task{'s' if n_tasks != 1 else ''} × {per_task}"


def _eng(x: float) -> str:
    return EngFormatter(sep="")(x)


# ----------------------------------------------------------------------------------------------- save


def plot_curves(
    curves: Curves,
    out: Path,
    per_task: bool = False,
    methods: list[str] | None = None,
    budget: float | None = None,
    pdf: bool = False,
    reps: int = 2_000,
    seed: int = 0,
    per_split: bool = False,
    value: str = "return",
) -> list[Path]:
    """Draw the improvement curves and write ``out`` as PNG (plus PDF if asked); returns the files written.

    ``out``'s suffix is replaced (``results/curves`` and ``results/curves.pdf`` both give
    ``results/curves.png``); an existing directory gets ``curves.png`` inside it. Files are written to
    a temporary name and renamed, so a crash never leaves a half-written figure under the real name.
    """
    out = Path(out)
    stem = out / "curves" if out.is_dir() else out.with_suffix("") if out.suffix.lower() in (".png", ".pdf") else out
    fig = build_figure(curves, per_task=per_task, methods=methods, budget=budget, reps=reps, seed=seed,
                       per_split=per_split, value=value)
    written = []
    for fmt in ("png", "pdf") if pdf else ("png",):
        target = stem.parent / f"{stem.name}.{fmt}"
        _save_atomic(fig, target, fmt)
        written.append(target)
    return written


def _save_atomic(fig: Figure, target: Path, fmt: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 mode would survive the rename; "x" creates with the user's umask.
    tmp = target.parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with tmp.open("xb") as fh:
            fig.savefig(fh, format=fmt, dpi=150)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def run_plot(config: PlotConfig) -> list[Path]:
    """CLI entry: read the runs' curves.csv files, write the figure(s), print and return their paths."""
    if not config.runs:
        raise UserError("runs=[] is empty: pass run directories or curves.csv files, e.g. runs=[runs/ppo,runs/op]")
    paths = [Path(r) / "curves.csv" if Path(r).is_dir() else Path(r) for r in config.runs]
    curves = read_curves(paths)
    if config.splits is not None:
        curves = select_splits(curves, list(config.splits))
    if config.references is not None:
        curves = normalize_curves(curves, read_scales(Path(config.references)))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    written = plot_curves(
        curves,
        out / "curves.png",
        per_task=config.per_task,
        methods=list(config.methods) if config.methods is not None else None,
        budget=config.budget,
        pdf=config.pdf,
        reps=config.reps,
        seed=config.seed,
        per_split=config.per_split,
        value="return" if config.references is None else "normalized score",
    )
    for path in written:
        print(path)
    return written
