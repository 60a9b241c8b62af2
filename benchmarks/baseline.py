"""The baseline: the obvious script a user would write with the official ``openai`` SDK.

It is written as such a script is usually written, on purpose: one
``AsyncOpenAI`` client with ``max_retries=5``, an ``asyncio.Semaphore`` for the
concurrency, one task per job, ``images.generate``, ``base64.b64decode`` and a
plain file write. It has no pacing of its own; the SDK's retries (which honour
``Retry-After``) are all it does about a rate limit.

It reads the same JSONL job file as pmock-batch (JSON objects with ``id``,
``prompt`` and optionally ``size``) and writes ``OUT/<id>.png``. A job that
still raises after the SDK's retries counts as failed. At the end it prints one
line of JSON to stdout::

    {"ok": 198, "failed": 2, "wall_s": 12.3}

Usage::

    python benchmarks/baseline.py JOBS --base-url http://127.0.0.1:8080/v1 \\
        --concurrency 32 --out DIR
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import openai

MODEL = "gpt-image-2"


async def run(jobs: list[dict[str, Any]], *, base_url: str, concurrency: int, out: Path) -> int:
    """Generate every job; return how many failed."""
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "unused"), max_retries=5
    )
    semaphore = asyncio.Semaphore(concurrency)
    failed = 0

    async def one(job: dict[str, Any]) -> None:
        nonlocal failed
        async with semaphore:
            try:
                result = await client.images.generate(
                    model=MODEL, prompt=job["prompt"], size=job.get("size", "1024x1024")
                )
                assert result.data and result.data[0].b64_json
                image = base64.b64decode(result.data[0].b64_json)
                path = out / f"{job['id']}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(image)
            except Exception:  # any error left after the SDK's retries fails the job
                failed += 1

    try:
        await asyncio.gather(*(one(job) for job in jobs))
    finally:
        await client.close()
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", type=Path)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    start = time.perf_counter()
    with args.jobs.open(encoding="utf-8") as lines:
        jobs = [json.loads(line) for line in lines if line.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    failed = asyncio.run(
        run(jobs, base_url=args.base_url, concurrency=args.concurrency, out=args.out)
    )
    wall = time.perf_counter() - start
    print(json.dumps({"ok": len(jobs) - failed, "failed": failed, "wall_s": round(wall, 3)}))


if __name__ == "__main__":
    main()
