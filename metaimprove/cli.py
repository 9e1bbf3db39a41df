"""The command line ``metaimprove <stage> [key=value ...]`` (or ``python -m metaimprove``): each stage registered in
:mod:`metaimprove.config` runs through ``@hydra.main`` with the package's configs (``pkg://metaimprove.conf``), so
overrides, ``-m`` sweeps and launchers work as in any Hydra app, from any directory.
"""

from __future__ import annotations

import csv
import datetime
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, MissingMandatoryValue, OmegaConfBaseException

from metaimprove import __version__
from metaimprove.config import CONFIG_MODULE, HYDRA_VERSION_BASE, STAGES, Stage, TasksConfig, field_docs
from metaimprove.errors import UserError
from metaimprove.sim.envs import mujoco_log
from metaimprove.sim.tasks import PHYSICS_FIELDS, SPLITS, PhysicsRange, Range, TaskFamily, get_family, load_families
from metaimprove.storage import atomic_write_bytes

PROG = "metaimprove"
EXIT_BAD_INPUT = 2
DEFAULT_OUT = "runs/{stage}/{time:%Y-%m-%d_%H-%M-%S}"
# Hydra's own command-line flags (see `metaimprove <stage> --hydra-help`), with whether each takes a
# value; anything else starting with "-" is a typo.
HYDRA_FLAGS = {"--hydra-help": False, "--version": False, "--cfg": True, "-c": True, "--resolve": False,
               "--package": True, "-p": True, "--run": False, "-r": False, "--multirun": False, "-m": False,
               "--shell-completion": False, "-sc": False, "--config-path": True, "-cp": True,
               "--config-name": True, "-cn": True, "--config-dir": True, "-cd": True,
               "--experimental-rerun": True, "--info": False, "-i": False}
DIVERSITY_CSV = Path("results") / "task_diversity.csv"
FAMILY_COST_CSV = Path("results") / "family_cost.csv"


class _Refused(BaseException):
    """Carries a stage's UserError out through Hydra.

    Hydra catches every ``Exception`` a job raises and prints lines of its own before re-raising;
    a ``BaseException`` passes through untouched, so the CLI can print the one line.
    """

    def __init__(self, error: UserError) -> None:
        super().__init__(str(error))
        self.error = error


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``metaimprove``; returns the exit status.

    Bad input (an unknown stage, option or key, a wrong type, an impossible value, a dataset that does not match)
    ends with one line on stderr that names the problem, exit status 2, no traceback (``METAIMPROVE_DEBUG=1``
    shows it) and no directory left behind. Bugs still show tracebacks.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(f"{PROG}: error: name a stage: {', '.join(STAGES)} (see `{PROG} --help`)", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"{PROG} {__version__}")
        return 0
    name, rest = args[0], args[1:]
    created: list[Path] = []
    try:
        if name not in STAGES:
            raise UserError(f"unknown stage '{name}'; stages: {', '.join(STAGES)} (see `{PROG} --help`)")
        stage = STAGES[name]
        if "-h" in rest or "--help" in rest:
            print(stage_help(stage))
            return 0
        flags, overrides = _split_flags(rest, name)
        if stage.has_out:
            out = _out_override(overrides)
            if out is None:
                out = DEFAULT_OUT.format(stage=name, time=datetime.datetime.now())
                overrides.append(f"out={out}")
            created = [p for p in [Path(out).absolute(), *Path(out).absolute().parents] if not p.exists()]
            _check_writable(out, created)
        run_stage(stage, flags + overrides)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (_Refused, UserError, HydraException, OmegaConfBaseException) as exc:
        _remove_empty(created)
        if os.environ.get("METAIMPROVE_DEBUG") == "1":
            if isinstance(exc, _Refused):
                raise exc.error from exc.error.__cause__
            raise
        message = str(exc.error) if isinstance(exc, _Refused) else _one_line(exc, name)
        print(f"{PROG} {name}: error: {' '.join(message.split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def run_stage(stage: Stage, overrides: list[str]) -> None:
    """Run ``stage`` through ``@hydra.main`` with command-line ``overrides`` (and Hydra flags)."""
    function = stage.function()
    # The networks here are tiny: extra intra-op threads buy little and, next to the collector's worker
    # processes (or anything else on a 2-core machine), oversubscription slows training many-fold.
    torch.set_num_threads(1)

    def job(cfg: DictConfig) -> None:
        out = Path(HydraConfig.get().runtime.output_dir) if stage.has_out else None
        if out is not None:
            # Under -m each job runs in its own subdirectory of `out`; the stage sees that one.
            cfg.out = str(out)
        extra = _extra_keys(cfg)
        if extra:
            raise _Refused(UserError(f"unknown setting '{extra[0]}' (see `{PROG} {stage.name} --help`)"))
        try:
            config = OmegaConf.to_object(cfg)
        except UserError as exc:
            raise _Refused(exc) from exc
        except MissingMandatoryValue as exc:
            key = getattr(exc, "full_key", "") or "a setting"
            raise _Refused(UserError(f"{key} has no value; set it with {key}=...")) from exc
        accepted = True
        try:
            with mujoco_log(out):
                function(config)
        except UserError as exc:
            accepted = False
            raise _Refused(exc) from exc
        finally:
            if out is not None and accepted:
                _record(out, cfg)

    hydra_main = hydra.main(version_base=HYDRA_VERSION_BASE, config_path=f"pkg://{CONFIG_MODULE}",
                            config_name=stage.name)(job)
    saved_argv, saved_full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    # Hydra then re-raises configuration errors instead of printing them, and the CLI words them.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv = [f"{PROG} {stage.name}", *overrides, f"hydra.job.name={stage.name}"]
    try:
        hydra_main()
    finally:
        sys.argv = saved_argv
        if saved_full_error is None:
            del os.environ["HYDRA_FULL_ERROR"]
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_full_error


def _extra_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys added with ``+key=...`` that no config dataclass declares (OmegaConf would drop them silently)."""
    declared = OmegaConf.get_type(node)
    names = {f.name for f in fields(declared)} if declared is not None and is_dataclass(declared) else None
    extra = []
    for key in node:
        if names is not None and key not in names:
            extra.append(f"{prefix}{key}")
        elif not OmegaConf.is_missing(node, key) and isinstance(node[key], DictConfig):
            extra += _extra_keys(node[key], f"{prefix}{key}.")
    return extra


def _record(out: Path, cfg: DictConfig) -> None:
    """Write the run's resolved config and its overrides into ``out/.hydra`` (Hydra's layout)."""
    record = out / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(record / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    overrides = OmegaConf.to_yaml(OmegaConf.create(list(HydraConfig.get().overrides.task)))
    atomic_write_bytes(record / "overrides.yaml", overrides.encode())


def _split_flags(args: list[str], stage: str) -> tuple[list[str], list[str]]:
    """Hydra flags (with their values) and overrides, in that order: Hydra's parser wants flags first."""
    flags: list[str] = []
    overrides: list[str] = []
    takes_value = False
    for arg in args:
        if takes_value:
            flags.append(arg)
            takes_value = False
        elif arg.startswith("-"):
            flag = arg.split("=")[0]
            if flag not in HYDRA_FLAGS:
                raise UserError(f"unknown option {flag} for stage {stage}; settings are key=value "
                                f"(see `{PROG} {stage} --help`)")
            flags.append(arg)
            takes_value = HYDRA_FLAGS[flag] and "=" not in arg
        else:
            overrides.append(arg)
    return flags, overrides


def _check_writable(out: str, created: list[Path]) -> None:
    """Refuse an ``out`` that cannot be created or written before anything runs (not midway with a traceback)."""
    existing = (created[-1].parent if created else Path(out).absolute())
    if not existing.is_dir():
        raise UserError(f"cannot write out={out}: {existing} is not a directory; choose another out=")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write out={out}: {existing} is not writable; choose another out=")


def _out_override(overrides: list[str]) -> str | None:
    for item in overrides:
        match = re.fullmatch(r"\+{0,2}out=(.*)", item)
        if match:
            return match.group(1)
    return None


def _remove_empty(created: list[Path]) -> None:
    """Remove the directories a refused run created (deepest first), if nothing was written in them."""
    if not created or not created[0].is_dir():
        return
    for dirpath, _, _ in sorted(os.walk(created[0]), key=lambda entry: -len(entry[0])):
        if not os.listdir(dirpath):
            os.rmdir(dirpath)
    for path in created[1:]:
        if path.is_dir() and not os.listdir(path):
            path.rmdir()


def _one_line(exc: BaseException, stage: str) -> str:
    """Hydra's and OmegaConf's multi-line errors, as one line that says what to do."""
    hint = f"(see `{PROG} {stage} --help`)"
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, option = exc.missing_cfg_file.split("/", 1)
        options = ", ".join(exc.options or [])
        return f"unknown {group} '{option}'; choose one of {options} {hint}"
    cause = exc.__cause__
    if isinstance(cause, ConfigAttributeError):
        return f"unknown setting '{cause.full_key}' {hint}"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse '{exc.override}': {exc.message.strip().splitlines()[0]} {hint}"
    lines = [str(exc).strip().splitlines()[0]]
    if isinstance(cause, OmegaConfBaseException):
        lines.append(str(cause).strip().splitlines()[0])
    if "Ambiguous value" in lines[0]:
        lines.append("write a list as key=[a,b], or add -m to sweep over the values")
    return ": ".join(line.rstrip(".") for line in lines) + f" {hint}"


def usage() -> str:
    """``metaimprove --help``: every stage with its one-line description."""
    width = max(len(name) for name in STAGES)
    lines = [f"usage: {PROG} <stage> [key=value ...] [Hydra flags, e.g. -m to sweep]", "", "stages:"]
    lines += [f"  {name:<{width}}  {stage.description}" for name, stage in STAGES.items()]
    lines += ["", f"`{PROG} <stage> --help` shows a stage's settings; `{PROG} --version` the version; "
              "METAIMPROVE_DEBUG=1 shows tracebacks."]
    return "\n".join(lines)


def stage_help(stage: Stage) -> str:
    """``metaimprove <stage> --help``: the stage's config groups and every setting with its default and doc."""
    with hydra.initialize_config_module(config_module=CONFIG_MODULE, version_base=HYDRA_VERSION_BASE):
        loader = GlobalHydra.instance().config_loader()
        options = {group: loader.get_group_options(group) for group in stage.groups}
        cfg = hydra.compose(stage.name)
    rows: list[tuple[str, str, str]] = []
    _setting_rows(stage.config, "", set(stage.groups), rows, cfg, f"runs/{stage.name}/<date>_<time>")
    lines = [f"{PROG} {stage.name}: {stage.description}", "",
             f"usage: {PROG} {stage.name} [key=value ...] [Hydra flags, e.g. -m to sweep]"]
    if options:
        lines += ["", "config groups (group=option; * = default):"]
        lines += [f"  {group}={'|'.join(o + ('*' if o == stage.groups[group] else '') for o in opts)}"
                  for group, opts in options.items()]
    width = max((len(key) + len(value) for key, value, _ in rows), default=0) + 3
    lines += ["", "settings (key=default):"]
    lines += [f"  {f'{key}={value}':<{width}}  {doc}" for key, value, doc in rows]
    return "\n".join(lines)


def _setting_rows(cls: type, prefix: str, groups: set[str], rows: list[tuple[str, str, str]], cfg: Any,
                  out_default: str = "") -> None:
    docs = field_docs(cls)
    for f in fields(cls):  # type: ignore[arg-type]
        key = prefix + f.name
        if f.name in groups:
            node_type = OmegaConf.get_type(cfg, f.name)
            if isinstance(node_type, type) and hasattr(node_type, "__dataclass_fields__"):
                _setting_rows(node_type, f"{key}.", set(), rows, cfg[f.name])
            continue
        if f.name == "out" and not prefix:
            value = out_default
        elif OmegaConf.is_missing(cfg, f.name):
            value = "(required)"
        else:
            value = _show(OmegaConf.to_container(cfg)[f.name] if OmegaConf.is_config(cfg[f.name]) else cfg[f.name])
        rows.append((key, value, docs.get(f.name, "")))


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def list_tasks(cfg: TasksConfig) -> None:
    """The ``tasks`` stage: print every family (or ``cfg.family``) with its ranges per split."""
    families = [get_family(cfg.family)] if cfg.family else list(load_families().values())
    costs = _family_costs()
    blocks = [_describe_family(family, costs.get(family.name)) for family in families]
    diversity = _diversity_table()
    print("\n\n".join(blocks + ([diversity] if diversity else [])))


def _describe_family(family: TaskFamily, cost: str | None) -> str:
    splits = [s for s in SPLITS if s in family.split_seeds]
    header = ["", *(f"{s} (seed {family.split_seeds[s]})" for s in splits)]
    rows = [header]
    for name, spec in sorted(family.params.items()):
        rows.append([name, *(_range_text(spec, s) for s in splits)])
    for name in PHYSICS_FIELDS:
        physics = family.physics.get(name)
        rows.append([f"{name} scale", *(_physics_text(physics, s) for s in splits)])
    lines = [f"{family.name}: {family.description}",
             f"  reward {family.reward}, episode length {family.episode_length}, env {family.env_id}"]
    if family.terminate_when_unhealthy:
        lines.append(f"  robot {family.robot}: an episode terminates when it falls (gymnasium's v5 health rule)")
    if cost is not None:
        lines.append(f"  cost: {cost}")
    lines.append("  pipeline: " + ", ".join(f"{k} {v}" for k, v in family.pipeline_sizes().items()))
    lines += ["  " + line for line in _table(rows)]
    return "\n".join(lines)


def _range_text(spec: Range, split: str) -> str:
    if spec.choices:
        return "{" + ", ".join(f"{c:g}" for c in spec.choices) + "}"
    bands = spec.ood if split == "ood" and spec.ood else ((spec.train,) if spec.train else ())
    return " ∪ ".join(f"U[{lo:g}, {hi:g}]" for lo, hi in bands)


def _physics_text(physics: PhysicsRange | None, split: str) -> str:
    if physics is None:
        return "1 (nominal)"
    exponent = _range_text(physics.exponent, split)
    return f"{physics.base:g}^" + (f"({exponent})" if "∪" in exponent else exponent)


def _result_file(relative: Path) -> Path | None:
    """``relative`` (a file under results/) in the working directory or in the repository, if it is there."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / relative).is_file():
            return base / relative
    return None


def _family_costs() -> dict[str, str]:
    """Each family's measured cost relative to halfcheetah_vel, from ``results/family_cost.csv`` (written by
    ``benchmarks/family_cost.py``; timing here would slow every ``metaimprove tasks`` down)."""
    path = _result_file(FAMILY_COST_CSV)
    if path is None:
        return {}
    with open(path, newline="") as f:
        return {row["family"]: f"{row['step_cost_ratio']}× a halfcheetah_vel env step, {row['ppo_update_cost_ratio']}× "
                               f"its PPO update (measured {row['measured'][:10]}, {FAMILY_COST_CSV})"
                for row in csv.DictReader(f)}


def _diversity_table() -> str:
    """The summary of ``results/task_diversity.csv`` (another stage writes it), if there is one."""
    path = _result_file(DIVERSITY_CSV)
    if path is None:
        return ""
    with open(path, newline="") as f:
        rows = [[row["name"], row["value"]] for row in csv.DictReader(f)
                if row.get("kind") == "summary" and row.get("name", "").startswith("halfcheetah")]
    lines = ["task diversity: a policy trained on one task, evaluated on the family's other tasks "
             f"(benchmarks/task_diversity.py, {path}):"]
    return "\n".join([*lines, *("  " + line for line in _table(rows))])


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) if i < len(row) else 0 for row in rows) for i in range(max(map(len, rows)))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip() for row in rows]

