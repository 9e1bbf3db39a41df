"""The meta-learned start for the operator: Reptile whose inner loops are the operator's applications
(``metaimprove metalearn inner=operator``)."""

import pathlib

import pytest
import torch

from metaimprove.errors import UserError
from metaimprove.operator.checkpoint import OperatorCheckpoint
from metaimprove.operator.runtime import BatchSchedule, Explorer, operator_update
from metaimprove.sim.policy import ObsNormalizer, PolicySpec, load_policy
from metaimprove.sim.tasks import TaskConfig, get_family
from metaimprove.training import metalearn
from metaimprove.training.metalearn import (
    META_POLICY,
    MetaLearnConfig,
    OperatorImprover,
    inner_loop,
    meta_train,
    plan,
)
from tests.helpers import TINY_ARS, run_cli
from tests.training.test_metalearn import interrupted, same_policy

INNER = 64 + 64 + 128  # the moving operator's first 3 batches: two 2-env warm-up batches, then a 4-env one


def tiny(operator: pathlib.Path, **changes: object) -> MetaLearnConfig:
    """Reptile over the operator's 3 training tasks: 2 inner loops per outer step, each 3 applications."""
    settings: dict[str, object] = dict(task=TaskConfig("halfcheetah_vel"), inner="operator",
                                       operator_path=str(operator), env_steps=3 * INNER, inner_steps=3, meta_batch=2,
                                       out="unused")
    settings.update(changes)
    return MetaLearnConfig(**settings)  # type: ignore[arg-type]


def test_an_inner_loop_is_the_operators_run_as_apply_takes_it(moving_operator: pathlib.Path) -> None:
    # apply's operator method: explore on the schedule (warm-up included), then θ ← f(θ, τ, ask), seeded by the run.
    op, ckpt = OperatorCheckpoint.load(moving_operator)
    task, seed, start = get_family("halfcheetah_vel").task("train", 1), 5, ckpt.fresh_policy(2)
    explore = Explorer(ckpt, task, start, seed)
    update = operator_update(op, ckpt, task, ckpt.ask(), torch.Generator().manual_seed(seed))
    policy, steps = start, 0
    for _ in range(3):
        policy = update(policy, explore(policy, steps))
        steps += BatchSchedule.of(ckpt).batch_at(steps)
    seen = ObsNormalizer.identity(ckpt.spec.obs_dim)
    seen.frozen = False
    run = inner_loop(OperatorImprover(op, ckpt), task, start, 3, seed, seen)
    assert same_policy(run.policy, policy) and not torch.equal(policy.theta, start.theta)
    assert run.env_steps == steps == INNER == plan(tiny(moving_operator)).inner_env_steps
    assert seen.count == pytest.approx(INNER)


def test_operator_reptile_is_seeded_and_resumes_with_the_same_bits(moving_operator: pathlib.Path,
                                                                   tmp_path: pathlib.Path) -> None:
    p = plan(tiny(moving_operator))
    assert [t.name for t in p.tasks] == [f"halfcheetah_vel/train/{i}" for i in range(3)]
    assert p.spec == OperatorCheckpoint.load(moving_operator)[1].spec
    policy, log = meta_train(tiny(moving_operator), progress=False)
    again, _ = meta_train(tiny(moving_operator), progress=False)
    assert same_policy(policy, again)
    assert [r["env_steps"] for r in log] == [2 * INNER, 3 * INNER]
    fresh = metalearn.init_params(p.spec, torch.Generator().manual_seed(0))
    assert not torch.equal(again.theta, fresh)
    other, _ = meta_train(tiny(moving_operator, seed=1), progress=False)
    assert not torch.equal(other.theta, again.theta)

    interrupted(tiny(moving_operator, out=str(tmp_path / "cut")))
    whole = metalearn.metalearn(tiny(moving_operator, out=str(tmp_path / "whole")))
    metalearn.metalearn(tiny(moving_operator, out=str(tmp_path / "cut")))
    assert same_policy(load_policy(whole), load_policy(tmp_path / "cut" / META_POLICY))
    assert (tmp_path / "whole" / "log.csv").read_bytes() == (tmp_path / "cut" / "log.csv").read_bytes()


def test_a_resume_with_another_operator_or_inner_loop_is_refused(moving_operator: pathlib.Path,
                                                                 tmp_path: pathlib.Path) -> None:
    path, run = tmp_path / "operator.safetensors", tmp_path / "run"
    op, ckpt = OperatorCheckpoint.load(moving_operator)
    ckpt.save(path, op, summary={})
    metalearn.metalearn(tiny(path, out=str(run), env_steps=INNER, meta_batch=1))
    ckpt.save(path, ckpt.new_operator(), summary={})  # other weights under the same name
    with pytest.raises(UserError, match=r"other settings \(operator_sha256\)") as info:
        metalearn.metalearn(tiny(path, out=str(run), env_steps=INNER, meta_batch=1))
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"other settings \(ars, inner, inner_steps, operator_path, operator_sha256\)"):
        metalearn.metalearn(MetaLearnConfig(task=TaskConfig("halfcheetah_vel"), env_steps=INNER, inner_steps=2,
                                            meta_batch=1, ars=TINY_ARS, n_tasks=3, out=str(run)))


def test_a_dataset_gives_the_tasks_and_the_budget(moving_operator: pathlib.Path, ars_dataset: pathlib.Path) -> None:
    p = plan(tiny(moving_operator, dataset=str(ars_dataset), env_steps=None, inner_steps=1))
    assert p.budget == 3 * 3 * 128 and p.ars is None and p.inner_env_steps == 64
    assert [t.name for t in p.tasks] == [f"halfcheetah_vel/train/{i}" for i in range(3)]


@pytest.fixture(scope="module")
def narrow_operator(ars_operator: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The tiny ARS operator for policies of one 16-unit hidden layer (the datasets' policies have 32 × 32)."""
    _, ckpt = OperatorCheckpoint.load(ars_operator)
    ckpt.spec = PolicySpec(17, 6, hidden=(16,))
    path = tmp_path_factory.mktemp("narrow") / "operator.safetensors"
    ckpt.save(path, ckpt.new_operator(), summary={})
    return path


@pytest.mark.parametrize(("changes", "message"), [
    ({"inner": "sgd"}, "inner=sgd: choose one of ars, operator"),
    ({"operator_path": None}, "inner=operator needs operator_path="),
    ({"inner": "ars", "ars": TINY_ARS}, "operator_path= is the operator of inner=operator"),
    ({"operator_path": "no_such_operator"}, "operator no_such_operator is missing"),
    ({"ars": TINY_ARS}, "inner=operator collects on the operator's batch schedule"),
    ({"operator_path": "{narrow}", "dataset": "{dataset}"}, r"improves policies .*'hidden': \[16\].*but dataset"),
    ({"hidden": [16]}, r"hidden=\[16\] but operator .* improves policies with hidden \[32, 32\]"),
    ({"task": TaskConfig("halfcheetah_dir")}, "was trained on halfcheetah_vel tasks, not halfcheetah_dir"),
    ({"env_steps": INNER - 1}, r"less than one inner loop \(3 operator applications on its batch schedule = 256\)"),
    ({"env_steps": None}, "give env_steps"),
])
def test_bad_input_is_refused_in_one_line(changes: dict[str, object], message: str, moving_operator: pathlib.Path,
                                          narrow_operator: pathlib.Path, ars_dataset: pathlib.Path) -> None:
    names = {"narrow": narrow_operator, "dataset": ars_dataset}
    changes = {k: v.format(**names) if isinstance(v, str) else v for k, v in changes.items()}
    with pytest.raises(UserError, match=message) as info:
        plan(tiny(moving_operator, **changes))
    assert "\n" not in str(info.value)


def test_the_stage_takes_inner_operator(moving_operator: pathlib.Path, tmp_path: pathlib.Path) -> None:
    args = ["metalearn", "task=halfcheetah_vel", "inner=operator", f"operator_path={moving_operator}",
            f"env_steps={INNER}", "inner_steps=3", "meta_batch=1"]
    result = run_cli([*args, f"out={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{INNER} env steps of operator inner loops" in result.stdout
    assert load_policy(tmp_path / "run" / META_POLICY).normalizer.count == pytest.approx(INNER)
    result = run_cli([*args, "inner=sgd", f"out={tmp_path / 'bad'}"], tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "inner=sgd" in result.stderr and not (tmp_path / "bad").exists()
