"""dbt packages: `packages.yml` / `dependencies.yml`, what `dbt deps` leaves in `dbt_packages/`, and `deps`.

A package is a dbt project whose macros (and models) a project uses under the package's name
(`dbt_utils.star(...)`). `local:` entries are read where they point, installed or not; `package:` (hub) and
`git:` entries are read from the install folder (`packages-install-path`, default `dbt_packages/`), where
`batchflow deps` (or `dbt deps`) puts them. A package folder found there without an entry loads too, as dbt
loads whatever `dbt deps` installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchflow.errors import ConfigError
from batchflow.yamlio import LineDict, line_of, load_yaml

PACKAGE_FILES = ("packages.yml", "dependencies.yml")
DEFAULT_INSTALL_PATH = "dbt_packages"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class PackageEntry:
    """One entry of packages.yml: `local:`, `git:` (with `revision:`/`subdirectory:`) or `package:` (hub)."""

    kind: str  # "local" | "git" | "hub"
    spec: str  # the path, URL or hub name as written
    path: Path  # the packages file
    line: int | None
    revision: str | None = None
    subdirectory: str | None = None


@dataclass
class Package:
    """An installed (or local) package: a dbt project folder."""

    name: str  # the `name:` of its dbt_project.yml
    root: Path
    macro_paths: list[str] = field(default_factory=lambda: ["macros"])
    model_paths: list[str] = field(default_factory=lambda: ["models"])
    vars: dict[str, Any] = field(default_factory=dict)


def read_entries(root: Path) -> list[PackageEntry]:
    """The entries of the project's packages.yml or dependencies.yml (dbt reads one of them: both is an error)."""
    found = [root / name for name in PACKAGE_FILES if (root / name).is_file()]
    if len(found) > 1 and _entries_of(found[0]) and _entries_of(found[1]):
        raise ConfigError("both packages.yml and dependencies.yml list packages; keep one", found[1], 1)
    entries: list[PackageEntry] = []
    for path in found:
        entries.extend(_entries_of(path))
    return entries


def _entries_of(path: Path) -> list[PackageEntry]:
    data = load_yaml(path)
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ConfigError("a packages file must be a mapping with `packages:`", path, 1)
    items = data.get("packages") or []
    if not isinstance(items, list):
        raise ConfigError("`packages:` must be a list", path, line_of(data, "packages"))
    entries = []
    for item in items:
        line = line_of(item) if isinstance(item, LineDict) else line_of(data, "packages")
        if not isinstance(item, dict):
            raise ConfigError("each package is a mapping: `local:`, `git:` or `package:`", path, line)
        if "local" in item:
            entries.append(PackageEntry("local", str(item["local"]), path, line))
        elif "git" in item:
            entries.append(PackageEntry("git", str(item["git"]), path, line, _opt(item.get("revision")),
                                        _opt(item.get("subdirectory"))))
        elif "package" in item:
            entries.append(PackageEntry("hub", str(item["package"]), path, line, _opt(item.get("version"))))
        elif "tarball" in item:
            entries.append(PackageEntry("tarball", str(item["tarball"]), path, line))
        else:
            raise ConfigError(f"package entry needs `local:`, `git:` or `package:`, got {sorted(item)}", path, line)
    return entries


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


def read_package(folder: Path) -> Package:
    """A package folder's dbt_project.yml, read leniently: packages' project files are not ours to check."""
    project_file = folder / "dbt_project.yml"
    if not project_file.is_file():
        raise ConfigError(f"package folder {folder} has no dbt_project.yml", folder)
    data = load_yaml(project_file) or {}
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"package {folder.name}: `name:` must be a project name", project_file, 1)

    def paths(key: str, default: str) -> list[str]:
        value = data.get(key, [default])
        return [value] if isinstance(value, str) else [str(v) for v in value or []]

    raw_vars = data.get("vars") if isinstance(data.get("vars"), dict) else {}
    return Package(name, folder.resolve(), paths("macro-paths", "macros"), paths("model-paths", "models"),
                   dict(raw_vars))


def _local_folder(entry: PackageEntry, root: Path) -> Path:
    folder = Path(os.path.expanduser(entry.spec))
    folder = folder if folder.is_absolute() else (root / folder)
    if not (folder / "dbt_project.yml").is_file():
        raise ConfigError(f"local package {entry.spec!r}: no dbt_project.yml in {folder}", entry.path, entry.line)
    return folder


def load_packages(root: Path, install_path: str = DEFAULT_INSTALL_PATH) -> list[Package]:
    """Every package the project uses: `local:` entries where they point, then the folders of the install
    path. A `git:` or hub entry with nothing installed is an error that says to run `batchflow deps`."""
    packages: dict[str, Package] = {}
    entries = read_entries(root)
    for entry in entries:
        if entry.kind == "local":
            package = read_package(_local_folder(entry, root))
            packages.setdefault(package.name, package)
    installed = root / install_path
    if installed.is_dir():
        for folder in sorted(p for p in installed.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (folder / "dbt_project.yml").is_file():
                package = read_package(folder)
                packages.setdefault(package.name, package)
    for entry in entries:
        if entry.kind != "local" and _guess_name(entry) not in packages:
            raise ConfigError(f"package {entry.spec!r} is not installed in {install_path}/; run `batchflow deps`",
                              entry.path, entry.line)
    return list(packages.values())


def _guess_name(entry: PackageEntry) -> str:
    """The package name an entry installs as, from its spec (hub: after the slash; git: the repository name
    with dbt- prefix and dashes folded, as dbt's packages are named)."""
    tail = entry.spec.rstrip("/").split("/")[-1].removesuffix(".git")
    if entry.kind == "git":
        tail = tail.removeprefix("dbt-").replace("-", "_")
    return tail


# ---- batchflow deps -----------------------------------------------------------------------------------


@dataclass
class Installed:
    """What `install` did for one entry."""

    spec: str
    name: str
    folder: Path
    how: str  # "linked" | "copied" | "cloned"


def install(root: Path, install_path: str = DEFAULT_INSTALL_PATH, git: str = "git") -> list[Installed]:
    """`batchflow deps`: put every entry of packages.yml into the install folder. `local:` entries are
    symlinked (copied where links are refused), `git:` entries cloned at their revision. Hub packages need
    hub.getdbt.com, which batchflow does not talk to: name them by `git:` or `local:` instead."""
    entries = read_entries(root)
    target = root / install_path
    done: list[Installed] = []
    for entry in entries:
        if entry.kind == "local":
            folder = _local_folder(entry, root)
            name = read_package(folder).name
            dest = target / name
            _clear(dest)
            target.mkdir(parents=True, exist_ok=True)
            try:
                dest.symlink_to(folder.resolve(), target_is_directory=True)
                how = "linked"
            except OSError:
                shutil.copytree(folder, dest)
                how = "copied"
            done.append(Installed(entry.spec, name, dest, how))
        elif entry.kind == "git":
            done.append(_clone(entry, target, git))
        else:
            raise ConfigError(
                f"package {entry.spec!r}: batchflow deps installs `local:` and `git:` entries only; name the "
                f"package by its git URL (e.g. `- git: https://github.com/<org>/<repo>.git` with `revision:`), "
                "or put it in the install folder yourself", entry.path, entry.line)
    return done


def _clone(entry: PackageEntry, target: Path, git: str) -> Installed:
    import tempfile

    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".clone-") as tmp:
        command = [git, "clone", "--quiet", *([] if entry.revision else ["--depth", "1"]), entry.spec, tmp]
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # never wait for credentials
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
            if result.returncode == 0 and entry.revision:
                result = subprocess.run([git, "-C", tmp, "checkout", "--quiet", entry.revision],
                                        capture_output=True, text=True, timeout=120, env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"git package {entry.spec!r} could not be cloned: {exc}", entry.path,
                              entry.line) from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise ConfigError(f"git package {entry.spec!r} could not be cloned"
                              f"{' at ' + entry.revision if entry.revision else ''}: "
                              f"{detail[-1] if detail else 'git exited ' + str(result.returncode)}",
                              entry.path, entry.line)
        folder = Path(tmp) / (entry.subdirectory or "")
        name = read_package(folder).name
        dest = target / name
        _clear(dest)
        shutil.move(str(folder), dest)
        shutil.rmtree(dest / ".git", ignore_errors=True)
    return Installed(entry.spec, name, dest, "cloned")


def _clear(dest: Path) -> None:
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.is_dir():
        shutil.rmtree(dest)


def deps(project_dir: Path) -> list[Installed]:
    """The `batchflow deps` command: install the packages of the project in `project_dir`."""
    from batchflow.project import find_project_file

    root = Path(project_dir).expanduser().resolve()
    data = load_yaml(find_project_file(root)) or {}
    install_path = str(data.get("packages-install-path") or DEFAULT_INSTALL_PATH) if isinstance(data, dict) \
        else DEFAULT_INSTALL_PATH
    return install(root, install_path)
