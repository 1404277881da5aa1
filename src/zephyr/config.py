"""Recipes: YAML files plus `--key=value` overrides, parsed into typed dataclasses.

The alignment-handbook's recipe keys parse as they are: TrainingArguments names, the handbook's
model/data keys, and the older names it used (see ``KEY_ALIASES``). An unknown key is an error that
suggests the closest valid key, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import math
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from zephyr.errors import ConfigError

log = logging.getLogger(__name__)

# Old or alternative key names (handbook generations, TRL renames) -> the name we use.
KEY_ALIASES = {
    "evaluation_strategy": "eval_strategy",
    "max_seq_length": "max_length",
    "warmup_ratio": "warmup_steps",  # transformers 5: warmup_steps < 1 is a ratio of the total steps
    "preprocessing_num_workers": "dataset_num_proc",
    "model_name": "model_name_or_path",
    "ref_model": "ref_model_name_or_path",
    "on_bad_input": "on_error",  # zephyr <= 0.1's generate/feedback spelling of the bad-row policy
    "hub_model_revision": "hub_revision",  # the handbook's branch to push to; transformers' name for it
}
# Keys the handbook recipes carry that have no meaning any more: accepted, noted, ignored.
IGNORED_KEYS = {
    "overwrite_output_dir": "transformers 5 removed it; an existing output_dir is reused (resume with resume_from_checkpoint)",
    "model_code_revision": "not needed",
    "hub_private_repo": None,
}


def setting(
    help: str,
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence | None = None,
) -> Any:
    """A documented config field. The help text feeds `--help`; the limits and choices are checked by
    ``check_settings`` (numbers must also be finite), so every range check lives in one place."""
    limits = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"help": help, "limits": limits, "choices": tuple(choices) if choices else None}
    return field(default=default, default_factory=default_factory, metadata=metadata)


ON_ERROR = ("raise", "skip")


def on_error_setting(default: str) -> Any:
    """The bad-row policy, spelled the same in every stage."""
    return setting(
        "A malformed input row: `raise` stops with an error naming the file, line and field; `skip` skips "
        "and counts it (listed in the stage's failures file where it has one).",
        default,
        choices=ON_ERROR,
    )


_RULES = {
    "ge": (lambda v, b: v >= b, "at least {}"),
    "gt": (lambda v, b: v > b, "greater than {}"),
    "le": (lambda v, b: v <= b, "at most {}"),
    "lt": (lambda v, b: v < b, "less than {}"),
}


def check_value(key: str, value: Any, limits: dict, choices: Sequence | None = None) -> None:
    """Raise a ConfigError naming ``key`` when ``value`` breaks its limits or is not one of ``choices``."""
    if value is None:
        return
    if choices and value not in choices:
        raise ConfigError(
            f"`{key}` must be one of {', '.join(map(str, choices))}; got {value!r}{suggest(value, choices)}",
            key=key,
        )
    if not limits or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if not math.isfinite(value):
        raise ConfigError(f"`{key}` must be a finite number; got {value!r}", key=key)
    if not all(_RULES[name][0](value, bound) for name, bound in limits.items()):
        raise ConfigError(f"`{key}` must be {describe_limits(limits)}; got {value!r}", key=key)


def describe_limits(limits: dict) -> str:
    if limits == {"gt": 0}:
        return "positive"
    return " and ".join(_RULES[name][1].format(bound) for name, bound in limits.items())


def check_settings(obj: Any, prefix: str = "") -> None:
    """Check every field of a config dataclass against the limits and choices of its ``setting``."""
    for f in dataclasses.fields(obj):
        if f.init and "limits" in f.metadata:  # made by ``setting`` (inherited fields carry other metadata)
            check_value(prefix + f.name, getattr(obj, f.name), f.metadata["limits"], f.metadata["choices"])


def suggest(word: Any, options: Iterable, cutoff: float = 0.6) -> str:
    """`; did you mean `x`?` for the closest of ``options``, or nothing."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=cutoff)
    return f"; did you mean `{close[0]}`?" if close else ""


def check_keys(mapping: dict, valid: Iterable[str], where: str) -> None:
    """An unknown key in a nested mapping is an error naming it, where it is, and the nearest valid key."""
    valid = list(valid)
    for key in mapping:
        if key not in valid:
            hint = suggest(key, valid, 0.5) or f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"Unknown key `{key}` in {where}{hint}", key=str(key))


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _scalar_type(tp) -> type | None:
    """The scalar type behind Optional[X] / X | None, for coercing command-line strings."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar_type(args[0]) if len(args) == 1 else None
    return tp if tp in (bool, int, float, str) else None


def _is_list(tp) -> bool:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_is_list(a) for a in typing.get_args(tp) if a is not type(None))
    return typing.get_origin(tp) is list


def _admits_str(tp) -> bool:
    if tp is str:
        return True
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp)


def _coerce(key: str, value: Any, tp) -> Any:
    """YAML reads `1e-5` as a string (YAML 1.1); turn such strings into the field's number type."""
    if _is_list(tp) and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [value]  # `--mt_bench=one.jsonl` for a list of files
    scalar = _scalar_type(tp)
    if value is False and scalar is not bool and _admits_str(tp) and bool not in typing.get_args(tp):
        return "no"  # YAML 1.1 reads `save_strategy: no` as False; `resume_from_checkpoint: true` stays True
    if value is None or scalar is None:
        return value
    if not isinstance(value, str):
        # A bool/int/float field must get that type (an int field accepts a whole float such as 1.0e3).
        ok = {
            bool: isinstance(value, bool),
            int: (isinstance(value, int) and not isinstance(value, bool))
            or (isinstance(value, float) and value.is_integer()),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
        }.get(scalar, True)
        if not ok:
            raise ConfigError(f"`{key}` must be a {scalar.__name__}; got {value!r}")
        return int(value) if scalar is int else value
    try:
        if scalar is bool:
            low = value.lower()
            if low in ("true", "yes", "1", "on"):
                return True
            if low in ("false", "no", "0", "off"):
                return False
            raise ValueError(value)
        if scalar in (int, float):
            return scalar(float(value)) if scalar is int and "e" in value.lower() else scalar(value)
    except ValueError:
        raise ConfigError(f"`{key}` must be a {scalar.__name__}; got {value!r}") from None
    return value


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """`--key=value` / `--key value` pairs; values are read as YAML (`--lora_target_modules=[q_proj,v_proj]`)."""
    out, i = {}, 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"Expected `--key=value`, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if eq:
            out[key] = _yaml_value(value)
            i += 1
            continue
        values = []
        while i + 1 < len(args) and not args[i + 1].startswith("--"):
            values.append(args[i + 1])  # `--key a b` gives a list, as argparse's nargs="+" did
            i += 1
        if not values:
            out[key] = True  # a bare flag
        else:
            out[key] = _yaml_value(values[0]) if len(values) == 1 else [_yaml_value(v) for v in values]
        i += 1
    return out


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text  # not YAML (an unbalanced bracket in a path, say): keep the string as given


def read_recipe(path: str | Path | None) -> dict[str, Any]:
    """A recipe file as a dict; a clear error for a missing file or bad YAML."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Recipe file not found: {path}")
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys to values, got {type(data).__name__}")
    return data


def aliases_of(classes: Sequence[type]) -> dict[str, str]:
    """Old key -> current key: the global aliases plus each config class's own ``ALIASES``."""
    merged = dict(KEY_ALIASES)
    for cls in classes:
        merged.update(getattr(cls, "ALIASES", {}))
    return merged


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last one without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key `{key}` is given twice (lines {seen[key]} and {key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Path) -> Any:
    """A YAML file's content; bad UTF-8, bad YAML or a duplicate key is one ConfigError naming the file."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 text (byte {exc.start})") from None
    except yaml.MarkedYAMLError as exc:  # one line: the file, the line, what is wrong there
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError(f"{path}, line {line}: invalid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None


def _owners(classes: Sequence[type]) -> dict[str, tuple[type, Any]]:
    """Field name -> (the first of ``classes`` declaring it, its type)."""
    owners: dict[str, tuple[type, Any]] = {}
    for cls in classes:
        for name, tp in _field_types(cls).items():
            owners.setdefault(name, (cls, tp))
    return owners


def check_known_keys(classes: Sequence[type], keys, where: str = "") -> None:
    """Raise the did-you-mean ConfigError for the first of ``keys`` that none of ``classes`` takes (after
    aliasing, and besides the accepted-and-ignored handbook keys); nothing is built or checked further."""
    owners, aliases = _owners(classes), aliases_of(classes)
    for key in keys:
        if key in IGNORED_KEYS or key in owners or aliases.get(key) in owners:
            continue
        # A key another command takes (a class's ``ELSEWHERE``: key -> what it is and which command runs it).
        name = aliases.get(key, key)
        for cls in classes:
            if name in getattr(cls, "ELSEWHERE", {}):
                raise ConfigError(f"`{key}`{where} is {cls.ELSEWHERE[name]}", key=str(key))
        hint = suggest(key, list(owners) + list(aliases))
        raise ConfigError(f"Unknown key `{key}`{where}{hint}", key=str(key))


def parse_config(
    classes: Sequence[type], recipe: str | Path | None = None, overrides: Sequence[str] | dict = ()
):
    """Build one instance of each dataclass from a recipe file and overrides (overrides win).

    Every key must belong to exactly one of ``classes`` (after aliasing); an unknown key raises a
    ConfigError that suggests the nearest valid key.
    """
    raw = read_recipe(recipe)
    raw.update(overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    owners = _owners(classes)
    values: dict[type, dict[str, Any]] = {cls: {} for cls in classes}
    where = f" in {recipe}" if recipe else ""
    aliases = aliases_of(classes)
    check_known_keys(classes, raw, where)
    for key, value in raw.items():
        name = key if key in owners else aliases.get(key, key)  # a real field wins over an old spelling
        if key in IGNORED_KEYS:
            if IGNORED_KEYS[key]:
                log.info("Ignoring `%s`: %s", key, IGNORED_KEYS[key])
            continue
        cls, tp = owners[name]
        value = _coerce(key, value, tp)
        if key == "warmup_ratio" and not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise ConfigError(f"`warmup_ratio` must be in [0, 1){where}; got {value!r}")
        values[cls][name] = value
    out = []
    for cls in classes:
        try:
            config = cls(**values[cls])
            check_settings(config)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Invalid settings{where}: {exc}") from None
        out.append(config)
    return tuple(out)


def to_dict(*configs) -> dict[str, Any]:
    """The merged, effective settings of several config dataclasses (for model cards and run records)."""
    merged: dict[str, Any] = {}
    for cfg in configs:
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            if isinstance(value, (str, int, float, bool, type(None), list, dict)):
                merged[f.name] = value
            else:
                merged[f.name] = str(value)
    return merged


def help_text(classes: Sequence[type], ours_only: bool = False) -> str:
    """`--help` for a stage: each key, its default and its documentation, from the field metadata.
    ``ours_only`` lists only the fields declared with ``setting`` (not, say, TrainingArguments' own)."""
    lines = []
    for cls in classes:
        lines.append(f"\n{cls.__name__}:")
        for f in dataclasses.fields(cls):
            if not f.init or (ours_only and "limits" not in f.metadata):
                continue
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else ("[]" if f.default_factory is not dataclasses.MISSING else "required")
            )
            doc = f.metadata.get("help", "")
            if "limits" in f.metadata and f.metadata.get("choices"):
                doc += f" One of: {', '.join(map(str, f.metadata['choices']))}."
            if f.metadata.get("limits"):
                doc += f" Must be {describe_limits(f.metadata['limits'])}."
            lines.append(
                f"  --{f.name}  (default: {default})\n      {doc}"
                if doc
                else f"  --{f.name}  (default: {default})"
            )
    return "\n".join(lines)


def effective_recipe(
    recipe: str | Path | None, overrides: Sequence[str], *configs, in_full: Sequence[Any] = ()
) -> dict[str, Any]:
    """What a run was asked to do, for model cards: every setting of the ``in_full`` configs plus each key
    of the others that the recipe file or the command line set, with the value actually used."""
    given = read_recipe(recipe) | parse_overrides(overrides)
    record = to_dict(*in_full)
    effective = to_dict(*in_full, *configs)
    for key in given:
        name = KEY_ALIASES.get(key, key)
        if name in effective:
            record[name] = effective[name]
    return record
