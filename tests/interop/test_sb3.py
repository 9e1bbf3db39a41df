"""A user's own policy: SB3 PPO zips in and out, checked against SB3's own ``predict``."""

import pathlib

import gymnasium
import numpy as np
import pytest
import torch

from metaimprove.errors import UserError
from metaimprove.evaluation.apply import apply
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.interop.sb3 import ExportConfig, export, load_any_policy, load_sb3, save_sb3
from metaimprove.sim.envs import make_env
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params, save_policy
from metaimprove.sim.tasks import TaskConfig, get_family
from tests.helpers import run_cli

sb3 = pytest.importorskip("stable_baselines3")
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize  # noqa: E402


def _states(family: str, n: int = 64) -> np.ndarray:
    """Observations the policy would really see: a random-action rollout of the family's env."""
    env = make_env(get_family(family).task("train", 0))
    obs, _ = env.reset(seed=0)
    rng, out = np.random.default_rng(0), []
    for _ in range(n):
        out.append(obs)
        obs, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        if terminated or truncated:
            obs, _ = env.reset()
    return np.array(out)


def _our_actions(policy: Policy, obs: np.ndarray) -> np.ndarray:
    return np.clip(policy.actor().mean(obs), -1.0, 1.0)


def _trained_looking_policy(spec: PolicySpec, obs: np.ndarray) -> Policy:
    """A policy with non-trivial weights and a normalizer fitted to ``obs`` (not the identity)."""
    theta = init_params(spec, torch.Generator().manual_seed(1), log_std=-0.5)
    spec.unflatten(theta)["W2"].mul_(200.0)  # outputs well away from 0, some saturating at ±1
    spec.unflatten(theta)["b0"].normal_(0.0, 0.3, generator=torch.Generator().manual_seed(2))
    norm = ObsNormalizer.identity(spec.obs_dim)
    norm.update(obs)
    return Policy(spec, theta, norm)


def _sb3_model(family: str, net_arch: list[int], activation: type = torch.nn.Tanh) -> tuple:
    env = DummyVecEnv([lambda: make_env(get_family(family).task("train", 0))])
    model = sb3.PPO("MlpPolicy", env, device="cpu", n_steps=32, batch_size=32, seed=3,
                    policy_kwargs={"net_arch": {"pi": net_arch, "vf": [8]}, "activation_fn": activation})
    with torch.no_grad():  # SB3 starts its action layer at ~0; make the actions non-trivial
        model.policy.action_net.weight.mul_(100.0)
        model.policy.log_std.fill_(-0.7)
    return model, env


def test_export_is_loadable_by_sb3_and_predicts_our_actions(tmp_path: pathlib.Path) -> None:
    obs = _states("halfcheetah_vel")
    policy = _trained_looking_policy(PolicySpec(17, 6), obs)
    save_sb3(tmp_path / "cheetah.zip", policy)
    model = sb3.PPO.load(tmp_path / "cheetah.zip", device="cpu")
    sb3_actions, _ = model.predict(obs, deterministic=True)
    ours = _our_actions(policy, obs)
    assert np.abs(ours).mean() > 0.05 and (np.abs(ours) == 1.0).any()  # non-trivial, some saturated
    np.testing.assert_allclose(sb3_actions, ours, atol=1e-5)
    np.testing.assert_allclose(model.policy.log_std.detach().numpy(), -0.5)
    # and back: the zip read as our policy acts the same again
    again = load_any_policy(tmp_path / "cheetah.zip")
    assert again.spec == policy.spec
    np.testing.assert_allclose(_our_actions(again, obs), ours, atol=1e-5)


@pytest.mark.parametrize("with_vecnormalize", [False, True])
def test_import_predicts_what_sb3_predicts(tmp_path: pathlib.Path, with_vecnormalize: bool) -> None:
    obs = _states("hopper_rand_params")
    model, env = _sb3_model("hopper_rand_params", [32, 32], torch.nn.ReLU)
    model.save(tmp_path / "hopper.zip")
    sb3_obs = obs
    vecnormalize = None
    if with_vecnormalize:
        venv = VecNormalize(env, epsilon=1e-6)
        venv.obs_rms.update(obs * 3.0 + 1.0)  # statistics unlike the observations, so normalization matters
        venv.save(tmp_path / "vecnormalize.pkl")
        sb3_obs = venv.normalize_obs(obs)
        vecnormalize = tmp_path / "vecnormalize.pkl"
    policy = load_sb3(tmp_path / "hopper.zip", vecnormalize)
    assert policy.spec == PolicySpec(11, 3, (32, 32), "relu")
    sb3_actions, _ = model.predict(sb3_obs, deterministic=True)
    assert np.abs(sb3_actions).mean() > 0.05
    np.testing.assert_allclose(_our_actions(policy, obs), sb3_actions, atol=1e-5)
    np.testing.assert_allclose(policy.theta[-3:].numpy(), -0.7)


def test_export_stage_writes_both_formats(tmp_path: pathlib.Path) -> None:
    obs = _states("swimmer_vel")
    policy = _trained_looking_policy(PolicySpec(8, 2), obs)
    save_policy(tmp_path / "ours.safetensors", policy)
    result = run_cli(["export", f"policy={tmp_path / 'ours.safetensors'}", "format=sb3", f"out={tmp_path / 'x'}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sb3_actions, _ = sb3.PPO.load(tmp_path / "x" / "policy.zip", device="cpu").predict(obs, deterministic=True)
    np.testing.assert_allclose(sb3_actions, _our_actions(policy, obs), atol=1e-5)
    back = export(ExportConfig(policy=str(tmp_path / "x" / "policy.zip"), format="metaimprove",
                               out=str(tmp_path / "y")))
    np.testing.assert_allclose(_our_actions(load_any_policy(back), obs), _our_actions(policy, obs), atol=1e-5)
    with pytest.raises(UserError, match="unknown export format 'onnx'"):
        export(ExportConfig(policy=str(tmp_path / "ours.safetensors"), format="onnx", out=str(tmp_path / "z")))
    with pytest.raises(UserError, match="vecnormalize= goes with an SB3 zip"):
        export(ExportConfig(policy=str(tmp_path / "ours.safetensors"), vecnormalize="v.pkl", out=str(tmp_path / "z")))


def test_unsupported_sb3_policies_are_one_line_errors(tmp_path: pathlib.Path) -> None:
    model, _ = _sb3_model("hopper_rand_params", [16], torch.nn.ELU)
    model.save(tmp_path / "elu.zip")
    with pytest.raises(UserError, match=r"activation .*ELU.* is not one of"):
        load_any_policy(tmp_path / "elu.zip")
    env = DummyVecEnv([lambda: gymnasium.make("Pendulum-v1")])
    sb3.PPO("MlpPolicy", env, device="cpu", n_steps=32, batch_size=32, use_sde=True).save(tmp_path / "sde.zip")
    with pytest.raises(UserError, match="gSDE"):
        load_any_policy(tmp_path / "sde.zip")


def test_a_mismatched_sb3_policy_is_refused_by_apply_naming_both_specs(tmp_path: pathlib.Path,
                                                                         ars_operator: pathlib.Path) -> None:
    """A Hopper zip where the operator improves HalfCheetah policies: apply's spec check names both."""
    model, _ = _sb3_model("hopper_rand_params", [32, 32])
    model.save(tmp_path / "hopper.zip")
    assert load_any_policy(tmp_path / "hopper.zip").spec == PolicySpec(11, 3, (32, 32), "tanh")
    config = ApplyConfig(operator_path=str(ars_operator), init=str(tmp_path / "hopper.zip"), out=str(tmp_path / "out"),
                         task=TaskConfig("halfcheetah_vel"))
    with pytest.raises(UserError, match=r"obs_dim=11.*obs_dim=17"):
        apply(config)


# ------------------------------------------------------------------------------------------ SAC actors in

from metaimprove.interop.sb3 import from_sac as sac_from_model  # noqa: E402

ACTIVATION = {torch.nn.ReLU: "relu", torch.nn.Tanh: "tanh"}


def _sac_model(env: gymnasium.Env, activation: type = torch.nn.ReLU, **kwargs: object) -> object:
    model = sb3.SAC("MlpPolicy", env, device="cpu", seed=4, buffer_size=100,
                    policy_kwargs={"net_arch": [32, 16], "activation_fn": activation}, **kwargs)
    with torch.no_grad():  # SB3 starts mu near 0; make the actions non-trivial, some saturated
        model.actor.mu.weight.mul_(50.0)
        model.actor.latent_pi[0].bias.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(5))
    return model


@pytest.mark.parametrize("activation", [torch.nn.ReLU, torch.nn.Tanh])
def test_a_sac_actor_reads_exactly_as_a_squashed_policy(tmp_path: pathlib.Path, activation: type) -> None:
    obs = _states("halfcheetah_vel")
    model = _sac_model(make_env(get_family("halfcheetah_vel").task("train", 0)), activation)
    sb3_actions, _ = model.predict(obs, deterministic=True)
    assert np.abs(sb3_actions).mean() > 0.3 and (np.abs(sb3_actions) > 0.999).any()
    ours = sac_from_model(model)
    assert ours.spec == PolicySpec(17, 6, (32, 16), ACTIVATION[activation], squash=True)
    np.testing.assert_allclose(_our_actions(ours, obs), sb3_actions, atol=1e-5)
    model.save(tmp_path / "sac.zip")  # and from its zip, through the loader every policy argument uses
    from_zip = load_any_policy(tmp_path / "sac.zip")
    assert from_zip.spec == ours.spec and torch.equal(from_zip.theta, ours.theta)
    log_std = model.actor.log_std.bias.detach().numpy()
    np.testing.assert_allclose(ours.theta[-6:].numpy(), np.clip(log_std, -20.0, 2.0), rtol=1e-6)


def test_a_sac_actor_on_a_wider_action_box_is_rescaled_as_sb3_does() -> None:
    env = gymnasium.make("Pendulum-v1")  # actions in [-2, 2]
    model = _sac_model(env)
    obs = np.stack([env.observation_space.sample() for _ in range(64)])
    sb3_actions, _ = model.predict(obs, deterministic=True)
    ours = _our_actions(sac_from_model(model), obs)
    np.testing.assert_allclose(ours * 2.0, sb3_actions, atol=1e-5)  # GymSimulator's linear map onto [low, high]


def test_unsupported_sac_actors_are_one_line_errors(tmp_path: pathlib.Path) -> None:
    env = gymnasium.make("Pendulum-v1")
    sde = sb3.SAC("MlpPolicy", env, device="cpu", buffer_size=100, use_sde=True)
    with pytest.raises(UserError, match="gSDE"):
        sac_from_model(sde)
    sde.save(tmp_path / "sde.zip")
    with pytest.raises(UserError, match="gSDE"):
        load_any_policy(tmp_path / "sde.zip")
    elu = _sac_model(env, torch.nn.ELU)
    with pytest.raises(UserError, match=r"activations \['ELU'\] are not one of"):
        sac_from_model(elu)
    elu.save(tmp_path / "elu.zip")
    with pytest.raises(UserError, match=r"activation .*ELU.* is not one of"):
        load_any_policy(tmp_path / "elu.zip")
    with pytest.raises(UserError, match="squashed"):  # a PPO zip cannot squash its actions
        save_sb3(tmp_path / "out.zip", sac_from_model(_sac_model(env)))
