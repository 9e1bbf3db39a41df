"""Hydra structured configs of every stage, their config groups, and the stage registry.

Adding a stage: beside its code, a function taking a config dataclass whose docstring's first line describes the
stage in ``metaimprove --help`` and whose every field has a one-line docstring (``metaimprove <stage> --help``);
each config group the stage uses is a field of that name (``MISSING``). Then register it here::

    stage("train", "metaimprove.training.train:train", groups={"operator": "per_param"})(TrainConfig)

A stage with an ``out`` field writes into that run directory (the CLI fills in the default and records the
resolved config in ``<out>/.hydra/``). Options of ``task`` come from ``tasks/*.yaml``, of ``teacher`` from
:data:`TEACHERS`; more can be YAML files in ``configs/<group>/``.
"""

import ast
import importlib
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from metaimprove.data.collect import CollectConfig, VerifyConfig
from metaimprove.evaluation.baselines import DRConfig
from metaimprove.evaluation.plot import PlotConfig
from metaimprove.evaluation.protocol import ApplyConfig
from metaimprove.interop.sb3 import ExportConfig
from metaimprove.operator.networks import ARCHS, OperatorConfig
from metaimprove.sim.tasks import TaskConfig, load_families
from metaimprove.teachers import TEACHERS
from metaimprove.training.metalearn import MetaLearnConfig
from metaimprove.training.train import TrainConfig

HYDRA_VERSION_BASE = "1.3"
CONFIG_MODULE = "metaimprove.conf"
"""package holding the YAML configs (``configs/`` in the repo); Hydra reads it as ``pkg://metaimprove.conf``"""
RUN_SETTINGS = "run_dir"
"""``configs/run_dir.yaml``: Hydra settings every stage shares (run directory, no chdir, no log files)"""

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


def _register_groups() -> None:
    store = ConfigStore.instance()
    for family in load_families():
        store.store(group="task", name=family, node=TaskConfig(family=family))
    for name, (config_type, _) in TEACHERS.items():
        store.store(group="teacher", name=name, node=config_type)
    for arch in ARCHS:
        store.store(group="operator", name=arch, node=OperatorConfig(arch=arch))


_register_groups()


@stage("tasks", "metaimprove.cli:list_tasks")
@dataclass
class TasksConfig:
    """List the task families: reward, episode length, parameter and physics ranges per split."""

    family: str | None = None
    """show only this family (default: all of them)"""


# Stages whose configs live beside their code (sub-configs are defined by the module that uses them).
stage("collect", "metaimprove.data.collect:collect",
      groups={"task": "halfcheetah_vel", "teacher": "ppo"})(CollectConfig)
stage("verify", "metaimprove.data.collect:verify")(VerifyConfig)
stage("train", "metaimprove.training.train:train", groups={"operator": "per_param"})(TrainConfig)
stage("dr", "metaimprove.evaluation.baselines:train_dr", groups={"task": "halfcheetah_vel"})(DRConfig)
stage("metalearn", "metaimprove.training.metalearn:metalearn", groups={"task": "halfcheetah_vel"})(MetaLearnConfig)
stage("apply", "metaimprove.evaluation.apply:apply", groups={"task": "halfcheetah_vel"})(ApplyConfig)
stage("plot", "metaimprove.evaluation.plot:run_plot")(PlotConfig)
stage("export", "metaimprove.interop.sb3:export")(ExportConfig)


@stage("pipeline", "metaimprove.pipeline:pipeline",
       groups={"task": "halfcheetah_vel", "teacher": "ppo", "operator": "per_param"})
@dataclass
class PipelineConfig:
    """Collect → train → apply → plot end to end (each family's small default: about 15 minutes on 2 cores)."""

    task: TaskConfig = MISSING
    """the task family (config group: task=<family>)"""
    teacher: Any = MISSING
    """the teacher that makes the data and is compared against (config group: teacher=<name>)"""
    operator: OperatorConfig = MISSING
    """operator architecture (config group: operator=<arch>)"""
    n_tasks: int | None = None
    """training tasks to collect, train split (default: the family's, see `metaimprove tasks`)"""
    seeds: int = 1
    """teacher runs per training task"""
    iterations: int | None = None
    """teacher updates per run (default: the family's)"""
    max_epochs: int = 20
    """upper bound on training epochs (early stopping may end sooner)"""
    test_split: str = "test"
    """split the operator is applied on: test (interpolation) or ood (extrapolation)"""
    test_tasks: int | None = None
    """held-out tasks to apply on (default: the family's)"""
    test_seeds: int | None = None
    """seeds per held-out task (default: the family's)"""
    applications: int | None = None
    """operator applications per held-out run (default: the family's); every method gets their env steps"""
    ask_k: int | None = None
    """jump size the operator is asked for, recorded in its checkpoint (one of the trained ks; default: the one
    nearest 2)"""
    workers: int = 0
    """parallel worker processes; 0 = one per CPU"""
    out: str = MISSING
    """run directory: dataset/, operator/, apply/ and plot/ go inside (default runs/pipeline/<date>_<time>)"""
