"""Data shipped with the package: the demo conversations, preference pairs and prompts.

Recipes name them as ``zephyr:NAME`` (for example ``zephyr:demo_sft``), so they work from any
directory and from an installed wheel.
"""

from __future__ import annotations

from pathlib import Path

from zephyr.errors import ConfigError

PREFIX = "zephyr:"
_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(p.stem for p in _DIR.glob("*.jsonl"))


def resolve_resource(spec: str) -> str:
    """``zephyr:demo_sft`` -> the path of the shipped file; any other spec is returned unchanged."""
    if not isinstance(spec, str) or not spec.startswith(PREFIX):
        return spec
    name = spec[len(PREFIX) :]
    path = _DIR / f"{name}.jsonl"
    if not path.is_file():
        raise ConfigError(
            f"No shipped dataset {spec!r}; available: {', '.join(PREFIX + n for n in available())}"
        )
    return str(path)
