import argparse
import json
import re
from pathlib import Path

import pytest

from recsys.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_of_every_command_is_explained():
    for name, sub in subparsers().items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"recsys {name} {action.option_strings} has no help text"


@pytest.mark.parametrize(
    "command", ["ingest", "generate", "train", "evaluate", "report", "serve", "recommend", "demo"]
)
def test_help_shows_defaults(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: recsys {command}" in out
    assert "(default:" in out


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme.split("## Quick start")[1].split("\n## ")[0])
    assert len(commands) == 2
    assert commands[1] in (REPO / ".ci" / "run").read_text()
    assert commands[0].startswith("python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0")


@pytest.mark.serve
def test_demo_runs_the_whole_job_and_beats_popularity(tmp_path, capsys):
    """The Quick start's main job: ingest, train, evaluate, serve and one query, on the bundled sample."""
    argv = ["demo", "-q", "--workdir", str(tmp_path), "--log", str(REPO / "data/sample/interactions.csv")]
    assert main([*argv, "--port", "18765"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"ingest  -> .*dataset: \d[\d,]* users, \d[\d,]* items", out)
    rows = dict(re.findall(r"^(xsimgcl|popular|graph-filter) +([0-9.]+)", out.split("recall@20")[1], re.M))
    assert float(rows["xsimgcl"]) > 1.5 * float(rows["popular"]) and "graph-filter" in rows
    assert (tmp_path / "report.html").is_file()
    answer, _ = json.JSONDecoder().raw_decode(out.split("?k=5:\n")[1])
    assert len(answer["items"]) == 5 and answer["model_version"]
    assert (tmp_path / "xsimgcl" / "embeddings.pt").is_file()


def test_train_flags_are_generated_from_the_config_fields_and_their_help():
    from dataclasses import fields

    from recsys.config import TrainConfig

    actions = {a.dest: a for a in subparsers()["train"]._actions}
    for field in fields(TrainConfig):
        assert field.metadata["help"] in actions[field.name].help.replace("%%", "%"), field.name
    assert "(default: simgcl 0.5, xsimgcl 0.2)" in actions["cl_weight"].help
    assert actions["metanode_detach"].type("off") is False and actions["threads"].type("3") == 3


def test_a_command_that_loaded_ray_ends_at_once_with_its_output_written(tmp_path):
    """Ray's native threads outlive ``ray.shutdown`` and race the interpreter's teardown, so the console
    script ends any process that loaded Ray with ``os._exit`` once the command is done (the Ray commands
    themselves are exercised by the serving, refresh, demo and distributed tests)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "log.csv"
    script = (
        "import atexit, sys, ray\n"
        "from recsys.cli import main\n"
        "atexit.register(print, 'teardown ran')\n"
        "main()\n"
        "print('main returned')\n"
    )
    args = ["generate", "--out", str(out), "--users", "50", "--items", "40", "--interactions", "500"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered: lost if not flushed
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(out) in done.stdout + done.stderr and out.is_file()
    assert "main returned" not in done.stdout and "teardown ran" not in done.stdout
