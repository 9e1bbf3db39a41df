"""metaimprove: learn a policy-improvement operator f(θ, τ, ask) → θ' from RL teachers.

Read the subpackages top-down in pipeline order: ``sim`` → ``teachers`` → ``data`` → ``operator`` → ``training`` →
``evaluation``; ``interop`` reads and writes other libraries' policies, and ``cli``, ``config`` and ``pipeline`` drive
the stages.

The Python API (:mod:`metaimprove.api`) is re-exported here: ``Operator.from_pretrained("halfcheetah_vel")``,
``make_task``, ``evaluate``, and the stages ``collect``/``train``/``apply`` with their configs. Its names load on
first use, so ``import metaimprove`` stays light (no torch). What the import does do is register every task family's
gymnasium id: ``gymnasium.make("metaimprove/HalfCheetahVel-v0")`` works after it, and
``gymnasium.make("metaimprove:metaimprove/HalfCheetahVel-v0")`` without it.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

__version__ = "0.1.0"
"""the package's version, its one source (pyproject.toml reads it)"""

_API = ("Operator", "make_task", "get_family", "evaluate", "Task", "TaskFamily", "Policy", "UserEnv",
        "collect", "CollectConfig", "train", "TrainConfig", "apply", "ApplyConfig")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """The API's names (PEP 562): :mod:`metaimprove.api`, which imports torch and the whole pipeline, loads on the
    first use of one of them."""
    if name in _API:
        value = getattr(importlib.import_module("metaimprove.api"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'metaimprove' has no attribute '{name}'")


def __dir__() -> list[str]:
    """The package's names, the API's included."""
    return sorted({*globals(), *_API})


def _register() -> None:
    from metaimprove.errors import UserError
    from metaimprove.sim.tasks import register_envs

    # A broken family file on METAIMPROVE_TASK_PATH must not make the package unimportable; the first use of the
    # families (get_family, make_env, a stage) refuses it with its one-line error.
    with contextlib.suppress(UserError):
        register_envs()


_register()
