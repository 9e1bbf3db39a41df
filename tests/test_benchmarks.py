"""The evaluation and reproduction benchmarks refuse bad input before they run anything (one line, a non-zero exit,
nothing written), and the memorization audit measures what it says."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params, save_policy

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "operator", "bogus"], "unknown method(s) bogus"),
    (["--methods", "operator", "no_update"], "needs the operator and at least one peer"),
    (["--methods", "operator", "ars", "--budget", "1000"], "ars: budget B = 1000 env steps is smaller than one batch"),
    (["--tasks", "40"], "lacks reference runs of"),
    (["--final", "--render"], "not allowed with argument"),
    (["--variants", "Tasks=x"], "give NAME=CHECKPOINT with a lower-case name"),
    (["--variants", "ars=results/operators/halfcheetah_vel.safetensors"], "the name ars is taken"),
    (["--variants", "v=nothing.safetensors"], "operator nothing.safetensors is missing"),
    (["--variants", "v=results/operators/hopper_rand_params.safetensors"], "a variant must improve the same policies"),
])
def test_improvement_refuses_bad_input_in_one_line(tmp_path: pathlib.Path, args: list[str], message: str) -> None:
    work = tmp_path / "work"
    result = subprocess.run([sys.executable, "benchmarks/improvement.py", *args, "--work", str(work)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not work.exists()


@pytest.mark.parametrize(("case", "message"), [
    ("family", "no results/operators/ant_goal.train.yaml"),
    ("missing", "no dataset at"),
    ("other", "was not collected with results/operators/halfcheetah_vel.collect.yaml's settings"),
])
def test_reproduce_refuses_bad_input_in_one_line(tmp_path: pathlib.Path, case: str, message: str) -> None:
    dataset = tmp_path / "dataset"
    if case == "other":  # a collection of other settings than the shipped operator's
        dataset.mkdir()
        (dataset / "manifest.json").write_text("{}")
        (dataset / "config.yaml").write_text("n_tasks: 2\n")
    family = ["--family", "ant_goal"] if case == "family" else []
    work = tmp_path / "work"
    before = (ROOT / "results" / "reproduce.csv").read_bytes()
    result = subprocess.run([sys.executable, "benchmarks/reproduce.py", *family, "--dataset", str(dataset), "--work",
                             str(work)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not work.exists() and (ROOT / "results" / "reproduce.csv").read_bytes() == before


def test_gpu_sim_without_its_extra_or_a_gpu_measures_nothing_in_one_line(tmp_path: pathlib.Path) -> None:
    """Without mujoco-warp (CI) the GPU benchmark names the extra to install in one line; with it but no CUDA device
    it says so last (after Warp's own start-up lines)."""
    result = subprocess.run([sys.executable, "benchmarks/gpu_sim.py"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert 'pip install -c constraints.txt -e ".[gpu]"' in last or "no CUDA device here" in last
    assert "Traceback" not in result.stderr


def test_the_memorization_audit_measures_distances_to_training_checkpoints_and_between_seeds(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from common import folded, memorization

    spec = PolicySpec(3, 2, hidden=(4,))
    norm = ObsNormalizer(np.array([0.5, -1.0, 2.0]), np.array([4.0, 1.0, 0.25]))
    policies = [Policy(spec, init_params(spec, torch.Generator().manual_seed(i)), norm) for i in range(4)]
    snapshots = torch.stack([folded(policies[0]), folded(policies[1])])
    for method, seeds in (("operator", (0, 1)), ("ppo", (2, 3))):
        (tmp_path / "policies" / method).mkdir(parents=True)
        for seed in seeds:
            save_policy(tmp_path / "policies" / method / f"fam-train-0-s{seed}.safetensors", policies[seed])
    audit = memorization(tmp_path, snapshots)
    assert audit["operator_to_nearest_checkpoint"] == pytest.approx(0.0, abs=1e-6)  # it landed on checkpoints
    nearest = torch.cdist(torch.stack([folded(policies[2]), folded(policies[3])]), snapshots).min(1).values
    assert audit["ppo_to_nearest_checkpoint"] == pytest.approx(float(nearest.median()), rel=1e-6)
    assert audit["ppo_seed_to_seed"] == pytest.approx(float((folded(policies[2]) - folded(policies[3])).norm()))
    assert audit["ppo_seed_to_seed"] > 0


def test_variants_are_scored_paired_with_the_operator_and_give_the_scaling_figure(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``--variants`` operator's figures pair it by task and seed; ``tasks_<N>`` variants give the scaling one."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import csv

    from common import REFERENCE_SEEDS, reference_table
    from improvement import Scored, variant_figures

    tasks = ["halfcheetah_vel/train/32", "halfcheetah_vel/train/33"]
    scales = {r["task"]: (float(r["start"]), float(r["reference"])) for r in reference_table(tasks, REFERENCE_SEEDS)}
    batch, budget = 2048.0, 4096.0

    def write(path: pathlib.Path, fractions: dict[str, float]) -> Scored:
        """Curves reaching ``fraction`` of the way from each task's start to its reference at B (seed 1: + 0.1)."""
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["method", "task", "seed", "env_steps", "return", "fallbacks", "guard_steps"])
            for method, fraction in fractions.items():
                for task in tasks:
                    start, reference = scales[task]
                    for seed in (0, 1):
                        for steps, part in ((0, 0.0), (batch, fraction / 2), (budget, fraction + 0.1 * seed)):
                            writer.writerow([method, task, seed, steps, start + part * (reference - start), 0, 0])
        return Scored.of(path, batch, budget)

    main = write(tmp_path / "main.csv", {"operator": 0.4, "ars": 0.5})
    variants = write(tmp_path / "variants.csv", {"tasks_16": 0.2, "tasks_64": 0.6})
    figures, lines = variant_figures(variants, main, budget, batch, "validation", "ars")
    assert figures["variant_tasks_64_paired_vs_operator_validation"] == "0.200 [0.200, 0.200]"
    assert figures["variant_tasks_16_paired_vs_best_peer_validation"] == "-0.300 [-0.300, -0.300]"
    assert figures["variant_tasks_64_score_at_B_validation"].startswith("0.650 ")
    assert figures["scaling_64_vs_16_validation"] == "0.400 [0.400, 0.400]"
    assert any(line.startswith("| `tasks_64` |") for line in lines)
