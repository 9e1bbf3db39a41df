"""Improvement-curve plots: reading curves.csv strictly, panels, colors, atomic PNG/PDF output."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from metaimprove.errors import UserError
from metaimprove.evaluation.plot import (
    PlotConfig,
    build_figure,
    line_style,
    method_colors,
    plot_curves,
    read_curves,
    run_plot,
    select_splits,
)
from metaimprove.evaluation.stats import normalize_curves, read_scales

TASKS = ("halfcheetah_vel/test/3", "halfcheetah_vel/test/10")
HEADER = ["method", "task", "seed", "env_steps", "return"]


def _write(path: Path, rows: list[list[object]], header: list[str] = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    """Two run directories (PPO every 2048 steps, the operator every 3000), 2 tasks × 3 seeds each."""
    rng = np.random.default_rng(0)
    dirs = []
    for method, every, speed in (("ppo", 2048, 1.0), ("operator", 3000, 3.0)):
        rows: list[list[object]] = [
            [method, task, seed, x, round(-50 + 500 * (1 - np.exp(-speed * x / 30_000)) + rng.normal(0, 20), 3)]
            for task in TASKS
            for seed in range(3)
            for x in range(0, 30_001, every)
        ]
        _write(tmp_path / method / "curves.csv", rows)
        dirs.append(tmp_path / method)
    return dirs


def _visible_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def test_run_plot_writes_png_and_pdf(runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "results"
    out = run_dir / "curves.png"
    written = run_plot(PlotConfig(runs=[str(r) for r in runs], out=str(run_dir), budget=15_000, pdf=True, reps=200))
    assert written == [out, out.with_suffix(".pdf")]
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 10_000
    assert out.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    assert str(out) in capsys.readouterr().out
    # Written under a temporary name and renamed: nothing else is left in the folder.
    assert sorted(p.name for p in out.parent.iterdir()) == ["curves.pdf", "curves.png"]


def test_png_only_unless_pdf_asked(runs: list[Path], tmp_path: Path) -> None:
    written = plot_curves(read_curves([r / "curves.csv" for r in runs]), tmp_path / "fig", reps=100)
    assert written == [tmp_path / "fig.png"]
    assert not (tmp_path / "fig.pdf").exists()


def test_aggregate_is_one_panel_per_task_is_one_per_task(runs: list[Path]) -> None:
    curves = read_curves([r / "curves.csv" for r in runs])
    agg = build_figure(curves, reps=100)
    assert len(_visible_axes(agg)) == 1
    per_task = build_figure(curves, per_task=True, reps=100)
    axes = _visible_axes(per_task)
    assert [ax.get_title() for ax in axes] == list(TASKS)  # natural order: test/3 before test/10
    for ax in axes:
        assert len(ax.get_lines()) == 2  # one IQM line per method


def test_method_colors_are_consistent_across_figures(runs: list[Path]) -> None:
    curves = read_curves([r / "curves.csv" for r in runs])

    def line_colors(fig: Figure) -> list[str]:
        return [line.get_color() for ax in _visible_axes(fig) for line in ax.get_lines()]

    both = build_figure(curves, methods=["ppo", "operator"], reps=50)
    only_operator = build_figure(curves, methods=["operator"], per_task=True, reps=50)
    assert line_colors(both)[1] == line_colors(only_operator)[0] == method_colors(["operator"])["operator"]
    assert len(set(method_colors(["ppo", "operator", "no_update", "mystery", "other"]).values())) == 5
    assert method_colors(["mystery"])["mystery"] == method_colors(["ppo", "mystery"])["mystery"]
    # the same method from another start keeps its color and is told apart by a dashed line
    starts = method_colors(["ppo", "ppo@train_init", "mystery", "mystery@train_init"])
    assert starts["ppo@train_init"] == starts["ppo"] and starts["mystery@train_init"] == starts["mystery"]
    assert (line_style("ppo"), line_style("ppo@train_init")) == ("-", "--")


def test_budget_line_drawn(runs: list[Path]) -> None:
    fig = build_figure(read_curves([r / "curves.csv" for r in runs]), budget=12_345, reps=50)
    ax = _visible_axes(fig)[0]
    assert any(list(line.get_xdata()) == [12_345, 12_345] for line in ax.get_lines())
    assert [t.get_text() for t in ax.texts] == ["B = 12.345k"]


def test_splits_select_and_panel(tmp_path: Path) -> None:
    rows: list[list[object]] = [[m, f"halfcheetah_vel/{split}/{i}", seed, x, x / 100 + (split == "ood")]
                                for m in ("ppo", "operator") for split in ("test", "ood") for i in range(2)
                                for seed in range(2) for x in (0, 1000, 2000)]
    curves = read_curves([_write(tmp_path / "curves.csv", rows)])
    fig = build_figure(curves, per_split=True, reps=50)
    assert [ax.get_title() for ax in _visible_axes(fig)] == ["ood split", "test split"]  # natural task order
    ood = select_splits(curves, ["ood"])
    assert set(ood.tasks()) == {"halfcheetah_vel/ood/0", "halfcheetah_vel/ood/1"}
    with pytest.raises(UserError, match=r"unknown split\(s\) \['train'\]; the curves have: ood, test"):
        select_splits(curves, ["train"])
    written = run_plot(PlotConfig(runs=[str(tmp_path / "curves.csv")], out=str(tmp_path / "fig"), splits=["ood"],
                                  methods=["operator"], budget=2000, reps=50))
    assert written[0].read_bytes().startswith(b"\x89PNG")


def test_methods_filter_and_unknown_method(runs: list[Path]) -> None:
    curves = read_curves([r / "curves.csv" for r in runs])
    assert len(_visible_axes(build_figure(curves, methods=["ppo"], reps=50))[0].get_lines()) == 1
    with pytest.raises(UserError, match=r"unknown method.*nope.*ppo"):
        build_figure(curves, methods=["nope"])


def _assert_one_line(err: pytest.ExceptionInfo[UserError], *needles: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        read_curves([tmp_path / "nowhere" / "curves.csv"])
    _assert_one_line(err, "nowhere/curves.csv", "no such file")


def test_run_dir_without_curves(tmp_path: Path) -> None:
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(UserError) as err:
        run_plot(PlotConfig(runs=[str(tmp_path / "empty_run")], out=str(tmp_path / "x.png")))
    _assert_one_line(err, "empty_run/curves.csv")


def test_missing_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "curves.csv", [["ppo", "t", 0, 0]], header=["method", "task", "seed", "env_steps"])
    with pytest.raises(UserError) as err:
        read_curves([path])
    _assert_one_line(err, str(path), "missing column", "return")


def test_non_numeric_value(tmp_path: Path) -> None:
    path = _write(tmp_path / "curves.csv", [["ppo", "t", 0, 0, 1.0], ["ppo", "t", 0, 2048, "oops"]])
    with pytest.raises(UserError) as err:
        read_curves([path])
    _assert_one_line(err, f"{path}:3", "return", "oops")


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        (["ppo", "t", 0, "nan", 1.0], "non-finite"),
        (["ppo", "t", 0.5, 0, 1.0], "non-integer"),
        (["ppo", "", 0, 0, 1.0], "task is empty"),
        (["ppo", "t", 0], "non-numeric"),
    ],
)
def test_bad_values(tmp_path: Path, row: list[object], needle: str) -> None:
    path = _write(tmp_path / "curves.csv", [row])
    with pytest.raises(UserError) as err:
        read_curves([path])
    _assert_one_line(err, f"{path}:2", needle)


def test_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no curves\.csv"):
        read_curves([])
    header_only = _write(tmp_path / "curves.csv", [])
    with pytest.raises(UserError, match="no evaluation rows"):
        read_curves([header_only])
    with pytest.raises(UserError, match="runs"):
        run_plot(PlotConfig(runs=[]))


def test_same_run_in_two_files_is_rejected(tmp_path: Path) -> None:
    a = _write(tmp_path / "a" / "curves.csv", [["ppo", "t", 0, 0, 1.0]])
    b = _write(tmp_path / "b" / "curves.csv", [["ppo", "t", 0, 0, 2.0]])
    assert len(read_curves([a, a])) == 1  # the same file twice is read once
    with pytest.raises(UserError) as err:
        read_curves([a, b])
    _assert_one_line(err, str(b), str(a))


def test_failed_save_leaves_no_file(runs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: Figure, *args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", explode)
    out = tmp_path / "out" / "curves.png"
    with pytest.raises(RuntimeError, match="disk full"):
        plot_curves(read_curves([r / "curves.csv" for r in runs]), out, reps=50)
    assert list(out.parent.iterdir()) == []


def test_references_draw_per_task_normalized_scores(runs: list[Path], tmp_path: Path) -> None:
    table = _write(tmp_path / "references.csv", [[t, -50, 450] for t in TASKS], ["task", "start", "reference"])
    curves = normalize_curves(read_curves([r / "curves.csv" for r in runs]), read_scales(table))
    ax = _visible_axes(build_figure(curves, reps=50, value="normalized score"))[0]
    assert ax.get_ylabel() == "normalized score"
    assert 0.8 < max(line.get_ydata().max() for line in ax.get_lines()) < 1.2  # the curves rise from -50 to ~450
    out = tmp_path / "plot"
    assert run_plot(PlotConfig(runs=[str(r) for r in runs], out=str(out), references=str(table), reps=50)) == [
        out / "curves.png"]


@pytest.mark.parametrize(("rows", "header", "needle"), [
    ([[TASKS[0], -50, 450]], ["task", "start", "reference"], "does not match the task list"),
    ([[t, -50] for t in TASKS], ["task", "start"], "lacks the column(s) reference"),
    ([[t, -50, "high"] for t in TASKS], ["task", "start", "reference"], "must be numbers"),
    ([[t, 450, -50] for t in TASKS], ["task", "start", "reference"], "does not exceed start return"),
])
def test_a_bad_reference_table_is_refused_before_drawing(runs: list[Path], tmp_path: Path, rows: list[list[object]],
                                                         header: list[str], needle: str) -> None:
    table = _write(tmp_path / "references.csv", rows, header)
    out = tmp_path / "plot"
    with pytest.raises(UserError, match=re.escape(needle)):
        run_plot(PlotConfig(runs=[str(r) for r in runs], out=str(out), references=str(table), reps=50))
    assert not (out / "curves.png").exists()
