"""Task distribution: families declared in ``tasks/*.yaml`` (and on ``METAIMPROVE_TASK_PATH``), frozen
JSON-round-tripping :class:`Task` draws, physics randomization of the nominal model, oracle task distance.

Why: see the design notes (docs/design.md, "Tasks and physics randomization" and "Oracle task distance").
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import yaml

from metaimprove.errors import UserError

SPLITS = ("train", "test", "ood")
TASK_PATH_ENV = "METAIMPROVE_TASK_PATH"
"""environment variable: directories (or single ``.yaml`` files) of a user's own families, ``os.pathsep``-separated"""
PHYSICS_FIELDS = ("body_mass", "geom_friction", "dof_damping", "actuator_gear", "gravity")


@dataclass
class TaskConfig:
    """Which task family to draw tasks from."""

    family: str = "???"
    """task family: the name of a file in tasks/ or on METAIMPROVE_TASK_PATH (list them with `metaimprove tasks`)"""


@dataclass
class TaskSelection:
    """Which tasks a stage runs policies on: consecutive tasks of a family's split, or one gymnasium env."""

    task: TaskConfig = field(default_factory=lambda: TaskConfig("halfcheetah_vel"))
    """task family (config group: task=<family>)"""
    split: str = "test"
    """split of the family: train, test (interpolation) or ood (extrapolation)"""
    n_tasks: int = 4
    """number of tasks of the split"""
    task_start: int = 0
    """index of the first task"""
    env: str | None = None
    """a gymnasium id (Hopper-v5) or module:Class to run on instead of the family's tasks (its spaces must fit the
    policies)"""
    episode_length: int | None = None
    """env=: steps per episode (default: the env id's max_episode_steps)"""


@dataclass(frozen=True)
class Range:
    """A parameter's distribution: uniform on ``train`` or on ``ood`` bands, or a discrete choice."""

    train: tuple[float, float] | None = None
    ood: tuple[tuple[float, float], ...] = ()
    choices: tuple[float, ...] = ()

    def sample(self, rng: np.random.Generator, split: str, size: int | None = None) -> np.ndarray:
        """Draw ``size`` values (or a scalar when ``size`` is None) for ``split``."""
        if self.choices:
            return rng.choice(np.asarray(self.choices, dtype=np.float64), size=size)
        bands = self.ood if split == "ood" and self.ood else (self.train,)
        widths = np.array([hi - lo for lo, hi in bands])
        band = rng.choice(len(bands), size=size, p=widths / widths.sum())
        lo = np.array([b[0] for b in bands])[band]
        hi = np.array([b[1] for b in bands])[band]
        return lo + (hi - lo) * rng.random(size=size)

    def describe(self) -> str:
        """One-line human summary, e.g. ``train U[0, 1.5] | ood U(1.5, 2]``."""
        if self.choices:
            return "choice {" + ", ".join(f"{c:g}" for c in self.choices) + "}"
        assert self.train is not None
        text = f"train U[{self.train[0]:g}, {self.train[1]:g}]"
        if self.ood:
            text += " | ood " + " ∪ ".join(f"U[{lo:g}, {hi:g}]" for lo, hi in self.ood)
        return text


@dataclass(frozen=True)
class PhysicsRange:
    """Log-uniform scale ``base ** U(low, high)`` of one physics quantity, per element."""

    base: float
    exponent: Range

    def describe(self) -> str:
        """One-line human summary, e.g. ``1.5^U[-3, 3]``."""
        return f"{self.base:g}^" + self.exponent.describe().replace("train ", "")


@dataclass(frozen=True)
class Physics:
    """Multiplicative scales applied to a robot's nominal model (1.0 = nominal)."""

    body_mass: tuple[float, ...]
    geom_friction: tuple[float, ...]
    dof_damping: tuple[float, ...]
    actuator_gear: tuple[float, ...]
    gravity: float = 1.0

    @staticmethod
    def nominal(model: mujoco.MjModel) -> Physics:
        """Scales that leave ``model`` unchanged."""
        return Physics(
            body_mass=(1.0,) * model.nbody,
            geom_friction=(1.0,) * model.ngeom,
            dof_damping=(1.0,) * model.nv,
            actuator_gear=(1.0,) * model.nu,
        )


@dataclass(frozen=True)
class Task:
    """One task: family, split, index in that split, task parameters and physics scales."""

    family: str
    split: str
    index: int
    params: tuple[tuple[str, float], ...]
    physics: Physics

    def param(self, name: str) -> float:
        """The value of task parameter ``name``."""
        return dict(self.params)[name]

    @property
    def name(self) -> str:
        """Short stable identifier, e.g. ``halfcheetah_vel/train/3``."""
        return f"{self.family}/{self.split}/{self.index}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; :meth:`from_dict` inverts it exactly."""
        return {
            "family": self.family,
            "split": self.split,
            "index": self.index,
            "params": dict(self.params),
            "physics": {f: _jsonable(getattr(self.physics, f)) for f in PHYSICS_FIELDS},
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Task:
        """Rebuild a task from :meth:`to_dict` output, validating its fields."""
        try:
            phys = data["physics"]
            physics = Physics(
                **{f: tuple(float(x) for x in phys[f]) for f in PHYSICS_FIELDS[:-1]},
                gravity=float(phys["gravity"]),
            )
            task = Task(
                family=str(data["family"]),
                split=str(data["split"]),
                index=int(data["index"]),
                params=tuple((str(k), float(v)) for k, v in data["params"].items()),
                physics=physics,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"invalid task description ({exc!r}); expected the JSON of Task.to_dict()") from exc
        scales = [*task.physics.body_mass, *task.physics.geom_friction, *task.physics.dof_damping]
        scales += [*task.physics.actuator_gear, task.physics.gravity]
        if not all(math.isfinite(s) and s > 0 for s in scales):
            raise UserError(f"task {task.name}: physics scales must be finite and positive")
        return task

    def to_json(self) -> str:
        """Canonical JSON text of the task."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Task:
        """Inverse of :meth:`to_json`."""
        return Task.from_dict(json.loads(text))


PIPELINE_SIZES = {"n_tasks": 12, "iterations": 30, "test_tasks": 2, "test_seeds": 3, "applications": 30}
"""``metaimprove pipeline``'s sizes for a family whose YAML gives no ``pipeline:`` block (HalfCheetah's cost)"""


@dataclass(frozen=True)
class TaskFamily:
    """A distribution of tasks declared by one ``tasks/<name>.yaml`` file.

    Its robot is one of gymnasium's MuJoCo robots or the user's own MJCF file (``xml:``). Each split draws from
    its own seed stream (``split_seeds``), so ``test`` never repeats a ``train`` draw.
    """

    name: str
    description: str
    robot: str
    """a gymnasium robot's name (``half_cheetah``, ...) or the absolute path of the family's own MJCF file"""
    reward: str
    env_id: str
    episode_length: int
    params: dict[str, Range] = field(hash=False)
    physics: dict[str, PhysicsRange] = field(hash=False)
    split_seeds: dict[str, int] = field(hash=False)
    ctrl_cost: float | None = None
    """weight of |a|^2 in the reward (None: the reward kind's default, see ``metaimprove.sim.envs.CTRL_COST``)"""
    healthy_reward: float = 0.0
    """reward per step while the robot is healthy (Hopper/Walker/Ant upright, as gymnasium's v5 envs)"""
    terminate_when_unhealthy: bool = False
    """end the episode (terminated) when the robot stops being healthy"""
    pipeline: dict[str, int] = field(default_factory=dict, hash=False)
    """this family's sizes for ``metaimprove pipeline`` (keys of :data:`PIPELINE_SIZES`), chosen to fit its cost"""
    frame_skip: int | None = None
    """own MJCF robot: physics substeps per env step (None: 5, as HalfCheetah)"""
    reset_noise: float | None = None
    """own MJCF robot: initial qpos ~ qpos0 + U(-r, r), qvel ~ r·N(0, 1) (None: 0.1, as HalfCheetah)"""

    def pipeline_sizes(self) -> dict[str, int]:
        """Every ``metaimprove pipeline`` size for this family: its ``pipeline:`` block over :data:`PIPELINE_SIZES`."""
        return {**PIPELINE_SIZES, **self.pipeline}

    def task(self, split: str, index: int) -> Task:
        """The ``index``-th task of ``split`` (deterministic, independent of how many are drawn)."""
        if split not in self.split_seeds:
            raise UserError(f"unknown split '{split}' for family {self.name}; choose one of {sorted(self.split_seeds)}")
        if index < 0:
            raise UserError(f"task index must be >= 0, got {index}")
        rng = np.random.default_rng([self.split_seeds[split], index])
        params = tuple((k, float(r.sample(rng, split))) for k, r in sorted(self.params.items()))
        nominal = nominal_model(self.robot)
        sizes = {
            "body_mass": nominal.nbody,
            "geom_friction": nominal.ngeom,
            "dof_damping": nominal.nv,
            "actuator_gear": nominal.nu,
        }
        scales: dict[str, Any] = {}
        for name in PHYSICS_FIELDS:
            spec = self.physics.get(name)
            n = sizes.get(name)
            if spec is None:
                scales[name] = 1.0 if n is None else (1.0,) * n
                continue
            exponent = spec.exponent.sample(rng, split, size=n if n is not None else None)
            values = np.power(spec.base, exponent)
            scales[name] = float(values) if n is None else tuple(float(v) for v in values)
        return Task(self.name, split, index, params, Physics(**scales))

    def tasks(self, split: str, n: int, start: int = 0) -> list[Task]:
        """Tasks ``start .. start + n - 1`` of ``split``."""
        return [self.task(split, i) for i in range(start, start + n)]

    def sample(self, rng: np.random.Generator, split: str) -> Task:
        """A task of ``split`` at a random index drawn from ``rng``."""
        return self.task(split, int(rng.integers(0, 2**31 - 1)))

    @staticmethod
    def from_dict(data: dict[str, Any], source: str = "<dict>", folder: Path | None = None) -> TaskFamily:
        """Parse and validate a family declaration (the YAML's content); a relative ``xml`` path is resolved
        from ``folder`` (the YAML file's directory; default the working directory)."""
        try:
            params = {k: _parse_range(v, f"params.{k}") for k, v in (data.get("params") or {}).items()}
            physics = {}
            for k, v in (data.get("physics") or {}).items():
                if k not in PHYSICS_FIELDS:
                    raise ValueError(f"physics.{k} is not one of {list(PHYSICS_FIELDS)}")
                base = float(v["base"])
                if not base > 0:
                    raise ValueError(f"physics.{k}.base must be > 0 (scales are base ** U(low, high)), got {base}")
                physics[k] = PhysicsRange(base, _parse_range({kk: vv for kk, vv in v.items() if kk != "base"}, k))
            seeds = {str(k): int(v["seed"]) for k, v in data["splits"].items()}
            unknown = set(seeds) - set(SPLITS)
            if unknown:
                raise ValueError(f"unknown splits {sorted(unknown)}; allowed {list(SPLITS)}")
            negative = sorted(k for k, v in seeds.items() if v < 0)
            if negative:
                raise ValueError(f"splits {negative} have negative seeds; a split's seed must be >= 0")
            family = TaskFamily(
                name=str(data["name"]),
                description=str(data.get("description", "")),
                robot=_robot(data, folder or Path.cwd()),
                reward=str(data["reward"]),
                env_id=str(data["env_id"]),
                episode_length=int(data["episode_length"]),
                params=params,
                physics=physics,
                split_seeds=seeds,
                ctrl_cost=None if data.get("ctrl_cost") is None else float(data["ctrl_cost"]),
                healthy_reward=float(data.get("healthy_reward", 0.0)),
                terminate_when_unhealthy=bool(data.get("terminate_when_unhealthy", False)),
                pipeline={str(k): int(v) for k, v in (data.get("pipeline") or {}).items()},
                frame_skip=None if data.get("frame_skip") is None else int(data["frame_skip"]),
                reset_noise=None if data.get("reset_noise") is None else float(data["reset_noise"]),
            )
            unknown = set(family.pipeline) - set(PIPELINE_SIZES)
            if unknown or any(v < 1 for v in family.pipeline.values()):
                raise ValueError(f"pipeline takes positive integers for {list(PIPELINE_SIZES)}, got {family.pipeline}")
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise UserError(f"bad task family file {source}: {exc}") from exc
        if family.episode_length < 1:
            raise UserError(f"bad task family file {source}: episode_length must be >= 1")
        if (family.frame_skip is not None and family.frame_skip < 1) or not (
                family.reset_noise is None or family.reset_noise >= 0):
            raise UserError(f"bad task family file {source}: frame_skip must be >= 1 and reset_noise >= 0")
        return family


def _robot(data: dict[str, Any], folder: Path) -> str:
    """The family's robot: ``robot``'s name, or ``xml``'s file as an absolute path (checked to exist)."""
    if "xml" not in data:
        if data.get("frame_skip") is not None or data.get("reset_noise") is not None:
            raise ValueError("frame_skip and reset_noise belong to an xml robot; a named robot steps and resets as "
                             "its gymnasium env")
        return str(data["robot"])
    if "robot" in data:
        raise ValueError("give either robot (a gymnasium robot's name) or xml (your MJCF file), not both")
    path = Path(str(data["xml"])).expanduser()
    path = (path if path.is_absolute() else folder / path).resolve()
    if not path.is_file():
        raise ValueError(f"xml file {path} does not exist")
    return str(path)


def _jsonable(value: float | tuple[float, ...]) -> float | list[float]:
    return list(value) if isinstance(value, tuple) else value


def _parse_range(spec: Any, where: str) -> Range:
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a mapping with 'train' (and optional 'ood') or 'choices'")
    if "choices" in spec:
        choices = tuple(float(c) for c in spec["choices"])
        if not choices:
            raise ValueError(f"{where}.choices is empty")
        return Range(choices=choices)
    train = _band(spec["train"], f"{where}.train")
    ood = tuple(_band(b, f"{where}.ood") for b in spec.get("ood", []))
    return Range(train=train, ood=ood)


def _band(band: Any, where: str) -> tuple[float, float]:
    lo, hi = (float(x) for x in band)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"{where} = [{lo}, {hi}] is impossible: need finite low <= high")
    return lo, hi


def family_dir() -> Path:
    """Directory holding the shipped ``*.yaml`` family files (package data).

    In a source checkout that is ``tasks/`` beside the package, even when an editable install of
    another checkout owns the ``metaimprove.task_files`` name (a worktree run with ``PYTHONPATH``).
    """
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "tasks" / "README.md").is_file():
        return checkout / "tasks"
    return Path(str(resources.files("metaimprove.task_files")))


def family_files() -> list[Path]:
    """The shipped family files, then a user's: each ``*.yaml`` of the directories on ``METAIMPROVE_TASK_PATH``
    (and each ``.yaml`` file named there), in order."""
    files = sorted(family_dir().glob("*.yaml"))
    for entry in filter(None, os.environ.get(TASK_PATH_ENV, "").split(os.pathsep)):
        path = Path(entry).expanduser()
        if path.is_dir():
            files += sorted(path.glob("*.yaml"))
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{TASK_PATH_ENV} names {path}, which is neither a directory nor a file")
    return files


@cache
def load_families() -> dict[str, TaskFamily]:
    """All families (shipped in ``tasks/`` and on ``METAIMPROVE_TASK_PATH``), by name."""
    families: dict[str, TaskFamily] = {}
    sources: dict[str, Path] = {}
    for path in family_files():
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"task family file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise UserError(f"task family file {path} must hold a mapping (see tasks/README.md)")
        fam = TaskFamily.from_dict(data, str(path), folder=path.parent)
        if fam.name in families:
            raise UserError(f"task family '{fam.name}' is declared twice, in {sources[fam.name]} and {path}; "
                            "rename one")
        families[fam.name], sources[fam.name] = fam, path
    return families


def get_family(name: str) -> TaskFamily:
    """The family called ``name``, or a one-line error listing the known ones."""
    families = load_families()
    if name not in families:
        raise UserError(f"unknown task family '{name}'; choose one of {sorted(families)} (see `metaimprove tasks`; "
                        f"add your own with {TASK_PATH_ENV}=<dir of family .yaml files>)")
    return families[name]


ENV_ENTRY_POINT = "metaimprove.sim.envs:TaskEnv"
"""the env class every family's gymnasium id makes, named as a string so that registering imports nothing"""


def register_envs() -> None:
    """Register every family's gymnasium id (``env_id`` in its file, e.g. ``metaimprove/HalfCheetahVel-v0``);
    idempotent. ``import metaimprove`` calls it, so it stays cheap: it reads the family files only, and the env
    class (:data:`ENV_ENTRY_POINT`) is imported and its MuJoCo model built by the first ``gymnasium.make``."""
    import gymnasium

    for fam in load_families().values():
        if fam.env_id not in gymnasium.registry:
            gymnasium.register(id=fam.env_id, entry_point=ENV_ENTRY_POINT, kwargs={"family": fam.name},
                               max_episode_steps=fam.episode_length)


# Robots: the gymnasium MuJoCo model each family randomizes (the files gymnasium's v5 envs load).
ROBOT_XML = {
    "half_cheetah": "half_cheetah.xml",
    "hopper": "hopper.xml",
    "walker2d": "walker2d_v5.xml",
    "ant": "ant.xml",
    "swimmer": "swimmer.xml",
}


def robot_xml_path(robot: str) -> str:
    """Path of the robot's MJCF file: a named robot's inside gymnasium's assets, or the user's own (absolute)."""
    if Path(robot).is_absolute():
        return robot
    if robot not in ROBOT_XML:
        raise UserError(f"unknown robot '{robot}'; known robots: {sorted(ROBOT_XML)} (or give xml: <your MJCF file>)")
    import gymnasium.envs.mujoco as gm

    return str(Path(gm.__file__).parent / "assets" / ROBOT_XML[robot])


@contextlib.contextmanager
def settotalmass_accepted() -> Iterator[None]:
    """Silence MuJoCo 4's ``settotalmass`` deprecation warning (both its Python and its C-level copy).

    Gymnasium's robot files still use ``settotalmass``; the compiled masses are what we want, and the
    warning would otherwise repeat for every model compiled (and land in every run's MUJOCO_LOG.TXT).
    Any other MuJoCo warning raised meanwhile still reaches the previous handler.
    """
    previous = mujoco.get_mju_user_warning()

    def handler(message: str) -> None:
        if "settotalmass" in message:
            return
        if previous is not None:
            previous(message)
        else:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=1)

    mujoco.set_mju_user_warning(handler)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*settotalmass.*")
            yield
    finally:
        mujoco.set_mju_user_warning(previous)


def compile_quietly(xml_path: str) -> mujoco.MjModel:
    """Compile an MJCF file (see :func:`settotalmass_accepted`); a file MuJoCo rejects is a one-line error."""
    with settotalmass_accepted():
        try:
            return mujoco.MjModel.from_xml_path(xml_path)
        except ValueError as exc:
            raise UserError(f"MuJoCo cannot compile {xml_path}: {' '.join(str(exc).split())}") from exc


@cache
def nominal_model(robot: str) -> mujoco.MjModel:
    """The robot's unmodified compiled model (cached; never mutate it); ``robot`` as :attr:`TaskFamily.robot`."""
    return compile_quietly(robot_xml_path(robot))


def apply_physics(model: mujoco.MjModel, physics: Physics, nominal: mujoco.MjModel) -> None:
    """Set ``model``'s physical quantities to ``nominal``'s scaled by ``physics`` (in place).

    Mass and inertia scale together per body; friction scales the sliding coefficient of every
    geom (the floor too: a contact uses the larger friction of its two geoms); gear scales each
    actuator's transmission. Derived constants are recomputed with ``mj_setConst``.
    """
    sizes = (model.nbody, model.ngeom, model.nv, model.nu)
    given = tuple(len(getattr(physics, f)) for f in PHYSICS_FIELDS[:-1])
    if given != sizes:
        raise UserError(f"physics scales have sizes {given} but the model needs {sizes} (body, geom, dof, actuator)")
    mass = np.asarray(physics.body_mass)
    model.body_mass[:] = nominal.body_mass * mass
    model.body_inertia[:] = nominal.body_inertia * mass[:, None]
    model.geom_friction[:, 0] = nominal.geom_friction[:, 0] * np.asarray(physics.geom_friction)
    model.dof_damping[:] = nominal.dof_damping * np.asarray(physics.dof_damping)
    model.actuator_gear[:, 0] = nominal.actuator_gear[:, 0] * np.asarray(physics.actuator_gear)
    model.opt.gravity[:] = nominal.opt.gravity * physics.gravity
    mujoco.mj_setConst(model, mujoco.MjData(model))


def build_model(task: Task) -> mujoco.MjModel:
    """A freshly compiled model of the task's robot with the task's physics applied."""
    nominal = nominal_model(get_family(task.family).robot)
    model = copy.deepcopy(nominal)
    apply_physics(model, task.physics, nominal)
    return model


def task_coordinates(task: Task) -> dict[str, np.ndarray]:
    """The task as normalized coordinates, one array per randomized quantity of its family.

    A task parameter is divided by the width of its training range; a physics scale ``base ** u`` becomes
    ``u`` (log space) divided by the width of ``u``'s training range. Unrandomized quantities are left out.
    """
    family = get_family(task.family)
    coords: dict[str, np.ndarray] = {}
    for name, rng in family.params.items():
        width = (rng.train[1] - rng.train[0]) if rng.train is not None else max(rng.choices) - min(rng.choices)
        if width > 0:
            coords[f"params.{name}"] = np.array([task.param(name) / width])
    for name, phys in family.physics.items():
        assert phys.exponent.train is not None  # physics ranges are uniform, never choices
        width = phys.exponent.train[1] - phys.exponent.train[0]
        if width > 0:
            exponent = np.log(np.atleast_1d(np.asarray(getattr(task.physics, name), dtype=np.float64)))
            coords[name] = exponent / math.log(phys.base) / width
    return coords


def task_distance(a: Task, b: Task) -> float:
    """Oracle distance between two tasks of one family: √(Σ over quantities of the mean squared coordinate gap).

    Each randomized quantity (a task parameter, or one physics field such as ``body_mass`` with one scale
    per body) counts once, whatever its number of elements: the per-element gaps of :func:`task_coordinates`
    are averaged within a quantity before the quantities are summed, so 9 friction scales do not outweigh
    the one target velocity.
    """
    if a.family != b.family:
        raise UserError(f"task distance needs tasks of one family, got {a.family} and {b.family}")
    ca, cb = task_coordinates(a), task_coordinates(b)
    return math.sqrt(sum(float(np.mean((ca[k] - cb[k]) ** 2)) for k in ca))


# -------------------------------------------------------------------------------------- training runs
