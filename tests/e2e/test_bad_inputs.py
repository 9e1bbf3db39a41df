"""Bad-input sweep: every bad input ends with one line on stderr, exit 2, no traceback and no partial output.

The cases run in-process through :func:`metaimprove.cli.main` (a subprocess costs seconds of imports each);
``test_cli.py`` holds the collect-config cases and the installed entry point. Hypothesis fuzzes the
override parser: any input gives a result or a one-line error, never another error (``sim/test_tasks.py`` fuzzes
the task-family loader).
"""

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
from metaimprove.storage import meta_path

APPLY = ["n_tasks=1", "seeds=1", "applications=1", "eval_episodes=1", "methods=[no_update]"]


def _flip_last_byte(path: pathlib.Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def _operator(files: pathlib.Path, source: pathlib.Path) -> pathlib.Path:
    path = files / "op.safetensors"
    shutil.copy(source, path)
    shutil.copy(meta_path(source), meta_path(path))
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


# Each case: (id, args given (files dir, reference dataset, operator), words the error must contain).
CASES: list[tuple[str, Callable[[pathlib.Path, pathlib.Path, pathlib.Path], list[str]], str]] = [
    ("unknown stage", lambda f, r, o: ["frobnicate"], "unknown stage 'frobnicate'"),
    ("unknown task", lambda f, r, o: ["apply", "task=nope", f"operator_path={_operator(f, o)}"],
     "unknown task 'nope'"),
    ("unknown method", lambda f, r, o: ["apply", f"operator_path={_operator(f, o)}", "methods=[magic]"],
     "unknown methods ['magic']"),
    ("unknown operator arch", lambda f, r, o: ["train", "operator=transformer", f"dataset={r}"],
     "unknown operator 'transformer'"),
    ("wrong-type override", lambda f, r, o: ["train", f"dataset={r}", "batch_size=big"], "batch_size=big"),
    ("wrong-type nested override", lambda f, r, o: ["train", f"dataset={r}", "pairs.ks=one"], "pairs.ks=one"),
    ("impossible learning rate", lambda f, r, o: ["train", f"dataset={r}", "lr=-1"], "lr > 0"),
    ("impossible jump", lambda f, r, o: ["train", f"dataset={r}", "pairs.ks=[0]"], "pairs.ks must be"),
    ("impossible apply counts", lambda f, r, o: ["apply", f"operator_path={_operator(f, o)}", "seeds=0"],
     "must all be >= 1"),
    ("unknown executor", lambda f, r, o: ["collect", "executor=dask"], "executor must be one of"),
    ("ray address without ray", lambda f, r, o: ["collect", "ray.address=auto"], "needs executor=ray"),
    ("unreachable ray cluster", lambda f, r, o: ["collect", "executor=ray", "ray.address=127.0.0.1:1"],
     "cannot reach a Ray cluster at ray.address=127.0.0.1:1"),
    ("missing dataset", lambda f, r, o: ["train", f"dataset={f / 'nowhere'}"], "nowhere"),
    ("missing checkpoint", lambda f, r, o: ["apply", f"operator_path={f / 'nowhere.safetensors'}"],
     "nowhere.safetensors is missing"),
    ("missing task file",
     lambda f, r, o: ["apply", f"operator_path={_operator(f, o)}", f"task_file={f / 'task.json'}"], "task.json"),
    ("task file not JSON", lambda f, r, o: ["apply", f"operator_path={_operator(f, o)}",
                                            f"task_file={_a_file(f)}"], "is not JSON"),
    ("truncated shard",
     lambda f, r, o: ["train", f"dataset={_dataset(f, r, lambda d: _first_shard(d).write_bytes(b'x'))}"], "corrupt"),
    ("tampered shard",
     lambda f, r, o: ["verify", f"dataset={_dataset(f, r, lambda d: _flip_last_byte(_first_shard(d)))}"],
     "corrupt or missing shard"),
    ("tampered shard metadata",
     lambda f, r, o: ["verify", f"dataset={_dataset(f, r, lambda d: _flip_last_byte(meta_path(_first_shard(d))))}"],
     "corrupt or missing shard"),
    ("corrupt manifest",
     lambda f, r, o: ["train", f"dataset={_dataset(f, r, lambda d: (d / 'manifest.json').write_text('{'))}"],
     "manifest.json is not valid JSON"),
    ("truncated checkpoint", lambda f, r, o: ["apply", f"operator_path={_truncated(_operator(f, o))}"], "corrupt"),
    ("tampered checkpoint metadata", lambda f, r, o: ["apply", f"operator_path={_tampered_meta(_operator(f, o))}"],
     "is invalid: operator.hidden must be int"),
    ("policy of another shape", lambda f, r, o: ["apply", f"operator_path={_operator(f, o)}",
                                                 f"init={_policy(f, hidden=(8,))}"], "initial policy"),
    ("NaN in the initial policy", lambda f, r, o: ["apply", f"operator_path={_operator(f, o)}",
                                                   f"init={_policy(f, nan=True)}"], "non-finite"),
    ("output under a file", lambda f, r, o: ["collect", "n_tasks=1", "seeds=1", "iterations=1",
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
        make_args: Callable[[pathlib.Path, pathlib.Path, pathlib.Path], list[str]], problem: str,
        reference_dataset: pathlib.Path, ars_operator: pathlib.Path, tmp_path: pathlib.Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    files, cwd = tmp_path / "files", tmp_path / "cwd"
    files.mkdir()
    cwd.mkdir()
    args = make_args(files, reference_dataset, ars_operator)
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
