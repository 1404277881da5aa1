"""Every module imports (a NameError at import time fails here, not in a user's run), and every
subcommand has --help."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

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


HEAVY = ("torch", "transformers", "datasets", "pyarrow")


def test_cli_and_top_level_help_import_nothing_heavy():
    """`import zephyr.cli` and `zephyr --help` must stay instant: no torch, transformers, datasets, pyarrow."""
    probe = (
        "import sys, contextlib, io\n"
        "import zephyr.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        zephyr.cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'generate' in out.getvalue(), out.getvalue()\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_prefs_loss_choices_match_the_loss_table():
    """evaluate.settings names the DPO losses without importing torch; they must be train.losses' table."""
    from zephyr.evaluate.settings import DPO_LOSS_NAMES
    from zephyr.train.losses import DPO_LOSSES

    assert set(DPO_LOSS_NAMES) == set(DPO_LOSSES)
