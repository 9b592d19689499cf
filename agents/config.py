"""Every config rims-rl reads, typed: one schema, loaded, overridden and checked the same way by every command.

The YAML files under ``configs/`` are the single source of defaults. The dataclasses here say what each
file holds: names, types and ranges, and no default values of their own (an optional field's ``None``
means the library's own default, such as sb3-contrib's for a PPO setting the file leaves out).

- :func:`load` reads a file (a path, or a name inside the packaged ``configs/``), applies overrides and
  returns the typed config; :func:`parse` does the same for a mapping. Overrides are ``(dotted key,
  value)`` pairs with typed values: the command line parses ``--set key=value`` once, as YAML
  (:func:`parse_set`), and flags such as ``--device`` become one pair each, so a setting has one route.
- Every problem is a :class:`ConfigError` with one line naming the key: unknown keys (with the closest
  names), missing ones, wrong types, values out of range, impossible combinations. Nothing is built to
  be checked; all of it happens before any environment starts.
- :func:`to_dict` turns a config back into plain data (what a run folder's ``config.yaml`` holds).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

__all__ = [
    "A2CConfig",
    "ConfigError",
    "CopyingConfig",
    "EnvConfig",
    "ImitationConfig",
    "LSTMConfig",
    "PPOConfig",
    "PolicyConfig",
    "RIMsConfig",
    "RunConfig",
    "SweepConfig",
    "TrainConfig",
    "TransferConfig",
    "load",
    "parse",
    "parse_set",
    "read_yaml",
    "resolve_path",
    "to_dict",
]


class ConfigError(ValueError):
    """Input that cannot be used (a config, an override, a flag, a run folder): the message says what and
    where, in one line. The command line prints it and exits with status 2."""


# ----------------------------------------------------------------------------------------- engine


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ``low <= x <= high`` (``<`` where open); None for no bound."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    @staticmethod
    def applies(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def check(self, value: float, where: str) -> None:
        low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if not (low_ok and high_ok and math.isfinite(value)):
            left = "(" if self.low_open or self.low is None else "["
            right = ")" if self.high_open or self.high is None else "]"
            low = "-inf" if self.low is None else f"{self.low:g}"
            high = "inf" if self.high is None else f"{self.high:g}"
            raise ConfigError(f"{where} must be in {left}{low}, {high}{right}, got {value!r}")


@dataclass(frozen=True)
class Pattern:
    """A string matching a regular expression (``what`` names the form in the error)."""

    regex: str
    what: str

    @staticmethod
    def applies(value: Any) -> bool:
        return isinstance(value, str)

    def check(self, value: str, where: str) -> None:
        if not re.fullmatch(self.regex, value):
            raise ConfigError(f"{where} must be {self.what}, got {value!r}")


@dataclass(frozen=True)
class LinearDecay:
    """``lin_X``: a linear decay from X to 0 over training (rl-zoo's notation), X a finite positive number."""

    what: str = "a positive number or lin_<positive number>"

    @staticmethod
    def applies(value: Any) -> bool:
        return isinstance(value, str)

    def check(self, value: str, where: str) -> None:
        start = value[4:] if value.startswith("lin_") else ""
        try:
            valid = bool(re.fullmatch(r"[0-9.eE+-]+", start)) and math.isfinite(float(start)) and float(start) > 0
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError(f"{where} must be {self.what}, got {value!r}")


@dataclass(frozen=True)
class Available:
    """A torch device this machine has (``auto`` always: a GPU when there is one)."""

    @staticmethod
    def applies(value: Any) -> bool:
        return isinstance(value, str)

    def check(self, value: str, where: str) -> None:
        from rims_rl.utils import resolve_device

        try:
            resolve_device(value)
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from None


Count = Annotated[int, Range(1)]  # a positive integer
Natural = Annotated[int, Range(0)]  # zero or more
Probability = Annotated[float, Range(0.0, 1.0)]
PositiveFloat = Annotated[float, Range(0.0, None, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0.0)]
# An LSTM forget-gate bias start (RIMs units and the LSTM core alike); the sigmoid saturates long before 100.
ForgetBias = Annotated[float, Range(-100.0, 100.0)]
# Sizes of a network: large enough for any model these experiments use, small enough to fit in memory.
Size = Annotated[int, Range(1, 65_536)]
Seed = Annotated[int, Range(0, 2**32 - 1)]
# A name that becomes a folder: never one of dots only (".." would put the run outside its root).
Label = Annotated[str, Pattern(r"(?!\.+$)[A-Za-z0-9_.+-]+", "a name of letters, digits and _.+- only, not dots only")]
# A learning rate or clip range: a positive number, or lin_X for a linear decay from X to 0 over training
# (rl-zoo's notation).
Schedule = Annotated[Union[float, str], Range(0.0, None, low_open=True), LinearDecay()]  # noqa: UP007
Device = Annotated[str, Pattern(r"auto|cpu|cuda(:\d+)?", "auto, cpu or cuda[:N]"), Available()]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        return _describe(args[0])
    if origin is Literal:
        return " or ".join(map(str, args))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None)) + (
            " or null" if type(None) in args else ""
        )
    if origin is list:
        item = _describe(args[0])
        plural = {"an integer": "integers", "a number": "numbers", "a string": "strings", "a value": "values"}
        plural = plural.get(item, item)
        return f"a list of {plural}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", Any: "a value"}
    return names.get(hint, str(hint))


def _number(value: Any) -> Any:
    """A string that reads as a number, as that number: YAML 1.1 reads 1e-4 (no dot) as a string, and a
    user typing it means a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the shape of ``hint`` (mapping, list, string, number, bool), whatever its contents."""
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint
    origin = typing.get_origin(base)
    if origin in (Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(base))
    if isinstance(value, Mapping):
        return origin is dict or dataclasses.is_dataclass(base) or base is Any
    if isinstance(value, list):
        return origin is list or base is Any
    if isinstance(value, bool):
        return base in (bool, Any) or origin is Literal
    if isinstance(value, (int, float)):
        return base in (int, float, Any) or origin is Literal
    if isinstance(value, str):
        return base in (str, Any) or origin is Literal
    return True


def _value(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the annotation ``hint`` (and converted where YAML is loose)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        base, *constraints = args
        value = _value(value, base, where)
        for constraint in constraints:
            # A number takes the Range, a string the Pattern (a Schedule is either).
            if constraint.applies(value):
                constraint.check(value, where)
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if float in options:
            value = _number(value)
        # The option of the value's shape decides (so that its own error is the one reported).
        fitting = [option for option in options if _fits(value, option)]
        if len(fitting) == 1:
            return _value(value, fitting[0], where)
        for option in fitting:
            try:
                return _value(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise ConfigError(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be {_describe(hint)}, got {value!r}")
        return [_value(item, args[0], f"{where}[{index}]") for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        for key in value:
            if not isinstance(key, str) or not key:
                raise ConfigError(f"{where}: keys must be non-empty strings, got {key!r}")
        return {key: _value(item, args[1], f"{where}.{key}") for key, item in value.items()}
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, where)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        value = _number(value)
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)  # 1e6 written for a step count
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        value = _number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {hint!r} at {where}")


def _unknown(where: str, key: str, known: Iterable[str]) -> ConfigError:
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(known)}"
    name = f"{where}.{key}" if where else key
    return ConfigError(f"unknown config key {name!r}{hint}")


def parse(cls: type, data: Any, where: str = ""):
    """An instance of the config dataclass ``cls`` from plain data, checked in full.

    A class may take keys it does not declare into one ``dict`` field named by its ``EXTRA`` class
    attribute (settings that depend on another value, checked by its ``check``), and may check
    combinations of fields in a ``check(where)`` method (``where``: its dotted path, for messages),
    raising :class:`ConfigError`.
    """
    label = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label} must be a mapping of keys to values, got {data!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra_field = getattr(cls, "EXTRA", None)
    declared = set(fields) - {extra_field}
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        if key in declared:
            values[key] = _value(value, hints[key], f"{where}.{key}" if where else key)
        elif extra_field is not None and isinstance(key, str):
            extra[key] = value
        else:
            raise _unknown(where, str(key), declared)
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and name != extra_field
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{label} lacks {', '.join(missing)}")
    if extra_field is not None:
        values[extra_field] = extra
    instance = cls(**values)
    check = getattr(instance, "check", None)
    if check is not None:
        check(where)
    return instance


def to_dict(config: Any) -> dict[str, Any]:
    """Plain data (dicts, lists, numbers, strings) of a config, as a file would hold it; optional fields
    left unset are left out, as they would be from a file."""
    result = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == getattr(type(config), "EXTRA", None):
            result.update(value)
        elif value is not None or f.default is not None:
            result[f.name] = _plain(value)
    return result


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def resolve_path(name: str | Path) -> Path:
    """A config given as a file path, or by its path inside the packaged ``configs/`` folder."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = resources.files("rims_rl.configs").joinpath(str(name))
    if packaged.is_file():
        return Path(str(packaged))
    raise ConfigError(f"config not found: {name} (neither a file nor a packaged config)")


# A config is a few KB; anything far larger is not one.
MAX_YAML_BYTES = 1_000_000
MAX_YAML_DEPTH = 50


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter where a config needs it: a key given twice is an error (the last
    would silently win), aliases are refused (a small file of nested aliases expands without end, and
    configs need none), and numbers read as YAML 1.2 reads them (``1e-2`` is a float, not a string)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a config", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the constructor below says so
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.2's exponent floats without a dot (1e-2, 5E3), which YAML 1.1 reads as strings.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def parse_yaml(text: str, where: str) -> Any:
    """``text`` read by the project's YAML rules (:class:`_StrictLoader`, at most :data:`MAX_YAML_BYTES`);
    anything wrong is one ``ConfigError`` naming ``where``. Every YAML file the project reads goes through
    here: configs, sweep files and run folders' ``config.yaml``."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(text):,} characters; a config is at most {MAX_YAML_BYTES:,}")
    # Deep nesting is refused before parsing: a RecursionError inside the parser can leave CPython's own
    # recursion bookkeeping wrong for the rest of the process.
    depth = deepest = 0
    for char in text:
        depth += (char in "[{") - (char in "]}")
        deepest = max(deepest, depth)
    if deepest > MAX_YAML_DEPTH:
        raise ConfigError(f"{where}: nested too deeply to be a config (more than {MAX_YAML_DEPTH} levels)")
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None)
        mark = getattr(error, "problem_mark", None)
        detail = f"{problem} (line {mark.line + 1})" if problem and mark else str(error).strip().splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {detail}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config") from None


def read_text(path: Path) -> str:
    """A text file the project reads (a config, a run's record), as UTF-8; one ``ConfigError`` for a file
    that cannot be read, is too large, or is not text."""
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; a config is at most {MAX_YAML_BYTES:,}")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None


def read_yaml(name: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file (a path or a packaged name)."""
    path = resolve_path(name)
    data = parse_yaml(read_text(path), str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def parse_set(item: str) -> tuple[str, Any]:
    """``"a.b=value"`` (the command line's ``--set``) as ``("a.b", value)``, the value read as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r} is not of the form key=value (e.g. ppo.n_steps=64)")
    try:
        value = parse_yaml(text, f"--set {item!r}")
    except ConfigError:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    return key, value


def _field_hint(cls: Any, name: str) -> Any:
    """The annotation of field ``name`` of a config class, through Optional and Annotated."""
    hint = _hints(cls)[name]
    while True:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is Annotated:
            hint = args[0]
        elif origin in (Union, types.UnionType) and type(None) in args and len(args) == 2:
            hint = next(a for a in args if a is not type(None))
        else:
            return hint


def apply(cls: type, data: Mapping[str, Any], overrides: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """A copy of the plain ``data`` of config class ``cls`` with each ``(dotted key, value)`` set.

    A key must exist in the schema (not only in the file): its sections are followed through the
    dataclasses, and inside a mapping-typed field any key is allowed (the field's own type checks it).
    """
    result = _copy(data)
    for key, value in overrides:
        parts = key.split(".")
        node: Any = result
        schema: Any = cls
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            path = ".".join(parts[: depth + 1])
            if schema is not None and dataclasses.is_dataclass(schema):
                names = {f.name for f in dataclasses.fields(schema)} - {getattr(schema, "EXTRA", None)}
                if part not in names and getattr(schema, "EXTRA", None) is None:
                    raise _unknown(".".join(parts[:depth]), part, names)
                schema = _field_hint(schema, part) if part in names else Any
            elif typing.get_origin(schema) is dict:
                schema = typing.get_args(schema)[1]
            elif schema is not Any:
                raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is not a section")
            if last:
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is not a section")
                if isinstance(node.get(part), dict) and not isinstance(value, dict):
                    raise ConfigError(f"--set {key}: {path} is a section; set one of its keys instead")
                node[part] = value
            else:
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is not a section")
                if not isinstance(node.get(part), dict):
                    if part in node and node[part] is not None:
                        raise ConfigError(f"--set {key}: {path} is not a section")
                    node[part] = {}
                node = node[part]
    return result


def _copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {key: _copy(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_copy(item) for item in data]
    return data


def load(cls: type, source: str | Path | Mapping[str, Any], overrides: Iterable[tuple[str, Any]] = ()):
    """The config of class ``cls`` from a YAML file (path or packaged name) or a mapping, with
    ``overrides`` applied, checked in full."""
    data = read_yaml(source) if isinstance(source, (str, Path)) else source
    return parse(cls, apply(cls, data, overrides))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# ------------------------------------------------------------------------------------ the configs


@dataclass
class RIMsConfig:
    """Arguments of :class:`rims_rl.RIMs` (besides ``input_size``); unset ones keep the module's own
    defaults, the paper's Table 3."""

    unit_size: Size
    num_units: Annotated[int, Range(1, 1024)]
    k_active: Count
    cell: Literal["lstm", "gru"] | None = None
    input_heads: Annotated[int, Range(1, 256)] | None = None
    input_key_size: Size | None = None
    input_value_size: Size | None = None
    comm_heads: Annotated[int, Range(1, 256)] | None = None
    comm_key_size: Size | None = None
    comm_value_size: Size | None = None
    input_dropout: Annotated[float, Range(0.0, 1.0, high_open=True)] | None = None
    comm_dropout: Annotated[float, Range(0.0, 1.0, high_open=True)] | None = None
    input_attention: bool | None = None
    communication: bool | None = None
    forget_bias: ForgetBias | None = None

    def check(self, where: str) -> None:
        from rims_rl.rims import RIMs  # the module's own rules for its arguments (k_active <= num_units, ...)

        try:
            RIMs.check_arguments(**self.kwargs())
        except ValueError as error:
            raise ConfigError(f"{where}: {error}") from None
        width = self.unit_size * self.num_units
        _check(width <= 65_536, f"{where}: num_units x unit_size = {width} is more than 65,536")

    def kwargs(self) -> dict[str, Any]:
        """The module's keyword arguments: the ones set."""
        return {key: value for key, value in to_dict(self).items() if value is not None}


@dataclass
class LSTMConfig:
    """The LSTM baseline of the training configs (:class:`rims_rl.policies.LstmPolicy`)."""

    lstm_hidden_size: Size


@dataclass
class CoreConfig:
    """A recurrent core outside the RL policies (copying task, imitation): ``core: rims`` with
    :class:`RIMsConfig`'s keys, or ``core: lstm`` with ``hidden_size`` and an optional ``forget_bias``
    (the initial bias of the forget gate)."""

    EXTRA = "settings"
    core: Literal["rims", "lstm"]
    settings: dict[str, Any]

    def check(self, where: str) -> None:
        if self.core == "rims":
            self.settings = to_dict(parse(RIMsConfig, self.settings, where))
        else:
            self.settings = to_dict(parse(_LSTMCoreSettings, self.settings, where))
        self.settings = {key: value for key, value in self.settings.items() if value is not None}


@dataclass
class _LSTMCoreSettings:
    hidden_size: Size
    forget_bias: ForgetBias | None = None


@dataclass
class AtariOptions:
    """The Atari settings of an ``env:`` section (see :func:`rims_rl.envs.atari.make_atari_env`)."""

    backend: Literal["ale", "sb3"] | None = None
    frame_stack: Annotated[int, Range(1, 32)] | None = None
    noop_max: Annotated[int, Range(0, 10_000)] | None = None
    sticky_actions: Annotated[float, Range(0.0, 1.0, high_open=True)] | None = None
    episodic_life: bool | None = None
    clip_rewards: bool | None = None
    full_action_space: bool | None = None
    max_episode_frames: Count | None = None


@dataclass
class EnvConfig:
    """``env:``: the environment id, how many run in parallel, and the settings of its kind (Atari
    preprocessing, MiniGrid's mission length, our pickup task's pools), checked for that kind."""

    EXTRA = "options"
    id: str
    n_envs: Annotated[int, Range(1, 1024)]
    options: dict[str, Any]

    def check(self, where: str) -> None:
        from rims_rl.envs import check_env_settings, env_kind

        try:
            kind = env_kind(self.id)
            if kind == "atari":
                parse(AtariOptions, self.options, where)
            check_env_settings({"id": self.id, "n_envs": self.n_envs, **self.options})
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def settings(self) -> dict[str, Any]:
        """What :func:`rims_rl.envs.make_env` takes."""
        return to_dict(self)


@dataclass
class _OnPolicyConfig:
    """What PPO and A2C share."""

    learning_rate: Schedule
    n_steps: Annotated[int, Range(1, 1_000_000)]
    gamma: Annotated[float, Range(0.0, 1.0, low_open=True)]
    gae_lambda: Probability
    ent_coef: NonNegativeFloat
    vf_coef: NonNegativeFloat
    max_grad_norm: PositiveFloat


@dataclass
class PPOConfig(_OnPolicyConfig):
    """``ppo:``: sb3-contrib ``RecurrentPPO`` settings; unset optional ones keep sb3-contrib's defaults."""

    batch_size: Annotated[int, Range(2, 10_000_000)]
    n_epochs: Annotated[int, Range(1, 1000)]
    clip_range: Schedule
    clip_range_vf: PositiveFloat | None = None
    normalize_advantage: bool | None = None
    target_kl: PositiveFloat | None = None


@dataclass
class A2CConfig(_OnPolicyConfig):
    """``a2c:``: :class:`rims_rl.agents.algorithms.RecurrentA2C` settings."""

    rms_prop_eps: PositiveFloat | None = None
    use_rms_prop: bool | None = None


# Bytes a trained parameter takes: float32 weight, gradient and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16
# What a features extractor hands the core, for the memory estimate: its width (flatten and combined depend
# on the observations alone: 1024 assumed) and, for a set, (rows, row width) of Atari's 84x84 frames and
# MiniGrid's 7x7 view and mission. A RIMs core reads a row; an LSTM reads the rows flattened.
FEATURES_WIDTH = {"nature_cnn": 512, "minigrid": 128, "flatten": 1024, "combined": 1024}
SET_ROWS = {"nature_cnn": (49, 66), "minigrid": (50, 32)}


def physical_memory() -> int | None:
    """This machine's memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# The features extractors with a set sibling (rims_rl.extractors.set_extractor_for).
SET_EXTRACTORS = ("nature_cnn", "minigrid")


@dataclass
class PolicyConfig:
    """``policy_kwargs:``, shared by the RIMs and LSTM policies."""

    critic_core: Literal["separate", "detached", "shared", "none"]
    features_extractor: Literal["nature_cnn", "flatten", "combined", "minigrid"]
    net_arch: list[Size] | dict[str, list[Size]]
    ortho_init: bool
    features: Literal["vector", "set"]

    def check(self, where: str) -> None:
        _check(
            self.features == "vector" or self.features_extractor in SET_EXTRACTORS,
            f"{where}.features: set needs features_extractor {' or '.join(SET_EXTRACTORS)} (the observations "
            f"it reads give rows), got {self.features_extractor}",
        )
        if isinstance(self.net_arch, dict):
            unknown = sorted(set(self.net_arch) - {"pi", "vf"})
            _check(not unknown, f"{where}.net_arch: keys must be pi and vf, got {', '.join(unknown)}")


# What a resumed run may change: its budget and how it is run, watched and saved, not what it trains.
MUTABLE = (
    "total_steps",
    "run.device",
    "run.progress",
    "run.track",
    "run.wandb_project",
    "run.checkpoint_every",
    "run.eval_every",
    "run.eval_episodes",
    "run.eval_deterministic",
)


# Keys the training schema gained after runs were recorded without them, with the value that reproduces how
# those runs trained. A run folder's record (its config.yaml, its checkpoint's config) is read through
# upgrade_record, so a run of an earlier release resumes and evaluates; a user's config file is not.
RECORD_UPGRADES: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("policy_kwargs", "features"), "vector"),  # input sets came later: every earlier run read one row a step
)


def upgrade_record(data: Any) -> Any:
    """A copy of a recorded training config with the keys of :data:`RECORD_UPGRADES` it lacks filled in;
    anything else (a key present, a part that is not a mapping) is left for the schema to judge."""
    if not isinstance(data, Mapping):
        return data
    data = dict(data)
    for path, value in RECORD_UPGRADES:
        node = data
        for key in path[:-1]:
            if not isinstance(node.get(key), Mapping):
                break
            node[key] = dict(node[key])
            node = node[key]
        else:
            node.setdefault(path[-1], value)
    return data


@dataclass
class RunConfig:
    """``run:``: where a training run lives, how it is logged, checkpointed and evaluated."""

    seed: Seed
    device: Device
    out: str
    checkpoint_every: Natural
    eval_every: Natural
    eval_episodes: Annotated[int, Range(0, 100_000)]
    eval_deterministic: bool
    progress: bool
    track: bool
    wandb_project: str
    label: Label | None
    init_from: str | None


@dataclass
class TrainConfig:
    """A training run (``rims-rl train``): ``configs/atari/ppo_rims.yaml`` and its siblings."""

    env: EnvConfig
    algo: Literal["ppo", "a2c"]
    total_steps: Annotated[int, Range(1, 10**12)]
    policy: Literal["rims", "lstm"]
    policy_kwargs: PolicyConfig
    run: RunConfig
    ppo: PPOConfig | None = None
    a2c: A2CConfig | None = None
    rims: RIMsConfig | None = None
    lstm: LSTMConfig | None = None

    def check(self, where: str) -> None:
        for choice in (self.algo, self.policy):
            _check(getattr(self, choice) is not None, f"the config chooses {choice}, but has no {choice} section")
        if self.algo == "ppo":
            _check(
                self.ppo.n_steps * self.env.n_envs > 1,
                "ppo.n_steps x env.n_envs must be more than 1 (a rollout of one step has no minibatch)",
            )
        if self.policy_kwargs.features == "set":  # the observations must give rows, which the env kind says
            from rims_rl.envs import env_kind

            kind, extractor = env_kind(self.env.id), self.policy_kwargs.features_extractor
            _check(
                (extractor == "minigrid") == (kind == "minigrid"),
                f"policy_kwargs.features: set with features_extractor {extractor} needs "
                f"{'a MiniGrid environment' if extractor == 'minigrid' else 'image observations'}, which "
                f"{self.env.id} ({kind}) does not give",
            )
        parameters = self.parameter_estimate()
        needed, available = parameters * TRAINING_BYTES_PER_PARAMETER, physical_memory()
        _check(
            available is None or needed <= available,
            f"the policy would have about {parameters:,} parameters: {needed / 2**30:.1f} GiB to train with "
            f"gradients and Adam, more than this machine's {(available or 0) / 2**30:.1f} GiB; choose smaller "
            f"{'rims.unit_size / rims.num_units' if self.policy == 'rims' else 'lstm.lstm_hidden_size'} or "
            "policy_kwargs.net_arch",
        )

    def parameter_estimate(self) -> int:
        """The policy's parameters, counted before anything is built: the recurrent core(s) exactly (built on
        the meta device, which holds no memory) for the features width its extractor gives (an assumed 1024
        where only the environment knows it), the heads from ``net_arch``. The extractor is left out."""
        import torch

        from rims_rl.cores import build_core

        extractor = self.policy_kwargs.features_extractor
        width = FEATURES_WIDTH[extractor]
        if self.policy_kwargs.features == "set":
            rows, row = SET_ROWS[extractor]
            width = row if self.policy == "rims" else rows * row
        if self.policy == "rims":
            settings, output = self.rims.kwargs(), self.rims.num_units * self.rims.unit_size
        else:
            settings, output = {"hidden_size": self.lstm.lstm_hidden_size}, self.lstm.lstm_hidden_size
        with torch.device("meta"):
            core = build_core(self.policy, width, settings)
        cores = 2 if self.policy_kwargs.critic_core == "separate" else 1
        arch = self.policy_kwargs.net_arch
        heads = arch if isinstance(arch, dict) else {"pi": arch, "vf": arch}
        layers = sum(
            (fan_in + 1) * fan_out
            for widths in heads.values()
            for fan_in, fan_out in itertools.pairwise([output, *widths])
        )
        return cores * sum(p.numel() for p in core.parameters()) + layers

    @property
    def hyperparameters(self) -> PPOConfig | A2CConfig:
        """The section of the chosen algorithm."""
        return getattr(self, self.algo)


@dataclass
class CopyingTask:
    digits: Annotated[int, Range(1, 1000)]
    train_span: Annotated[int, Range(0, 100_000)]
    eval_spans: list[Annotated[int, Range(0, 100_000)]]


@dataclass
class CopyingTraining:
    updates: Annotated[int, Range(1, 10**9)]
    batch_size: Annotated[int, Range(1, 1_000_000)]
    lr: PositiveFloat
    grad_clip: PositiveFloat
    eval_every: Count
    eval_sequences: Annotated[int, Range(1, 1_000_000)]


@dataclass
class CopyingRun:
    seed: Seed
    device: Device
    out: str
    progress: bool
    models: list[str] | None = None  # train only these entries of models (null: all)


@dataclass
class CopyingConfig:
    """The copying task (``rims-rl copying``, ``configs/copying.yaml``)."""

    task: CopyingTask
    train: CopyingTraining
    models: dict[str, CoreConfig]
    run: CopyingRun

    def check(self, where: str) -> None:
        _check(bool(self.models), "models must name at least one model")
        _check(bool(self.task.eval_spans), "task.eval_spans must list at least one span")


@dataclass
class ImitationEnv:
    size: Annotated[int, Range(8, 1024)]
    frame_stack: Annotated[int, Range(1, 32)]
    camera: str
    gl: Literal["egl", "osmesa", "glfw"]
    max_episode_steps: Count


@dataclass
class ExpertPPO:
    """``expert.ppo``: SB3 PPO's settings for the state-based expert, and its policy's (log_std_init,
    net_arch); unset optional ones keep SB3's defaults."""

    n_steps: Annotated[int, Range(1, 1_000_000)]
    batch_size: Annotated[int, Range(2, 10_000_000)]
    gamma: Annotated[float, Range(0.0, 1.0, low_open=True)]
    learning_rate: PositiveFloat
    ent_coef: NonNegativeFloat
    clip_range: PositiveFloat
    n_epochs: Annotated[int, Range(1, 1000)]
    gae_lambda: Probability
    max_grad_norm: PositiveFloat
    vf_coef: NonNegativeFloat
    log_std_init: Annotated[float, Range(-20.0, 20.0)]
    net_arch: list[Size]
    clip_range_vf: PositiveFloat | None = None
    target_kl: PositiveFloat | None = None


# Floats a SAC replay buffer keeps per transition of HalfCheetah (17 observations, 6 actions): the
# observation and the next one, the action, the reward and the done flag; for the memory check.
CHEETAH_TRANSITION_FLOATS = 2 * 17 + 6 + 2


@dataclass
class ExpertSAC:
    """``expert.sac``: SB3 SAC's settings for the state-based expert, and its policy's net_arch; unset
    optional ones keep SB3's defaults."""

    learning_starts: Annotated[int, Range(0, 10**9)]
    learning_rate: PositiveFloat
    buffer_size: Annotated[int, Range(1, 10**9)]
    batch_size: Annotated[int, Range(1, 10_000_000)]
    gamma: Annotated[float, Range(0.0, 1.0, low_open=True)]
    tau: Annotated[float, Range(0.0, 1.0, low_open=True)]
    net_arch: list[Size]
    train_freq: Count | None = None
    gradient_steps: Count | None = None

    def check(self, where: str) -> None:
        needed, available = self.buffer_size * CHEETAH_TRANSITION_FLOATS * 4, physical_memory()
        _check(
            available is None or needed <= available,
            f"{where}.buffer_size: {self.buffer_size:,} transitions take about {needed / 2**30:.1f} GiB, more than "
            f"this machine's {(available or 0) / 2**30:.1f} GiB",
        )


@dataclass
class ImitationExpert:
    algo: Literal["ppo", "sac"]
    total_steps: Count
    normalize: bool
    eval_episodes: Count
    checkpoint_every: Natural
    ppo: ExpertPPO
    sac: ExpertSAC

    def settings(self) -> dict[str, Any]:
        """The chosen algorithm's settings as SB3's keyword arguments (and the policy's), unset ones left out."""
        return {key: value for key, value in to_dict(getattr(self, self.algo)).items() if value is not None}


@dataclass
class ImitationCollect:
    episodes: Count
    deterministic: bool
    action_noise: NonNegativeFloat


@dataclass
class ImitationBC:
    models: dict[str, CoreConfig]
    features: Size
    window: Annotated[int, Range(1, 100_000)]
    batch_size: Annotated[int, Range(1, 100_000)]
    epochs: Count
    learning_rate: PositiveFloat
    lr_decay: Literal["linear", "none"]
    random_shift: Annotated[int, Range(0, 64)]
    max_grad_norm: PositiveFloat
    checkpoint_every: Count

    def check(self, where: str) -> None:
        _check(bool(self.models), f"{where}.models must name at least one model")


@dataclass
class ImitationEvaluate:
    joint_noise: NonNegativeFloat
    episodes: Count
    seeds: list[Seed]

    def check(self, where: str) -> None:
        _check(bool(self.seeds), f"{where}.seeds must name at least one seed (the episodes are played per seed)")


@dataclass
class ImitationRun:
    out: str
    seed: Seed
    device: Device
    progress: bool


@dataclass
class ImitationConfig:
    """HalfCheetah imitation from pixels (``rims-rl imitation``, ``configs/mujoco/halfcheetah.yaml``)."""

    env: ImitationEnv
    expert: ImitationExpert
    collect: ImitationCollect
    bc: ImitationBC
    evaluate: ImitationEvaluate
    run: ImitationRun


@dataclass
class SweepConfig:
    """A grid of runs (``rims-rl sweep``, ``configs/sweeps/*.yaml``); see :mod:`rims_rl.agents.sweep`."""

    command: Literal["train", "copying"]  # what each run is: a training run, or a copying-task run
    config: str
    out: str
    grid: dict[str, list[Any]]
    variants: dict[str, dict[str, Any]] | None = None
    overrides: dict[str, Any] | None = None
    workers: Annotated[int, Range(1, 4096)] | None = None
    gpus_per_run: PositiveFloat | None = None

    def check(self, where: str) -> None:
        _check(bool(self.grid), "grid is empty; give at least one config key and its values, e.g. run.seed: [0]")
        for key, values in self.grid.items():
            _check(bool(values), f"grid.{key} must be a non-empty list of values")
        if self.variants is not None:
            _check(bool(self.variants), "variants is empty; leave it out for a single unnamed variant")
            for name in self.variants:
                _value(name, Label, f"variant name {name!r}")


@dataclass
class TransferConfig:
    """Transfer between Atari games (``rims-rl transfer``, ``configs/atari/transfer.yaml``)."""

    config: str
    sources: list[str]
    targets: list[str]
    source_steps: Count
    target_steps: Count
    seeds: list[Seed]
    policies: list[Literal["rims", "lstm"]]
    overrides: dict[str, Any]

    def check(self, where: str) -> None:
        for key in ("sources", "targets", "seeds", "policies"):
            _check(bool(getattr(self, key)), f"{key} must be a non-empty list")
