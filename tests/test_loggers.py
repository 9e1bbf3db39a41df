"""Run logs: the log file and the console, quiet progress bars off a terminal, CSV tables written row by row, and the
metrics loggers (TensorBoard, W&B offline, a one-line error when one is not installed)."""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from metaimprove.errors import UserError
from metaimprove.loggers import CsvTable, Metrics, progress, read_rows, run_log

log = logging.getLogger("metaimprove.tests")


def test_run_log_writes_the_stages_messages_to_a_file_in_out(tmp_path: pathlib.Path) -> None:
    with run_log(tmp_path, "stage") as path:
        log.info("first run")
    with run_log(tmp_path, "stage"):
        log.warning("second run")
    log.info("after the stage")
    lines = path.read_text().splitlines()
    assert path == tmp_path / "stage.log" and len(lines) == 2
    assert lines[0].endswith("INFO metaimprove.tests: first run") and "WARNING" in lines[1]


def test_stages_show_their_messages_where_no_logging_is_configured(tmp_path: pathlib.Path) -> None:
    # A script that configured no logging sees the messages on stdout, as the CLI shows them; progress bars,
    # which go to stderr, stay quiet off a terminal.
    script = textwrap.dedent(f"""
        import logging
        from metaimprove.loggers import progress, run_log
        with run_log({str(tmp_path)!r}, "stage"):
            logging.getLogger("metaimprove.x").info("hello")
            for _ in progress(iterable=range(3), desc="bar"):
                pass
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout == "hello\n" and result.stderr == ""


def test_progress_bars_draw_only_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    for _ in progress(iterable=range(3), desc="quiet"):
        pass
    assert capsys.readouterr().err == ""
    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "w") as terminal, progress(total=3, desc="drawn", file=terminal) as bar:
            assert not bar.disable
    finally:
        os.close(master)


def test_csv_table_grows_row_by_row_and_drops_a_torn_row(tmp_path: pathlib.Path) -> None:
    table = CsvTable(tmp_path / "m.csv", ["epoch", "loss"])
    table.reset()
    table.append([{"epoch": 0, "loss": 0.5}])
    assert read_rows(table.path) == [{"epoch": "0", "loss": "0.5"}]
    table.append([{"epoch": 1, "loss": 0.25}])
    with table.path.open("a") as f:
        f.write("2")  # a crash in the middle of a row
    assert read_rows(table.path) == [{"epoch": "0", "loss": "0.5"}, {"epoch": "1", "loss": "0.25"}]
    table.reset([{"epoch": 0, "loss": 0.5}])
    assert read_rows(table.path) == [{"epoch": "0", "loss": "0.5"}]
    assert read_rows(tmp_path / "missing.csv") == []


def test_tensorboard_receives_each_tables_numbers_at_its_steps(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with Metrics(tmp_path, "tensorboard", "stage") as metrics:
        for step, loss in enumerate([0.5, 0.25]):
            metrics.log("train", {"loss": loss, "name": "text is skipped", "nan": float("nan")}, step)
        metrics.log("run/a", {"return": -3.0}, 512)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["run/a/return", "train/loss"]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(0, 0.5), (1, 0.25)]
    assert [(e.step, e.value) for e in events.Scalars("run/a/return")] == [(512, -3.0)]


def test_wandb_runs_offline_without_a_network(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with Metrics(tmp_path, "wandb", "stage", {"lr": 0.001}) as metrics:
        metrics.log("train", {"loss": 0.5}, 0)
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run.glob("*.wandb"))


@pytest.mark.parametrize(("logger", "module", "advice"), [("wandb", "wandb", "pip install wandb"),
                                                           ("tensorboard", "torch.utils.tensorboard",
                                                            "pip install tensorboard")])
def test_a_logger_that_is_not_installed_is_a_one_line_error(logger: str, module: str, advice: str,
                                                            tmp_path: pathlib.Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    with pytest.raises(UserError, match=f"logger={logger} needs .*{advice}") as info:
        Metrics(tmp_path, logger, "stage")
    assert "\n" not in str(info.value) and list(tmp_path.iterdir()) == []


def test_an_unknown_logger_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(UserError, match=r"logger must be one of \['csv', 'tensorboard', 'wandb'\], got 'mlflow'"):
        Metrics(tmp_path, "mlflow", "stage")
