"""Loading projects and profiles: yamlio line numbers, project file, config precedence, yml docs, sources,
seeds, profiles with env_var(), and a dbt-style project as the benchmark generator writes it."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from batchflow import yamlio
from batchflow.errors import ConfigError
from batchflow.project import YML_CACHE_FILE, load_profile, load_project, merge_configs
from batchflow.yamlio import LineDict, LineList, ParseCache, line_of, load_yaml

FIXTURES = Path(__file__).parent / "fixtures" / "projects"

PROFILES = """\
demo:
  target: local
  outputs:
    local:
      type: duckdb
    prod:
      type: bigquery
      project: my-proj
      dataset: analytics
"""


def write(root: Path, files: dict[str, str]) -> Path:
    """Write `files` (relative path -> dedented text) under root; returns root."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def project(tmp_path: Path, project_yml: str = "name: demo\n", **files: str) -> Path:
    """A minimal project: the given project file plus `files` (keys: `models__a__m__sql` is models/a/m.sql)."""
    tree = {"batchflow_project.yml": project_yml}
    for key, value in files.items():
        stem, _, suffix = key.rpartition("__")
        tree[f"{stem.replace('__', '/')}.{suffix}"] = value
    return write(tmp_path, tree)


def raises_at(exc_info: pytest.ExceptionInfo, path: Path, line: int | None) -> None:
    err = exc_info.value
    assert Path(err.path) == path, err
    assert err.line == line, err


# ---------------------------------------------------------------------------------------------------
# yamlio
# ---------------------------------------------------------------------------------------------------


def test_yaml_remembers_lines_of_mappings_keys_and_lists(tmp_path: Path) -> None:
    path = write(tmp_path, {"a.yml": """\
        top: 1
        models:
          - name: x
            columns:
              - name: id

          - name: y
        """}) / "a.yml"
    data = load_yaml(path)
    assert isinstance(data, LineDict) and isinstance(data["models"], LineList)
    assert data.line == 1
    assert data.key_line("top") == 1 and data.key_line("models") == 2
    assert data["models"].line == 3
    first, second = data["models"]
    assert first.line == 3 and first.key_line("columns") == 4
    assert first["columns"][0].line == 5
    assert second.line == 7 and second.key_line("name") == 7
    assert line_of(second) == 7 and line_of(data, "models") == 2
    assert line_of("plain string") is None and line_of(data, "missing") == 1
    assert data == {"top": 1, "models": [{"name": "x", "columns": [{"name": "id"}]}, {"name": "y"}]}


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, {"bad.yml": "a: 1\nb: [1, 2\nc: 3\n"}) / "bad.yml"
    with pytest.raises(ConfigError) as exc:
        load_yaml(path)
    assert exc.value.path == str(path) and exc.value.line == 3
    assert exc.value.exit_code == 2


def test_yaml_duplicate_key_is_an_error_but_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    write(tmp_path, {"dup.yml": "a: 1\nb: 2\na: 3\n", "merge.yml": "base: &b {k: 1, j: 2}\nm:\n  <<: *b\n  k: 9\n"})
    with pytest.raises(ConfigError, match="duplicate key 'a' \\(first at line 1\\)") as exc:
        load_yaml(tmp_path / "dup.yml")
    assert exc.value.line == 3
    assert load_yaml(tmp_path / "merge.yml")["m"] == {"k": 9, "j": 2}


def test_yaml_scalars_and_empty_file(tmp_path: Path) -> None:
    write(tmp_path, {"s.yml": "i: 1\nf: 1.5\nb: true\nn: ~\ns: '1'\n", "e.yml": ""})
    assert load_yaml(tmp_path / "s.yml") == {"i": 1, "f": 1.5, "b": True, "n": None, "s": "1"}
    assert load_yaml(tmp_path / "e.yml") is None


# ---------------------------------------------------------------------------------------------------
# project file
# ---------------------------------------------------------------------------------------------------


def test_minimal_project_defaults(tmp_path: Path) -> None:
    root = project(tmp_path, models__a__m1__sql="select 1", macros__z__sql="", macros__sub__a__sql="")
    p = load_project(root)
    assert p.name == "demo" and p.profile == "demo"
    assert p.root == root.resolve() and p.project_file == root.resolve() / "batchflow_project.yml"
    assert p.target_path == root.resolve() / "target"
    assert list(p.models) == ["m1"]
    m = p.models["m1"]
    assert m.path == Path("models/a/m1.sql") and m.abs_path == root.resolve() / "models/a/m1.sql"
    assert m.fqn == ["demo", "a", "m1"] and m.raw_sql == "select 1"
    assert p.macro_files == [root.resolve() / "macros/sub/a.sql", root.resolve() / "macros/z.sql"]
    assert p.seeds == {} and p.sources == {} and p.vars == {} and p.batch_defaults == {}


def test_project_keys_paths_profile_and_batch_defaults(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        """\
        name: demo
        profile: other
        model-paths: [sql, more]
        seed-paths: data
        macro-paths: [my_macros]
        target-path: out
        batch:
          max_rows_per_job: 1000
          prices: {gemini-2.5-flash: {input_per_million: 0.15, output_per_million: 1.25}}
        """,
        sql__a__sql="select 1",
        more__b__sql="select 2",
        models__ignored__sql="select 3",
        data__s__csv="x\n1\n",
        my_macros__m__sql="",
    )
    p = load_project(root)
    assert sorted(p.models) == ["a", "b"] and list(p.seeds) == ["s"]
    assert p.profile == "other" and p.target_path == root.resolve() / "out"
    assert p.macro_files == [root.resolve() / "my_macros/m.sql"]
    prices = {"gemini-2.5-flash": {"input_per_million": 0.15, "output_per_million": 1.25}}
    assert p.batch_defaults == {"max_rows_per_job": 1000, "prices": prices}
    assert type(p.batch_defaults) is dict and type(p.batch_defaults["prices"]) is dict


def test_dbt_project_yml_is_the_fallback_and_batchflow_file_wins(tmp_path: Path) -> None:
    write(tmp_path, {"dbt_project.yml": "name: from_dbt\nversion: '1.0'\nconfig-version: 2\n"})
    p = load_project(tmp_path)
    assert p.name == "from_dbt" and p.project_file.name == "dbt_project.yml"
    write(tmp_path, {"batchflow_project.yml": "name: from_batchflow\n"})
    assert load_project(tmp_path).name == "from_batchflow"


def test_no_project_file_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batchflow_project.yml or dbt_project.yml") as exc:
        load_project(tmp_path)
    assert exc.value.path == str(tmp_path.resolve())


def test_unknown_top_level_key_is_an_error_with_line_and_suggestion(tmp_path: Path) -> None:
    root = project(tmp_path, "name: demo\nclean-targets: [target]\nmodel-path: [models]\n")
    with pytest.raises(ConfigError, match="unknown key 'model-path' in the project file.*did you mean 'model-paths'") as exc:
        load_project(root)
    raises_at(exc, root.resolve() / "batchflow_project.yml", 3)


def test_every_dbt_only_key_loads_with_a_warning_naming_it(tmp_path: Path) -> None:
    inert = ["version", "config-version", "clean-targets", "require-dbt-version", "log-path", "dbt-cloud"]
    keys = [
        "docs-paths", "asset-paths",
        "flags", "quoting", "query-comment", "tests", "data_tests",
        "sources", "analyses", "metrics", "semantic-models", "saved-queries", "exposures",
        "source-paths", "data-paths",  # dbt < 1.0 names: dbt warns, so do we
    ]
    root = project(tmp_path, "name: demo\n" + "".join(f"{k}: null\n" for k in inert + keys))
    p = load_project(root)
    assert p.name == "demo"
    assert [w.key for w in p.warnings] == keys
    assert [w.line for w in p.warnings] == list(range(2 + len(inert), 2 + len(inert) + len(keys)))
    assert all("is a dbt setting batchflow does not act on" in w.message for w in p.warnings)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("profile: x\n", 1, "needs a `name:`"),
        ("profile: x\nname: 'my-project'\n", 2, "letters, digits and underscores"),
        ("name: demo\nmodel-paths: 3\n", 2, "model-paths"),
        ("name: demo\nvars: [1]\n", 2, "`vars:` must be a mapping"),
        ("name: demo\nbatch: 5\n", 2, "`batch:` must be a mapping"),
        ("name: demo\nmodels: [1]\n", 2, "must be a mapping"),
    ],
)
def test_bad_project_values_name_the_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    root = project(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as exc:
        load_project(root)
    raises_at(exc, root.resolve() / "batchflow_project.yml", line)


def test_project_yaml_syntax_error(tmp_path: Path) -> None:
    root = project(tmp_path, "name: demo\nvars:\n  a: [1\n")
    with pytest.raises(ConfigError, match="invalid YAML") as exc:
        load_project(root)
    assert exc.value.path == str(root.resolve() / "batchflow_project.yml") and exc.value.line == 4


def test_vars_cli_override_and_project_scoped_vars(tmp_path: Path) -> None:
    root = project(tmp_path, "name: demo\nvars:\n  a: 1\n  b: 2\n  c: {x: 1}\n  demo:\n    b: 20\n")
    p = load_project(root, cli_vars={"a": 100, "new": "n"})
    assert p.vars["a"] == 100 and p.vars["b"] == 20 and p.vars["new"] == "n" and p.vars["c"] == {"x": 1}
    assert load_project(root).vars["a"] == 1


# ---------------------------------------------------------------------------------------------------
# models and hierarchical config
# ---------------------------------------------------------------------------------------------------

CONFIG_PROJECT = """\
name: demo
models:
  +tags: [all]
  +meta: {owner: data}
  demo:
    +materialized: view
    schema: base
    staging:
      +materialized: table
      +tags: staging
      stg_b:
        materialized: incremental
        tags: [special]
        +meta: {pii: true}
    marts:
      enabled: false
      docs: {show: false}
"""


def test_hierarchical_configs_deeper_wins_and_tags_accumulate(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        CONFIG_PROJECT,
        models__staging__stg_a__sql="select 1",
        models__staging__stg_b__sql="select 1",
        models__marts__fct__sql="select 1",
        models__top__sql="select 1",
    )
    p = load_project(root)
    assert p.models["top"].config == {"tags": ["all"], "meta": {"owner": "data"}, "materialized": "view", "schema": "base"}
    assert p.models["stg_a"].config["materialized"] == "table"
    assert p.models["stg_a"].config["tags"] == ["all", "staging"]
    b = p.models["stg_b"].config
    assert b["materialized"] == "incremental" and b["schema"] == "base"
    assert b["tags"] == ["all", "staging", "special"]
    assert b["meta"] == {"owner": "data", "pii": True}
    fct = p.models["fct"].config
    assert fct["enabled"] is False and fct["docs"] == {"show": False} and fct["materialized"] == "view"
    assert p.models["stg_b"].fqn == ["demo", "staging", "stg_b"]
    assert p.warnings == []


def test_model_yml_config_wins_over_project_config(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        CONFIG_PROJECT,
        models__staging__stg_b__sql="select 1",
        models__staging__schema__yml="""\
            version: 2
            models:
              - name: stg_b
                config:
                  materialized: batch
                  tags: [from_yml]
                  model: gemini-2.5-flash
            """,
    )
    config = load_project(root).models["stg_b"].config
    assert config["materialized"] == "batch" and config["model"] == "gemini-2.5-flash"
    assert config["tags"] == ["all", "staging", "special", "from_yml"]
    assert type(config) is dict


def test_unused_config_paths_are_warned_with_line(tmp_path: Path) -> None:
    root = project(tmp_path, "name: demo\nmodels:\n  demo:\n    stagng:\n      +materialized: table\n", models__staging__a__sql="")
    p = load_project(root)
    assert len(p.warnings) == 1
    assert p.warnings[0].startswith(f"{root.resolve() / 'batchflow_project.yml'}:4:")
    assert "demo.stagng" in p.warnings[0]


def test_merge_configs_semantics() -> None:
    base = {"tags": ["a"], "meta": {"x": 1}, "materialized": "view"}
    merged = merge_configs(base, {"tags": "b", "meta": {"y": 2}, "materialized": "table", "post-hook": "q"})
    assert merged == {"tags": ["a", "b"], "meta": {"x": 1, "y": 2}, "materialized": "table", "post-hook": ["q"]}
    assert base == {"tags": ["a"], "meta": {"x": 1}, "materialized": "view"}
    assert merge_configs({"tags": ["a"]}, {"tags": ["a", "b"]})["tags"] == ["a", "b"]


def test_duplicate_model_names_across_folders_name_both_files(tmp_path: Path) -> None:
    root = project(tmp_path, models__a__dup__sql="select 1", models__b__dup__sql="select 2")
    with pytest.raises(ConfigError, match="two models named 'dup'") as exc:
        load_project(root)
    assert "models/a/dup.sql" in str(exc.value) and "models/b/dup.sql" in str(exc.value)
    assert exc.value.line == 1


def test_hidden_files_are_skipped(tmp_path: Path) -> None:
    root = project(tmp_path, models__a__sql="", models__dot_hidden__x__sql="")
    (root / "models/.#a.sql").write_text("")
    (root / "models/.ipynb_checkpoints").mkdir()
    (root / "models/.ipynb_checkpoints/a.sql").write_text("")
    assert sorted(load_project(root).models) == ["a", "x"]


# ---------------------------------------------------------------------------------------------------
# yml property files
# ---------------------------------------------------------------------------------------------------

SCHEMA_YML = """\
version: 2

models:
  - name: stg_reviews
    description: Cleaned reviews.
    data_tests:
      - dbt_utils.expression_is_true:
          expression: "id > 0"
    columns:
      - name: review_id
        description: The key.
        data_type: string
        tests: [unique]
        data_tests:
          - not_null
      - name: stars
        data_tests:
          - accepted_values:
              values: [1, 2, 3, 4, 5]
"""


def test_model_docs_columns_and_tests(tmp_path: Path) -> None:
    root = project(tmp_path, models__stg_reviews__sql="select 1", models__schema__yml=SCHEMA_YML)
    m = load_project(root).models["stg_reviews"]
    assert m.description == "Cleaned reviews."
    assert m.yml_path == root.resolve() / "models/schema.yml" and m.yml_line == 4
    assert m.tests == [{"dbt_utils.expression_is_true": {"expression": "id > 0"}}]
    assert list(m.columns) == ["review_id", "stars"]
    rid = m.columns["review_id"]
    assert rid.description == "The key." and rid.data_type == "string" and rid.line == 10
    assert rid.tests == ["not_null", "unique"]  # data_tests first, then tests
    assert m.columns["stars"].tests == [{"accepted_values": {"values": [1, 2, 3, 4, 5]}}]
    assert m.columns["stars"].description == "" and m.columns["stars"].data_type is None


def test_yml_for_missing_model_suggests_closest_name(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        models__stg_reviews__sql="",
        models__docs__yml="version: 2\nmodels:\n  - name: stg_reviws\n    description: x\n",
    )
    with pytest.raises(ConfigError, match="'stg_reviws'.*did you mean 'stg_reviews'") as exc:
        load_project(root)
    raises_at(exc, root.resolve() / "models/docs.yml", 3)


def test_duplicate_model_entries_across_files(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        models__m__sql="",
        models__a__yml="models:\n  - name: m\n",
        models__b__yaml="version: 2\n\nmodels:\n  - name: m\n",
    )
    with pytest.raises(ConfigError, match="already documented at models/a.yml:2") as exc:
        load_project(root)
    raises_at(exc, root.resolve() / "models/b.yaml", 4)


@pytest.mark.parametrize(
    ("yml", "line", "message"),
    [
        ("version: 2\nmodel:\n  - name: m\n", 2, "unknown key 'model'.*did you mean 'models'"),
        ("version: 1\n", 1, "version: 2"),
        ("models:\n  name: m\n", 1, "`models:` must be a list"),
        ("models:\n  - description: no name\n", 2, "without a `name:`"),
        ("models:\n  - name: m\n    columns:\n      - name: a\n      - name: a\n", 5, "column 'a' is listed twice"),
        ("models:\n  - name: m\n    columns: {a: 1}\n", 3, "`columns:` must be a list"),
        ("models:\n  - name: m\n    config: [1]\n", 3, "`config:` must be a mapping"),
        ("models:\n  - name: m\n  bad: [\n", 3, "invalid YAML"),
        ("- 1\n", 1, "must be a mapping"),
    ],
)
def test_bad_yml_names_file_and_line(tmp_path: Path, yml: str, line: int, message: str) -> None:
    root = project(tmp_path, models__m__sql="", models__p__yml=yml)
    with pytest.raises(ConfigError, match=message) as exc:
        load_project(root)
    raises_at(exc, root.resolve() / "models/p.yml", line)


def test_ignored_yml_sections_and_empty_files(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        models__m__sql="",
        models__empty__yml="",
        models__other__yml="version: 2\nmacros:\n  - name: x\nexposures: []\nunit_tests: []\n",
    )
    assert list(load_project(root).models) == ["m"]


# ---------------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------------

SOURCES_YML = """\
version: 2
sources:
  - name: shop
    database: raw-project
    description: The shop.
    tables:
      - name: reviews
        identifier: reviews_v2
        description: Raw reviews.
        sample: samples/reviews.csv
        columns:
          - name: id
            data_tests: [not_null]
      - name: orders
        meta:
          sample: data/orders.csv
        data_tests: [dbt_utils.some_test]
  - name: crm
    schema: crm_prod
    project: other-project
    tables:
      - name: customers
"""


def test_sources_with_defaults_identifiers_and_samples(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        models__sources__yml=SOURCES_YML,
        models__samples__reviews__csv="id\n1\n",
        data__orders__csv="id\n1\n",
    )
    p = load_project(root)
    assert sorted(p.sources) == [("crm", "customers"), ("shop", "orders"), ("shop", "reviews")]
    reviews = p.sources[("shop", "reviews")]
    assert reviews.schema == "shop" and reviews.database == "raw-project"
    assert reviews.identifier == "reviews_v2" and reviews.description == "Raw reviews."
    assert reviews.sample == root.resolve() / "models/samples/reviews.csv"  # relative to the yml file
    assert reviews.yml_path == root.resolve() / "models/sources.yml" and reviews.line == 7
    assert reviews.columns["id"].tests == ["not_null"]
    orders = p.sources[("shop", "orders")]
    assert orders.identifier == "orders" and orders.sample == root.resolve() / "data/orders.csv"  # project root
    assert orders.tests == ["dbt_utils.some_test"]
    customers = p.sources[("crm", "customers")]
    assert customers.schema == "crm_prod" and customers.database == "other-project" and customers.sample is None


def test_missing_sample_names_the_line(tmp_path: Path) -> None:
    root = project(tmp_path, models__sources__yml=SOURCES_YML, models__samples__reviews__csv="id\n")
    with pytest.raises(ConfigError, match="sample file 'data/orders.csv' not found") as exc:
        load_project(root)
    raises_at(exc, root.resolve() / "models/sources.yml", 16)


def test_duplicate_source_table_names_both_places(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        models__a__yml="sources:\n  - name: s\n    tables:\n      - name: t\n",
        models__b__yml="sources:\n  - name: s\n    tables:\n      - name: u\n      - name: t\n",
    )
    with pytest.raises(ConfigError, match="s.t is already declared at models/a.yml:4") as exc:
        load_project(root)
    raises_at(exc, root.resolve() / "models/b.yml", 5)


# ---------------------------------------------------------------------------------------------------
# seeds
# ---------------------------------------------------------------------------------------------------


def test_seeds_config_and_docs(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        "name: demo\nseeds:\n  demo:\n    +schema: raw\n    lookups:\n      +column_types: {code: string}\n",
        seeds__lookups__countries__csv="code\nDE\n",
        seeds__people__csv="id\n1\n",
        seeds__props__yml="version: 2\nseeds:\n  - name: people\n    description: People.\n    config: {delimiter: ';'}\n    columns:\n      - name: id\n",
    )
    p = load_project(root)
    countries, people = p.seeds["countries"], p.seeds["people"]
    assert countries.path == Path("seeds/lookups/countries.csv") and countries.fqn == ["demo", "lookups", "countries"]
    assert countries.config == {"schema": "raw", "column_types": {"code": "string"}}
    assert people.config == {"schema": "raw", "delimiter": ";"}
    assert people.description == "People." and list(people.columns) == ["id"]
    assert people.yml_path == root.resolve() / "seeds/props.yml" and people.yml_line == 3


def test_seed_yml_for_missing_seed_and_name_clash_with_model(tmp_path: Path) -> None:
    root = project(tmp_path, seeds__people__csv="id\n", models__s__yml="seeds:\n  - name: peple\n")
    with pytest.raises(ConfigError, match="did you mean 'people'") as exc:
        load_project(root)
    raises_at(exc, root.resolve() / "models/s.yml", 2)

    clash = project(tmp_path / "clash", models__people__sql="", seeds__people__csv="id\n")
    with pytest.raises(ConfigError, match="same name as model models/people.sql") as exc:
        load_project(clash)
    assert exc.value.path == str(clash.resolve() / "seeds/people.csv")


# ---------------------------------------------------------------------------------------------------
# profiles
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def no_profile_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No BATCHFLOW_PROFILES_DIR and an empty home, so lookups only see what a test writes."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("BATCHFLOW_PROFILES_DIR", raising=False)
    monkeypatch.setenv("HOME", str(home))
    return home


def test_profiles_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_profile_env: Path) -> None:
    root = project(tmp_path / "p")
    explicit, env_dir = tmp_path / "explicit", tmp_path / "env"
    for folder, target in ((explicit, "explicit"), (env_dir, "env"), (root, "root"), (no_profile_env / ".batchflow", "home")):
        write(folder, {"profiles.yml": f"demo:\n  target: {target}\n  outputs:\n    {target}: {{type: duckdb}}\n"})
    p = load_project(root)
    monkeypatch.setenv("BATCHFLOW_PROFILES_DIR", str(env_dir))
    assert load_profile(p, explicit, None).name == "explicit"
    assert load_profile(p, None, None).name == "env"
    monkeypatch.delenv("BATCHFLOW_PROFILES_DIR")
    assert load_profile(p, None, None).name == "root"
    (root / "profiles.yml").unlink()
    home_target = load_profile(p, None, None)
    assert home_target.name == "home" and home_target.profiles_file == (no_profile_env / ".batchflow/profiles.yml").resolve()


def test_missing_profiles_says_where_it_looked(tmp_path: Path, no_profile_env: Path) -> None:
    p = load_project(project(tmp_path / "p"))
    with pytest.raises(ConfigError, match="profiles.yml not found; looked in: ") as exc:
        load_profile(p, None, None)
    assert str(p.root) in str(exc.value) and str(no_profile_env / ".batchflow") in str(exc.value)
    with pytest.raises(ConfigError, match=str(tmp_path / "nowhere")):
        load_profile(p, tmp_path / "nowhere", None)


def test_duckdb_target_defaults(tmp_path: Path, no_profile_env: Path) -> None:
    root = project(tmp_path, profiles__yml=PROFILES)
    t = load_profile(load_project(root), None, None)
    assert (t.name, t.profile, t.type, t.schema, t.database, t.threads) == ("local", "demo", "duckdb", "main", None, 4)
    assert t.batch == {"backend": "local", "provider": "mock"}
    assert t.settings == {"type": "duckdb", "path": str(root.resolve() / "target/batchflow.duckdb")}
    assert t.profiles_file == root.resolve() / "profiles.yml"


def test_bigquery_target_and_explicit_target_name(tmp_path: Path, no_profile_env: Path) -> None:
    root = project(tmp_path, profiles__yml=PROFILES)
    t = load_profile(load_project(root), None, "prod")
    assert (t.name, t.type, t.schema, t.database) == ("prod", "bigquery", "analytics", "my-proj")
    assert t.batch == {"backend": "vertex"}
    assert t.settings == {"type": "bigquery", "project": "my-proj", "dataset": "analytics"}


def test_target_fields_aliases_batch_block_and_relative_duckdb_path(tmp_path: Path, no_profile_env: Path) -> None:
    profiles = """\
    demo:
      target: dev
      outputs:
        dev:
          type: duckdb
          dataset: scratch
          path: data/dev.duckdb
          threads: 8
          batch: {provider: mock, concurrency: 8}
        bq:
          type: bigquery
          database: p2
          schema: s2
          batch: {backend: local, provider: mock}
        abs:
          type: duckdb
          path: /tmp/abs.duckdb
        mem:
          type: duckdb
          path: ":memory:"
    """
    root = project(tmp_path, profiles__yml=profiles)
    p = load_project(root)
    dev = load_profile(p, None, None)
    assert dev.schema == "scratch" and dev.threads == 8
    assert dev.batch == {"backend": "local", "provider": "mock", "concurrency": 8}
    assert dev.settings["path"] == str(root.resolve() / "data/dev.duckdb")
    assert type(dev.settings["batch"]) is dict
    bq = load_profile(p, None, "bq")
    assert (bq.schema, bq.database, bq.batch) == ("s2", "p2", {"backend": "local", "provider": "mock"})
    assert load_profile(p, None, "abs").settings["path"] == "/tmp/abs.duckdb"
    assert load_profile(p, None, "mem").settings["path"] == ":memory:"


def test_env_var_default_set_and_missing(tmp_path: Path, no_profile_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profiles = """\
    demo:
      target: "{{ env_var('BF_TARGET', 'local') }}"
      outputs:
        local:
          type: duckdb
          schema: "{{ env_var('BF_SCHEMA', 'dflt') }}"
          threads: "{{ env_var('BF_THREADS', '2') | as_number }}"
        prod:
          type: bigquery
          project: "{{ env_var('BF_PROJECT') }}"
          dataset: d
    """
    root = project(tmp_path, profiles__yml=profiles)
    p = load_project(root)
    monkeypatch.delenv("BF_SCHEMA", raising=False)
    monkeypatch.delenv("BF_PROJECT", raising=False)
    monkeypatch.delenv("BF_TARGET", raising=False)
    monkeypatch.delenv("BF_THREADS", raising=False)
    t = load_profile(p, None, None)  # BF_PROJECT is missing, but only the chosen target must be complete
    assert (t.name, t.schema, t.threads) == ("local", "dflt", 2)
    with pytest.raises(ConfigError, match="environment variable 'BF_PROJECT' is not set") as exc:
        load_profile(p, None, "prod")
    raises_at(exc, root.resolve() / "profiles.yml", 10)
    monkeypatch.setenv("BF_TARGET", "prod")
    with pytest.raises(ConfigError, match="'BF_PROJECT' is not set"):
        load_profile(p, None, None)
    monkeypatch.delenv("BF_TARGET")
    monkeypatch.setenv("BF_SCHEMA", "from_env")
    monkeypatch.setenv("BF_PROJECT", "proj-from-env")
    assert load_profile(p, None, None).schema == "from_env"
    assert load_profile(p, None, "prod").database == "proj-from-env"


def test_profile_errors_keep_line_numbers_after_rendering(tmp_path: Path, no_profile_env: Path) -> None:
    profiles = """\
    demo:
      target: local
      outputs:
        local:
          type: "{{ env_var('NOPE_UNSET_VAR', 'duckdb') }}"
          schema: x
          threads: "{{ env_var('NOPE_UNSET_VAR', 'many') }}"
    """
    root = project(tmp_path, profiles__yml=profiles)
    with pytest.raises(ConfigError, match="`threads:` must be an integer, got 'many'") as exc:
        load_profile(load_project(root), None, None)
    raises_at(exc, root.resolve() / "profiles.yml", 7)


@pytest.mark.parametrize(
    ("profiles", "target", "line", "message"),
    [
        (PROFILES, "staging", 3, "no target 'staging'.*available: local, prod"),
        (PROFILES.replace("target: local", "target: lcal"), None, 2, "no target 'lcal'; did you mean 'local'"),
        (PROFILES.replace("type: duckdb", "type: postgres"), None, 5, "must be one of duckdb, bigquery, got 'postgres'"),
        (PROFILES.replace("      dataset: analytics\n", ""), "prod", 7, "bigquery target needs `dataset:`"),
        ("demo:\n  outputs:\n    a: {type: duckdb}\n", None, 1, "no default `target:`.*one of: a"),
        ("demo:\n  target: \"{{ env_var('NO_SUCH_BF_VAR') }}\"\n  outputs: {a: {type: duckdb}}\n", None, 2, "'NO_SUCH_BF_VAR' is not set"),
        ("demo:\n  target: a\n  outputs:\n    a:\n      type: duckdb\n      extra:\n        - \"{{ env_var('NO_SUCH_BF_VAR') }}\"\n", None, 7, "'NO_SUCH_BF_VAR'"),
        ("demo:\n  target: a\n  outputs:\n    a: {type: duckdb, threads: 0}\n", None, 4, "`threads:` must be ≥ 1, got 0"),
        ("demo:\n  target: a\n  outputs:\n    a: {type: {{ oops }\n", None, 4, "Jinja syntax error"),
        ("demo:\n  target: a\n  outputs:\n    a: {type: duckdb}\n    b: {schema: '{{ target.schema }}'}\n", None, 5, "cannot render.*'target' is undefined"),
        ("demo:\n  target: a\n  outputs:\n    a: [1\n", None, 5, "invalid YAML"),
    ],
)
def test_profile_errors_name_file_line_and_choices(
    tmp_path: Path, no_profile_env: Path, profiles: str, target: str | None, line: int, message: str
) -> None:
    root = project(tmp_path, profiles__yml=profiles)
    with pytest.raises(ConfigError, match=message) as exc:
        load_profile(load_project(root), None, target)
    raises_at(exc, root.resolve() / "profiles.yml", line)


def test_unknown_profile_points_at_the_project_file(tmp_path: Path, no_profile_env: Path) -> None:
    root = project(tmp_path, "name: demo\nprofile: dmeo\n", profiles__yml=PROFILES + "other:\n  outputs: {}\n")
    with pytest.raises(ConfigError, match="profile 'dmeo' not found.*did you mean 'demo'.*available: demo, other") as exc:
        load_profile(load_project(root), None, None)
    raises_at(exc, root.resolve() / "batchflow_project.yml", 2)


# ---------------------------------------------------------------------------------------------------
# dbt-style projects
# ---------------------------------------------------------------------------------------------------


def test_dbt_style_fixture_loads(tmp_path: Path, no_profile_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/fixtures/projects/dbt_synth is the benchmark generator's output (--n 12 --sources 3)."""
    for name in ("SYNTH_DUCKDB_PATH", "SYNTH_BQ_PROJECT", "SYNTH_BQ_DATASET", "SYNTH_BQ_LOCATION"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "synth"
    shutil.copytree(FIXTURES / "dbt_synth", root)
    p = load_project(root)
    assert p.name == "synth" and p.project_file.name == "dbt_project.yml"
    assert len(p.models) == 12 and sorted(p.seeds) == ["raw_00", "raw_01", "raw_02"]
    assert sorted(p.sources) == [("raw", "raw_00"), ("raw", "raw_01"), ("raw", "raw_02")]
    assert p.sources[("raw", "raw_00")].schema == "{{ target.schema }}"  # rendered by the compiler
    assert p.sources[("raw", "raw_00")].columns["id"].tests == ["not_null"]
    assert p.vars == {"synth_multiplier": 2}
    m = p.models["m_00010"]
    assert m.fqn == ["synth", "layer_03", "m_00010"]
    assert m.config == {"materialized": "table", "tags": ["synth"]}
    assert m.description == "Synthetic model 10 in layer 3."
    assert m.columns["grp"].tests == [{"accepted_values": {"values": ["a", "b", "c", "d"]}}]
    assert p.seeds["raw_00"].config == {"column_types": {}}
    assert [f.name for f in p.macro_files] == ["synth_macros.sql"]
    assert [(w.key, w.line) for w in p.warnings] == []  # test-paths and seed column_types are applied
    dev = load_profile(p, None, None)
    assert dev.type == "duckdb" and dev.settings["path"] == str(root.resolve() / "synth.duckdb")
    bq = load_profile(p, None, "bq")
    assert (bq.database, bq.schema, bq.settings["location"]) == ("my-gcp-project", "synth", "US")


# ---------------------------------------------------------------------------------------------------
# the parsed-yml cache (target/partial_parse_yml.batchflow.pickle)
# ---------------------------------------------------------------------------------------------------


def _yml_view(p) -> dict:
    """What load_project takes from yml files, lines included."""
    nodes = {**{f"model.{n}": m for n, m in p.models.items()}, **{f"seed.{n}": s for n, s in p.seeds.items()}}
    view = {
        key: (node.config, node.description, node.yml_path, node.yml_line, getattr(node, "tests", None),
              {c: (d.description, d.data_type, d.tests, d.line) for c, d in node.columns.items()})
        for key, node in nodes.items()
    }
    view.update({
        f"source.{s}.{t}": (src.schema, src.database, src.identifier, src.line, src.description, src.tests,
                            {c: (d.description, d.tests, d.line) for c, d in src.columns.items()})
        for (s, t), src in p.sources.items()
    })
    return view


def test_yml_cache_gives_what_parsing_gives_and_follows_edits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(
        tmp_path,
        "name: demo\nmodels:\n  demo:\n    +tags: [p]\n",
        models__stg_reviews__sql="select 1",
        models__other__sql="select 2",
        models__schema__yml=SCHEMA_YML,
        models__sources__yml=SOURCES_YML,
        samples__reviews__csv="id\n1\n",
        data__orders__csv="id\n1\n",
    )
    cache_file = root.resolve() / "target" / YML_CACHE_FILE
    plain = _yml_view(load_project(root, partial_parse=False))
    assert not cache_file.exists()
    first = load_project(root)
    assert cache_file.is_file() and _yml_view(first) == plain
    stamp = cache_file.stat().st_mtime_ns
    with monkeypatch.context() as patch:
        _no_parsing(patch)
        second = load_project(root)
        assert _yml_view(second) == plain
        assert cache_file.stat().st_mtime_ns == stamp  # all hits: not rewritten
        # Cached trees are fresh objects on every load: changing one project's data leaves the next intact.
        second.models["stg_reviews"].columns["stars"].tests[0]["accepted_values"]["values"].append(6)
        assert _yml_view(load_project(root)) == plain

    # An edit is seen at once (the key is the file's bytes), with lines as parsed from the new text.
    write(root, {"models/schema.yml": "version: 2\n\nmodels:\n  - name: other\n    config: {tags: [y]}\n"})
    edited = load_project(root)
    assert _yml_view(edited) == _yml_view(load_project(root, partial_parse=False))
    assert edited.models["other"].yml_line == 4 and edited.models["other"].config["tags"] == ["p", "y"]
    assert edited.models["stg_reviews"].yml_path is None


def test_yml_cache_errors_still_name_file_and_line(tmp_path: Path) -> None:
    root = project(tmp_path, models__m__sql="", models__p__yml="models:\n  - name: m\n")
    load_project(root)
    write(root, {"models/p.yml": "models:\n  - name: m\n  - name: missing\n"})
    for _ in range(2):  # the second load parses nothing: the cached tree still knows the line
        with pytest.raises(ConfigError, match="'missing'") as exc:
            load_project(root)
        raises_at(exc, root.resolve() / "models/p.yml", 3)
    write(root, {"models/p.yml": "models:\n  - name: m\n  bad: [\n"})
    for _ in range(2):  # a file that does not parse is never stored
        with pytest.raises(ConfigError, match="invalid YAML") as exc:
            load_project(root)
        raises_at(exc, root.resolve() / "models/p.yml", 3)


def test_yml_cache_corrupt_or_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = project(tmp_path, models__m__sql="", models__p__yml="models:\n  - name: m\n    description: d\n")
    cache_file = root.resolve() / "target" / YML_CACHE_FILE
    load_project(root)
    cache_file.write_bytes(b"not a pickle")
    assert load_project(root).models["m"].description == "d"
    assert cache_file.read_bytes() != b"not a pickle"  # rewritten
    cache_file.unlink()
    monkeypatch.setenv("BATCHFLOW_PARTIAL_PARSE", "0")
    assert load_project(root).models["m"].description == "d"
    assert not cache_file.exists()


def _no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on parsing a property file fails the test (the project file is always parsed)."""
    parse = yamlio.parse_yaml

    def fail(text: str, path: Path) -> object:
        if path.name == "batchflow_project.yml":
            return parse(text, path)
        raise AssertionError(f"{path} was parsed again")

    monkeypatch.setattr(yamlio, "parse_yaml", fail)


def test_parse_cache_matches_load_yaml_including_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.yml"
    path.write_bytes(b"a: 1\nb:\n  - x\n  - {c: d}\nd: &anchor {e: 1}\nf:\n  <<: *anchor\n  g: 2\r\n")
    expected = load_yaml(path)
    cache = ParseCache(tmp_path / "cache.pickle")
    parsed = cache.load(path)  # a miss: parsed now
    cache.save()
    _no_parsing(monkeypatch)
    cached = ParseCache(tmp_path / "cache.pickle").load(path)  # a hit: from the pickle
    for data in (parsed, cached):
        assert data == expected and type(data) is LineDict and type(data["b"]) is LineList
        assert data.key_lines == expected.key_lines and data["f"].key_lines == expected["f"].key_lines
        assert data["b"].line == 3 and data["b"][1].key_line("c") == 4
