"""The spending cap: --max-images and --max-cost stop dispatching, exit 5; the next run goes on."""

from __future__ import annotations

import json

import pytest
from helpers import read_manifest, run_cli, write_jobs

from pmock_batch.budget import Budget
from pmock_batch.mock import MockOptions

KEY = "sk-budget-test-key-0123456789"


def test_a_budget_reserves_what_is_in_flight_and_counts_what_was_billed() -> None:
    budget = Budget(max_images=2)
    assert budget.reserve(None) and budget.reserve(None)
    assert not budget.reserve(None)  # two in flight: the cap
    budget.settle(None, billed=False, cost=None)  # a 500: nothing spent, room again
    assert budget.reserve(None)
    budget.settle(None, billed=True, cost=None)
    budget.settle(None, billed=True, cost=None)
    assert (budget.images, budget.reserve(None)) == (2, False)
    assert budget.reached() == "budget reached: 2 of 2 images spent"
    dollars = Budget(max_cost=0.10)
    assert dollars.reserve(0.053) and not dollars.reserve(0.053)  # 0.106 > 0.10
    dollars.settle(0.053, billed=True, cost=0.05)  # the usage said a little less
    assert dollars.reserve(0.05) and dollars.cost == pytest.approx(0.05)
    assert dollars.reached() == "budget reached: $0.050 of $0.100 spent, 1 in flight"


async def test_max_images_stops_at_exactly_that_many_then_a_rerun_goes_on(
    tmp_path, capsys, make_mock, monkeypatch
):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    lines = [{"id": f"j{i:02d}", "prompt": f"p{i}"} for i in range(20)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), "--concurrency", "4"]
    first = await run_cli([*argv, "--max-images", "5", "--json"], capsys)
    assert first.code == 5, first.err
    assert server.stats.requests == 5
    assert len(list(out.glob("j*.png"))) == 5
    records = read_manifest(out)
    left = [r for r in records if r["status"] == "not_run"]
    assert len(left) == 15 and {r["error"]["kind"] for r in left} == {"budget"}
    assert "budget reached: 5 of 5 images spent; 15 job(s) left for the next run" in first.err
    assert json.loads(first.out)["budget"] == "budget reached: 5 of 5 images spent"
    rest = await run_cli(argv, capsys)
    assert rest.code == 0, rest.err
    assert server.stats.requests == 20  # the other 15, and nothing twice
    assert {r["status"] for r in read_manifest(out)} == {"ok"}


async def test_max_cost_counts_usage_and_stops_before_overspending(
    tmp_path, capsys, make_mock, monkeypatch
):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    lines = [{"id": f"j{i:02d}", "prompt": f"p{i}", "quality": "medium"} for i in range(10)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", lines)
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), "--concurrency", "1"]
    result = await run_cli([*argv, "--max-cost", "0.2", "--json"], capsys)
    assert result.code == 5, result.err
    spent = json.loads(result.out)["cost_usd"]
    assert spent <= 0.2 and server.stats.requests == 3  # about $0.053 each: a 4th would pass
    assert "budget reached: $0.1" in result.err


async def test_a_cap_with_the_batch_api_is_a_usage_error(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a"}])
    result = await run_cli([str(jobs), "--mock", "--batch-api", "--max-images", "3"], capsys)
    assert result.code == 2
    assert "--max-images and --max-cost cap direct runs" in result.err


def test_a_cap_below_one_image_says_so() -> None:
    budget = Budget(max_cost=0.01)
    assert not budget.reserve(0.053)
    assert budget.reached() == (
        "budget reached: $0.00 of $0.010 spent (one image costs about $0.053: raise --max-cost)"
    )
    fits = Budget(max_cost=0.1)
    assert fits.reserve(0.053) and not fits.reserve(0.053)
    assert "raise --max-cost" not in fits.reached()  # the next run goes on


def test_the_cap_says_what_of_the_spend_may_not_have_been_billed() -> None:
    budget = Budget(max_cost=0.1)
    assert budget.reserve(0.053)
    budget.settle(0.053, billed=True, cost=None, maybe=True)  # a timeout: maybe made
    assert not budget.reserve(0.053)
    assert budget.reached() == (
        "budget reached: $0.053 of $0.100 spent ($0.053 of it for timeouts that may have "
        "been billed)"
    )
