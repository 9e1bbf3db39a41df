"""The command line ``metaimprove <stage> [key=value ...]`` (or ``python -m metaimprove``): each stage registered in
:mod:`metaimprove.config` runs through ``@hydra.main`` with the package's configs (``pkg://metaimprove.conf``), so
overrides, ``-m`` sweeps and launchers work as in any Hydra app, from any directory. ``metaimprove --help``,
``--version`` and ``--completion`` import no stage (nor torch): a stage's code loads when it runs.
"""

from __future__ import annotations

import csv
import datetime
import difflib
import importlib.util
import os
import platform
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, MissingMandatoryValue, OmegaConfBaseException

from metaimprove import __version__
from metaimprove.config import CONFIG_MODULE, HYDRA_VERSION_BASE, STAGES, Stage, TasksConfig, field_docs, store_configs
from metaimprove.errors import UserError
from metaimprove.sim.tasks import PHYSICS_FIELDS, SPLITS, PhysicsRange, Range, TaskFamily, get_family, load_families

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
TOP_FLAGS = ("--help", "--version", "--info", "--completion")
"""what ``metaimprove`` takes in place of a stage"""
SHELLS = ("bash", "zsh")
"""shells ``metaimprove --completion <shell>`` writes a completion script for"""
DIVERSITY_CSV = "task_diversity.csv"
FAMILY_COST_CSV = "family_cost.csv"
HELP_KEY_WIDTH = 44
"""column of the docs in ``<stage> --help`` (a longer key=default pushes its doc right)"""
OPTIONAL = {"ray": "ray", "stable-baselines3": "stable_baselines3", "tensorboard": "tensorboard", "wandb": "wandb",
            "moviepy (evaluate video=true)": "moviepy"}
"""optional packages ``--info`` reports, by the module each installs"""


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
    try:
        return _main(args)
    except BrokenPipeError:
        # `metaimprove ... --help | head` closed the pipe: stop quietly (and keep Python's exit flush from failing).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _main(args: list[str]) -> int:
    if not args:
        print(f"{PROG}: error: name a stage: {', '.join(STAGES)} (see `{PROG} --help`)", file=sys.stderr)
        return EXIT_BAD_INPUT
    top = _top_level(args)
    if top is not None:
        return top
    name, rest = args[0], args[1:]
    dirs = _RunDirs([])
    try:
        if name not in STAGES:
            raise UserError(f"unknown stage '{name}'{did_you_mean(name, STAGES)}; stages: {', '.join(STAGES)} "
                            f"(see `{PROG} --help`)")
        stage = STAGES[name]
        if "-h" in rest or "--help" in rest:
            print(stage_help(stage))
            return 0
        flags, overrides = _split_flags(rest, name)
        if stage.has_out and _override(overrides, "out") is None:
            overrides.append(f"out={DEFAULT_OUT.format(stage=name, time=datetime.datetime.now())}")
        roots = [_override(overrides, key) for key in ("out", "hydra.run.dir", "hydra.sweep.dir")]
        dirs = _RunDirs([root for root in roots if root is not None])
        run_stage(stage, flags + overrides)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (_Refused, UserError, HydraException, OmegaConfBaseException) as exc:
        dirs.take_back()
        if os.environ.get("METAIMPROVE_DEBUG") == "1":
            if isinstance(exc, _Refused):
                raise exc.error from exc.error.__cause__
            raise
        message = str(exc.error) if isinstance(exc, _Refused) else _one_line(exc, name)
        print(f"{PROG} {name}: error: {' '.join(message.split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _top_level(args: list[str]) -> int | None:
    """Answer ``metaimprove --help|--version|--info|--completion <shell>``; None when ``args`` name a stage."""
    flag = args[0]
    if flag in ("-h", "--help"):
        print(usage())
    elif flag in ("-V", "--version"):
        print(f"{PROG} {__version__}")
    elif flag == "--info":
        print(info())
    elif flag == "--completion":
        shell = args[1] if len(args) > 1 else ""
        if shell not in SHELLS:
            print(f"{PROG}: error: name a shell: {PROG} --completion {'|'.join(SHELLS)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(completion_script(shell))
    elif flag.startswith("-"):
        print(f"{PROG}: error: unknown option {flag}{did_you_mean(flag, TOP_FLAGS)}; options: {', '.join(TOP_FLAGS)}, "
              f"or name a stage (see `{PROG} --help`)", file=sys.stderr)
        return EXIT_BAD_INPUT
    else:
        return None
    return 0


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice nearest a mistyped ``word`` (difflib), or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def run_stage(stage: Stage, overrides: list[str]) -> None:
    """Run ``stage`` through ``@hydra.main`` with command-line ``overrides`` (and Hydra flags)."""
    # Deferred: the stages (and torch) load only when one runs, which keeps --help and --version fast.
    import torch

    from metaimprove.sim.envs import mujoco_log

    store_configs(stage)
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
            key, declared = extra[0]
            raise _Refused(UserError(f"unknown setting '{key}'{did_you_mean(key, declared)} "
                                     f"(see `{PROG} {stage.name} --help`)"))
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


def _extra_keys(node: DictConfig, prefix: str = "") -> list[tuple[str, list[str]]]:
    """Keys added with ``+key=...`` that no config dataclass declares (OmegaConf would drop them silently), each
    with the keys its dataclass does declare."""
    names = _declared(OmegaConf.get_type(node), prefix)
    extra = []
    for key in node:
        if names and f"{prefix}{key}" not in names:
            extra.append((f"{prefix}{key}", names))
        elif not OmegaConf.is_missing(node, key) and isinstance(node[key], DictConfig):
            extra += _extra_keys(node[key], f"{prefix}{key}.")
    return extra


def _declared(cls: Any, prefix: str) -> list[str]:
    """The keys (``prefix`` + field name) config dataclass ``cls`` declares; none if it is no dataclass."""
    return [prefix + f.name for f in fields(cls)] if isinstance(cls, type) and is_dataclass(cls) else []


def _record(out: Path, cfg: DictConfig) -> None:
    """Write the run's resolved config and its overrides into ``out/.hydra`` (Hydra's layout)."""
    from metaimprove.storage import atomic_write_bytes  # it imports torch, which --help must not wait for

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
                raise UserError(f"unknown option {flag} for stage {stage}{did_you_mean(flag, HYDRA_FLAGS)}; "
                                f"settings are key=value (see `{PROG} {stage} --help`)")
            flags.append(arg)
            takes_value = HYDRA_FLAGS[flag] and "=" not in arg
        else:
            overrides.append(arg)
    return flags, overrides


def _override(overrides: list[str], key: str) -> str | None:
    """The value ``overrides`` give ``key`` (``key=``, ``+key=`` or ``++key=``), if any."""
    for item in overrides:
        match = re.fullmatch(rf"\+{{0,2}}{re.escape(key)}=(.*)", item)
        if match:
            return match.group(1)
    return None


class _RunDirs:
    """The directories a run writes into (its ``out``, and ``hydra.run.dir`` / ``hydra.sweep.dir`` given by hand),
    seen before the run, so that a refused run takes back what it created: Hydra makes a job's directory (and under
    ``-m`` a ``multirun.yaml``) before the stage has checked its input."""

    def __init__(self, roots: list[str]) -> None:
        """Refuse a root that cannot be created or written, before anything runs (not midway with a traceback)."""
        self.roots = [Path(root).absolute() for root in roots]
        self.created: list[Path] = []
        """each root and parent that did not exist"""
        self.before: dict[Path, set[str]] = {}
        """what each root that existed held"""
        for root, given in zip(self.roots, roots, strict=True):
            if root.is_dir():
                self.before[root] = set(os.listdir(root))
            new = [p for p in [root, *root.parents] if not p.exists()]
            existing = new[-1].parent if new else root
            if not existing.is_dir():
                raise UserError(f"cannot write into {given}: {existing} is not a directory; choose another out=")
            if not os.access(existing, os.W_OK | os.X_OK):
                raise UserError(f"cannot write into {given}: {existing} is not writable; choose another out=")
            self.created += new

    def take_back(self) -> None:
        """Remove the empty directories (and the lone ``multirun.yaml``) the refused run left in its roots."""
        for root in set(self.roots):
            if not root.is_dir():
                continue
            new = set(os.listdir(root)) - self.before.get(root, set())
            for name in new:
                if (root / name).is_dir():
                    _remove_empty_tree(root / name)
            if set(os.listdir(root)) - self.before.get(root, set()) == {"multirun.yaml"}:
                (root / "multirun.yaml").unlink()
        for path in sorted(set(self.created), key=lambda p: -len(p.parts)):
            if path.is_dir() and not os.listdir(path):
                path.rmdir()


def _remove_empty_tree(top: Path) -> None:
    """Remove every empty directory under ``top`` (deepest first), ``top`` included if it ends up empty."""
    for dirpath, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
        if not os.listdir(dirpath):
            os.rmdir(dirpath)


def _one_line(exc: BaseException, stage: str) -> str:
    """Hydra's and OmegaConf's multi-line errors, as one line that says what to do."""
    hint = f"(see `{PROG} {stage} --help`)"
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, option = exc.missing_cfg_file.split("/", 1)
        options = exc.options or []
        return f"unknown {group} '{option}'{did_you_mean(option, options)}; choose one of {', '.join(options)} {hint}"
    cause = exc.__cause__
    if isinstance(cause, ConfigAttributeError):
        parent = str(cause.full_key).rpartition(".")[0]
        names = _declared(cause.object_type, f"{parent}." if parent else "")
        return f"unknown setting '{cause.full_key}'{did_you_mean(str(cause.full_key), names)} {hint}"
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
    lines += ["", f"`{PROG} <stage> --help` shows a stage's settings; `{PROG} --version` the version; `{PROG} --info` "
              f"versions, devices and data; `{PROG} --completion bash|zsh` a shell completion script "
              "(eval \"$(metaimprove --completion bash)\"); METAIMPROVE_DEBUG=1 shows tracebacks."]
    return "\n".join(lines)


def info() -> str:
    """``metaimprove --info``: versions, devices and where the shipped data lives, for a bug report."""
    import gymnasium
    import mujoco
    import torch

    from metaimprove.operator.checkpoint import shipped_dir, shipped_operators

    cuda = (f"{torch.cuda.device_count()} CUDA device(s), {torch.cuda.get_device_name(0)}"
            if torch.cuda.is_available() else "no CUDA device")
    optional = [f"{name} {'yes' if importlib.util.find_spec(module) else 'no'}" for name, module in OPTIONAL.items()]
    lines = [f"{PROG} {__version__} ({Path(__file__).resolve().parent})",
             f"python {platform.python_version()} ({sys.executable}) on {platform.platform()}",
             f"torch {torch.__version__}, mujoco {mujoco.__version__}, gymnasium {gymnasium.__version__}, "
             f"hydra-core {hydra.__version__}",
             f"devices: cpu ({os.cpu_count()} cores), {cuda}",
             f"rendering: MUJOCO_GL={os.environ.get('MUJOCO_GL', '(unset; evaluate video=true uses egl)')}",
             f"shipped operators: {shipped_dir()} ({', '.join(shipped_operators()) or 'none'})",
             f"measured results (tasks): {_measured_dir()}",
             f"optional packages: {', '.join(optional)}"]
    return "\n".join(lines)


def completion_script(shell: str) -> str:
    """A ``shell`` script completing ``metaimprove``'s stage names and top-level options (``eval`` it)."""
    words = " ".join([*STAGES, *TOP_FLAGS])
    bash = f"""# {PROG} completion: eval "$({PROG} --completion {shell})" (e.g. in ~/.{shell}rc)
_{PROG}_complete() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{words}" -- "$cur"))
    elif [ "$COMP_CWORD" -eq 2 ] && [ "${{COMP_WORDS[1]}}" = "--completion" ]; then
        COMPREPLY=($(compgen -W "{' '.join(SHELLS)}" -- "$cur"))
    elif [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "--help -m" -- "$cur"))
    fi
}}
complete -o default -F _{PROG}_complete {PROG}"""
    return bash if shell == "bash" else "autoload -U +X bashcompinit && bashcompinit\n" + bash


def stage_help(stage: Stage) -> str:
    """``metaimprove <stage> --help``: the stage's config groups and every setting with its default and doc, nested
    settings (``features.*``) under their section's doc."""
    store_configs(stage)
    with hydra.initialize_config_module(config_module=CONFIG_MODULE, version_base=HYDRA_VERSION_BASE):
        loader = GlobalHydra.instance().config_loader()
        options = {group: loader.get_group_options(group) for group in stage.groups}
        cfg = hydra.compose(stage.name)
    rows: list[tuple[str, str]] = []
    _setting_rows(cfg, "", rows, f"runs/{stage.name}/<date>_<time>")
    lines = [f"{PROG} {stage.name}: {stage.description}", "",
             f"usage: {PROG} {stage.name} [key=value ...] [Hydra flags, e.g. -m to sweep]"]
    if options:
        lines += ["", "config groups (group=option; * = default):"]
        lines += [f"  {group}={'|'.join(o + ('*' if o == stage.groups[group] else '') for o in opts)}"
                  for group, opts in options.items()]
    width = min(max(len(setting) for setting, _ in rows), HELP_KEY_WIDTH)
    lines += ["", "settings (key=default):"]
    lines += [f"  {setting:<{width}}  {doc}".rstrip() for setting, doc in rows]
    return "\n".join(lines)


def _setting_rows(cfg: DictConfig, prefix: str, rows: list[tuple[str, str]], out_default: str = "") -> None:
    """``(key=default, doc)`` of every field of ``cfg``'s dataclass; a nested dataclass (a config group's option or
    a sub-config such as ``features``) as a ``key.*`` row with its doc, followed by its own fields."""
    cls = OmegaConf.get_type(cfg)
    assert isinstance(cls, type)
    docs = field_docs(cls)
    for f in fields(cls):  # type: ignore[arg-type]
        key = prefix + f.name
        missing = OmegaConf.is_missing(cfg, f.name)
        node_type = None if missing else OmegaConf.get_type(cfg, f.name)
        if isinstance(node_type, type) and is_dataclass(node_type):
            rows.append((f"{key}.*", docs.get(f.name, "")))
            _setting_rows(cfg[f.name], f"{key}.", rows)
            continue
        if f.name == "out" and not prefix:
            value = out_default
        elif missing:
            value = "(required)"
        else:
            value = _show(OmegaConf.to_container(cfg)[f.name] if OmegaConf.is_config(cfg[f.name]) else cfg[f.name])
        rows.append((f"{key}={value}", docs.get(f.name, "")))


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


def _measured_dir() -> Path:
    """Where the measurements ``tasks`` prints come from: the package data ``metaimprove.results`` (two CSVs of
    ``results/``, written by benchmarks), ``results/`` in a source checkout; never the working directory's."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "results").is_dir():
        return checkout / "results"
    return Path(__file__).resolve().parent / "results"


def _family_costs() -> dict[str, str]:
    """Each family's measured cost relative to halfcheetah_vel, from ``results/family_cost.csv`` (written by
    ``benchmarks/family_cost.py``; timing here would slow every ``metaimprove tasks`` down)."""
    path = _measured_dir() / FAMILY_COST_CSV
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["family"]: f"{row['step_cost_ratio']}× a halfcheetah_vel env step, {row['ppo_update_cost_ratio']}× "
                               f"its PPO update (measured {row['measured'][:10]}, results/{FAMILY_COST_CSV})"
                for row in csv.DictReader(f)}


def _diversity_table() -> str:
    """The summary of ``results/task_diversity.csv`` (written by ``benchmarks/task_diversity.py``), if shipped."""
    path = _measured_dir() / DIVERSITY_CSV
    if not path.is_file():
        return ""
    with open(path, newline="") as f:
        rows = [[row["name"], row["value"]] for row in csv.DictReader(f)
                if row.get("kind") == "summary" and row.get("name", "").startswith("halfcheetah")]
    lines = [f"task diversity: a policy trained on one task, evaluated on the family's other tasks "
             f"(benchmarks/task_diversity.py, results/{DIVERSITY_CSV}):"]
    return "\n".join([*lines, *("  " + line for line in _table(rows))])


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) if i < len(row) else 0 for row in rows) for i in range(max(map(len, rows)))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip() for row in rows]

