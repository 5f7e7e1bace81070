import argparse
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


@pytest.mark.parametrize("command", ["ingest", "generate", "demo"])
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


def test_demo_ingests_the_bundled_sample(tmp_path, capsys):
    assert (
        main(["demo", "--workdir", str(tmp_path), "--log", str(REPO / "data/sample/interactions.csv")]) == 0
    )
    out = capsys.readouterr().out
    assert re.search(r"ingest  -> .*dataset: \d[\d,]* users, \d[\d,]* items", out)
    assert (tmp_path / "dataset" / "meta.json").is_file()
