"""Every file under results/ names the script and the command that produced it: ``results/PROVENANCE.csv``.

One manifest row per file: ``path``, ``rows`` (empty: the whole file; ``column=value``: the rows of a CSV whose
column holds that value, for files that several scripts append to, such as ``results/reliability.csv``),
``script`` (its current path in the repository), ``command`` (which names the script; the package's CLI,
``metaimprove/cli.py``, is named as ``metaimprove <stage>``), ``commit`` (the commit that last wrote it; empty for an
output not committed yet) and ``note``. No figure is typed by hand: a CSV row no manifest row covers is an error.
:func:`problems` is the checker; the tests below run it on the repository and show that it catches what it should on
a small fake one.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "results/PROVENANCE.csv"
COLUMNS = ["path", "rows", "script", "command", "commit", "note"]
CLI = "metaimprove/cli.py"


def read_manifest(root: Path) -> list[dict[str, str]]:
    """The manifest's rows (a header other than :data:`COLUMNS` is an error)."""
    with (root / MANIFEST).open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS, f"{MANIFEST} columns {reader.fieldnames}, expected {COLUMNS}"
        return list(reader)


def tracked_results(root: Path) -> list[str]:
    """The git-tracked files under ``results/`` (every file there where git is not available)."""
    try:
        out = subprocess.run(["git", "ls-files", "results"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return sorted(p.relative_to(root).as_posix() for p in (root / "results").rglob("*") if p.is_file())
    return sorted(out.stdout.splitlines())


def names_script(command: str, script: str) -> bool:
    """Whether ``command`` runs ``script``: by its path, or as ``metaimprove <stage>`` for the CLI."""
    if script == CLI:
        return all(part.strip().startswith("metaimprove ") for part in command.split("&&"))
    return script in command.split()


def problems(root: Path, files: Iterable[str], manifest: list[dict[str, str]]) -> list[str]:
    """What is wrong with the provenance of ``files`` (paths under ``root``) in ``manifest``; empty when nothing is."""
    out = []
    files = [f for f in files if f != MANIFEST]
    by_path: dict[str, list[dict[str, str]]] = {}
    for row in manifest:
        where = f"{MANIFEST}: {row['path']}" + (f" [{row['rows']}]" if row["rows"] else "")
        by_path.setdefault(row["path"], []).append(row)
        if not row["path"].startswith("results/"):
            out.append(f"{where}: not under results/")
        if not (row["script"] and (root / row["script"]).is_file()):
            out.append(f"{where}: script {row['script']!r} is not in the repository")
        elif not names_script(row["command"], row["script"]):
            out.append(f"{where}: command {row['command']!r} does not name {row['script']}")
        if row["rows"] and "=" not in row["rows"]:
            out.append(f"{where}: rows must be empty (the whole file) or column=value")
        if row["path"] not in files and row["commit"]:
            out.append(f"{where}: names a file that is not under results/ (a row for an output not committed yet "
                       "leaves commit empty)")
    for path, rows in by_path.items():
        selectors = [r["rows"] for r in rows]
        if len(set(selectors)) != len(selectors):
            out.append(f"{MANIFEST}: {path} has two rows for the same rows")
        if len(rows) > 1 and "" in selectors:
            out.append(f"{MANIFEST}: {path} has a whole-file row beside others")
    for path in files:
        if path not in by_path:
            out.append(f"{path}: no row in {MANIFEST} names the script and command that produced it")
            continue
        selectors = [r["rows"] for r in by_path[path] if r["rows"]]
        if not selectors:
            continue
        if not path.endswith(".csv"):
            out.append(f"{path}: per-row provenance needs a CSV")
            continue
        pairs = {tuple(s.split("=", 1)) for s in selectors}
        with (root / path).open(newline="") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                if not any(row.get(column) == value for column, value in pairs):
                    out.append(f"{path}:{line}: no row in {MANIFEST} covers it ({', '.join(sorted(selectors))})")
    return out


# -------------------------------------------------------------------------------------------- the repository


def test_every_results_file_and_row_has_provenance() -> None:
    assert problems(ROOT, tracked_results(ROOT), read_manifest(ROOT)) == []


def test_every_recorded_commit_wrote_its_file() -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("no git history")
    wrong = []
    for row in read_manifest(ROOT):
        if not row["commit"]:
            continue
        log = subprocess.run(["git", "log", "--format=%H", "--", row["path"]], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
        if not any(full.startswith(row["commit"]) for full in log):
            wrong.append(f"{row['path']}: commit {row['commit']} did not write it")
    assert wrong == []


def test_a_new_results_file_without_a_row_is_caught() -> None:
    files = [*tracked_results(ROOT), "results/new_figure.csv"]
    assert problems(ROOT, files, read_manifest(ROOT)) == [
        f"results/new_figure.csv: no row in {MANIFEST} names the script and command that produced it"]


# -------------------------------------------------------------------------------------------- a fake repository


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    """A repository with one script, a file it wrote and a file two sources append to, all provenanced."""
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "bench.py").write_text("")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "bench.csv").write_text("name,value\nspeed,2\n")
    (tmp_path / "results" / "shared.csv").write_text("benchmark,name,value\nbench,a,1\nother,b,2\n")
    _write_manifest(tmp_path, [
        {"path": "results/bench.csv", "rows": "", "script": "benchmarks/bench.py",
         "command": "python benchmarks/bench.py", "commit": "abc1234", "note": ""},
        {"path": "results/shared.csv", "rows": "benchmark=bench", "script": "benchmarks/bench.py",
         "command": "python benchmarks/bench.py --shared", "commit": "abc1234", "note": ""},
        {"path": "results/shared.csv", "rows": "benchmark=other", "script": "metaimprove/cli.py",
         "command": "metaimprove collect out=x && metaimprove train dataset=x", "commit": "abc1234", "note": ""},
    ])
    (tmp_path / "metaimprove").mkdir()
    (tmp_path / "metaimprove" / "cli.py").write_text("")
    return tmp_path


def _write_manifest(root: Path, rows: list[dict[str, str]]) -> None:
    with (root / MANIFEST).open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in (root / "results").rglob("*") if p.is_file())


def test_the_fake_repository_passes(fake: Path) -> None:
    assert problems(fake, _files(fake), read_manifest(fake)) == []


@pytest.mark.parametrize("change, expected", [
    ("new file", "results/new.png: no row"),
    ("hand-typed row", "results/shared.csv:4: no row"),
    ("missing script", "script 'benchmarks/gone.py' is not in the repository"),
    ("command names another script", "does not name benchmarks/bench.py"),
    ("stale row", "results/gone.csv: names a file that is not under results/"),
])
def test_the_checker_catches(fake: Path, change: str, expected: str) -> None:
    manifest = read_manifest(fake)
    if change == "new file":
        (fake / "results" / "new.png").write_bytes(b"")
    elif change == "hand-typed row":
        with (fake / "results" / "shared.csv").open("a") as f:
            f.write("typed_in,c,3\n")
    elif change == "missing script":
        manifest[0]["script"] = "benchmarks/gone.py"
    elif change == "command names another script":
        manifest[0]["command"] = "python benchmarks/other.py"
    elif change == "stale row":
        manifest.append({**manifest[0], "path": "results/gone.csv"})
    found = problems(fake, _files(fake), manifest)
    assert len(found) == 1 and expected in found[0], found
