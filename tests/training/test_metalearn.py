"""The meta-learned start: Reptile with ARS inner loops (``metalearn``), and its peers ``meta`` and ``meta_ars``."""

import pathlib

import numpy as np
import pytest
import torch

from metaimprove import seeds
from metaimprove.errors import UserError
from metaimprove.evaluation.apply import apply
from metaimprove.sim.policy import ObsNormalizer, Policy, fold_normalizer, load_policy
from metaimprove.sim.rollout import evaluate
from metaimprove.sim.tasks import TaskConfig, get_family
from metaimprove.teachers import ARS, ARSConfig
from metaimprove.training import metalearn
from metaimprove.training.metalearn import (
    META_POLICY,
    InnerRun,
    MetaLearnConfig,
    meta_train,
    plan,
    reptile_step,
)
from tests.helpers import TINY_ARS, apply_config, curve_rows, run_cli

INNER = 2 * 128  # two tiny ARS updates of 4 envs × 32 steps


def tiny(**changes: object) -> MetaLearnConfig:
    """Reptile over 2 halfcheetah_vel train tasks: 2 inner loops per outer step, each 2 tiny ARS updates."""
    settings: dict[str, object] = dict(task=TaskConfig("halfcheetah_vel"), env_steps=3 * INNER, inner_steps=2,
                                       meta_batch=2, ars=TINY_ARS, n_tasks=2, out="unused")
    settings.update(changes)
    return MetaLearnConfig(**settings)  # type: ignore[arg-type]


def same_policy(a: Policy, b: Policy) -> bool:
    return (torch.equal(a.theta, b.theta) and np.array_equal(a.normalizer.mean, b.normalizer.mean)
            and np.array_equal(a.normalizer.var, b.normalizer.var) and a.normalizer.count == b.normalizer.count)


def test_reptile_is_seeded_and_spends_exactly_its_env_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    collected = []
    explore = ARS.explore

    def counted(self: ARS, policy: Policy):  # type: ignore[no-untyped-def]
        exp = explore(self, policy)
        collected.append(exp.n_steps)
        return exp

    monkeypatch.setattr(ARS, "explore", counted)
    policy, log = meta_train(tiny(), progress=False)
    # 3 inner loops: an outer step of 2, then one of 1 (what is left of the budget).
    assert sum(collected) == 3 * INNER == log[-1]["env_steps"]
    assert [r["env_steps"] for r in log] == [2 * INNER, 3 * INNER]
    again, _ = meta_train(tiny(), progress=False)
    assert same_policy(policy, again)
    other, _ = meta_train(tiny(seed=1), progress=False)
    assert not torch.equal(policy.theta, other.theta)
    # The normalizer pooled every observation the inner loops collected (on top of the identity's 1e-4).
    assert policy.normalizer.count == pytest.approx(3 * INNER)
    # A budget between whole inner loops spends the whole ones that fit, never more.
    collected.clear()
    _, log = meta_train(tiny(env_steps=3 * INNER + 100), progress=False)
    assert sum(collected) == 3 * INNER == log[-1]["env_steps"]


def _fake_inner(moves: dict[int, torch.Tensor]):  # type: ignore[no-untyped-def]
    """An inner loop that moves θ by ``moves[task index]`` (a function of θ), spending one inner loop's steps."""

    def inner(teacher: ARS, task, start: Policy, k: int, seed: int, seen: ObsNormalizer) -> InnerRun:  # type: ignore[no-untyped-def]
        theta = moves[task.index](start.theta)
        return InnerRun(Policy(start.spec, theta, start.normalizer.copy()), INNER, 0.0, 0.0)

    return inner


def test_the_outer_step_is_theta0_plus_eps_times_the_mean_displacement(monkeypatch: pytest.MonkeyPatch) -> None:
    # Task 0's inner loop adds 1 to every parameter, task 1's adds 2: one outer step (both tasks) with ε = 0.5
    # moves θ₀ by 0.5 · (1 + 2) / 2 = 0.75 everywhere.
    monkeypatch.setattr(metalearn, "inner_loop", _fake_inner({0: lambda t: t + 1, 1: lambda t: t + 2}))
    cfg = tiny(env_steps=2 * INNER, outer_lr=0.5)
    theta0 = metalearn.init_params(plan(cfg).spec, torch.Generator().manual_seed(0))
    policy, log = meta_train(cfg, progress=False)
    assert log[0]["step_size"] == 0.5
    torch.testing.assert_close(policy.theta, theta0 + 0.75, rtol=0, atol=1e-6)


def test_an_inner_loop_that_only_changes_coordinates_moves_nothing() -> None:
    # θ_k computes θ₀'s function in its own normalizer's coordinates: interpolating after folding keeps it.
    spec = plan(tiny()).spec
    rng = np.random.default_rng(0)
    start = Policy(spec, metalearn.init_params(spec, torch.Generator().manual_seed(0)),
                   ObsNormalizer(rng.normal(size=17), rng.uniform(0.5, 2.0, size=17), 10.0))
    other = ObsNormalizer(rng.normal(size=17), rng.uniform(0.5, 2.0, size=17), 20.0)
    moved = Policy(spec, fold_normalizer(spec, start.theta.double(), start.normalizer, other).float(), other)
    canonical = ObsNormalizer(rng.normal(size=17), rng.uniform(0.5, 2.0, size=17), 30.0)
    new = reptile_step(start, [moved, moved], 0.7, canonical)
    back = fold_normalizer(spec, new.theta.double(), canonical, start.normalizer)
    torch.testing.assert_close(back.float(), start.theta, rtol=0, atol=1e-5)
    assert np.array_equal(new.normalizer.mean, canonical.mean) and np.array_equal(new.normalizer.var, canonical.var)


def test_theta0_moves_toward_the_tasks_mean_solution(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two tasks whose inner loops each go halfway to their own solution, a and b: Reptile's θ₀ heads for the
    # point nearest both, their mean (with a constant ε = 1, halving the distance each outer step).
    g = torch.Generator().manual_seed(3)
    spec = plan(tiny()).spec
    a, b = torch.randn(spec.n_params, generator=g), torch.randn(spec.n_params, generator=g)
    monkeypatch.setattr(metalearn, "inner_loop",
                        _fake_inner({0: lambda t: t + 0.5 * (a - t), 1: lambda t: t + 0.5 * (b - t)}))
    theta0 = metalearn.init_params(spec, torch.Generator().manual_seed(0))
    distances = []
    for outer_steps in (1, 2, 4, 8):
        policy, _ = meta_train(tiny(env_steps=2 * INNER * outer_steps, outer_lr_final=1.0), progress=False)
        distances.append(float((policy.theta - (a + b) / 2).norm()))
    start = float((theta0 - (a + b) / 2).norm())
    assert start > distances[0] > distances[1] > distances[2] > distances[3]
    assert distances == pytest.approx([start / 2, start / 4, start / 16, start / 256], rel=1e-4)


def interrupted(cfg: MetaLearnConfig) -> None:
    """``metalearn(cfg)`` stopped by a KeyboardInterrupt in its third inner loop (the second outer step's first)."""
    calls = []
    inner = metalearn.inner_loop

    def interrupting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return inner(*args, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(metalearn, "inner_loop", interrupting)
        with pytest.raises(KeyboardInterrupt):
            metalearn.metalearn(cfg)


def test_a_run_resumes_from_its_checkpoint_with_the_same_bits(tmp_path: pathlib.Path) -> None:
    metalearn.metalearn(tiny(out=str(tmp_path / "whole")))
    interrupted(tiny(out=str(tmp_path / "cut")))
    assert not (tmp_path / "cut" / META_POLICY).exists()
    metalearn.metalearn(tiny(out=str(tmp_path / "cut")))
    assert same_policy(load_policy(tmp_path / "whole" / META_POLICY), load_policy(tmp_path / "cut" / META_POLICY))
    assert (tmp_path / "whole" / "log.csv").read_bytes() == (tmp_path / "cut" / "log.csv").read_bytes()
    with pytest.raises(UserError, match=r"other settings \(seed\)"):
        metalearn.metalearn(tiny(out=str(tmp_path / "cut"), seed=1))


def test_bad_settings_are_refused(ars_dataset: pathlib.Path) -> None:
    with pytest.raises(UserError, match="less than one inner loop"):
        plan(tiny(env_steps=INNER - 1))
    with pytest.raises(UserError, match="give env_steps"):
        plan(tiny(env_steps=None))
    with pytest.raises(UserError, match="holds halfcheetah_vel runs, not halfcheetah_dir"):
        plan(tiny(task=TaskConfig("halfcheetah_dir"), dataset=str(ars_dataset), ars=ARSConfig()))
    with pytest.raises(UserError, match="leave ars"):
        plan(tiny(dataset=str(ars_dataset)))


@pytest.fixture(scope="module")
def meta_policy(ars_dataset: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """θ₀ meta-trained on the tiny ARS dataset's 3 tasks with its ARS, for its env steps (3 runs × 3 × 128)."""
    out = tmp_path_factory.mktemp("meta") / "run"
    return metalearn.metalearn(MetaLearnConfig(task=TaskConfig("halfcheetah_vel"), dataset=str(ars_dataset),
                                               inner_steps=2, meta_batch=2, out=str(out)))


def test_a_dataset_gives_the_tasks_the_ars_and_the_budget(ars_dataset: pathlib.Path, meta_policy: pathlib.Path
                                                         ) -> None:
    p = plan(MetaLearnConfig(task=TaskConfig("halfcheetah_vel"), dataset=str(ars_dataset), inner_steps=2,
                             meta_batch=2, out="unused"))
    assert p.budget == 3 * 3 * 128 and p.ars == TINY_ARS
    assert [t.name for t in p.tasks] == [f"halfcheetah_vel/train/{i}" for i in range(3)]
    log = (meta_policy.parent / "log.csv").read_text().splitlines()
    assert log[-1].split(",")[1] == str(4 * INNER)  # 4 whole inner loops fit in 1152 steps


def test_meta_ars_fine_tunes_the_meta_learned_start(ars_operator: pathlib.Path, meta_policy: pathlib.Path,
                                                    tmp_path: pathlib.Path) -> None:
    methods = ["meta", "meta_ars"]
    apply(apply_config(ars_operator, tmp_path / "run", methods=methods, meta_policy=str(meta_policy), seeds=1,
                       budget=640))
    rows = curve_rows(tmp_path / "run")
    curve = {m: [(int(r["env_steps"]), float(r["return"])) for r in rows if r["method"] == m] for m in methods}
    task = get_family("halfcheetah_vel").tasks("test", 1)[0]
    start = evaluate(load_policy(meta_policy), task, 1, seed=seeds.evaluation(0))
    assert curve["meta_ars"][0] == curve["meta"][0] == (0, pytest.approx(start, rel=1e-6))
    assert [s for s, _ in curve["meta_ars"]] == list(range(0, 640 + 1, 128))
    with pytest.raises(UserError, match=r"meta, meta_ars need\(s\) meta_policy=<file>; train it with `metaimprove "
                                        "metalearn task=halfcheetah_vel"):
        apply(apply_config(ars_operator, tmp_path / "missing", methods=methods))


TINY_CLI = ["inner_steps=1", "meta_batch=2", "n_tasks=2", "ars.n_directions=2", "ars.top_b=1", "ars.n_steps=32"]


def test_the_stage_writes_its_policy(tmp_path: pathlib.Path) -> None:
    result = run_cli(["metalearn", "task=halfcheetah_vel", "env_steps=256", *TINY_CLI, f"out={tmp_path / 'run'}"],
                     tmp_path)
    assert result.returncode == 0, result.stderr
    policy = load_policy(tmp_path / "run" / META_POLICY)
    assert policy.spec.hidden == (32, 32) and policy.normalizer.count == pytest.approx(256)
    assert "256 env steps" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["task=no_such_family", "env_steps=256"], "no_such_family"),
    (["task=halfcheetah_vel", "env_steps=100"], "less than one inner loop"),
    (["task=halfcheetah_dir", "dataset={dataset}"], "holds halfcheetah_vel runs, not halfcheetah_dir"),
])
def test_the_stage_refuses_bad_input_in_one_line(args: list[str], message: str, ars_dataset: pathlib.Path,
                                                 tmp_path: pathlib.Path) -> None:
    args = [a.format(dataset=ars_dataset) for a in args]
    tiny_args = TINY_CLI if "dataset" not in args[-1] else ["inner_steps=1"]
    result = run_cli(["metalearn", *args, *tiny_args, f"out={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "run" / META_POLICY).exists()
