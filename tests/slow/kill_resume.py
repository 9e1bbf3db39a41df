"""Kill-safety machinery: SIGKILL ``python -m metaimprove collect`` at random moments, resume each time, check the data.

Each attempt starts the real CLI in its own session, waits until it has verified the dataset and started
collecting (it logs that the runs begin), waits until the manifest lists a number of shards drawn from a
seeded RNG (from those listed up to all but one), sleeps U(0, jitter) seconds and SIGKILLs the whole
process group (the CLI and its workers, like a machine losing power); the next attempt resumes. An
attempt that completes the dataset ends a round and the next round starts a new dataset, until all
kills have landed. Every round's dataset must list every planned run exactly once, every shard must
verify, and manifest and config must be byte-identical to those of an uninterrupted collection with the
same seeds (the manifest's checksums pin every shard's bytes).

Used by ``tests/slow/test_kill_resume.py`` (20 kills, what ``benchmarks/kill_resume.py`` ran for the
``kill_resume`` rows of ``results/reliability.csv``) and by ``tests/e2e/test_kill_resume.py`` (3 kills, in the
default run).
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from metaimprove.data.collect import load_manifest, verify_dataset

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
                            cwd=cwd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _started(proc: subprocess.Popen[bytes]) -> threading.Event:
    """An event set once the CLI logs that the runs begin (the collection proper has begun)."""
    event = threading.Event()

    def watch() -> None:
        assert proc.stdout is not None
        tail = b""
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
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

