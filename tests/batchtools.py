"""Shared by the Batch API tests against the mock: a run on the mock's fake clock."""

from __future__ import annotations

from pathlib import Path

from conftest import FakeClock

from pmock_batch.batchapi import BatchOptions
from pmock_batch.config import RunConfig
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.mock import MockServer
from pmock_batch.run import run_batch
from pmock_batch.tally import Summary

KEY = "sk-batch-mock-key"


class Crash(BaseException):
    """Stands in for kill -9: not an Exception, so nothing in the engine handles it."""


async def run_on_clock(
    path: Path, out: Path, server: MockServer, clock: FakeClock, **options: object
) -> Summary:
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    config = RunConfig(out_dir=out, base_url=server.base_url, api_key=KEY)
    opts = BatchOptions(sleep=sleep, poll_interval=0.2, clock=clock, **options)  # type: ignore[arg-type]
    return await run_batch(config, iter_jobs(path, scan(path)), batch=opts)


def batches_made(server: MockServer) -> list[list[str]]:
    return [b["custom_ids"] for b in server.stats.to_json()["batches_created"]]
