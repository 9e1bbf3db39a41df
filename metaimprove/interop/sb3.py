"""A user's own policy: stable-baselines3 PPO ``MlpPolicy`` zips in (:func:`load_sb3`) and out (:func:`save_sb3`,
the ``export`` stage), without unpickling anything the user did not name; SAC actors in (:func:`load_sb3`,
:func:`from_sac`) as squashed policies.

Why: see the design notes (docs/design.md, "Checkpoints and shards without pickle" and "The normalizer is part of
the policy").
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from omegaconf import MISSING

from metaimprove.errors import UserError
from metaimprove.sim.policy import NORM_EPS, OBS_CLIP, ObsNormalizer, Policy, PolicySpec, load_policy, save_policy

# SB3 layer names of an MlpPolicy actor (``policy_net`` alternates Linear and activation modules).
POLICY_NET = "mlp_extractor.policy_net"
ACTIVATION_NAMES = {"Tanh": "tanh", "ReLU": "relu"}
# SB3 layer names of a SAC actor: ``latent_pi`` alternates Linear and activation modules, ``mu`` is the output
# layer before the tanh squash (ReLU is SAC's default activation, Tanh PPO's).
SAC_LATENT = "actor.latent_pi"
SAC_MU = "actor.mu"
SAC_LOG_STD_RANGE = (-20.0, 2.0)
"""SB3's clamp of SAC's log-std (``LOG_STD_MIN``, ``LOG_STD_MAX``)"""
# An imported policy without VecNormalize sees raw observations; our normalizer always clips at ±10, so it
# gets the standard deviation RAW_SCALE (clipping only beyond ±1000, far past any sane observation) and the
# first layer is scaled up by as much to compensate.
RAW_SCALE = 100.0


@dataclass
class ExportConfig:
    """Convert a policy between our format and stable-baselines3's PPO zip (either direction)."""

    policy: str = MISSING
    """the policy to convert: our policy file (policy.save_policy) or an SB3 PPO MlpPolicy .zip"""
    format: str = "sb3"
    """what to write: sb3 (a PPO zip, PPO.load reads it) or metaimprove (our policy file)"""
    vecnormalize: str | None = None
    """SB3 input only: its VecNormalize .pkl, whose observation statistics become our normalizer (read with a
    restricted unpickler that builds only numpy arrays)"""
    out: str = MISSING
    """run directory: policy.zip or policy.safetensors goes inside (default runs/export/<date>_<time>)"""


def export(cfg: ExportConfig) -> Path:
    """The ``export`` stage: read ``cfg.policy`` (either format) and write it in ``cfg.format`` into ``cfg.out``."""
    if cfg.format not in ("sb3", "metaimprove"):
        raise UserError(f"unknown export format '{cfg.format}'; choose sb3 or metaimprove")
    policy = load_any_policy(cfg.policy, cfg.vecnormalize)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.format == "sb3":
        target = out / "policy.zip"
        save_sb3(target, policy)
    else:
        target = out / "policy.safetensors"
        save_policy(target, policy)
    print(f"wrote {target} ({policy.spec.obs_dim} obs -> {policy.spec.hidden} {policy.spec.activation} -> "
          f"{policy.spec.act_dim} actions)")
    return target


def load_any_policy(path: str | Path, vecnormalize: str | Path | None = None) -> Policy:
    """Our policy file, or an SB3 PPO zip (with its VecNormalize statistics when ``vecnormalize`` is given)."""
    if is_sb3_zip(path):
        return load_sb3(path, vecnormalize)
    if vecnormalize is not None:
        raise UserError(f"vecnormalize= goes with an SB3 zip, but {path} is not one")
    return load_policy(path)


def is_sb3_zip(path: str | Path) -> bool:
    """Whether ``path`` is a stable-baselines3 model zip (it holds ``data`` and ``policy.pth``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return {"data", "policy.pth"} <= set(archive.namelist())


def load_sb3(path: str | Path, vecnormalize: str | Path | None = None) -> Policy:
    """The actor of an SB3 PPO ``MlpPolicy`` zip as our policy: weights, log-std and observation normalization;
    of a SAC ``MlpPolicy`` zip, a squashed policy (:func:`sac_policy`).

    Reads only the zip's JSON (``data``) and its tensors (``policy.pth``, ``torch.load(weights_only=True)``);
    nothing in the zip is unpickled. Raises a one-line :class:`UserError` for anything our Gaussian MLP cannot
    represent (gSDE, squashed PPO or shared-feature policies, an activation other than tanh/relu, a non-Box space).
    """
    with zipfile.ZipFile(path) as archive:
        data = json.loads(archive.read("data"))
        try:
            state = torch.load(io.BytesIO(archive.read("policy.pth")), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"{path}: policy.pth is not a plain tensor state dict ({exc})") from exc
    kwargs = data.get("policy_kwargs") or {}
    sac = f"{SAC_MU}.weight" in state
    if data.get("use_sde") or kwargs.get("use_sde") or (kwargs.get("squash_output") and not sac):
        raise UserError(f"{path}: gSDE or squashed-output policies are not Gaussian MLPs; train with use_sde=False")
    default = "ReLU" if sac else "Tanh"
    activation_repr = str(kwargs.get("activation_fn", f"<class 'torch.nn.modules.activation.{default}'>"))
    activation = next((ours for name, ours in ACTIVATION_NAMES.items() if f".{name}'" in activation_repr), None)
    if activation is None:
        raise UserError(f"{path}: activation {activation_repr} is not one of {sorted(ACTIVATION_NAMES)}")
    if sac:
        return sac_policy(state, activation, str(path), vecnormalize)
    layers = _actor_layers(state, path)
    obs_dim, act_dim = layers[0][0].shape[1], layers[-1][0].shape[0]
    log_std = state.get("log_std")
    if log_std is None or tuple(log_std.shape) != (act_dim,):
        raise UserError(f"{path}: log_std has shape {None if log_std is None else tuple(log_std.shape)}, "
                        f"expected ({act_dim},) (a state-independent Gaussian)")
    spec = PolicySpec(obs_dim, act_dim, tuple(w.shape[0] for w, _ in layers[:-1]), activation)
    theta = torch.cat([t.detach().double().reshape(-1) for layer in layers for t in layer] + [log_std.double()])
    return _with_normalizer(spec, theta, vecnormalize)


def _with_normalizer(spec: PolicySpec, theta: torch.Tensor, vecnormalize: str | Path | None) -> Policy:
    """The policy of an SB3 actor's float64 θ: VecNormalize's statistics as its normalizer, or without them raw
    observations (:data:`RAW_SCALE`)."""
    if vecnormalize is None:
        normalizer = ObsNormalizer(np.zeros(spec.obs_dim), np.full(spec.obs_dim, RAW_SCALE**2 - NORM_EPS))
        spec.unflatten(theta)["W0"].mul_(RAW_SCALE)
    else:
        normalizer = read_vecnormalize(vecnormalize, spec.obs_dim)
    return Policy(spec, theta.float(), normalizer)


def sac_policy(state: dict[str, torch.Tensor], activation: str, where: str,
               vecnormalize: str | Path | None = None) -> Policy:
    """An SB3 SAC actor (a ``SACPolicy`` state dict: ``actor.latent_pi``, ``actor.mu``) as our squashed policy.

    Its deterministic action tanh(mu(latent_pi(obs))) is ours exactly (``squash=True``; an action space other
    than [-1, 1] is rescaled linearly by both SB3 and our user-env simulator). SAC's log-std is a function of the
    state, which our policies cannot hold: θ's ``log_std`` is that layer's bias, the log-std at a zero latent,
    clamped as SB3 clamps it. ``where`` names the source in errors; ``activation`` is ours (``relu``, ``tanh``).
    """
    if "actor.log_std" in state or f"{SAC_MU}.0.weight" in state:
        raise UserError(f"{where}: a gSDE SAC actor is not a Gaussian MLP; train with use_sde=False")
    layers = _actor_layers(state, where, SAC_LATENT, SAC_MU)
    obs_dim, act_dim = layers[0][0].shape[1], layers[-1][0].shape[0]
    log_std = state.get("actor.log_std.bias")
    if log_std is None or tuple(log_std.shape) != (act_dim,):
        raise UserError(f"{where}: SAC actor has no log-std layer of {act_dim} outputs")
    spec = PolicySpec(obs_dim, act_dim, tuple(w.shape[0] for w, _ in layers[:-1]), activation, squash=True)
    theta = torch.cat([t.detach().double().reshape(-1) for layer in layers for t in layer]
                      + [log_std.detach().double().clamp(*SAC_LOG_STD_RANGE)])
    return _with_normalizer(spec, theta, vecnormalize)


def from_sac(model: Any) -> Policy:
    """The actor of an in-memory SB3 ``SAC`` model (``MlpPolicy``, no VecNormalize) as our squashed policy
    (:func:`sac_policy`); one-line errors for what it cannot represent (gSDE, non-Box spaces, other activations)."""
    obs_space, act_space = model.observation_space, model.action_space
    if not (isinstance(obs_space, gymnasium.spaces.Box) and isinstance(act_space, gymnasium.spaces.Box)
            and len(obs_space.shape) == 1 and len(act_space.shape) == 1):
        raise UserError(f"SAC model has observation space {obs_space} and action space {act_space}; our policies "
                        "need one-dimensional Box spaces")
    if model.use_sde:
        raise UserError("a gSDE SAC actor is not a Gaussian MLP; train with use_sde=False")
    if model.get_vec_normalize_env() is not None:
        raise UserError("SAC model runs under VecNormalize: save both and read them with load_sb3(zip, vecnormalize)")
    kinds = {type(m).__name__ for m in model.actor.latent_pi if not isinstance(m, torch.nn.Linear)}
    if not kinds <= ACTIVATION_NAMES.keys() or len(kinds) > 1:
        raise UserError(f"SAC actor activations {sorted(kinds)} are not one of {sorted(ACTIVATION_NAMES)}")
    activation = ACTIVATION_NAMES[kinds.pop()] if kinds else "relu"
    state = {k: v.detach().cpu() for k, v in model.policy.state_dict().items()}
    return sac_policy(state, activation, f"SAC model {type(model.policy).__name__}")


def _actor_layers(state: dict[str, torch.Tensor], path: str | Path, hidden: str = POLICY_NET,
                  output: str = "action_net") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of each linear layer of the actor (``hidden``'s, then ``output``), input to output, checked
    to chain."""
    hidden_ids = sorted(int(k.split(".")[2]) for k in state if k.startswith(hidden + ".") and k.endswith("weight"))
    try:
        layers = [(state[f"{hidden}.{i}.weight"], state[f"{hidden}.{i}.bias"]) for i in hidden_ids]
        layers.append((state[f"{output}.weight"], state[f"{output}.bias"]))
    except KeyError as exc:
        raise UserError(f"{path} is not an SB3 MlpPolicy actor (no {exc.args[0]}); only PPO and SAC MlpPolicy "
                        "zips are supported") from exc
    if any("features_extractor." in k for k in state):
        raise UserError(f"{path}: the policy has a learned features extractor; only MlpPolicy is supported")
    for (w, b), (w_next, _) in zip(layers, [*layers[1:], (None, None)], strict=True):
        if w.ndim != 2 or b.shape != (w.shape[0],) or (w_next is not None and w_next.shape[1] != w.shape[0]):
            raise UserError(f"{path}: actor layer shapes {[tuple(w.shape) for w, _ in layers]} do not chain")
    return layers


def save_sb3(path: str | Path, policy: Policy) -> None:
    """Write ``policy`` as an SB3 PPO ``MlpPolicy`` zip (SB3's own ``save``), atomically.

    SB3 evaluates ``action_net(mlp(obs'))`` on VecNormalize's ``obs' = clip((obs - μ) / √(σ² + ε), ±c)`` (raw
    ``obs`` without VecNormalize); we evaluate the same MLP on ``clip((obs - m) / √(v + 1e-8), ±10)``. Our
    normalizer is folded into the first layer, so the zip takes raw observations (no VecNormalize): exact while
    observations stay within 10 standard deviations of its mean, where our clip is inactive. The critic is SB3's
    fresh initialization: we have no value function to give it.
    """
    try:
        from stable_baselines3 import PPO
        from stable_baselines3.common.vec_env import DummyVecEnv
    except ImportError as exc:
        raise UserError("writing an SB3 zip needs stable-baselines3: pip install metaimprove[baselines]") from exc

    spec = policy.spec
    if spec.squash:
        raise UserError("a squashed (SAC) policy has no PPO MlpPolicy form; only unsquashed policies export to SB3")
    norm = policy.normalizer
    std = torch.as_tensor(np.sqrt(norm.var + NORM_EPS), dtype=torch.float64)
    blocks = {k: v.double() for k, v in spec.unflatten(policy.theta.detach()).items()}
    # clip((obs - m)/s) ≈ (obs - m)/s inside the clip: W0·(obs - m)/s + b0 = (W0/s)·obs + (b0 - W0·(m/s)).
    w0 = blocks["W0"] / std
    b0 = blocks["b0"] - blocks["W0"] @ (torch.as_tensor(norm.mean, dtype=torch.float64) / std)
    env = DummyVecEnv([lambda: _SpacesOnly(spec)])
    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[spec.activation]
    model = PPO("MlpPolicy", env, device="cpu", n_steps=16, batch_size=16, seed=0,
                policy_kwargs={"net_arch": {"pi": list(spec.hidden), "vf": list(spec.hidden)},
                               "activation_fn": activation})
    n_layers = len(spec.layer_sizes)
    values = {"log_std": blocks["log_std"]}
    for layer in range(n_layers):
        name = "action_net" if layer == n_layers - 1 else f"{POLICY_NET}.{2 * layer}"
        values[f"{name}.weight"] = w0 if layer == 0 else blocks[f"W{layer}"]
        values[f"{name}.bias"] = b0 if layer == 0 else blocks[f"b{layer}"]
    state = model.policy.state_dict()
    state.update({k: v.to(state[k].dtype) for k, v in values.items()})
    model.policy.load_state_dict(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".zip")
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _SpacesOnly(gymnasium.Env):  # type: ignore[type-arg]
    """An env with a policy's spaces and nothing else: SB3 needs one to build the PPO model it saves."""

    def __init__(self, spec: PolicySpec) -> None:
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (spec.obs_dim,), np.float64)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (spec.act_dim,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(self.observation_space.shape), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(self.observation_space.shape), 0.0, True, False, {}


def read_vecnormalize(path: str | Path, obs_dim: int) -> ObsNormalizer:
    """Observation statistics of an SB3 VecNormalize ``.pkl`` as our normalizer, read only when the user names it and
    through a restricted unpickler that builds numpy arrays and plain containers only (:class:`_ArraysOnly`)."""
    try:
        with open(path, "rb") as f:
            record = _ArraysOnly(f).load()
        fields = _state(record)
        norm_obs = fields.get("norm_obs", True)
        rms = _state(fields["obs_rms"])
        mean, var, count = np.asarray(rms["mean"], np.float64), np.asarray(rms["var"], np.float64), rms["count"]
        epsilon, clip = float(fields.get("epsilon", 1e-8)), float(fields.get("clip_obs", OBS_CLIP))
    except (OSError, pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as exc:
        raise UserError(f"{path} is not an SB3 VecNormalize file ({exc!r})") from exc
    if not norm_obs:
        return ObsNormalizer(np.zeros(obs_dim), np.full(obs_dim, RAW_SCALE**2 - NORM_EPS))
    if mean.shape != (obs_dim,) or var.shape != (obs_dim,):
        raise UserError(f"{path}: VecNormalize statistics have shape {mean.shape} but the policy takes ({obs_dim},)")
    if not math.isclose(clip, OBS_CLIP):
        raise UserError(f"{path}: VecNormalize clips observations at ±{clip:g}; only ±{OBS_CLIP:g} (SB3's default) "
                        "is representable")
    # Same √(var + ε) under both conventions: our ε is NORM_EPS.
    return ObsNormalizer(mean, var + epsilon - NORM_EPS, float(count))


class _Record:
    """Stands in for any class in a restricted pickle: it keeps the state it is given and runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _ArraysOnly(pickle.Unpickler):
    """Unpickler that builds numpy arrays and plain containers only; any other class becomes a :class:`_Record`."""

    ALLOWED = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        return _Record


def _state(record: Any) -> dict[str, Any]:
    if isinstance(record, _Record) and isinstance(getattr(record, "state", None), dict):
        return record.state
    raise TypeError(f"expected a pickled object with a state dict, found {type(record).__name__}")
