"""batchflow/settings.py: every declared setting refuses one wrong value and one misspelt name (generated from
the declarations, so a new setting is covered without a new test), the generated spec and README reference are
fresh, and BatchSettings keeps the lifecycle's attribute names."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

import pytest

from batchflow import settings
from batchflow.errors import ConfigError
from batchflow.project import SettingsChecker, settings_spec
from batchflow.yamlio import parse_yaml

README = Path(__file__).resolve().parents[1] / "README.md"
SPEC = settings.build_spec()
FIELDS = [(section_id, key, kind) for section_id, section in SPEC.items() for key, kind in section["fields"].items()]
FIELD_IDS = [f"{section_id}.{key}" for section_id, key, _ in FIELDS]
PADDING = 6  # the key sits on line PADDING + 1 of the parsed text


def _wrong_value(kind: dict[str, Any]) -> Any:
    """A value of the wrong type (or out of range) for `kind`; None when anything goes (free-form fields)."""
    t = kind["type"]
    if t == "int":
        return kind["ge"] - 1 if "ge" in kind else "lots"
    if t == "float":
        return "lots"
    if t == "bool":
        return "maybe"
    if t == "str":
        return [1, 2]
    if t == "choice":
        return "bogus_value"
    if t in ("list",):
        return 5
    if t in ("dict", "section"):
        return 5
    if t == "union":
        return {"a": 1} if all(o["type"] in ("str", "list") for o in kind["options"]) else "bogus_value"
    return None


def _misspelt(key: str, known: list[str]) -> str:
    """A misspelling of `key` whose closest known key is `key` (so the did-you-mean must name it)."""
    candidates = [key[:-1], key + "x", key[0] + key, key[:-2] + key[-1] + key[-2] if len(key) > 2 else key + "s"]
    for candidate in candidates:
        if candidate not in known and difflib.get_close_matches(candidate, known, n=1, cutoff=0.6) == [key]:
            return candidate
    raise AssertionError(f"no unambiguous misspelling of {key!r}")


def _parse(key: str, value: Any) -> Any:
    """`{key: value}` as the loader sees it: parsed YAML with the key on line PADDING + 1."""
    import yaml

    text = "\n" * PADDING + yaml.safe_dump({key: value}, default_flow_style=True, allow_unicode=True)
    return parse_yaml(text, Path("settings.yml"))


def test_every_field_is_covered() -> None:
    assert len(FIELDS) > 100
    free_form = [f"{s}.{k}" for s, k, kind in FIELDS if _wrong_value(kind) is None]
    # Only values that are free-form by nature may accept anything.
    assert all(name.endswith((".vars", ".meta", ".docs", ".keyfile_json")) or "tests" in name for name in free_form), free_form


CHECKED = [f for f in FIELDS if _wrong_value(f[2]) is not None]  # free-form values accept anything
WITH_DEFAULT = [f for f in FIELDS if not f[2]["required"]]


@pytest.mark.parametrize(("section_id", "key", "kind"), CHECKED, ids=[f"{s}.{k}" for s, k, _ in CHECKED])
def test_each_setting_refuses_a_wrong_value_at_its_line(section_id: str, key: str, kind: dict[str, Any]) -> None:
    wrong = _wrong_value(kind)
    data = _parse(key, wrong)
    with pytest.raises(ConfigError) as exc:
        SettingsChecker().section(section_id, data, "settings.yml", 1, required=False)
    assert exc.value.line == PADDING + 1, exc.value
    assert exc.value.message.startswith(f"`{key}:` ") or (
        kind["type"] == "section" and exc.value.message.endswith("must be a mapping, got int")
    ), exc.value
    assert exc.value.exit_code == 2


@pytest.mark.parametrize(("section_id", "key", "kind"), FIELDS, ids=FIELD_IDS)
def test_each_setting_misspelt_is_an_error_naming_the_right_key(section_id: str, key: str, kind: dict[str, Any]) -> None:
    section = SPEC[section_id]
    known = list(section["fields"]) + list(section["dbt"])
    wrong = _misspelt(key, known)
    data = _parse(wrong, kind["default"] if kind["default"] != "required" else None)
    with pytest.raises(ConfigError) as exc:
        SettingsChecker().section(section_id, data, "settings.yml", 1, required=False)
    assert str(exc.value) == (f"settings.yml:{PADDING + 1}: unknown key {wrong!r} in {section['name']}; "
                              f"did you mean {key!r}?")


@pytest.mark.parametrize(("section_id", "key", "kind"), WITH_DEFAULT, ids=[f"{s}.{k}" for s, k, _ in WITH_DEFAULT])
def test_each_default_is_accepted(section_id: str, key: str, kind: dict[str, Any]) -> None:
    SettingsChecker().section(section_id, _parse(key, kind["default"]), "settings.yml", 1, required=False)


def test_dbt_keys_warn_once_naming_the_key_and_inert_ones_are_silent() -> None:
    checker = SettingsChecker()
    data = parse_yaml("asset-paths: [t]\nversion: '1'\nflags: {}\n", Path("dbt_project.yml"))
    checker.section("project", data, "dbt_project.yml", 1, required=False)
    checker.section("project", data, "dbt_project.yml", 1, required=False)
    assert [(w.key, w.line) for w in checker.warnings] == [("asset-paths", 1), ("flags", 3)]
    assert str(checker.warnings[0]).startswith("dbt_project.yml:1: `asset-paths` is a dbt setting batchflow does not act on")


def test_no_key_is_both_declared_and_a_dbt_key() -> None:
    for section_id, section in SPEC.items():
        assert not set(section["fields"]) & (set(section["dbt"]) | set(section["inert"])), section_id


def test_generated_spec_is_fresh() -> None:
    assert settings.SPEC_FILE.read_text() == settings.spec_text(), "run: python -m batchflow.settings --write"
    assert settings_spec() == SPEC


def test_readme_reference_is_fresh() -> None:
    text = README.read_text()
    assert settings.readme_with_reference(text) == text, "run: python -m batchflow.settings --write"
    assert "| `max_rows_per_job` | integer (≥ 1, ≤ 200,000) | `100000` |" in text


def test_readme_check_fails_when_stale(tmp_path: Path) -> None:
    stale = README.read_text().replace("| `chunk_size` |", "| `chunk_sise` |")
    assert settings.readme_with_reference(stale) != stale


# ---- BatchSettings ---------------------------------------------------------------------------------------


def test_batch_settings_attributes_are_the_lifecycles() -> None:
    names = ["model", "key", "max_rows_per_job", "max_concurrent_jobs", "max_attempts", "invalid_rows", "retry_on",
             "fallback_model", "max_requests", "max_estimated_cost", "output_tokens", "poll_interval", "online_answers"]
    assert list(settings.BatchSettings.model_fields) == names
    from batchflow import lifecycle

    assert lifecycle.BatchSettings is settings.BatchSettings  # one declaration, used by the lifecycle


def test_batch_settings_from_config() -> None:
    s = settings.BatchSettings.from_config(
        {"materialized": "batch", "tags": ["x"], "model": "gemini-2.5-flash", "key": "id", "retry_on": ["recitation"],
         "estimated_output_tokens": 64, "poll_interval": 0.5, "max_estimated_cost": 2}, "models/m.sql")
    assert (s.model, s.key, s.retry_on, s.output_tokens, s.poll_interval) == (
        "gemini-2.5-flash", ["id"], ["RECITATION"], 64, 0.5)
    assert (s.max_rows_per_job, s.max_concurrent_jobs, s.max_attempts, s.invalid_rows) == (100_000, 4, 3, "fail")
    assert s.max_estimated_cost == 2.0 and s.max_requests is None and s.fallback_model is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "a batch model needs config(model='gemini-...')"),
        ({"max_rows_per_job": 0}, "`max_rows_per_job:` Input should be greater than or equal to 1 (got 0)"),
        ({"max_rows_per_job": 250_000}, "`max_rows_per_job:` Input should be less than or equal to 200000 (got 250000)"),
        ({"retry_on": ["RECITE"]}, "did you mean 'RECITATION'?"),
        ({"invalid_rows": "ignore"}, "`invalid_rows:` Input should be 'fail' or 'skip' (got 'ignore')"),
        ({"estimated_output_tokens": "many"}, "`estimated_output_tokens:`"),
        ({"max_concurrent_jobs": 0}, "`max_concurrent_jobs:`"),
    ],
)
def test_batch_settings_from_config_errors(config: dict[str, Any], message: str) -> None:
    if config:
        config = {"model": "m", **config}
    with pytest.raises(ConfigError) as exc:
        settings.BatchSettings.from_config(config, "models/m.sql")
    assert message in exc.value.message and exc.value.path == "models/m.sql"
