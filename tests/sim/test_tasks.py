"""Task distribution: seeded sampling, splits, JSON round-trip, physics applied from the nominal model, task
distance, and fuzzed family files."""

import contextlib
import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metaimprove.errors import UserError
from metaimprove.sim.tasks import Task, TaskFamily, build_model, get_family, load_families, nominal_model, task_distance


def test_all_families_are_shipped():
    assert {"halfcheetah_vel", "halfcheetah_dir", "halfcheetah_rand_params", "hopper_rand_params",
            "walker2d_rand_params", "ant_dir", "ant_goal", "swimmer_vel"} <= set(load_families())


def test_rand_params_scale_every_geom_floor_included():
    """A contact takes the larger friction of its two geoms: scaling only the robot would leave the floor's
    friction in charge whenever the robot's became smaller, so every geom (floor too) gets its own scale."""
    for family in ("hopper_rand_params", "walker2d_rand_params"):
        task = get_family(family).task("train", 0)
        model, nominal = build_model(task), nominal_model(get_family(family).robot)
        floor = 0  # the first geom of both robots
        assert model.geom_friction[floor, 0] != nominal.geom_friction[floor, 0]
        assert len(task.physics.geom_friction) == model.ngeom
        exponents = np.log(np.array(task.physics.geom_friction)) / np.log(1.5)
        assert np.all(np.abs(exponents) <= 3.0 + 1e-9)


def test_ant_goal_ood_goals_lie_beyond_training_goals():
    fam = get_family("ant_goal")
    train = [t.param("goal_radius") for t in fam.tasks("train", 30)]
    ood = [t.param("goal_radius") for t in fam.tasks("ood", 30)]
    assert max(train) <= 2.0 <= min(ood) and max(ood) <= 3.0
    angles = [t.param("goal_angle") for t in fam.tasks("train", 30)]
    assert min(angles) >= 0.0 and max(angles) < 2 * np.pi and max(angles) - min(angles) > np.pi


def test_sampling_is_seeded_and_index_stable():
    fam = get_family("halfcheetah_vel")
    assert fam.task("train", 5) == fam.task("train", 5)
    assert fam.tasks("train", 8)[5] == fam.tasks("train", 3, start=5)[0]
    assert fam.task("train", 0) != fam.task("train", 1)


def test_splits_are_separate_streams_and_respect_ranges():
    fam = get_family("halfcheetah_vel")
    train = [t.param("target_velocity") for t in fam.tasks("train", 50)]
    test = [t.param("target_velocity") for t in fam.tasks("test", 50)]
    ood = [t.param("target_velocity") for t in fam.tasks("ood", 50)]
    assert not set(train) & set(test)
    assert all(0.0 <= v <= 1.5 for v in train + test)
    assert all(1.5 <= v <= 2.0 for v in ood)
    mass_exp = np.log(np.array([t.physics.body_mass for t in fam.tasks("ood", 20)])) / np.log(1.5)
    assert np.all(np.abs(mass_exp) >= 3.0 - 1e-9) and np.all(np.abs(mass_exp) <= 4.0 + 1e-9)
    train_exp = np.log(np.array([t.physics.body_mass for t in fam.tasks("train", 20)])) / np.log(1.5)
    assert np.all(np.abs(train_exp) <= 3.0 + 1e-9)
    # the tasks really differ: scales span most of the band
    assert train_exp.max() > 2.0 and train_exp.min() < -2.0


def test_direction_family_draws_both_directions():
    dirs = {t.param("direction") for t in get_family("halfcheetah_dir").tasks("train", 20)}
    assert dirs == {-1.0, 1.0}


def test_task_json_round_trip_is_exact():
    task = get_family("halfcheetah_dir").task("ood", 7)
    again = Task.from_json(task.to_json())
    assert again == task
    assert json.loads(again.to_json()) == json.loads(task.to_json())


def test_physics_scale_from_nominal_not_from_previous_task():
    fam = get_family("halfcheetah_rand_params")
    nominal = nominal_model("half_cheetah")
    t0, t1 = fam.task("train", 0), fam.task("train", 1)
    m1 = build_model(t1)
    np.testing.assert_allclose(m1.body_mass, nominal.body_mass * np.array(t1.physics.body_mass))
    np.testing.assert_allclose(m1.body_inertia, nominal.body_inertia * np.array(t1.physics.body_mass)[:, None])
    np.testing.assert_allclose(m1.geom_friction[:, 0], nominal.geom_friction[:, 0] * np.array(t1.physics.geom_friction))
    np.testing.assert_allclose(m1.dof_damping, nominal.dof_damping * np.array(t1.physics.dof_damping))
    np.testing.assert_allclose(m1.actuator_gear[:, 0], nominal.actuator_gear[:, 0] * np.array(t1.physics.actuator_gear))
    np.testing.assert_allclose(m1.opt.gravity, nominal.opt.gravity * t1.physics.gravity)
    # building another task first must not leak into this one, and the cached nominal stays untouched
    build_model(t0)
    np.testing.assert_array_equal(build_model(t1).body_mass, m1.body_mass)
    assert nominal.body_mass[1] == pytest.approx(6.2502, abs=1e-3)


def test_unknown_family_and_split_are_one_line_errors():
    with pytest.raises(UserError, match="unknown task family 'nope'"):
        get_family("nope")
    with pytest.raises(UserError, match="unknown split 'val'"):
        get_family("halfcheetah_vel").task("val", 0)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"params": {"target_velocity": {"train": [2.0, 1.0]}}}, "impossible"),
        ({"physics": {"body_mass": {"base": -1.5, "train": [-1, 1]}}}, "base must be > 0"),
        ({"physics": {"body_weight": {"base": 1.5, "train": [-1, 1]}}}, "body_weight"),
        ({"splits": {"val": {"seed": 1}}}, "unknown splits"),
        ({"splits": {"train": {"seed": -1}}}, "negative seeds"),
    ],
)
def test_bad_family_files_are_refused(patch, message):
    data = {"name": "x", "robot": "half_cheetah", "reward": "velocity", "env_id": "metaimprove/X-v0",
            "episode_length": 10, "splits": {"train": {"seed": 1}}, **patch}
    with pytest.raises(UserError, match=message):
        TaskFamily.from_dict(data)


def test_corrupt_task_json_is_refused():
    bad = get_family("halfcheetah_vel").task("train", 0).to_dict()
    bad["physics"]["body_mass"][2] = -1.0
    with pytest.raises(UserError, match="finite and positive"):
        Task.from_dict(bad)
    with pytest.raises(UserError, match="invalid task"):
        Task.from_dict({"family": "halfcheetah_vel"})


def test_tasks_listing_shows_each_family_cost(capsys):
    from metaimprove.cli import list_tasks
    from metaimprove.config import TasksConfig

    list_tasks(TasksConfig(family="hopper_rand_params"))
    out = capsys.readouterr().out
    assert "terminates when it falls" in out
    assert "× a halfcheetah_vel env step" in out and "results/family_cost.csv" in out


def test_task_distance_normalizes_each_quantity_by_its_training_range() -> None:
    task = get_family("halfcheetah_vel").task("test", 0)
    assert task_distance(task, task) == 0.0
    # The target velocity's training range is [0, 1.5]: a gap of its whole width is distance 1.
    faster = dataclasses.replace(task, params=(("target_velocity", task.param("target_velocity") + 1.5),))
    assert task_distance(task, faster) == pytest.approx(1.0)
    # Masses 1.5× heavier everywhere: log-scale gap 1 against an exponent range of width 6 -> 1/6.
    heavier = dataclasses.replace(task, physics=dataclasses.replace(
        task.physics, body_mass=tuple(m * 1.5 for m in task.physics.body_mass)))
    assert task_distance(task, heavier) == pytest.approx(1 / 6)
    assert task_distance(faster, heavier) == pytest.approx(task_distance(heavier, faster))


# Hypothesis fuzzes the task-family loader: any declaration gives a family or a UserError, never another error.
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=4))

_band = st.one_of(st.lists(_scalar, max_size=3), _scalar)

_range = st.one_of(st.fixed_dictionaries({"train": _band}, optional={"ood": st.lists(_band, max_size=2)}),
                   st.fixed_dictionaries({"choices": st.lists(_scalar, max_size=3)}), _scalar)

_physics = st.dictionaries(st.sampled_from(["body_mass", "gravity", "wings"]),
                           st.one_of(st.fixed_dictionaries({"base": _scalar, "train": _band}), _scalar), max_size=2)

def _mutations(base: dict) -> st.SearchStrategy[dict]:
    keys = st.sampled_from(["name", "robot", "reward", "env_id", "episode_length", "params", "physics", "splits"])
    values = st.one_of(_scalar, st.dictionaries(st.text(max_size=3), _range, max_size=2), _physics,
                       st.dictionaries(st.sampled_from(["train", "test", "ood", "x"]),
                                       st.one_of(st.fixed_dictionaries({"seed": _scalar}), _scalar), max_size=3))
    return st.dictionaries(keys, values, max_size=3).map(lambda change: {**base, **change})

FAMILY = {"name": "f", "robot": "half_cheetah", "reward": "forward_vel", "env_id": "metaimprove/HalfCheetahVel-v0",
          "episode_length": 10, "params": {"v": {"train": [0, 1]}},
          "physics": {"body_mass": {"base": 1.5, "train": [-1, 1]}}, "splits": {"train": {"seed": 1}}}

@settings(max_examples=300, deadline=None)
@given(data=st.one_of(_mutations(FAMILY), st.dictionaries(st.text(max_size=5), _scalar, max_size=3)))
def test_fuzzed_task_family_files_give_a_family_or_a_user_error(data: object) -> None:
    """A family declaration (a tasks/*.yaml's content) parses and draws tasks, or is refused with a UserError
    (which the CLI prints as one line); any other exception fails the test."""
    with contextlib.suppress(UserError):
        family = TaskFamily.from_dict(data)  # type: ignore[arg-type]
        for split in family.split_seeds:
            family.task(split, 0)

def test_the_family_fuzzer_starts_from_a_valid_family() -> None:
    family = TaskFamily.from_dict(FAMILY)
    assert family.task("train", 0).param("v") <= 1
    with pytest.raises(UserError, match="bad task family file"):
        TaskFamily.from_dict({**FAMILY, "episode_length": "long"})
