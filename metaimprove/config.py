"""Hydra structured configs of every stage, their config groups, and the stage registry.

A stage is a config dataclass plus a function that takes it. Adding one (say ``train``) means
writing, here, the dataclass with a docstring (its first line is the stage's description in
``metaimprove --help``) and a one-line docstring under every field, decorated with :func:`stage`::

    @stage("train", "metaimprove.train:train", groups={"operator": "mlp"})
    @dataclass
    class TrainConfig:
        \"\"\"Fit the improvement operator to a collected dataset.\"\"\"

        operator: Any = MISSING
        \"\"\"the operator architecture (config group: operator=<name>)\"\"\"
        out: str = MISSING
        \"\"\"run directory (default runs/train/<date>_<time>)\"\"\"

and the function ``train(cfg: TrainConfig) -> None`` in ``metaimprove/train.py``. The CLI then
runs ``metaimprove train [overrides]`` through ``@hydra.main``. A stage with an ``out`` field
writes into a run directory: ``out`` is Hydra's run directory (one subdirectory per job under
``-m``), the CLI fills in the default and records the resolved config in ``<out>/.hydra/``; a
stage without one (``tasks``, ``verify``) writes nothing.

Config groups: ``task`` has one option per family in ``tasks/*.yaml`` (registered from the files,
so a new family needs no config of its own), ``teacher`` one per entry of :data:`TEACHERS`. Further
options can be YAML files in ``configs/<group>/`` (shipped as ``metaimprove.conf``).
"""

import ast
import contextlib
import importlib
import inspect
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import mujoco
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from metaimprove.errors import UserError
from metaimprove.tasks import SPLITS, load_families
from metaimprove.teachers import PPO, PPOConfig, Teacher

HYDRA_VERSION_BASE = "1.3"
CONFIG_MODULE = "metaimprove.conf"
"""package holding the YAML configs (``configs/`` in the repo); Hydra reads it as ``pkg://metaimprove.conf``"""
RUN_SETTINGS = "run_dir"
"""``configs/run_dir.yaml``: Hydra settings every stage shares (run directory, no chdir, no log files)"""

TEACHERS: dict[str, tuple[type, type[Teacher]]] = {"ppo": (PPOConfig, PPO)}
"""teacher option name -> (its config dataclass, the teacher class built from it)"""

C = TypeVar("C")


@dataclass(frozen=True)
class Stage:
    """A registered stage: its name, config dataclass, the function that runs it and its group defaults."""

    name: str
    config: type
    target: str
    """``module:function`` of the stage function (imported only when the stage runs)"""
    groups: dict[str, str]
    """default option of each config group the stage uses"""

    @property
    def description(self) -> str:
        """One-line description: the first line of the config dataclass's docstring."""
        return (self.config.__doc__ or "").strip().splitlines()[0]

    @property
    def has_out(self) -> bool:
        """Whether the stage writes into a run directory (has an ``out`` field)."""
        return any(f.name == "out" for f in fields(self.config))

    def function(self) -> Callable[[Any], None]:
        """Import and return the stage function."""
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


STAGES: dict[str, Stage] = {}
"""every stage by name, in registration (pipeline) order"""


def stage(name: str, target: str, groups: dict[str, str] | None = None) -> Callable[[type[C]], type[C]]:
    """Class decorator: register a config dataclass as stage ``name``, run by ``target`` (``module:function``).

    ``groups`` maps each config group the stage uses to its default option; the dataclass declares a
    field of the same name (``MISSING``) that the chosen option fills.
    """

    def register(cls: type[C]) -> type[C]:
        if not is_dataclass(cls):
            raise TypeError(f"stage {name}: {cls.__name__} must be a dataclass")
        undocumented = [f.name for f in fields(cls) if f.name not in field_docs(cls)]
        if undocumented:
            raise TypeError(f"stage {name}: fields {undocumented} of {cls.__name__} need a one-line docstring")
        store = ConfigStore.instance()
        store.store(name=f"{name}_schema", node=cls)
        defaults: list[Any] = [f"{name}_schema", *({g: o} for g, o in (groups or {}).items()), RUN_SETTINGS, "_self_"]
        store.store(name=name, node={"defaults": defaults})
        STAGES[name] = Stage(name, cls, target, dict(groups or {}))
        return cls

    return register


def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstring under each field of dataclass ``cls`` (and its bases), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0]
        if not isinstance(body, ast.ClassDef):
            continue
        for node, after in zip(body.body, body.body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def teacher_class(config: object) -> type[Teacher]:
    """The teacher class that ``config`` (an instance of a registered teacher config) configures."""
    for config_type, cls in TEACHERS.values():
        if type(config) is config_type:
            return cls
    raise UserError(f"no teacher takes a {type(config).__name__}; teachers: {sorted(TEACHERS)}")


@dataclass
class TaskConfig:
    """Which task family to draw tasks from."""

    family: str = MISSING
    """task family: the name of a file in tasks/ (list them with `metaimprove tasks`)"""


def _register_groups() -> None:
    store = ConfigStore.instance()
    for family in load_families():
        store.store(group="task", name=family, node=TaskConfig(family=family))
    for name, (config_type, _) in TEACHERS.items():
        store.store(group="teacher", name=name, node=config_type)


_register_groups()


@stage("tasks", "metaimprove.cli:list_tasks")
@dataclass
class TasksConfig:
    """List the task families: reward, episode length, parameter and physics ranges per split."""

    family: str | None = None
    """show only this family (default: all of them)"""


@stage("collect", "metaimprove.collect:collect", groups={"task": "halfcheetah_vel", "teacher": "ppo"})
@dataclass
class CollectConfig:
    """Run a teacher on tasks × seeds and write one verified dataset shard per run (resumable)."""

    task: TaskConfig = MISSING
    """the task family (config group: task=<family>)"""
    teacher: Any = MISSING
    """the teacher and its hyperparameters (config group: teacher=<name>, fields teacher.<field>=...)"""
    split: str = "train"
    """which split of the family to draw tasks from: train, test or ood"""
    start: int = 0
    """index of the first task in the split"""
    n_tasks: int = 16
    """number of tasks: indices start .. start + n_tasks - 1"""
    seeds: int = 3
    """runs per task, with seeds seed_start .. seed_start + seeds - 1 (a seed fixes θ⁰ and the teacher's noise)"""
    seed_start: int = 0
    """first seed"""
    iterations: int = 50
    """teacher updates per run: a shard holds θ⁰ .. θᴺ and τ⁰ .. τᴺ⁻¹ for N = iterations"""
    hidden: list[int] = field(default_factory=lambda: [32, 32])
    """hidden layer sizes of the policy MLP"""
    workers: int = 0
    """parallel worker processes; 0 = one per CPU (results do not depend on it)"""
    out: str = MISSING
    """dataset directory, also the run directory (default runs/collect/<date>_<time>); rerun to resume"""

    def __post_init__(self) -> None:
        checks = [
            (self.split in SPLITS, f"split must be one of {list(SPLITS)}, got '{self.split}'"),
            (self.start >= 0, f"start must be >= 0, got {self.start}"),
            (self.n_tasks >= 1, f"n_tasks must be >= 1, got {self.n_tasks}"),
            (self.seeds >= 1, f"seeds (runs per task) must be >= 1, got {self.seeds}"),
            (self.seed_start >= 0, f"seed_start must be >= 0 (seeds are non-negative), got {self.seed_start}"),
            (self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}"),
            (len(self.hidden) >= 1 and min(self.hidden) >= 1, f"hidden sizes must be >= 1, got {list(self.hidden)}"),
            (self.workers >= 0, f"workers must be >= 0 (0 = one per CPU), got {self.workers}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


@stage("verify", "metaimprove.collect:verify")
@dataclass
class VerifyConfig:
    """Check every shard of a collected dataset against its manifest (reads only)."""

    dataset: str = MISSING
    """dataset directory: the out= of a collect run"""


@contextlib.contextmanager
def mujoco_log(directory: Path | None) -> Iterator[None]:
    """Send MuJoCo's warnings to ``directory/MUJOCO_LOG.TXT`` (or to Python warnings when None).

    Unhandled, MuJoCo prints each warning and appends it to MUJOCO_LOG.TXT in the working
    directory, which is the repository when one runs ``metaimprove`` there; a stage's log belongs
    to its run directory.
    """

    def handler(message: str) -> None:
        if directory is None:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=1)
            return
        with open(directory / "MUJOCO_LOG.TXT", "a") as log:
            log.write(f"WARNING {time.ctime()}: {message}\n")

    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)
