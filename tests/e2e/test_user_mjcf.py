"""A user's own MJCF robot declared by a family file on METAIMPROVE_TASK_PATH: loaded, randomized, collected."""

from __future__ import annotations

import csv
import math
import pathlib
import shutil
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import yaml
from gymnasium.utils.env_checker import check_env

from metaimprove.errors import UserError
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.operator.features import FeatureConfig
from metaimprove.operator.networks import OperatorConfig
from metaimprove.sim.envs import ROBOTS, make_env, robot_of, root_ground_dims
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.sim.rollout import Collector, Simulator
from metaimprove.sim.tasks import (
    TASK_PATH_ENV,
    TaskConfig,
    TaskFamily,
    build_model,
    family_dir,
    get_family,
    load_families,
    nominal_model,
    robot_xml_path,
)
from metaimprove.training.pairs import PairConfig
from metaimprove.training.train import TrainConfig, train
from tests.helpers import run_cli

# A cart on a rail (root slide joint along x) carrying a pole; it floats above the floor so that only its
# actuators move it. Observation: the pole's angle, then both velocities (3); actions: 2.
CART_XML = """
<mujoco model="cart">
  <option timestep="0.01"/>
  <worldbody>
    <geom name="floor" type="plane" size="10 10 0.1"/>
    <body name="cart" pos="0 0 0.5">
      <joint name="slider" type="slide" axis="1 0 0" damping="0.5"/>
      <geom name="box" type="box" size="0.2 0.1 0.1" mass="1"/>
      <body name="pole" pos="0 0 0.1">
        <joint name="hinge" type="hinge" axis="0 1 0" damping="0.1"/>
        <geom name="stick" type="capsule" fromto="0 0 0 0 0 0.5" size="0.03" mass="0.1"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor joint="slider" gear="10" ctrlrange="-1 1"/>
    <motor joint="hinge" gear="1" ctrlrange="-1 1"/>
  </actuator>
</mujoco>
"""
CART_YAML = """
name: my_cart
description: a cart carrying a pole runs forward (a user's own MJCF)
xml: cart.xml
frame_skip: 2
reset_noise: 0.05
reward: forward
env_id: user/MyCart-v0
episode_length: 50
physics:
  body_mass: {base: 2.0, train: [-1.0, 1.0], ood: [[1.0, 2.0]]}
  geom_friction: {base: 1.5, train: [-1.0, 1.0]}
splits:
  train: {seed: 11}
  test: {seed: 12}
  ood: {seed: 13}
"""
# The same cart pinned by a hinge first: no root slide joint, so no forward velocity to reward.
PINNED_YAML = """
name: pinned_cart
xml: pinned.xml
reward: forward
env_id: user/PinnedCart-v0
episode_length: 50
splits:
  train: {seed: 21}
"""


@pytest.fixture(scope="module")
def user_tasks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """A directory of a user's family files and MJCF models, on METAIMPROVE_TASK_PATH for this module."""
    folder = tmp_path_factory.mktemp("my_tasks")
    (folder / "models").mkdir()
    (folder / "models" / "cart.xml").write_text(CART_XML)
    (folder / "models" / "pinned.xml").write_text(CART_XML.replace('type="slide" axis="1 0 0"',
                                                                   'type="hinge" axis="0 0 1"'))
    shutil.copy(robot_xml_path("half_cheetah"), folder / "models" / "half_cheetah.xml")
    # halfcheetah_rand_params word for word, on a copy of gymnasium's half_cheetah.xml as the user's own file.
    own_cheetah = yaml.safe_load((family_dir() / "halfcheetah_rand_params.yaml").read_text())
    del own_cheetah["robot"]
    own_cheetah.update(name="own_cheetah", xml="half_cheetah.xml", env_id="user/OwnCheetah-v0")
    for name, text in (("my_cart", CART_YAML), ("own_cheetah", yaml.safe_dump(own_cheetah)), ("pinned", PINNED_YAML)):
        # The xml paths are relative to the YAML file.
        (folder / f"{name}.yaml").write_text(text.replace("xml: ", "xml: models/"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TASK_PATH_ENV, str(folder))
        load_families.cache_clear()
        yield folder
    load_families.cache_clear()


def _policy(spec: PolicySpec, seed: int = 0) -> Policy:
    return Policy(spec, init_params(spec, torch.Generator().manual_seed(seed)), ObsNormalizer.identity(spec.obs_dim))


def test_generic_ground_rule_agrees_with_every_named_robot() -> None:
    for robot, rules in ROBOTS.items():
        assert root_ground_dims(nominal_model(robot)) == rules.ground_dims, robot


def test_own_mjcf_is_randomized_as_declared(user_tasks: pathlib.Path) -> None:
    family = get_family("my_cart")
    assert family.robot == str((user_tasks / "models" / "cart.xml").resolve())
    nominal = nominal_model(family.robot)
    for split, (lo, hi) in (("train", (-1.0, 1.0)), ("ood", (1.0, 2.0))):
        task = family.task(split, 0)
        model = build_model(task)
        mass = np.asarray(task.physics.body_mass)[1:]  # the world body has no mass to scale
        np.testing.assert_allclose(model.body_mass[1:], nominal.body_mass[1:] * mass)
        np.testing.assert_allclose(model.body_inertia[1:], nominal.body_inertia[1:] * mass[:, None])
        assert all(lo <= math.log2(m) <= hi for m in mass) and len(set(mass)) == len(mass)
        friction = np.asarray(task.physics.geom_friction)
        np.testing.assert_allclose(model.geom_friction[:, 0], nominal.geom_friction[:, 0] * friction)
        assert len(friction) == 3 and all(-1.0 <= math.log(f, 1.5) <= 1.0 for f in friction)  # floor, box, stick
        np.testing.assert_array_equal(model.dof_damping, nominal.dof_damping)  # not declared: nominal
    rules = robot_of(family)
    assert (rules.frame_skip, rules.reset_noise, rules.ground_dims) == (2, 0.05, 1)


def test_own_mjcf_collects_as_its_gymnasium_env(user_tasks: pathlib.Path) -> None:
    task = get_family("my_cart").task("train", 1)
    spec = PolicySpec(3, 2)  # obs: the pole's angle (qpos without the root's x), then both velocities
    exp = Collector(task, n_envs=2, seed=4).collect(_policy(spec, 1), 60, deterministic=True)
    assert exp.obs.shape == (60, 2, 3) and torch.isfinite(exp.reward).all() and exp.reward.std() > 0
    assert exp.truncated[49].all() and len(exp.episode_returns) == 2
    env = make_env(task)
    check_env(env.unwrapped, skip_render_check=True)
    one = Collector(task, n_envs=1, seed=4).collect(_policy(spec, 1), 60, deterministic=True)
    obs, _ = env.reset(seed=4)
    actor = _policy(spec, 1).actor()
    for t in range(60):
        assert np.array_equal(one.obs[t, 0].numpy(), obs.astype(np.float32)), t
        obs, reward, terminated, truncated, _ = env.step(np.clip(actor.mean(obs[None])[0], -1.0, 1.0))
        assert one.reward[t, 0].item() == np.float32(reward) and not terminated
        if truncated:
            obs, _ = env.reset()


def test_gymnasiums_cheetah_as_an_own_file_equals_the_named_robot(user_tasks: pathlib.Path) -> None:
    """The generic rules reproduce HalfCheetah: its model declared as a user's file collects bit for bit alike."""
    ours, own = get_family("halfcheetah_rand_params").task("train", 2), get_family("own_cheetah").task("train", 2)
    assert own.physics == ours.physics
    policy = _policy(PolicySpec(17, 6))
    a = Collector(ours, n_envs=2, seed=1).collect(policy, 40)
    b = Collector(own, n_envs=2, seed=1).collect(policy, 40)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.reward, b.reward)


def test_own_mjcf_without_a_root_slide_joint_is_refused(user_tasks: pathlib.Path) -> None:
    with pytest.raises(UserError, match="no root slide joint along x nor a free joint"):
        Simulator(get_family("pinned_cart").task("train", 0), 1, 0)


@pytest.mark.parametrize(("data", "words"), [
    ({"xml": "missing.xml"}, "does not exist"),
    ({"xml": "cart.xml", "robot": "hopper"}, "not both"),
    ({"robot": "hopper", "frame_skip": 3}, "belong to an xml robot"),
    ({"xml": "cart.xml", "frame_skip": 0}, "frame_skip must be >= 1"),
])
def test_bad_own_robot_declarations_are_one_line(tmp_path: pathlib.Path, data: dict[str, object],
                                                 words: str) -> None:
    (tmp_path / "cart.xml").write_text(CART_XML)
    base = {"name": "x", "reward": "forward", "env_id": "user/X-v0", "episode_length": 10,
            "splits": {"train": {"seed": 0}}}
    with pytest.raises(UserError, match=words) as info:
        TaskFamily.from_dict({**base, **data}, "x.yaml", folder=tmp_path)
    assert "\n" not in str(info.value)


def test_a_family_name_declared_twice_is_refused(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "clash.yaml").write_text(CART_YAML.replace("my_cart", "halfcheetah_vel"))
    (tmp_path / "cart.xml").write_text(CART_XML)
    monkeypatch.setenv(TASK_PATH_ENV, str(tmp_path / "clash.yaml"))
    load_families.cache_clear()
    try:
        with pytest.raises(UserError, match="'halfcheetah_vel' is declared twice"):
            load_families()
    finally:
        load_families.cache_clear()


def test_collect_train_apply_on_an_own_family(user_tasks: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """The pipeline's stages on the user's family: collect through the CLI (task=my_cart is a config option
    because the family is on METAIMPROVE_TASK_PATH), then train and apply."""
    data = tmp_path / "data"
    result = run_cli(["collect", "task=my_cart", "teacher.n_envs=2", "teacher.n_steps=50", "teacher.minibatch_size=50",
                      "teacher.n_epochs=1", "n_tasks=2", "seeds=1", "iterations=2", "hidden=[8]", "workers=1",
                      f"out={data}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (data / "shards").glob("*.safetensors")) == [
        "my_cart-train-0000-s0.safetensors", "my_cart-train-0001-s0.safetensors"]
    operator = train(TrainConfig(dataset=str(data), out=str(tmp_path / "op"), pairs=PairConfig(ks=[1]),
                                 operator=OperatorConfig(hidden=16, context_dim=8, param_hidden=8),
                                 features=FeatureConfig(n_transitions=32, n_states=16), max_epochs=2))
    apply(ApplyConfig(operator_path=str(operator), out=str(tmp_path / "apply"), task=TaskConfig("my_cart"),
                      n_tasks=1, seeds=1, applications=2, eval_episodes=1, workers=1, methods=["operator", "ppo"]))
    with (tmp_path / "apply" / "curves.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["task"] for r in rows} == {"my_cart/test/0"} and len(rows) == 2 * 3
