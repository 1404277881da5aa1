"""Every module imports (a NameError at import time fails here, not in a user's run), and every
subcommand has --help."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import zephyr
from zephyr.cli import COMMANDS, build_parser

MODULES = sorted(m.name for m in pkgutil.walk_packages(zephyr.__path__, "zephyr."))


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert command in capsys.readouterr().out
