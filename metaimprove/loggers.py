"""What a stage reports while it runs: its messages through Python ``logging`` (to the console and to
``<out>/<stage>.log``), its metric tables as CSV files in ``out`` written row by row, and on request the same
metrics to TensorBoard or Weights & Biases; progress bars that stay quiet off a terminal (Slurm logs).

The stages (``collect``, ``train``, ``apply``, and any later one) open a :func:`run_log` and a :class:`Metrics`
on their ``out`` once their input is accepted, so that a refused run writes nothing.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from metaimprove.errors import UserError
from metaimprove.storage import atomic_write_csv

LOGGERS = ("csv", "tensorboard", "wandb")
"""``logger=`` options: the CSV files alone, or also TensorBoard event files, or also a W&B run"""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WANDB_PROJECT = "metaimprove"
TENSORBOARD_DIR = "tensorboard"
"""folder of ``out`` holding TensorBoard's event files"""

PACKAGE_LOG = logging.getLogger("metaimprove")


def check_logger(logger: str) -> None:
    """Refuse an unknown ``logger=`` (one-line :class:`UserError`)."""
    if logger not in LOGGERS:
        raise UserError(f"logger must be one of {list(LOGGERS)}, got '{logger}'")


@contextlib.contextmanager
def run_log(out: str | os.PathLike[str], stage: str) -> Iterator[Path]:
    """While the stage runs, send the package's log records (INFO and up) to ``<out>/<stage>.log`` (appended: a
    resumed run keeps its history) and, when no handler is configured anywhere (a script or notebook that set up
    no logging), to stdout as plain messages, as the CLI shows them. Yields the log file's path."""
    path = Path(out) / f"{stage}.log"
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handlers: list[logging.Handler] = [file_handler]
    if not logging.getLogger().handlers and not PACKAGE_LOG.handlers:
        handlers.append(logging.StreamHandler(sys.stdout))
    level = PACKAGE_LOG.level
    PACKAGE_LOG.setLevel(logging.INFO)
    for handler in handlers:
        PACKAGE_LOG.addHandler(handler)
    try:
        yield path
    finally:
        for handler in handlers:
            PACKAGE_LOG.removeHandler(handler)
            handler.close()
        PACKAGE_LOG.setLevel(level)


def progress(**kwargs: Any) -> tqdm:  # type: ignore[type-arg]
    """A tqdm progress bar that draws only on a terminal: off one (a Slurm log, a pipe) it writes nothing."""
    return tqdm(dynamic_ncols=True, disable=None, **kwargs)


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The complete rows of the CSV file at ``path`` (none if it does not exist), as strings, keyed by its header;
    a row torn by a crash while it was appended is left out."""
    if not Path(path).exists():
        return []
    with Path(path).open(newline="") as f:
        return [row for row in csv.DictReader(f) if None not in row and None not in row.values()]


class CsvTable:
    """A CSV file in a run directory that grows a row at a time, each row flushed as it comes, so that a run's
    metrics can be read (and plotted) while it runs and survive its interruption."""

    def __init__(self, path: str | os.PathLike[str], fields: Sequence[str]) -> None:
        self.path, self.fields = Path(path), list(fields)

    def reset(self, rows: Sequence[Mapping[str, Any]] = ()) -> None:
        """Replace the file (atomically) with a header and ``rows``: where a resumed run starts again."""
        atomic_write_csv(self.path, self.fields, rows)

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Add ``rows`` at the end of the file (written with a header by :meth:`reset` first) and flush them."""
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerows(rows)
            f.flush()


class Metrics:
    """Where a stage's metrics go besides its CSV files: nowhere more (``logger=csv``), TensorBoard event files in
    ``<out>/tensorboard`` (``logger=tensorboard``), or a W&B run in ``out`` (``logger=wandb``; ``WANDB_MODE=offline``
    keeps it on disk for ``wandb sync``).

    A table is a named series of rows, such as the training losses per epoch or one run's returns per env step; each
    numeric column becomes the scalar ``<table>/<column>`` against the table's own step.
    """

    def __init__(self, out: str | os.PathLike[str], logger: str, stage: str,
                 config: Mapping[str, Any] | None = None) -> None:
        check_logger(logger)
        self.logger = logger
        self._writer: Any = None
        self._wandb: Any = None
        self._tables: set[str] = set()
        if logger == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("logger=tensorboard needs the tensorboard package, which is not installed: "
                                "pip install tensorboard (or metaimprove[logging])") from None
            self._writer = SummaryWriter(str(Path(out) / TENSORBOARD_DIR))
        elif logger == "wandb":
            try:
                import wandb
            except ImportError:
                raise UserError("logger=wandb needs the wandb package, which is not installed: pip install wandb "
                                "(or metaimprove[wandb]), or choose logger=csv|tensorboard") from None
            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), dir=str(out),
                                     job_type=stage, config=dict(config or {}), name=f"{stage} {Path(out).name}")

    def log(self, table: str, row: Mapping[str, Any], step: int) -> None:
        """Record the numeric values of ``row`` as scalars ``<table>/<column>`` at ``step`` of that table."""
        values = {f"{table}/{k}": float(v) for k, v in row.items()
                  if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)
            self._writer.flush()
        elif self._wandb is not None:
            if table not in self._tables:
                # Each table has its own step axis (epochs, env steps of one run), so no global step is forced.
                self._wandb.define_metric(f"{table}/step")
                self._wandb.define_metric(f"{table}/*", step_metric=f"{table}/step")
                self._tables.add(table)
            self._wandb.log({**values, f"{table}/step": step})

    def close(self) -> None:
        """Flush and close the TensorBoard writer or finish the W&B run."""
        if self._writer is not None:
            self._writer.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
