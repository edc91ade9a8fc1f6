"""`batchflow ls` answers every selector of tests/tools/dbt_selectors.py with the names `dbt ls` (dbt-core 1.11)
gave on jaffle-shop (tests/fixtures/dbt/jaffle_shop_selectors.json; `python tests/tools/dbt_selectors.py
--write ...` records it again live)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from batchflow import api
from tests.tools.dbt_figures import batchflow_copy
from tests.tools.dbt_selectors import RESOURCE_TYPES, SELECTORS, STATE_SELECTORS, VARS, key, modify_project

FIXTURE = Path(__file__).parent / "fixtures" / "dbt" / "jaffle_shop_selectors.json"


@pytest.fixture(scope="module")
def jaffle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("jaffle")
    return batchflow_copy(tmp)


def _ls(session: api.Session, selection: tuple[list[str], list[str]], state: Path | None = None) -> list[str]:
    chosen = api.select_ids(session, selection[0], selection[1], state=state)
    nodes = api.selection(session).ordered(chosen)
    return sorted(n.selector for n in nodes if n.resource_type in RESOURCE_TYPES)


def test_every_selector_lists_what_dbt_lists(jaffle: Path, tmp_path: Path) -> None:
    expected = json.loads(FIXTURE.read_text())["selections"]
    assert set(expected) == {key(s) for s in SELECTORS}
    session = api.load(jaffle, vars=VARS)
    wrong = {key(s): (_ls(session, s), expected[key(s)]) for s in SELECTORS
             if s not in STATE_SELECTORS and _ls(session, s) != expected[key(s)]}
    assert not wrong, json.dumps(wrong, indent=1)
    # state: this tool's own state (a compile's manifest.json) against the edited project, as dbt did
    api.compile_project(jaffle, vars=VARS)
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(jaffle / "target" / "manifest.json", state / "manifest.json")
    modify_project(jaffle)
    edited = api.load(jaffle, vars=VARS)
    wrong = {key(s): (_ls(edited, s, state), expected[key(s)]) for s in STATE_SELECTORS
             if _ls(edited, s, state) != expected[key(s)]}
    assert not wrong, json.dumps(wrong, indent=1)
