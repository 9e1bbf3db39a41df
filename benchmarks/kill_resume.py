"""Kill-safety: SIGKILL ``python -m metaimprove collect`` at random moments, resume each time, check the data.

Each attempt starts the real CLI in its own session, waits until it has verified the dataset and started
collecting (its progress bar appears), waits until the manifest lists a number of shards drawn from a
seeded RNG (from those listed up to all but one), sleeps U(0, jitter) seconds and SIGKILLs the whole
process group (the CLI and its workers, like a machine losing power); the next attempt resumes. An
attempt that completes the dataset ends a round and the next round starts a new dataset, until all
kills have landed. Every round's dataset must list every planned run exactly once, every shard must
verify, and manifest and config must be byte-identical to those of an uninterrupted collection with the
same seeds (the manifest's checksums pin every shard's bytes).

Appends ``kill_resume`` rows to ``results/reliability.csv``::

    python benchmarks/kill_resume.py [--kills 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from metaimprove.data.collect import load_manifest, verify_dataset

RESULTS = Path(__file__).resolve().parent.parent / "results" / "reliability.csv"
CSV_FIELDS = ["date", "host", "benchmark", "name", "value", "note"]
# A tiny collection: 3 tasks × 2 seeds × 2 updates of a 2-env × 32-step PPO.
TINY = ["teacher.n_envs=2", "teacher.n_steps=32", "teacher.minibatch_size=32", "teacher.n_epochs=1",
        "n_tasks=3", "seeds=2", "iterations=2"]
STARTED = "collect: "
START_TIMEOUT = 300.0


@dataclass
class KillStats:
    """What a kill-and-resume session did."""

    kills: int = 0
    """attempts SIGKILLed while running"""
    rounds: int = 0
    """datasets completed (a dataset finished before the last kill starts a new one)"""
    shards_at_kill: list[int] = field(default_factory=list)
    """shards in the manifest after each kill"""
    problems: list[str] = field(default_factory=list)
    """what :func:`check` found wrong in any round's dataset (empty: every one equals the reference)"""
    seconds: float = 0.0
    """wall time of the whole session"""


def _cli(out: Path, overrides: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("METAIMPROVE_DEBUG", "HYDRA_FULL_ERROR")}
    return subprocess.Popen([sys.executable, "-m", "metaimprove", "collect", *overrides, f"out={out}"],
                            cwd=cwd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _started(proc: subprocess.Popen[bytes]) -> threading.Event:
    """An event set once the CLI prints its progress bar (the collection proper has begun)."""
    event = threading.Event()

    def watch() -> None:
        assert proc.stderr is not None
        tail = b""
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):  # type: ignore[union-attr]
            tail = (tail + chunk)[-256:]
            if STARTED.encode() in tail:
                event.set()
        event.set()  # the process ended (nothing left to collect, or an error)

    threading.Thread(target=watch, daemon=True).start()
    return event


def kill_and_resume(root: Path, reference: Path, overrides: list[str], kills: int, seed: int, jitter: float,
                    cwd: Path) -> KillStats:
    """Collect into ``root/round-<i>``, SIGKILLing attempts ``kills`` times in all, and check each dataset.

    Each attempt draws (seeded) how many shards the manifest must list before the kill, from those
    already listed up to all but one, waits for them, then U(0, ``jitter``) seconds more, so kills land
    all along a collection: in startup, mid-run, while shards and the manifest are written. An attempt
    that completes its dataset ends the round: the dataset is compared with ``reference`` and the next
    round starts afresh, until ``kills`` kills have landed; the last round is then completed. Raises if
    an attempt fails on its own.
    """
    rng = random.Random(seed)
    stats = KillStats()
    planned = len(load_manifest(reference))
    begin = time.monotonic()
    while True:
        out = root / f"round-{stats.rounds}"
        proc = _cli(out, overrides, cwd)
        try:
            if not _started(proc).wait(START_TIMEOUT):
                raise RuntimeError(f"collect did not start within {START_TIMEOUT:.0f} s")
            if stats.kills < kills:
                target = rng.randint(min(_listed(out), planned - 1), planned - 1)
                while _listed(out) < target and proc.poll() is None:
                    time.sleep(0.02)
            proc.wait(rng.uniform(0.0, jitter) if stats.kills < kills else START_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            stats.kills += 1
            stats.shards_at_kill.append(_listed(out))
            continue
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"collect failed on its own (exit {proc.returncode})")
        stats.problems += [f"round {stats.rounds}: {problem}" for problem in check(out, reference)]
        stats.rounds += 1
        if stats.kills >= kills:
            break
    stats.seconds = time.monotonic() - begin
    return stats


def _listed(out: Path) -> int:
    return len(load_manifest(out)) if (out / "manifest.json").exists() else 0


def check(out: Path, reference: Path) -> list[str]:
    """What is wrong with ``out`` against the uninterrupted ``reference`` (empty: nothing)."""
    problems = []
    shards = [e["shard"] for e in verify_dataset(out)]
    repeated = [name for name, n in collections.Counter(shards).items() if n > 1]
    if repeated:
        problems.append(f"listed more than once: {repeated}")
    if shards != [e["shard"] for e in load_manifest(reference)]:
        problems.append("the manifest does not list every planned run in order")
    for name in ("manifest.json", "config.yaml"):
        if (out / name).read_bytes() != (reference / name).read_bytes():
            problems.append(f"{name} differs from the uninterrupted run")
    listed = {name for shard in shards for name in (shard, shard.removesuffix(".safetensors") + ".json")}
    strays = sorted(p.relative_to(out).as_posix() for p in (out / "shards").iterdir()) != sorted(listed)
    if strays:
        problems.append("shards/ holds files the manifest does not list")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to land mid-run")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--jitter", type=float, default=3.0,
                        help="kill up to this many seconds after the drawn number of shards is listed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        reference = root / "reference"
        proc = _cli(reference, [*TINY, "workers=2"], root)
        _started(proc)
        if proc.wait() != 0:
            raise RuntimeError("the uninterrupted reference collection failed")
        stats = kill_and_resume(root / "killed", reference, [*TINY, "workers=2"], args.kills, args.seed,
                                args.jitter, root)
    at = stats.shards_at_kill
    figures = {
        "kills": (stats.kills, "SIGKILL of the CLI's process group U(0, "
                  f"{args.jitter:g}) s after a seeded-random number of shards was listed"),
        "kills_before_first_shard": (at.count(0), "manifest still empty at the kill"),
        "kills_mid_dataset": (sum(0 < n < 6 for n in at), "1-5 of the 6 shards written at the kill"),
        "datasets_completed": (stats.rounds, "a dataset completed before the last kill starts a new one"),
        "data_equal_to_uninterrupted": (int(not stats.problems), "; ".join(stats.problems) or
                                        "every round: manifest and config bytes equal, shards verified, no strays"),
        "wall_s": (round(stats.seconds, 1), "whole session on a shared 2-core machine"),
    }
    write_rows("kill_resume", figures)
    for name, (value, note) in figures.items():
        print(f"{name}: {value}  ({note})")
    if stats.problems:
        sys.exit(1)


def write_rows(benchmark: str, figures: dict[str, tuple[object, str]]) -> None:
    """Append ``figures`` (name → (value, note)) to ``results/reliability.csv``."""
    RESULTS.parent.mkdir(exist_ok=True)
    new = not RESULTS.exists()
    with RESULTS.open("a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(CSV_FIELDS)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        for name, (value, note) in figures.items():
            writer.writerow([stamp, platform.node(), benchmark, name, value, note])


if __name__ == "__main__":
    main()
