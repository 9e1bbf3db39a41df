"""The evaluation benchmark refuses bad input before it runs anything: one line, a non-zero exit, nothing written."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "operator", "bogus"], "unknown method(s) bogus"),
    (["--methods", "operator", "no_update"], "needs the operator and at least one peer"),
    (["--methods", "operator", "ars", "--budget", "1000"], "ars: budget B = 1000 env steps is smaller than one batch"),
    (["--tasks", "40"], "lacks reference runs of"),
    (["--final", "--render"], "not allowed with argument"),
])
def test_improvement_refuses_bad_input_in_one_line(tmp_path: pathlib.Path, args: list[str], message: str) -> None:
    work = tmp_path / "work"
    result = subprocess.run([sys.executable, "benchmarks/improvement.py", *args, "--work", str(work)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not work.exists()


def test_gpu_sim_without_its_extra_or_a_gpu_measures_nothing_in_one_line(tmp_path: pathlib.Path) -> None:
    """Without mujoco-warp (CI) the GPU benchmark names the extra to install in one line; with it but no CUDA device
    it says so last (after Warp's own start-up lines)."""
    result = subprocess.run([sys.executable, "benchmarks/gpu_sim.py"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert 'pip install -c constraints.txt -e ".[gpu]"' in last or "no CUDA device here" in last
    assert "Traceback" not in result.stderr
