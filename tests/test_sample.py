"""`--sample N` / `--sample-fraction p` on the example project (local target, the mock provider):
the same requests every time (the smallest request hashes), the model's table holding only them, and
the next unsampled run building the whole model from what was already answered."""

from __future__ import annotations

import json
import math

import pytest

from batchflow import api

pytestmark = pytest.mark.e2e


def batch_result(cli, name: str = "review_requests") -> dict:
    return next(r for r in cli.run_results()["results"] if r["name"] == name)["batch"]


def smallest_hashes(cli, n: int) -> list[str]:
    """The n distinct request hashes a sample of n must hold: from the full request relation."""
    rows = cli.query("select distinct request_hash from reviews.review_requests__requests "
                     f"where request_hash is not null order by request_hash limit {n}")
    return [r[0] for r in rows]


def table_hashes(cli, table: str = "review_requests") -> list[str]:
    return [r[0] for r in cli.query(f"select distinct request_hash from reviews.{table} order by 1")]


def test_a_sample_is_the_same_requests_every_time_and_never_the_whole_model(cli):
    full = cli("run", "-s", "+review_requests", "--dry-run")  # builds the full request relation, sends nothing
    assert full.exit_code == 0, full.output
    expected = smallest_hashes(cli, 5)
    distinct = len(table_hashes(cli, "review_requests__requests"))

    first = cli("run", "-s", "+review_requests+", "--sample", "5")
    assert first.exit_code == 0, first.output
    b = batch_result(cli)
    assert b["sample"] == {"requests": 5, "of": distinct, "rows": 5, "fraction": None}
    assert (b["rows_sent"], b["rows_reused"]) == (5, 0)
    assert "sample: 5 of" in first.output
    assert table_hashes(cli) == expected  # the model's table holds the sample only
    # flatten models built in the same run see the sample's rows only
    labels = cli.query("select count(*) from reviews.review_labels")[0][0]
    assert labels == cli.query("select count(*) from reviews.review_requests")[0][0]
    ledger = cli.query("select mode, sample, row_count from reviews._batchflow_jobs where node = 'review_requests'")
    assert ledger == [("batch", "5", 5)]

    again = cli("run", "-s", "review_requests", "--sample", "5")
    assert again.exit_code == 0 and table_hashes(cli) == expected
    assert (batch_result(cli)["rows_sent"], batch_result(cli)["rows_reused"]) == (0, 5)

    bigger = cli("run", "-s", "review_requests", "--sample", "8")  # holds the smaller sample
    assert bigger.exit_code == 0
    assert (batch_result(cli)["rows_sent"], batch_result(cli)["rows_reused"]) == (3, 5)
    assert table_hashes(cli) == smallest_hashes(cli, 8)[:8] and set(expected) <= set(table_hashes(cli))

    whole = cli("run", "-s", "review_requests")  # unsampled: the whole model, the sample's answers reused
    assert whole.exit_code == 0
    b = batch_result(cli)
    assert b["sample"] == {} and (b["rows_sent"], b["rows_reused"]) == (distinct - 8, 8)
    assert len(table_hashes(cli)) == distinct


def test_a_sample_fraction_rounds_up(cli):
    assert cli("run", "-s", "+review_requests", "--sample-fraction", "0.1").exit_code == 0
    b = batch_result(cli)
    assert b["sample"]["requests"] == math.ceil(0.1 * b["sample"]["of"])
    assert b["sample"]["fraction"] == 0.1 and b["rows_sent"] == b["sample"]["requests"]
    assert cli.query("select distinct sample from reviews._batchflow_jobs") == [("0.1",)]


def test_show_sample_shows_the_rows_a_sampled_run_sends(cli):
    before = cli("show", "-s", "review_requests", "--sample", "4", "--output", "json")  # not built: compiled SELECT
    assert before.exit_code == 0, before.output
    unbuilt = sorted({json.loads(line)["request_hash"] for line in before.output.splitlines() if line.startswith("{")})
    assert len(unbuilt) == 4
    assert cli("run", "-s", "+review_requests", "--sample", "4").exit_code == 0
    assert table_hashes(cli) == unbuilt
    after = cli("show", "-s", "review_requests", "--sample", "4", "--output", "json")
    rows = [json.loads(line) for line in after.output.splitlines() if line.startswith("{")]
    assert rows and {r["outcome"] for r in rows} <= {"ok", "candidate_blocked"} and all(r["answer"] for r in rows
                                                                                         if r["outcome"] == "ok")
    assert len(rows) == cli.query("select count(*) from reviews.review_requests")[0][0]  # all of them, no --limit


def test_sample_flags_are_checked_before_anything_runs(cli):
    for args, message in ((["--sample", "3", "--sample-fraction", "0.5"], "give one"),
                          (["--sample-fraction", "1.5"], "at most 1"),
                          (["--sample-fraction", "0"], "over 0")):
        result = cli("run", "-s", "review_requests", *args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert cli("run", "-s", "review_requests", "--sample", "0").exit_code == 2  # typer's min=1
    shown = cli("show", "-s", "review_labels", "--sample", "3")
    assert shown.exit_code == 2 and "is a table model: use --limit" in shown.output
    with pytest.raises(Exception, match="at least 1|1 or more"):
        api.run_flags(sample=0)
