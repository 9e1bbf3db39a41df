"""Teachers: the trusted baseline improvers we learn from and compare against, and their registry."""

from __future__ import annotations

import dataclasses
from importlib import resources
from typing import Any

import yaml

from metaimprove.errors import UserError
from metaimprove.teachers.ars import ARS, ARSConfig
from metaimprove.teachers.base import ImprovementRecord, Teacher
from metaimprove.teachers.ppo import PPO, PPOConfig, gae_advantages

__all__ = ["ARS", "PPO", "TEACHERS", "ARSConfig", "ImprovementRecord", "PPOConfig", "Teacher", "gae_advantages",
           "make_teacher", "recorded_config", "teacher_class", "teacher_option"]


TEACHERS: dict[str, tuple[type, type[Teacher]]] = {"ppo": (PPOConfig, PPO), "ars": (ARSConfig, ARS)}
"""teacher option name -> (its config dataclass, the teacher class built from it)"""


def teacher_class(config: object) -> type[Teacher]:
    """The teacher class that ``config`` (an instance of a registered teacher config) configures."""
    for config_type, cls in TEACHERS.values():
        if type(config) is config_type:
            return cls
    raise UserError(f"no teacher takes a {type(config).__name__}; teachers: {sorted(TEACHERS)}")


def recorded_config(record: dict[str, Any], name: str | None = None) -> Any:
    """The config of teacher ``name`` as recorded in a dataset or checkpoint (``{"name", "config"}``).

    ``name`` defaults to the recorded teacher, which gets the settings it ran with; another teacher gets its
    defaults (its own batch size, learning rate, ...).
    """
    own = str(record.get("name", "ppo"))
    name = name or own
    if name not in TEACHERS:
        raise UserError(f"unknown teacher {name!r}; teachers: {sorted(TEACHERS)}")
    config_type = TEACHERS[name][0]
    default = config_type()
    known = {f.name for f in dataclasses.fields(config_type)}
    given = record.get("config", {}) if name == own else {}
    # JSON turned tuples into lists; the config's own defaults say which fields are tuples.
    return config_type(**{k: tuple(v) if isinstance(getattr(default, k), tuple) else v
                          for k, v in given.items() if k in known})


def make_teacher(record: dict[str, Any], name: str | None = None) -> Teacher:
    """A fresh teacher ``name`` (default: the recorded one) configured by :func:`recorded_config`."""
    name = name or str(record.get("name", "ppo"))
    return TEACHERS[name][1](recorded_config(record, name))


def teacher_option(option: str) -> Teacher:
    """The teacher of option ``option`` of the ``teacher`` config group, a YAML file in ``configs/teacher/`` that
    extends a registered teacher (``defaults: [ppo, _self_]`` and the settings it changes), such as ``ppo_tuned``."""
    path = resources.files("metaimprove.conf.teacher") / f"{option}.yaml"
    if not path.is_file():
        raise UserError(f"no teacher option {option!r}: configs/teacher/{option}.yaml is missing"
                        + ("; benchmarks/tune_ppo.py writes it" if option == "ppo_tuned" else ""))
    settings = yaml.safe_load(path.read_text()) or {}
    base = [d for d in settings.pop("defaults", []) if d in TEACHERS]
    if len(base) != 1:
        raise UserError(f"configs/teacher/{option}.yaml must extend one teacher of {sorted(TEACHERS)} in its defaults")
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(TEACHERS[base[0]][0])})
    if unknown:
        raise UserError(f"configs/teacher/{option}.yaml sets {unknown}, which {base[0]} does not have")
    return make_teacher({"name": base[0], "config": settings})

