"""Hydra structured configs of every stage, their config groups, and the stage registry.

Adding a stage: beside its code, a function taking a config dataclass whose docstring's first line describes the
stage in ``metaimprove --help`` and whose every field has a one-line docstring (``metaimprove <stage> --help``);
each config group the stage uses is a field of that name (``MISSING``). Then register it here, by name::

    register("train", "metaimprove.training.train:train", "metaimprove.training.train:TrainConfig",
             groups={"operator": "per_param"})

The registry imports no stage: a stage's config and function load when it runs or shows its settings
(:func:`store_configs`), and ``metaimprove --help`` reads each description from the source, so the CLI answers
without importing torch. A stage with an ``out`` field writes into that run directory (the CLI fills in the default
and records the resolved config in ``<out>/.hydra/``). Options of ``task`` come from ``tasks/*.yaml``, of ``teacher``
from :data:`~metaimprove.teachers.TEACHERS`; more can be YAML files in ``configs/<group>/``.
"""

import ast
import importlib
import importlib.util
import inspect
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from metaimprove.sim.tasks import TaskConfig, load_families

HYDRA_VERSION_BASE = "1.3"
CONFIG_MODULE = "metaimprove.conf"
"""package holding the YAML configs (``configs/`` in the repo); Hydra reads it as ``pkg://metaimprove.conf``"""
RUN_SETTINGS = "run_dir"
"""``configs/run_dir.yaml``: Hydra settings every stage shares (run directory, no chdir, no log files)"""

C = TypeVar("C")


def load(ref: str) -> Any:
    """The object ``module:name`` names, importing its module."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Stage:
    """A registered stage: its name, config dataclass, the function that runs it and its group defaults."""

    name: str
    config_ref: str
    """``module:Class`` of the config dataclass (imported only when the stage runs or shows its settings)"""
    target: str
    """``module:function`` of the stage function (imported only when the stage runs)"""
    groups: dict[str, str]
    """default option of each config group the stage uses"""

    @property
    def config(self) -> type:
        """The config dataclass (imports its module)."""
        return load(self.config_ref)

    @property
    def description(self) -> str:
        """One-line description: the first line of the config dataclass's docstring, read without importing it."""
        return (_class_docstring(self.config_ref) or "").strip().splitlines()[0]

    @property
    def has_out(self) -> bool:
        """Whether the stage writes into a run directory (has an ``out`` field)."""
        return any(f.name == "out" for f in fields(self.config))

    def function(self) -> Callable[[Any], None]:
        """Import and return the stage function."""
        return load(self.target)


def _class_docstring(ref: str) -> str | None:
    """The docstring of class ``module:Class``: from the loaded module if it is, else parsed from its source."""
    module, name = ref.split(":")
    if module not in sys.modules:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin is not None and spec.origin.endswith(".py"):
            for node in ast.parse(Path(spec.origin).read_text()).body:
                if isinstance(node, ast.ClassDef) and node.name == name:
                    return ast.get_docstring(node)
    return inspect.getdoc(load(ref))


STAGES: dict[str, Stage] = {}
"""every stage by name, in registration (pipeline) order"""


def register(name: str, target: str, config: str, groups: dict[str, str] | None = None) -> None:
    """Register stage ``name``: config dataclass ``config`` run by ``target`` (both ``module:name``).

    ``groups`` maps each config group the stage uses to its default option; the dataclass declares a
    field of the same name (``MISSING``) that the chosen option fills.
    """
    STAGES[name] = Stage(name, config, target, dict(groups or {}))


def stage(name: str, target: str, groups: dict[str, str] | None = None) -> Callable[[type[C]], type[C]]:
    """Class decorator: :func:`register` a config dataclass defined in hand as stage ``name``."""

    def decorate(cls: type[C]) -> type[C]:
        _check_documented(name, cls)
        register(name, target, f"{cls.__module__}:{cls.__qualname__}", groups)
        return cls

    return decorate


def store_configs(stage: Stage) -> None:
    """Put the config groups' options and ``stage``'s schema and defaults into Hydra's ConfigStore, which Hydra
    composes from; this imports the stage's config (and with the groups, the teachers and operators)."""
    _register_groups()
    cls = stage.config
    _check_documented(stage.name, cls)
    store = ConfigStore.instance()
    store.store(name=f"{stage.name}_schema", node=cls)
    defaults: list[Any] = [f"{stage.name}_schema", *({g: o} for g, o in stage.groups.items()), RUN_SETTINGS, "_self_"]
    store.store(name=stage.name, node={"defaults": defaults})


def _check_documented(name: str, cls: type) -> None:
    if not is_dataclass(cls):
        raise TypeError(f"stage {name}: {cls.__name__} must be a dataclass")
    undocumented = [f.name for f in fields(cls) if f.name not in field_docs(cls)]
    if undocumented:
        raise TypeError(f"stage {name}: fields {undocumented} of {cls.__name__} need a one-line docstring")


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


@cache
def _register_groups() -> None:
    from metaimprove.operator.networks import ARCHS, OperatorConfig
    from metaimprove.teachers import TEACHERS

    store = ConfigStore.instance()
    for family in load_families():
        store.store(group="task", name=family, node=TaskConfig(family=family))
    for name, (config_type, _) in TEACHERS.items():
        store.store(group="teacher", name=name, node=config_type)
    for arch in ARCHS:
        store.store(group="operator", name=arch, node=OperatorConfig(arch=arch))


@stage("tasks", "metaimprove.cli:list_tasks")
@dataclass
class TasksConfig:
    """List the task families: reward, episode length, parameter and physics ranges per split."""

    family: str | None = None
    """show only this family (default: all of them)"""


# Stages whose configs live beside their code (sub-configs are defined by the module that uses them).
register("collect", "metaimprove.data.collect:collect", "metaimprove.data.collect:CollectConfig",
         groups={"task": "halfcheetah_vel", "teacher": "ppo"})
register("verify", "metaimprove.data.collect:verify", "metaimprove.data.collect:VerifyConfig")
register("train", "metaimprove.training.train:train", "metaimprove.training.train:TrainConfig",
         groups={"operator": "per_param"})
register("dr", "metaimprove.evaluation.baselines:train_dr", "metaimprove.evaluation.baselines:DRConfig",
         groups={"task": "halfcheetah_vel"})
register("metalearn", "metaimprove.training.metalearn:metalearn", "metaimprove.training.metalearn:MetaLearnConfig",
         groups={"task": "halfcheetah_vel"})
register("outcome", "metaimprove.training.outcome:outcome", "metaimprove.training.outcome:OutcomeConfig")
register("apply", "metaimprove.evaluation.apply:apply", "metaimprove.evaluation.protocol:ApplyConfig",
         groups={"task": "halfcheetah_vel"})
register("evaluate", "metaimprove.evaluation.evaluate:run_evaluate", "metaimprove.evaluation.evaluate:EvaluateConfig",
         groups={"task": "halfcheetah_vel"})
register("plot", "metaimprove.evaluation.plot:run_plot", "metaimprove.evaluation.plot:PlotConfig")
register("export", "metaimprove.interop.sb3:export", "metaimprove.interop.sb3:ExportConfig")


@stage("pipeline", "metaimprove.pipeline:pipeline",
       groups={"task": "halfcheetah_vel", "teacher": "ppo", "operator": "per_param"})
@dataclass
class PipelineConfig:
    """Collect → train → apply → plot end to end (each family's small default: about 15 minutes on 2 cores)."""

    task: TaskConfig = MISSING
    """the task family (config group: task=<family>)"""
    teacher: Any = MISSING
    """the teacher that makes the data and is compared against (config group: teacher=<name>)"""
    operator: Any = MISSING
    """operator architecture, an :class:`~metaimprove.operator.networks.OperatorConfig` (config group:
    operator=<arch>)"""
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
