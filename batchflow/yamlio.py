"""YAML loading that remembers where things were written, so configuration errors can name file:line.

`load_yaml` returns plain Python data whose mappings are `LineDict` and whose sequences are `LineList`:
ordinary `dict`/`list` subclasses that also carry the 1-based line of themselves and of each key.
"""

from __future__ import annotations

from pathlib import Path
from types import GeneratorType
from typing import Any

import yaml

from batchflow.errors import ConfigError

# The C parser is several times faster; only the constructor below runs in Python.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class LineDict(dict):
    """A `dict` that knows its own line (`.line`) and the line of each key (`.key_line(key)`)."""

    line: int | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.line = None
        self.key_lines: dict[Any, int] = {}

    def key_line(self, key: Any) -> int | None:
        """Line of `key` in the file, falling back to the mapping's own line."""
        return self.key_lines.get(key, self.line)


class LineList(list):
    """A `list` that knows its own line (`.line`)."""

    line: int | None = None


class _LineLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """SafeLoader whose parser composes the node tree; `_build` turns it into LineDict/LineList."""

    def __init__(self, stream: str, path: Path):
        super().__init__(stream)
        self.path = path


_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _build(loader: _LineLoader, node: yaml.Node) -> Any:
    """Python data for `node`. Walking the tree directly (instead of PyYAML's generic constructor
    machinery) roughly halves the time spent on big property files."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _STR_TAG:
            return node.value
        constructor = loader.yaml_constructors.get(node.tag) or loader.yaml_constructors[None]
        return _finish(constructor(loader, node))
    if isinstance(node, yaml.SequenceNode):
        result = LineList(_build(loader, child) for child in node.value)
        result.line = node.start_mark.line + 1
        return result
    return _build_mapping(loader, node)


def _finish(data: Any) -> Any:
    """PyYAML's two-step constructors (`!!set`, `!!omap`) are generators: run them to the end."""
    if isinstance(data, GeneratorType):
        value = next(data)
        for _ in data:
            pass
        return value
    return data


def _build_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    n_explicit = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    loader.flatten_mapping(node)  # resolves `<<` merge keys, putting merged pairs first
    first_explicit = len(node.value) - n_explicit
    result = LineDict()
    result.line = node.start_mark.line + 1
    key_lines = result.key_lines
    explicit: set[Any] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = _build(loader, key_node)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise ConfigError(f"unhashable mapping key {key!r}", loader.path, line) from None
        if index >= first_explicit:
            # Merged keys may be overridden by explicit ones; explicit ones may not repeat.
            if key in explicit:
                raise ConfigError(f"duplicate key {key!r} (first at line {key_lines[key]})", loader.path, line)
            explicit.add(key)
        result[key] = _build(loader, value_node)
        key_lines[key] = line
    return result


def parse_yaml(text: str, path: Path) -> Any:
    """Parse YAML `text` read from `path` (used for messages). Syntax errors become ConfigError."""
    loader = _LineLoader(text, path)
    try:
        node = loader.get_single_node()
        return None if node is None else _build(loader, node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"invalid YAML: {problem}", path, line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path) from None
    finally:
        loader.dispose()


def load_yaml(path: Path) -> Any:
    """Read and parse the YAML file at `path`; an empty file gives None."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", path) from None
    return parse_yaml(text, Path(path))


def line_of(obj: Any, key: Any = None) -> int | None:
    """Line of `obj` (or of `key` inside a LineDict); None for values that don't carry lines."""
    if key is not None and isinstance(obj, LineDict):
        return obj.key_line(key)
    return getattr(obj, "line", None)


def to_plain(obj: Any) -> Any:
    """Deep copy of `obj` with LineDict/LineList turned into ordinary dicts and lists."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    return obj
