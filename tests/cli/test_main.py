"""The dispatcher imports only the named verb's module, and its verb table matches the modules."""

import argparse
import importlib
import subprocess
import sys

import pytest

from illume_kit.cli import main as cli_main


def _registered(module: str) -> set[str]:
    sub = argparse.ArgumentParser().add_subparsers(dest="verb")
    importlib.import_module(module).register(sub)
    return set(sub.choices)


@pytest.mark.parametrize("module", cli_main.VERB_MODULES)
def test_verb_table_matches_what_each_module_registers(module):
    table = {verb for verb, mod in cli_main.VERBS.items() if mod == module}
    assert _registered(module) == table


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["validate", "r.yaml"], ("illume_kit.cli.recipe_cmds",)),
        (["--debug", "show", "tokenizer", "vq"], ("illume_kit.cli.registry_cmds",)),
        (["train", "--help"], ("illume_kit.cli.train_cmds",)),
        (["--help"], cli_main.VERB_MODULES),
        ([], cli_main.VERB_MODULES),
        (["-h", "validate"], cli_main.VERB_MODULES),
        (["valdate", "r.yaml"], cli_main.VERB_MODULES),
    ],
)
def test_modules_for_a_command_line(argv, expected):
    assert cli_main._modules_for(argv) == expected


def test_one_verb_imports_only_its_module_and_help_lists_every_verb():
    code = (
        "import sys; from illume_kit.cli.main import main; rc = main(['list']); "
        "print(sorted(m for m in sys.modules if m.endswith('_cmds')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "['illume_kit.cli.registry_cmds']"
    helptext = subprocess.run(
        [sys.executable, "-m", "illume_kit.cli.main", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for verb in cli_main.VERBS:
        assert verb in helptext


def test_unknown_verb_is_reported_with_the_valid_choices():
    r = subprocess.run(
        [sys.executable, "-m", "illume_kit.cli.main", "valdate", "x.yaml"], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "invalid choice: 'valdate'" in r.stderr and "validate" in r.stderr
