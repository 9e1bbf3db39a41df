"""The operator's checkpoint: weights in safetensors, everything else needed to apply it in JSON.

Why no pickle: see the design notes (docs/design.md, "Checkpoints and shards without pickle").
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from metaimprove import seeds
from metaimprove.errors import UserError
from metaimprove.operator.features import (
    FeatureConfig,
    check_features,
    task_vector,
    warmup_phases,
)
from metaimprove.operator.networks import ARCHS, ImprovementOperator, OperatorConfig
from metaimprove.sim.envs import AnyTask
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params
from metaimprove.sim.rollout import simulator
from metaimprove.sim.tasks import Task
from metaimprove.storage import load_tensors, meta_path, read_json, save_tensors

DEFAULT_ASK_K = 2
"""The jump an operator is asked for when neither its checkpoint nor apply names one (through
:func:`default_ask_k`). Why a small one: see the design notes (docs/design.md, "Hindsight pairs and the ask")."""


def default_ask_k(ks: list[int]) -> int:
    """The trained jump nearest :data:`DEFAULT_ASK_K` in log2 (ties: the smaller, the safer jump)."""
    return min(ks, key=lambda k: (abs(math.log2(k) - math.log2(DEFAULT_ASK_K)), k))


CHECKPOINT_FORMAT = "metaimprove.operator"
CHECKPOINT_VERSION = 1


def shipped_dir() -> Path:
    """Directory of the shipped operators (package data ``metaimprove.operators``): ``results/operators`` in a
    source checkout, ``metaimprove/operators/`` in an installed package."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "results" / "operators").is_dir():
        return checkout / "results" / "operators"
    return Path(__file__).resolve().parents[1] / "operators"


def shipped_operators() -> dict[str, Path]:
    """The shipped operators by name (``halfcheetah_vel``, ``halfcheetah_vel.ppo``, ...): each ``<name>.safetensors``
    of :func:`shipped_dir` whose JSON beside it describes an operator (the peers' DR policy and meta-learned start
    shipped there are none)."""
    found = {}
    for path in sorted(shipped_dir().glob("*.safetensors")):
        try:
            header = json.loads(meta_path(path).read_text())
        except (OSError, ValueError):
            continue
        meta = header.get("meta") if isinstance(header, dict) else None
        if isinstance(meta, dict) and meta.get("format") == CHECKPOINT_FORMAT:
            found[path.name.removesuffix(".safetensors")] = path
    return dict(sorted(found.items()))


def resolve_operator(name_or_path: str | os.PathLike[str]) -> Path:
    """The checkpoint file ``name_or_path`` names: an existing file wins; else a shipped operator's name (with or
    without ``.safetensors``); else a one-line :class:`UserError` listing the shipped names."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = shipped_operators()
    name = str(name_or_path).removesuffix(".safetensors")
    if name in shipped:
        return shipped[name]
    raise UserError(f"operator {name_or_path} is missing: no such checkpoint file, nor a shipped operator of that "
                    f"name ({', '.join(shipped) or 'none shipped in this install'})")


LEARNED_START_SUFFIX = ".start.safetensors"
"""the file beside an operator checkpoint holding its learned start θ₀ (``<name>.start.safetensors``)"""


def learned_start_file(operator_path: str | os.PathLike[str]) -> Path:
    """Where an operator's learned start θ₀ lives by default: the file of :data:`LEARNED_START_SUFFIX` beside its
    checkpoint (a shipped operator's name resolves to its file first), whether or not it exists."""
    checkpoint = resolve_operator(operator_path)
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + LEARNED_START_SUFFIX)


@dataclass
class OperatorCheckpoint:
    """Everything needed to apply a trained operator, besides its weights.

    Saved as safetensors (weights) plus JSON metadata; loading never unpickles.
    """

    spec: PolicySpec
    operator: OperatorConfig
    features: FeatureConfig
    ks: list[int]
    ask_quantiles: dict[int, list[float]]
    """per k: the 10/50/90 % quantiles of the improvement per step reached in training (the trained ask range)"""
    tasks: list[str]
    """training tasks (never evaluate on these)"""
    teacher: dict[str, Any]
    """name and config of the teacher the pairs came from (its batch size is the operator's)"""
    task_family: str | None = None
    """with ``features.task_input``: the family whose task vectors the operator reads (None otherwise)"""
    task_dim: int = 0
    """with ``features.task_input``: the width of those task vectors (0 otherwise)"""
    ask_k: int | None = None
    """the jump k the operator is asked for unless told (one of ``ks``; None: :func:`default_ask_k`)"""

    @staticmethod
    def from_training(features: FeatureConfig, operator: OperatorConfig, spec: PolicySpec, ks: list[int],
                      asks: torch.Tensor, tasks: list[str], teacher: dict[str, Any], task_family: str | None = None,
                      task_dim: int = 0, ask_k: int | None = None) -> OperatorCheckpoint:
        """The checkpoint description of an operator trained on pairs with hindsight ``asks [n, 2]``."""
        quantiles = {}
        for k in ks:
            sel = asks[asks[:, 0] == math.log2(k), 1]
            if len(sel):
                quantiles[k] = [float(q) for q in torch.quantile(sel, torch.tensor([0.1, 0.5, 0.9]))]
        return OperatorCheckpoint(spec, operator, features, list(ks), quantiles, tasks, teacher, task_family, task_dim,
                                  ask_k)

    def new_operator(self) -> ImprovementOperator:
        """An (untrained) operator of the architecture this checkpoint describes."""
        return ImprovementOperator(self.spec, self.operator, self.task_dim, bool(self.features.es_gradient),
                                   self.features.agnostic)

    @property
    def families(self) -> list[str]:
        """The task families of its training tasks (several for a shape-agnostic operator trained across robots)."""
        return sorted({name.split("/")[0] for name in self.tasks})

    def fresh_policy(self, seed: int) -> Policy:
        """The fresh θ⁰ of run ``seed`` (apply's ``start=fresh``, the outcome stage's and the benchmarks'): of this
        checkpoint's spec (:meth:`on` gives a shape-agnostic operator a task's sizes), from an initialization seed no
        collection uses, with the identity normalizer."""
        theta = init_params(self.spec, torch.Generator().manual_seed(seeds.fresh_init(seed)))
        return Policy(self.spec, theta, ObsNormalizer.identity(self.spec.obs_dim))

    def on(self, task: AnyTask) -> OperatorCheckpoint:
        """This checkpoint as it serves ``task``: a shape-agnostic operator's with a spec of ``task``'s observation and
        action sizes (its hidden sizes and activation kept: the fresh policies it starts from), any other as it is
        (the caller checks that its spec fits). A user env without 1-D Box spaces is a one-line :class:`UserError`."""
        if not self.features.agnostic:
            return self
        sim = simulator(task, n_envs=1, seed=0)
        return replace(self, spec=replace(self.spec, obs_dim=sim.obs_dim, act_dim=sim.act_dim))

    def check_policy(self, spec: PolicySpec, what: str, where: str) -> None:
        """Refuse a policy (``what``, of ``spec``) that this checkpoint, as it serves ``where`` (:meth:`on`), cannot
        improve: a per-family operator improves policies of its spec, a shape-agnostic one policies of any hidden
        sizes and activation with ``where``'s observation and action sizes (one-line :class:`UserError`)."""
        if not self.features.agnostic:
            if spec != self.spec:
                raise UserError(f"{what} has spec {spec} but the operator improves {self.spec}")
        elif (spec.obs_dim, spec.act_dim) != (self.spec.obs_dim, self.spec.act_dim):
            raise UserError(f"{what} takes obs {spec.obs_dim} / act {spec.act_dim} but {where} has obs "
                            f"{self.spec.obs_dim} / act {self.spec.act_dim}")

    def check_task(self, task: AnyTask) -> None:
        """Refuse a task the operator cannot read: an oracle operator (``features.task_input``) reads only tasks
        of its training family (one-line :class:`UserError`; a user env has no task vector at all)."""
        if not self.features.task_input:
            return
        if not isinstance(task, Task):
            raise UserError(f"this operator reads the task's parameters (trained with features.task_input=true), and "
                            f"the user env {task.name} has none; apply it on task={self.task_family}")
        width = len(task_vector(task))
        if (task.family, width) != (self.task_family, self.task_dim):
            raise UserError(f"this operator reads task vectors of {self.task_family} ({self.task_dim} wide; trained "
                            f"with features.task_input=true), not of {task.family} ({width} wide); apply it on "
                            f"task={self.task_family}")

    def resolve_ask_k(self, ask_k: int | None = None) -> int:
        """The jump k to ask for: ``ask_k`` if given, else the recorded :attr:`ask_k`, else :func:`default_ask_k`."""
        return ask_k or self.ask_k or default_ask_k(self.ks)

    def ask(self, ask_k: int | None = None) -> torch.Tensor:
        """The ask ``[2]``: the jump :meth:`resolve_ask_k` and the requested improvement per step, the 90 % quantile
        of what training pairs of that k reached (not a setting: asking for more or less changes nothing the
        operator realizes, see docs/findings.md). Warns for a k outside the trained ones."""
        if ask_k is not None and ask_k < 1:
            raise UserError(f"ask k must be >= 1, got {ask_k}")
        k = self.resolve_ask_k(ask_k)
        nearest = min(self.quantiles_ks(), key=lambda kk: abs(math.log2(kk) - math.log2(k)))
        if k not in self.ks:
            warnings.warn(f"ask k={k} is outside the trained ks {self.ks}; the operator extrapolates (its requested "
                          f"improvement is k={nearest}'s)", stacklevel=2)
        return torch.tensor([math.log2(k), self.ask_quantiles[nearest][2]], dtype=torch.float32)

    def quantiles_ks(self) -> list[int]:
        """The ks with recorded ask quantiles."""
        return sorted(self.ask_quantiles)

    def meta(self, summary: dict[str, Any]) -> dict[str, Any]:
        """JSON metadata."""
        from metaimprove import __version__

        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "package_version": __version__,
            "policy_spec": self.spec.to_dict(),
            "operator": asdict(self.operator),
            "features": asdict(self.features),
            "ks": self.ks,
            "ask_quantiles": {str(k): v for k, v in self.ask_quantiles.items()},
            "tasks": self.tasks,
            "teacher": self.teacher,
            "task_family": self.task_family,
            "task_dim": self.task_dim,
            "ask_k": self.ask_k,
            "summary": summary,
        }

    def save(self, path: str | Path, op: ImprovementOperator, summary: dict[str, Any]) -> None:
        """Write weights (safetensors) and metadata (JSON), atomically."""
        tensors = {f"operator.{k}": v.detach().contiguous() for k, v in op.state_dict().items()}
        save_tensors(path, tensors, self.meta(summary))

    @staticmethod
    def load(path: str | os.PathLike[str]) -> tuple[ImprovementOperator, OperatorCheckpoint]:
        """Read and validate a checkpoint, a file or a shipped operator's name (:func:`resolve_operator`); returns the
        operator (eval mode) and its description.

        The file pair is checked by :func:`~metaimprove.storage.load_tensors` (safetensors + JSON, never
        unpickled); then every metadata field's type, range and the format version are checked, and the
        weights' names, shapes and values against the architecture the metadata describes, before any
        of it is used. Anything wrong is a one-line :class:`UserError`.
        """
        path = resolve_operator(path)
        tensors, meta = load_tensors(path)
        try:
            ckpt = _checkpoint_from_meta(meta)
            # Shapes are compared on the meta device first, so that a forged size cannot make us allocate.
            with torch.device("meta"):
                expected = {f"operator.{k}": tuple(v.shape)
                            for k, v in ckpt.new_operator().state_dict().items()}
            found = {k: tuple(v.shape) for k, v in tensors.items()}
            if found != expected:
                wrong = sorted(set(found) ^ set(expected)) or sorted(k for k in found if found[k] != expected[k])
                raise ValueError(f"its weights do not fit the architecture its metadata describes ({wrong[0]})")
            if not all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()):
                raise ValueError("its weights hold NaN or infinite values")
            op = ckpt.new_operator()
            op.load_state_dict({k.removeprefix("operator."): v for k, v in tensors.items()}, strict=True)
        except (KeyError, TypeError, ValueError, RuntimeError, UserError) as exc:
            raise UserError(f"operator checkpoint {path} is invalid: {str(exc).splitlines()[0]}") from exc
        op.eval()
        return op, ckpt


# A bound on the policies a checkpoint may describe: the per-parameter operator keeps role indices for
# every parameter, so a forged size must not make loading allocate gigabytes.
MAX_POLICY_PARAMS = 10_000_000
MAX_K = 1 << 20
MAX_TASK_DIM = 65536


def _checkpoint_from_meta(meta: dict[str, Any]) -> OperatorCheckpoint:
    """An :class:`OperatorCheckpoint` from a checkpoint's JSON metadata, every field validated (ValueError)."""
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not an operator checkpoint (format {meta.get('format')!r})")
    if meta.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint format version {meta.get('format_version')!r} is not supported by "
                         f"this metaimprove (reads version {CHECKPOINT_VERSION}); retrain or upgrade")
    raw_spec = meta["policy_spec"]
    if not (isinstance(raw_spec, dict) and _is_int(raw_spec.get("obs_dim")) and _is_int(raw_spec.get("act_dim"))
            and isinstance(raw_spec.get("hidden"), list) and all(_is_int(h) for h in raw_spec["hidden"])
            and isinstance(raw_spec.get("activation"), str)):
        raise ValueError(f"policy_spec must hold integer obs_dim, act_dim, hidden and a string activation, "
                         f"got {str(raw_spec)[:80]}")
    spec = PolicySpec.from_dict(raw_spec)
    if spec.n_params > MAX_POLICY_PARAMS:
        raise ValueError(f"its policy has {spec.n_params} parameters, more than this metaimprove loads "
                         f"({MAX_POLICY_PARAMS})")
    operator = _dataclass_from(OperatorConfig, meta["operator"], "operator")
    if operator.arch not in ARCHS:
        raise ValueError(f"operator.arch must be one of {list(ARCHS)}, got {operator.arch!r}")
    sizes = {"hidden": operator.hidden, "context_dim": operator.context_dim,
             "param_hidden": operator.param_hidden, "role_dim": operator.role_dim}
    for name, size in sizes.items():
        if not 1 <= size <= 65536:
            raise ValueError(f"operator.{name} must be in [1, 65536], got {size}")
    if not 0 <= operator.memory <= 65536:
        raise ValueError(f"operator.memory must be in [0, 65536], got {operator.memory}")
    if not operator.step_scale > 0:
        raise ValueError(f"operator.step_scale must be > 0, got {operator.step_scale}")
    # Checkpoints written before the setting was named n_envs (the shipped ones among them) call it envs.
    raw_features = meta["features"]
    if isinstance(raw_features, dict) and "envs" in raw_features and "n_envs" not in raw_features:
        raw_features = {("n_envs" if k == "envs" else k): v for k, v in raw_features.items()}
    features = _dataclass_from(FeatureConfig, raw_features, "features")
    if features.n_transitions < 1 or features.n_states < 1 or not 0 < features.gamma <= 1 \
            or features.baseline_ridge < 0:
        raise ValueError(f"features out of range ({features}): need n_transitions, n_states >= 1, "
                         "gamma in (0, 1], baseline_ridge >= 0")
    ks = meta["ks"]
    if not (isinstance(ks, list) and ks and all(_is_int(k) and 1 <= k <= MAX_K for k in ks)):
        raise ValueError(f"ks must be a non-empty list of integers in [1, {MAX_K}], got {str(ks)[:80]}")
    raw_quantiles = meta["ask_quantiles"]
    if not (isinstance(raw_quantiles, dict) and raw_quantiles):
        raise ValueError("ask_quantiles must be a non-empty mapping from k to 3 quantiles")
    quantiles = {}
    for key, values in raw_quantiles.items():
        if not (key.isdecimal() and int(key) in ks):
            raise ValueError(f"ask_quantiles has key {key!r}, which is not one of ks {ks}")
        if not (isinstance(values, list) and len(values) == 3 and all(_is_number(v) for v in values)
                and values[0] <= values[1] <= values[2]):
            raise ValueError(f"ask_quantiles[{key}] must be 3 finite increasing numbers, got {str(values)[:80]}")
        quantiles[int(key)] = [float(v) for v in values]
    tasks, teacher = meta["tasks"], meta["teacher"]
    if not (isinstance(tasks, list) and all(isinstance(t, str) for t in tasks)):
        raise ValueError("tasks must be a list of task names")
    if not (isinstance(teacher, dict) and isinstance(teacher.get("name"), str)
            and isinstance(teacher.get("config", {}), dict)):
        raise ValueError("teacher must be a mapping with a string name and a config mapping")
    # A checkpoint may have neither key: it reads no task.
    task_family, task_dim = meta.get("task_family"), meta.get("task_dim", 0)
    if features.task_input and not (isinstance(task_family, str) and task_family and _is_int(task_dim)
                                    and 1 <= task_dim <= MAX_TASK_DIM):
        raise ValueError(f"features.task_input needs a task_family name and a task_dim in [1, {MAX_TASK_DIM}], got "
                         f"{task_family!r} and {task_dim!r}")
    if not features.task_input and (task_family is not None or task_dim != 0):
        raise ValueError(f"task_family / task_dim ({task_family!r}, {task_dim!r}) without features.task_input")
    if features.n_envs is not None and features.n_envs < 1:
        raise ValueError(f"features.n_envs must be >= 1, got {features.n_envs}")
    warmup_phases(features.warmup)
    check_features(features, operator.arch)
    # A checkpoint may record no ask k: it is asked for default_ask_k(ks).
    ask_k = meta.get("ask_k")
    if ask_k is not None and not (_is_int(ask_k) and ask_k in ks):
        raise ValueError(f"ask_k must be one of ks {ks}, got {str(ask_k)[:40]}")
    return OperatorCheckpoint(spec, operator, features, ks, quantiles, tasks, teacher, task_family, task_dim, ask_k)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _dataclass_from(cls: type[Any], data: Any, where: str) -> Any:
    """An instance of config dataclass ``cls`` from JSON ``data``: known keys only, each of its field's type
    (missing keys keep their defaults)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {str(data)[:80]}")
    defaults = cls()
    annotations = {f.name: str(f.type) for f in fields(cls)}
    unknown = sorted(set(data) - set(annotations))
    if unknown:
        raise ValueError(f"{where} has unknown settings {unknown}")
    for key, value in data.items():
        default = getattr(defaults, key)
        if default is None:  # an optional field ("bool | None", "int | None"): None or a value of its type
            expected = annotations[key].replace(" | None", "")
            ok = value is None or (isinstance(value, bool) if expected == "bool" else
                                   _is_int(value) if expected == "int" else False)
        else:
            kind = type(default)
            ok = _is_number(value) if kind is float else _is_int(value) if kind is int else isinstance(value, kind)
            expected = kind.__name__
        if not ok:
            raise ValueError(f"{where}.{key} must be {expected}, got {value!r}")
    return cls(**data)


def warn_if_incomplete(path: Path) -> None:
    """One warning line when the checkpoint at ``path`` comes from a train run that has not finished (its best
    weights so far, which look like a finished fit)."""
    summary = read_json(meta_path(path)).get("meta", {}).get("summary", {})
    if summary.get("complete") is False:
        logging.getLogger(__name__).warning(
            f"operator {path} is the best-so-far checkpoint of a train run that has not finished; rerun that train "
            "command to complete it")
