"""Shared helpers for the end-to-end tests: run the CLI, read outputs back."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pmock_batch.attempt import commit
from pmock_batch.cli import main
from pmock_batch.config import RunConfig
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.retry import RetryPolicy
from pmock_batch.run import run_batch
from pmock_batch.tally import Summary

FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}

# A key or an endpoint from the machine: every test that needs one sets its own.
CREDENTIAL_ENV = ("PMOCK_API_KEY", "PMOCK_BASE_URL", "OPENAI_API_KEY")
# Variables that would route the client's loopback traffic elsewhere, or change what it trusts.
NETWORK_ENV = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)


def isolate_env(mp: pytest.MonkeyPatch) -> None:
    """Unset every variable in :data:`CREDENTIAL_ENV` and :data:`NETWORK_ENV`, in either case."""
    for name in CREDENTIAL_ENV + NETWORK_ENV:
        mp.delenv(name, raising=False)
        mp.delenv(name.upper(), raising=False)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


async def run_cli(argv: Sequence[str], capsys: Any) -> CliResult:
    """Run ``pmock-batch`` in-process, in a thread, so this test's loop keeps serving the mock."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return CliResult(code=code, out=captured.out, err=captured.err)


def write_jobs(path: Path, lines: Sequence[Any]) -> Path:
    """Write a job file: dicts and non-raw strings become JSON; ``RAW:`` strings go as they are."""
    text = []
    for line in lines:
        if isinstance(line, str) and line.startswith("RAW:"):
            text.append(line[4:])
        else:
            text.append(json.dumps(line))
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def read_manifest(out: Path) -> list[dict[str, Any]]:
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def by_id(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in records}


class Clock:
    """A fake clock whose sleep moves time forward instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        """Virtual time: yield first, so sleepers that start together end together."""
        self.sleeps.append(seconds)
        target = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, target)


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image file (so a truncated file fails here)."""
    img = Image.open(io.BytesIO(path.read_bytes()))
    img.load()
    return img


RUN_KEY = "sk-resume-test-key"  # the key run_jobs_file's runs send


async def _no_sleep(_: float) -> None:
    return None


async def run_jobs_file(
    tmp_path: Path,
    base_url: str,
    *,
    writer: Any = commit,
    resume: bool = True,
    verify: bool = False,
) -> Summary:
    """``tmp_path/jobs.jsonl`` run into ``tmp_path/out`` (concurrency 2, no real backoff)."""
    path = tmp_path / "jobs.jsonl"
    config = RunConfig(out_dir=tmp_path / "out", base_url=base_url, api_key=RUN_KEY, concurrency=2)
    return await run_batch(
        config,
        iter_jobs(path, scan(path)),
        policy=RetryPolicy(sleep=_no_sleep),
        resume=resume,
        verify=verify,
        writer=writer,
    )


def numbered_lines(n: int) -> list[dict[str, str]]:
    """``n`` job lines with ids ``j0``, ``j1``, ...: ``{"id": "j0", "prompt": "prompt 0"}``."""
    return [{"id": f"j{i}", "prompt": f"prompt {i}"} for i in range(n)]


class FakeSleep:
    """An injected sleep: records the waits asked for, and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def subprocess_env(*, key: bool = True) -> dict[str, str]:
    """The environment of a ``python -m pmock_batch`` child: this checkout on its path, no
    base URL from the machine (a test names its mock), and the key only if ``key``."""
    drop = ("PMOCK_BASE_URL",) if key else ("PMOCK_BASE_URL", "PMOCK_API_KEY")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return env
