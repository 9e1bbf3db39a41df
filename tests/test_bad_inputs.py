"""Bad-input sweep: every bad input ends with one line on stderr, exit 2, no traceback and no partial output.

The cases run in-process through :func:`metaimprove.cli.main` (a subprocess costs seconds of imports each);
``test_cli.py`` holds the collect-config cases and the installed entry point. Hypothesis fuzzes the
override parser and the task-family loader: any input gives a result or a UserError, never another error.
"""

import contextlib
import json
import math
import pathlib
import shutil
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaimprove import cli
from metaimprove.config import STAGES
from metaimprove.errors import UserError
from metaimprove.sim.policy import ObsNormalizer, Policy, PolicySpec, init_params, save_policy
from metaimprove.sim.tasks import TaskFamily
from metaimprove.storage import meta_path

SHIPPED = pathlib.Path(__file__).resolve().parent.parent / "results" / "operators" / "halfcheetah_vel.safetensors"
APPLY = ["n_tasks=1", "seeds=1", "applications=1", "eval_episodes=1", "methods=[no_update]"]


def _flip_last_byte(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def _operator(files: pathlib.Path) -> pathlib.Path:
    path = files / "op.safetensors"
    shutil.copy(SHIPPED, path)
    shutil.copy(meta_path(SHIPPED), meta_path(path))
    return path


def _policy(files: pathlib.Path, hidden: tuple[int, ...] = (32, 32), nan: bool = False) -> pathlib.Path:
    spec = PolicySpec(17, 6, hidden=hidden)
    theta = init_params(spec, torch.Generator().manual_seed(0))
    if nan:
        theta[3] = math.nan
    path = files / "init.safetensors"
    save_policy(path, Policy(spec, theta, ObsNormalizer.identity(17)))
    return path


def _dataset(files: pathlib.Path, reference: pathlib.Path, damage: Callable[[pathlib.Path], None]) -> pathlib.Path:
    root = files / "data"
    shutil.copytree(reference, root)
    damage(root)
    return root


def _first_shard(root: pathlib.Path) -> pathlib.Path:
    return root / json.loads((root / "manifest.json").read_text())["shards"][0]["shard"]


def _a_file(files: pathlib.Path) -> pathlib.Path:
    path = files / "a-file"
    path.write_text("not a directory")
    return path


# Each case: (id, args given (files dir, reference dataset), words the error must contain).
CASES: list[tuple[str, Callable[[pathlib.Path, pathlib.Path], list[str]], str]] = [
    ("unknown stage", lambda f, r: ["frobnicate"], "unknown stage 'frobnicate'"),
    ("unknown task", lambda f, r: ["apply", "task=nope", f"operator_path={_operator(f)}"], "unknown task 'nope'"),
    ("unknown method", lambda f, r: ["apply", f"operator_path={_operator(f)}", "methods=[magic]"],
     "unknown methods ['magic']"),
    ("unknown operator arch", lambda f, r: ["train", "operator=transformer", f"dataset={r}"],
     "unknown operator 'transformer'"),
    ("wrong-type override", lambda f, r: ["train", f"dataset={r}", "batch_size=big"], "batch_size=big"),
    ("wrong-type nested override", lambda f, r: ["train", f"dataset={r}", "pairs.ks=one"], "pairs.ks=one"),
    ("impossible learning rate", lambda f, r: ["train", f"dataset={r}", "lr=-1"], "lr > 0"),
    ("impossible jump", lambda f, r: ["train", f"dataset={r}", "pairs.ks=[0]"], "pairs.ks must be"),
    ("impossible apply counts", lambda f, r: ["apply", f"operator_path={_operator(f)}", "seeds=0"],
     "must all be >= 1"),
    ("unknown executor", lambda f, r: ["collect", "executor=dask"], "executor must be one of"),
    ("ray address without ray", lambda f, r: ["collect", "ray.address=auto"], "needs executor=ray"),
    ("unreachable ray cluster", lambda f, r: ["collect", "executor=ray", "ray.address=127.0.0.1:1"],
     "cannot reach a Ray cluster at ray.address=127.0.0.1:1"),
    ("missing dataset", lambda f, r: ["train", f"dataset={f / 'nowhere'}"], "nowhere"),
    ("missing checkpoint", lambda f, r: ["apply", f"operator_path={f / 'nowhere.safetensors'}"],
     "nowhere.safetensors is missing"),
    ("missing task file", lambda f, r: ["apply", f"operator_path={_operator(f)}", f"task_file={f / 'task.json'}"],
     "task.json"),
    ("task file not JSON", lambda f, r: ["apply", f"operator_path={_operator(f)}",
                                         f"task_file={_a_file(f)}"], "is not JSON"),
    ("truncated shard",
     lambda f, r: ["train", f"dataset={_dataset(f, r, lambda d: _first_shard(d).write_bytes(b'x'))}"], "corrupt"),
    ("tampered shard", lambda f, r: ["verify", f"dataset={_dataset(f, r, lambda d: _flip_last_byte(_first_shard(d)))}"],
     "corrupt or missing shard"),
    ("tampered shard metadata",
     lambda f, r: ["verify", f"dataset={_dataset(f, r, lambda d: _flip_last_byte(meta_path(_first_shard(d))))}"],
     "corrupt or missing shard"),
    ("corrupt manifest",
     lambda f, r: ["train", f"dataset={_dataset(f, r, lambda d: (d / 'manifest.json').write_text('{'))}"],
     "manifest.json is not valid JSON"),
    ("truncated checkpoint", lambda f, r: ["apply", f"operator_path={_truncated(_operator(f))}"], "corrupt"),
    ("tampered checkpoint metadata", lambda f, r: ["apply", f"operator_path={_tampered_meta(_operator(f))}"],
     "is invalid: operator.hidden must be int"),
    ("policy of another shape", lambda f, r: ["apply", f"operator_path={_operator(f)}",
                                              f"init={_policy(f, hidden=(8,))}"], "initial policy"),
    ("NaN in the initial policy", lambda f, r: ["apply", f"operator_path={_operator(f)}",
                                                f"init={_policy(f, nan=True)}"], "non-finite"),
    ("output under a file", lambda f, r: ["collect", "n_tasks=1", "seeds=1", "iterations=1",
                                          f"out={_a_file(f) / 'run'}"], "a-file"),
]


def _truncated(path: pathlib.Path) -> pathlib.Path:
    path.write_bytes(path.read_bytes()[:1000])
    return path


def _tampered_meta(path: pathlib.Path) -> pathlib.Path:
    header = json.loads(meta_path(path).read_text())
    header["meta"]["operator"]["hidden"] = "128"
    meta_path(path).write_text(json.dumps(header))  # the JSON's own digest is not pinned without an index
    return path


@pytest.mark.parametrize(("make_args", "problem"), [(m, p) for _, m, p in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_no_traceback_no_output(
        make_args: Callable[[pathlib.Path, pathlib.Path], list[str]], problem: str, reference_dataset: pathlib.Path,
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    files, cwd = tmp_path / "files", tmp_path / "cwd"
    files.mkdir()
    cwd.mkdir()
    args = make_args(files, reference_dataset)
    before = {p: p.read_bytes() for p in files.rglob("*") if p.is_file()}
    monkeypatch.chdir(cwd)
    code = cli.main([*args, f"out={tmp_path / 'run'}"] if args[0] in ("train", "apply") else args)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("metaimprove") and problem in err, err
    assert "Traceback" not in err + out
    # No partial output: no run directory, nothing new in the working directory, the inputs untouched.
    assert not (tmp_path / "run").exists() and list(cwd.iterdir()) == []
    assert {p: p.read_bytes() for p in files.rglob("*") if p.is_file()} == before


def test_debug_flag_shows_the_traceback_instead(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("METAIMPROVE_DEBUG", "1")
    with pytest.raises(UserError, match=r"nowhere\.safetensors is missing"):
        cli.main(["apply", f"operator_path={tmp_path / 'nowhere.safetensors'}", f"out={tmp_path / 'run'}"])


# Override strings: keys and values from the characters Hydra's grammar gives meaning to, plus words.
_override_text = st.text(alphabet=st.sampled_from(list("abn_.=+~[]{},:'\"$ 0123-9xe\\")), max_size=24)
_stage_names = st.sampled_from([name for name in STAGES if name != "pipeline"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stage=_stage_names, overrides=st.lists(_override_text, max_size=3))
def test_fuzzed_overrides_give_a_result_or_one_line(stage: str, overrides: list[str], tmp_path: pathlib.Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the overrides, the CLI either runs or refuses in one line: never a traceback or another exit."""
    monkeypatch.chdir(tmp_path)
    # --cfg job prints the composed config and runs nothing: the parser and the config checks are what is fuzzed.
    code = cli.main([stage, "--cfg", "job", *[o for o in overrides if not o.startswith("-")]])
    err = capsys.readouterr().err
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert err.count("\n") == 1 and err.startswith(f"metaimprove {stage}: error: "), err


_scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=4))
_band = st.one_of(st.lists(_scalar, max_size=3), _scalar)
_range = st.one_of(st.fixed_dictionaries({"train": _band}, optional={"ood": st.lists(_band, max_size=2)}),
                   st.fixed_dictionaries({"choices": st.lists(_scalar, max_size=3)}), _scalar)
_physics = st.dictionaries(st.sampled_from(["body_mass", "gravity", "wings"]),
                           st.one_of(st.fixed_dictionaries({"base": _scalar, "train": _band}), _scalar), max_size=2)


def _mutations(base: dict) -> st.SearchStrategy[dict]:
    keys = st.sampled_from(["name", "robot", "reward", "env_id", "episode_length", "params", "physics", "splits"])
    values = st.one_of(_scalar, st.dictionaries(st.text(max_size=3), _range, max_size=2), _physics,
                       st.dictionaries(st.sampled_from(["train", "test", "ood", "x"]),
                                       st.one_of(st.fixed_dictionaries({"seed": _scalar}), _scalar), max_size=3))
    return st.dictionaries(keys, values, max_size=3).map(lambda change: {**base, **change})


FAMILY = {"name": "f", "robot": "half_cheetah", "reward": "forward_vel", "env_id": "metaimprove/HalfCheetahVel-v0",
          "episode_length": 10, "params": {"v": {"train": [0, 1]}},
          "physics": {"body_mass": {"base": 1.5, "train": [-1, 1]}}, "splits": {"train": {"seed": 1}}}


@settings(max_examples=300, deadline=None)
@given(data=st.one_of(_mutations(FAMILY), st.dictionaries(st.text(max_size=5), _scalar, max_size=3)))
def test_fuzzed_task_family_files_give_a_family_or_a_user_error(data: object) -> None:
    """A family declaration (a tasks/*.yaml's content) parses and draws tasks, or is refused with a UserError
    (which the CLI prints as one line); any other exception fails the test."""
    with contextlib.suppress(UserError):
        family = TaskFamily.from_dict(data)  # type: ignore[arg-type]
        for split in family.split_seeds:
            family.task(split, 0)


def test_the_family_fuzzer_starts_from_a_valid_family() -> None:
    family = TaskFamily.from_dict(FAMILY)
    assert family.task("train", 0).param("v") <= 1
    with pytest.raises(UserError, match="bad task family file"):
        TaskFamily.from_dict({**FAMILY, "episode_length": "long"})
