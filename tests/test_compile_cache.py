"""The partial-parse cache (target/partial_parse.batchflow.pickle) and the Jinja fast path: compiling
with them gives exactly what compiling without them gives, and every input change invalidates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from batchflow.compiler import PARTIAL_PARSE_FILE, Compiler
from batchflow.project import load_profile, load_project, render_simple, simple_template

REPO = Path(__file__).resolve().parents[1]
SYNTH = REPO / "tests" / "fixtures" / "projects" / "dbt_synth"

PROJECT = """name: demo
profile: demo
vars:
  greeting: hello
models:
  demo:
    +materialized: table
"""
PROFILES = """demo:
  target: a
  outputs:
    a: {type: duckdb, schema: one}
    b: {type: duckdb, schema: two}
"""


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    _write(tmp_path, {
        "batchflow_project.yml": PROJECT,
        "profiles.yml": PROFILES,
        "macros/m.sql": "{% macro shout(x) %}upper({{ x }}){% endmacro %}\n",
        "models/a.sql": "{{ config(tags=['x']) }}select {{ shout(\"'a'\") }} as v, '{{ var('greeting') }}' as g",
        "models/b.sql": "select * from {{ ref('a') }} -- {{ this }} {{ env_var('BF_TEST_CACHE_VAR', 'dflt') }}",
        "models/c.sql": "{% set n = 2 %}select {{ n }} as n from {{ ref('b') }}",
    })
    return tmp_path


def _compile(root: Path, target: str | None = None, cli_vars: dict | None = None, partial_parse: bool = True):
    proj = load_project(root, cli_vars)
    compiler = Compiler(proj, load_profile(proj, target_name=target), partial_parse=partial_parse)
    manifest = compiler.compile()
    return {n: (node.compiled_sql, node.config, node.depends_on) for n, node in manifest.nodes.items()}, compiler


def _same_as_uncached(root: Path, **kwargs) -> tuple[dict, Compiler]:
    cached, compiler = _compile(root, **kwargs)
    plain, _ = _compile(root, partial_parse=False, **kwargs)
    assert cached == plain
    return cached, compiler


def _reused(compiler: Compiler) -> set[str]:
    """Compiled SQL of the renders the last compile took from the cache."""
    return {e[0] for key, e in compiler.cache._used_renders.items() if compiler.cache.renders.get(key) is e}


def test_warm_compile_reuses_everything_and_matches(project: Path) -> None:
    first, c1 = _same_as_uncached(project)
    assert (project / "target" / PARTIAL_PARSE_FILE).is_file()
    assert not _reused(c1)
    second, c2 = _same_as_uncached(project)
    assert second == first
    assert len(_reused(c2)) == 3
    assert c2.renderer._macro_module is None  # nothing needed Jinja's compiler


@pytest.mark.parametrize(
    "change",
    [
        lambda root: (root / "models/a.sql").write_text("select 2 as v"),
        lambda root: (root / "macros/m.sql").write_text("{% macro shout(x) %}lower({{ x }}){% endmacro %}\n"),
        lambda root: (root / "models/s.yml").write_text("version: 2\nmodels:\n  - name: a\n    config: {alias: aa}\n"),
        lambda root: (root / "batchflow_project.yml").write_text(PROJECT.replace("hello", "bye")),
    ],
    ids=["model", "macro", "yml", "project-var"],
)
def test_changes_invalidate(project: Path, change) -> None:
    before, _ = _same_as_uncached(project)
    change(project)
    after, _ = _same_as_uncached(project)
    assert after != before


def test_cli_var_target_and_env_var_invalidate(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, _ = _same_as_uncached(project)
    with_var, _ = _same_as_uncached(project, cli_vars={"greeting": "hi"})
    assert "'hi' as g" in with_var["a"][0] and with_var != base
    other_target, _ = _same_as_uncached(project, target="b")
    assert "`two`.`a`" in other_target["b"][0]
    monkeypatch.setenv("BF_TEST_CACHE_VAR", "set")
    with_env, _ = _same_as_uncached(project)
    assert "set" in with_env["b"][0] and "dflt" in base["b"][0]


def test_ref_target_config_change_invalidates_dependents(project: Path) -> None:
    _same_as_uncached(project)
    # b's own file is unchanged, but the relation ref('a') renders to is not.
    _write(project, {"models/s.yml": "version: 2\nmodels:\n  - name: a\n    config: {schema: extra}\n"})
    after, compiler = _same_as_uncached(project)
    assert "`one_extra`.`a`" in after["b"][0]
    assert _reused(compiler) == {after["c"][0]}  # a (yml) and b (its ref) rendered again; c reused


def test_broken_macro_still_fails_after_a_cached_compile(project: Path) -> None:
    _compile(project)
    _write(project, {"macros/bad.sql": "{% macro bad( %}\n"})
    with pytest.raises(Exception, match="bad.sql"):
        _compile(project)


def test_corrupt_cache_is_ignored(project: Path) -> None:
    first, _ = _compile(project)
    (project / "target" / PARTIAL_PARSE_FILE).write_bytes(b"not a pickle")
    again, _ = _compile(project)
    assert again == first


def test_disabled_by_env(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHFLOW_PARTIAL_PARSE", "0")
    proj = load_project(project)
    Compiler(proj, load_profile(proj)).compile()
    assert not (project / "target" / PARTIAL_PARSE_FILE).exists()


def test_dbt_synth_fixture_identical_with_and_without_fast_paths(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    shutil.copytree(SYNTH, root)
    _same_as_uncached(root)
    _same_as_uncached(root)


@pytest.mark.parametrize(
    "template",
    [
        "select {{ f('a') }}, {{ g(x=[1, 2.5, 'b'], y={'k': true, 'n': none}) }} from t",
        "{{ obj.attr }} {{ obj['key'] }} {{ d.k }} {{ d['k'] }}",
        "{{ 'it''s' }} {{ \"q\" }}",
        "text only }} {",
    ],
)
def test_simple_renderer_matches_jinja(template: str) -> None:
    import jinja2

    class Obj:
        attr = "A"

        def __getitem__(self, key: str) -> str:
            return f"item-{key}"

    context = {"f": lambda v: f"F({v})", "g": lambda x, y: f"G({x},{y})", "obj": Obj(), "d": {"k": "dict-k"}}
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    pieces = simple_template(template)
    assert pieces is not None
    assert render_simple(pieces, context) == env.from_string(template).render(context)


@pytest.mark.parametrize(
    "template",
    [
        "{% if x %}a{% endif %}",
        "{{ x | upper }}",
        "{{ a ~ b }}",
        "{{- x }}",
        "{# c #}",
        "{{ r'raw' }}",
        "{{ 'esc\\n' }}",
        "{{ f(*args) }}",
        "{{ x # comment }}",
        "{{ 1_000 }}",
        "{{ [x for x in y] }}",
        "{{ a if b else c }}",
    ],
)
def test_simple_renderer_leaves_the_rest_to_jinja(template: str) -> None:
    assert simple_template(template) is None


def test_simple_renderer_falls_back_on_undefined() -> None:
    pieces = simple_template("{{ missing }} {{ d.nope }}")
    assert pieces is not None
    assert render_simple(pieces, {"d": {}}) is None
