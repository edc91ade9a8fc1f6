"""YAML loading that remembers where things were written, so configuration errors can name file:line.

`load_yaml` returns plain Python data whose mappings are `LineDict` and whose sequences are `LineList`:
ordinary `dict`/`list` subclasses that also carry the 1-based line of themselves and of each key.
`ParseCache` gives the same data for files whose text was parsed before, without parsing them again.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
from pathlib import Path
from types import GeneratorType
from typing import Any

import yaml

from batchflow.cachefile import read_cache, write_cache
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
    """A `list` that knows its own line (`.line`) and the line of each item (`.item_line(index)`)."""

    line: int | None = None
    item_lines: tuple[int, ...] = ()

    def item_line(self, index: int) -> int | None:
        """Line of item `index` (a scalar item knows no line of its own), falling back to the list's."""
        return self.item_lines[index] if index < len(self.item_lines) else self.line


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
        result.item_lines = tuple(child.start_mark.line + 1 for child in node.value)
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


class ParseCache:
    """YAML files parsed before, by their bytes: `load(path)` returns what `load_yaml(path)` returns, but
    a text parsed in an earlier run comes from a pickle of that parse (several times faster than libyaml: a
    2,000-model project has ~200 KB of properties files, ~55 ms to parse). Parsing is a function of the text
    alone, so a file is reused exactly when its bytes are unchanged; a file that does not parse is never
    stored (it fails again, with its line). Entries are kept as pickled bytes, so every `load` returns
    fresh objects whatever callers do with them. `save()` writes the entries this run used (atomically,
    only when something changed); an unreadable or outdated cache file is ignored. `path=None`: no cache."""

    FORMAT = 1
    _fingerprint: str | None = None

    def __init__(self, path: Path | None):
        self.path = path
        self._known: dict[bytes, bytes] = {}
        self._used: dict[bytes, bytes] = {}
        self._dirty = False
        if path is not None:
            self._read()

    @classmethod
    def fingerprint(cls) -> str:
        """What a stored parse depends on besides the text: this module, PyYAML and the Python version."""
        if cls._fingerprint is None:
            try:
                source = Path(__file__).read_text(encoding="utf-8")
            except OSError:
                source = __file__
            parts = "\0".join((source, yaml.__version__, _BaseLoader.__name__, sys.version))
            cls._fingerprint = hashlib.blake2b(parts.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()
        return cls._fingerprint

    def _read(self) -> None:
        data = read_cache(self.path)  # type: ignore[arg-type]
        if (isinstance(data, dict) and data.get("format") == self.FORMAT and data.get("code") == self.fingerprint()
                and isinstance(data.get("entries"), dict)):
            self._known = data["entries"]

    def load(self, path: Path) -> Any:
        """`load_yaml(path)`, from the cache when this exact text was parsed before."""
        if self.path is None:
            return load_yaml(path)
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            raise ConfigError(f"cannot read file: {exc.strerror}", path) from None
        key = hashlib.blake2b(raw, digest_size=20).digest()
        blob = self._known.get(key)
        if blob is not None:
            try:
                data = pickle.loads(blob)
            except Exception:  # noqa: BLE001 - a damaged entry: parse the file instead
                pass
            else:
                self._used[key] = blob
                return data
        text = raw.decode("utf-8")  # as Path.read_text: strict UTF-8, universal newlines
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        data = parse_yaml(text, Path(path))
        self._used[key] = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        self._dirty = True
        return data

    def save(self) -> None:
        """Write the entries this run used, if they differ from what was read."""
        if self.path is None or (not self._dirty and len(self._used) == len(self._known)):
            return
        data = {"format": self.FORMAT, "code": self.fingerprint(), "entries": self._used}
        write_cache(self.path, data)


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
