"""YAML run configs: loading, ``--set key=value`` overrides and key checking.

The YAML files under ``configs/`` are the single source of run defaults; code reads values from the
loaded mapping and never repeats them.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "apply_overrides", "load_config", "require", "resolve_config_path"]


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says what and where."""


def resolve_config_path(name: str | Path) -> Path:
    """A config given as a file path, or by its path inside the packaged ``configs/`` folder."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = resources.files("rims_rl.configs").joinpath(str(name))
    if packaged.is_file():
        return Path(str(packaged))
    raise ConfigError(f"config not found: {name} (neither a file nor a packaged config)")


def load_config(name: str | Path, overrides: Iterable[str] = (), open_sections: Iterable[str] = ()) -> dict:
    """Load a YAML config and apply ``key.sub=value`` overrides.

    Args:
        name: a YAML file, or a packaged config such as ``"copying.yaml"``.
        overrides: ``"dotted.key=value"`` strings; values are parsed as YAML (``1e-3``, ``[1, 2]``,
            ``true``). A key must already exist in the file, except directly inside one of
            ``open_sections`` (keyword-argument mappings that the receiving class checks itself).
        open_sections: dotted paths of sections that accept new keys.
    """
    path = resolve_config_path(name)
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(config).__name__}")
    return apply_overrides(config, overrides, open_sections)


def apply_overrides(config: Mapping, overrides: Iterable[str], open_sections: Iterable[str] = ()) -> dict:
    """A copy of ``config`` with ``key.sub=value`` overrides applied (see :func:`load_config`)."""
    result = copy.deepcopy(dict(config))
    open_sections = set(open_sections)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        value = _parse_value(item, text)
        parts = key.split(".")
        node: Any = result
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(_unknown(".".join(parts[: depth + 1]), node))
            node = node[part]
        section, leaf = ".".join(parts[:-1]), parts[-1]
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {section} is not a section")
        if leaf not in node and section not in open_sections:
            raise ConfigError(_unknown(key, node))
        if leaf in node and isinstance(node[leaf], dict) and not isinstance(value, dict):
            raise ConfigError(f"override {item!r}: {key} is a section; set one of its keys instead")
        node[leaf] = value
    return result


def _parse_value(item: str, text: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
    if isinstance(value, str):
        # YAML 1.1 reads 1e-4 (no dot) as a string; a user typing it means a number.
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _unknown(key: str, node: Any) -> str:
    known = sorted(node) if isinstance(node, dict) else []
    close = difflib.get_close_matches(key.split(".")[-1], known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys here: {', '.join(known)}"
    return f"unknown config key {key!r}{hint}"


def require(config: Mapping, section: str, keys: Iterable[str]) -> None:
    """Raise :class:`ConfigError` unless ``config[section]`` has exactly ``keys``."""
    node = config.get(section)
    if not isinstance(node, dict):
        raise ConfigError(f"config section {section!r} is missing or not a mapping")
    expected, present = set(keys), set(node)
    if expected - present:
        raise ConfigError(f"config section {section!r} lacks {', '.join(sorted(expected - present))}")
    if present - expected:
        extra = ", ".join(sorted(present - expected))
        raise ConfigError(f"config section {section!r} has unknown keys {extra}; known: {', '.join(sorted(expected))}")
