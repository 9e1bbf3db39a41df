"""CLI: stage listing and help (fast, nested settings with their docs), --version, --info, shell completion,
`tasks`, a real collection from another directory, sweeps, the stage registry, and one-line refusals of bad input
("did you mean") that leave nothing behind."""

import dataclasses
import pathlib
import re
import shutil
import subprocess
import sys

import gymnasium
import mujoco
import pytest
import torch
import yaml

import metaimprove
from metaimprove import cli, config
from metaimprove.config import STAGES, field_docs, stage
from metaimprove.data.collect import CollectConfig, load_manifest, verify_dataset
from metaimprove.errors import UserError
from metaimprove.operator.checkpoint import shipped_dir
from metaimprove.operator.features import FeatureConfig
from metaimprove.sim.tasks import load_families
from metaimprove.teachers import TEACHERS, PPOConfig
from metaimprove.training.pairs import PairConfig
from metaimprove.training.train import TrainConfig
from tests.helpers import CLI_TIMEOUT, TINY_OVERRIDES, run_cli

SMALL = [*TINY_OVERRIDES, "n_tasks=1", "seeds=1", "iterations=1", "workers=1"]


def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_every_stage_with_its_description(tmp_path: pathlib.Path) -> None:
    result = run_cli(["--help"], tmp_path)
    assert result.returncode == 0
    for name, registered in STAGES.items():
        assert re.search(rf"^ +{name} +{re.escape(registered.description)}$", result.stdout, re.MULTILINE), name
    assert {"tasks", "collect", "verify"} <= set(STAGES)
    assert list(tmp_path.iterdir()) == []


def test_help_imports_no_stage_and_no_torch(tmp_path: pathlib.Path) -> None:
    # What `metaimprove --help` loads: the registry reads each description from the source, so no stage module
    # (the subpackages' empty __init__ files aside), torch or matplotlib is imported (python -X importtime -m
    # metaimprove --help shows the rest).
    probe = ("import sys; from metaimprove.cli import main; main(['--help']); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib', 'scipy') "
             "or m in ('metaimprove.api', 'metaimprove.storage', 'metaimprove.pipeline', 'metaimprove.teachers') "
             "or (m.startswith('metaimprove.') and m.count('.') >= 2 and not m.startswith('metaimprove.sim.'))))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            timeout=CLI_TIMEOUT, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_stage_help_shows_groups_and_every_setting_with_its_doc(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _main(["collect", "--help"], capsys)
    assert code == 0
    assert "task=" + "|".join(sorted(load_families())).replace("halfcheetah_vel", "halfcheetah_vel*") in out
    assert "teacher=" + "|".join(sorted(TEACHERS)).replace("ppo", "ppo*") in out
    docs = field_docs(CollectConfig)
    for f in dataclasses.fields(CollectConfig):
        if f.name not in ("task", "teacher"):
            assert re.search(rf"^  {f.name}(=\S*|\.\*) +{re.escape(docs[f.name])}$", out, re.MULTILINE), f.name
    ppo_docs = field_docs(PPOConfig)
    for f in dataclasses.fields(PPOConfig):
        assert f"  teacher.{f.name}=" in out and ppo_docs[f.name] in out, f.name
    assert "  task.family=halfcheetah_vel" in out and "  out=runs/collect/<date>_<time>" in out


@pytest.mark.parametrize(("section", "config"), [("features", FeatureConfig), ("pairs", PairConfig)])
def test_stage_help_shows_nested_settings_with_their_docs(section: str, config: type,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _main(["train", "--help"], capsys)
    assert code == 0 and "{'" not in out, "a nested config shown as a raw dict"
    assert re.search(rf"^  {section}\.\* +{re.escape(field_docs(TrainConfig)[section])}$", out, re.MULTILINE)
    docs = field_docs(config)
    for f in dataclasses.fields(config):
        assert re.search(rf"^  {section}\.{f.name}=\S* +{re.escape(docs[f.name])}$", out, re.MULTILINE), f.name


def test_version_and_info(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _main(["--version"], capsys)
    assert (code, out) == (0, f"metaimprove {metaimprove.__version__}\n")
    code, out, _ = _main(["--info"], capsys)
    assert code == 0
    for needle in (f"metaimprove {metaimprove.__version__}", f"python {sys.version.split()[0]}",
                   f"torch {torch.__version__}", f"mujoco {mujoco.__version__}", f"gymnasium {gymnasium.__version__}",
                   "devices: cpu (", f"shipped operators: {shipped_dir()} (", " halfcheetah_vel,"):
        assert needle in out, needle


def _complete(script: str, words: list[str]) -> list[str]:
    """What bash completes for the command line ``words`` (the last one being typed) with ``script`` loaded."""
    line = " ".join(f"'{w}'" for w in words)
    driver = f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _metaimprove_complete; ' \
             'printf "%s\\n" "${COMPREPLY[@]}"'
    result = subprocess.run(["bash", "-c", driver], capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_completes_stage_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, script, _ = _main(["--completion", "bash"], capsys)
    assert code == 0 and "complete -o default -F _metaimprove_complete metaimprove" in script
    assert _complete(script, ["metaimprove", "co"]) == ["collect"]
    assert _complete(script, ["metaimprove", "ev"]) == ["evaluate"]
    assert set(_complete(script, ["metaimprove", ""])) == {*STAGES, *cli.TOP_FLAGS}
    assert _complete(script, ["metaimprove", "--completion", "z"]) == ["zsh"]
    code, zsh, _ = _main(["--completion", "zsh"], capsys)
    assert code == 0 and zsh.startswith("autoload -U +X bashcompinit && bashcompinit\n")
    assert "\n_metaimprove_complete() {" in zsh
    code, _, err = _main(["--completion", "fish"], capsys)
    assert code == 2 and err == "metaimprove: error: name a shell: metaimprove --completion bash|zsh\n"


def test_tasks_lists_each_family_with_its_splits(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # A results/ folder in the working directory is not the package's: `tasks` reads the shipped measurements.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "task_diversity.csv").write_text(
        "kind,family,trained_on,evaluated_on,seed,return,name,value\n"
        "summary,,,,,,halfcheetah_vel_transfer_ratio,123.456\n")
    (tmp_path / "results" / "family_cost.csv").write_text("not,a,cost,table\n")
    code, out, _ = _main(["tasks"], capsys)
    assert code == 0
    for family in load_families().values():
        block = out.split(f"{family.name}: ")[1].split("\n\n")[0]
        assert family.description in block and f"episode length {family.episode_length}" in block
        for split, seed in family.split_seeds.items():
            assert f"{split} (seed {seed})" in block
    vel = out.split("halfcheetah_vel: ")[1]
    assert vel.split("target_velocity")[1].split()[:6] == ["U[0,", "1.5]", "U[0,", "1.5]", "U[1.5,", "2]"]
    shipped = cli._measured_dir() / cli.DIVERSITY_CSV
    ratio = next(line.split(",")[-1] for line in shipped.read_text().splitlines() if "_transfer_ratio," in line)
    assert "task diversity" in out and "123.456" not in out
    assert re.search(rf"^ +halfcheetah_vel_transfer_ratio +{re.escape(ratio)}$", out, re.MULTILINE)
    assert "matrix" not in out  # the summary, not the whole cross-task matrix
    assert "× a halfcheetah_vel env step" in out
    code, out, _ = _main(["tasks", "family=halfcheetah_dir"], capsys)
    assert code == 0 and "halfcheetah_dir:" in out and "halfcheetah_vel:" not in out


def test_tasks_reads_the_measurements_shipped_in_the_package() -> None:
    # The two CSVs `tasks` prints are package data (pyproject's metaimprove.results), so a non-editable install
    # has them too.
    text = pathlib.Path(__file__).resolve().parents[1].joinpath("pyproject.toml").read_text()
    assert '"metaimprove.results" = ["family_cost.csv", "task_diversity.csv"]' in text
    assert cli._measured_dir() == pathlib.Path(__file__).resolve().parents[1] / "results"


def test_collect_runs_from_any_directory_and_keeps_its_files_in_the_run_dir(tmp_path: pathlib.Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(["collect", *SMALL], tmp_path)
    assert result.returncode == 0, result.stderr
    # Nothing in the working directory but the run directory: no MUJOCO_LOG.TXT, no outputs/, no .hydra.
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]
    (run_dir,) = (tmp_path / "runs" / "collect").iterdir()
    assert len(verify_dataset(run_dir)) == 1
    record = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert record["out"] == str(run_dir) and record["teacher"]["n_steps"] == 32
    assert "iterations=1" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    code, out, _ = _main(["verify", f"dataset={run_dir}"], capsys)
    assert code == 0 and "1 of 1 planned shards verified" in out


def test_sweep_gives_each_job_its_own_directory(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _main(["collect", "-m", *SMALL, f"out={tmp_path / 'sweep'}", "seed_start=0,1"], capsys)
    assert code == 0, err
    seeds = [[e["seed"] for e in load_manifest(tmp_path / "sweep" / job)] for job in ("0", "1")]
    assert seeds == [[0], [1]]


@dataclasses.dataclass
class _EchoConfig:
    """Write the greeting into the run directory."""

    greeting: str = "hello"
    """what to write"""
    out: str = dataclasses.field(default="")
    """run directory"""


def echo(cfg: _EchoConfig) -> None:
    """A stage function: everything a new stage needs besides its config."""
    if cfg.greeting == "refuse":
        raise UserError("greeting 'refuse' is refused")
    (pathlib.Path(cfg.out) / "greeting.txt").write_text(cfg.greeting)


def test_a_stage_is_a_config_dataclass_plus_a_function(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    registry = dict(STAGES)
    monkeypatch.setattr(config, "STAGES", registry)
    monkeypatch.setattr(cli, "STAGES", registry)
    stage("echo", f"{__name__}:echo")(_EchoConfig)
    code, out, _ = _main(["--help"], capsys)
    assert "echo" in out and "Write the greeting into the run directory." in out
    code, _, err = _main(["echo", "greeting=hi", f"out={tmp_path / 'run'}"], capsys)
    assert code == 0, err
    assert (tmp_path / "run" / "greeting.txt").read_text() == "hi"
    assert yaml.safe_load((tmp_path / "run" / ".hydra" / "config.yaml").read_text())["greeting"] == "hi"
    code, _, err = _main(["echo", "greeting=refuse", f"out={tmp_path / 'refused' / 'run'}"], capsys)
    assert (code, err) == (2, "metaimprove echo: error: greeting 'refuse' is refused\n")
    assert not (tmp_path / "refused").exists()

    @dataclasses.dataclass
    class Undocumented:
        """A stage whose field has no docstring."""

        x: int = 0

    with pytest.raises(TypeError, match="docstring"):
        stage("undocumented", f"{__name__}:echo")(Undocumented)


BAD_INPUT = [
    ([], "name a stage"),
    (["nope"], "unknown stage 'nope'; stages: tasks, collect"),
    (["colect"], "unknown stage 'colect' (did you mean 'collect'?)"),
    (["--infp"], "unknown option --infp (did you mean '--info'?)"),
    (["collect", "n_task=1"], "unknown setting 'n_task' (did you mean 'n_tasks'?)"),
    (["collect", "teacher.n_step=1"], "unknown setting 'teacher.n_step' (did you mean 'teacher.n_steps'?)"),
    (["collect", "+teacher.n_step=1"], "unknown setting 'teacher.n_step' (did you mean 'teacher.n_steps'?)"),
    (["collect", "task=halfcheetah_vl"], "unknown task 'halfcheetah_vl' (did you mean 'halfcheetah_vel'?)"),
    (["train", "dataset=x", "features.n_transition=1"], "(did you mean 'features.n_transitions'?)"),
    (["collect", "task=nope"], "unknown task 'nope'; choose one of ant_dir, ant_goal, halfcheetah_dir"),
    (["collect", "teacher=nope"], "unknown teacher 'nope'"),
    (["collect", "split=nope"], "split must be one of"),
    (["collect", "n_tasks=abc"], "n_tasks=abc"),
    (["collect", "hidden=[a]"], "hidden=[a]"),
    (["collect", "n_tasks=0"], "n_tasks must be >= 1"),
    (["collect", "seeds=0"], "seeds (runs per task) must be >= 1"),
    (["collect", "iterations=0"], "iterations must be >= 1"),
    (["collect", "seed_start=-1"], "seed_start must be >= 0"),
    (["collect", "start=-2"], "start must be >= 0"),
    (["collect", "workers=-1"], "workers must be >= 0"),
    (["collect", "teacher.n_envs=0"], "n_envs"),
    (["collect", "task.family=nope"], "unknown task family 'nope'"),
    (["collect", "foo=1"], "unknown setting 'foo'"),
    (["collect", "+teacher.foo=1"], "unknown setting 'teacher.foo'"),
    (["collect", "n_tasks=1,2"], "Ambiguous value"),
    (["collect", "split=[1"], "cannot parse 'split=[1'"),
    (["collect", "--verify"], "unknown option --verify"),
    (["verify"], "dataset has no value"),
    (["verify", "dataset=missing"], "no dataset at missing"),
    (["tasks", "family=nope"], "unknown task family 'nope'"),
    (["train", "dataset=missing", "features.warmup=[[2,x]]"], "features.warmup=[[2,x]]"),
]


@pytest.mark.parametrize(("args", "problem"), BAD_INPUT, ids=[" ".join(a) or "(none)" for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(args: list[str], problem: str, tmp_path: pathlib.Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _main(args, capsys)
    assert code == 2
    assert err.count("\n") == 1 and problem in err and "Traceback" not in err, err
    # Neither the default run directory (runs/...) nor anything else was created.
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["-m", "out={existing}"], ["out={existing}/a/b"], ["hydra.run.dir={new}/a"],
                                  ["-m", "hydra.sweep.dir={new}/a"]])
def test_a_refused_run_leaves_no_run_directory(args: list[str], tmp_path: pathlib.Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # Hydra makes the job's directory (under -m also multirun.yaml) before the stage refuses its input.
    existing, new = tmp_path / "existing", tmp_path / "new"
    existing.mkdir()
    (existing / "kept.txt").write_text("the user's")
    args = [a.format(existing=existing, new=new) for a in args]
    code, _, err = _main(["collect", "n_tasks=0", *args], capsys)
    assert code == 2 and "n_tasks must be >= 1" in err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["existing",
                                                                                       "existing/kept.txt"]


@pytest.mark.parametrize("args", [["collect", "n_tasks=abc", "out=x/y"], ["collect", "task=nope"]])
def test_the_installed_entry_point_refuses_bad_input_the_same_way(tmp_path: pathlib.Path, args: list[str]) -> None:
    result = run_cli(args, tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("metaimprove collect: error: ")
    assert list(tmp_path.iterdir()) == []


def test_existing_dataset_of_another_config_or_with_a_corrupt_shard_is_refused(
        reference_dataset: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data"
    shutil.copytree(reference_dataset, out)
    files = sorted(p.relative_to(out) for p in out.rglob("*"))
    code, _, err = _main(["collect", *TINY_OVERRIDES, "iterations=5", f"out={out}"], capsys)
    assert code == 2 and err.count("\n") == 1 and "different config (iterations: 2 there, 5 now)" in err
    shard = out / load_manifest(out)[0]["shard"]
    shard.write_bytes(shard.read_bytes()[:-1])
    code, _, err = _main(["collect", *TINY_OVERRIDES, f"out={out}"], capsys)
    assert code == 2 and err.count("\n") == 1 and shard.name in err
    code, _, err = _main(["verify", f"dataset={out}"], capsys)
    assert code == 2 and shard.name in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files, "a refused run wrote into the dataset"


def test_debug_mode_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("METAIMPROVE_DEBUG", "1")
    with pytest.raises(UserError, match="n_tasks must be >= 1"):
        cli.main(["collect", "n_tasks=0"])
    assert list(tmp_path.iterdir()) == []
