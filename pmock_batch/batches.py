"""``pmock-batch batches OUT``: the batches a run recorded for OUT, and ``--cancel``.

It reads ``OUT/batches.jsonl``, asks the server for each batch not yet
collected (the way a run reaches it: ``--base-url``/``$PMOCK_BASE_URL`` and
the key in ``$PMOCK_API_KEY``), records what changed, and prints one row a
batch: id, status, counts, created, ends by. Without a key it prints what was
last recorded. ``--cancel`` cancels those still running, after a confirmation
(``--yes`` skips it); a later run collects their partial output. ``--forget
ID`` records that the server does not know a batch (another key or URL, a
mock that stopped): a later run stops waiting for it and submits its images
again.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import click
import rich_click as rclick

from . import config as cfg
from .batchapi import STATE_NAME, BatchClient, BatchState
from .batchapi.state import Batch
from .client import ImagesClient
from .errors import APIError, UsageError
from .flags import FILE
from .lock import run_lock
from .preflight import resolve_endpoint

__all__ = ["batches"]

_WINDOW = 24 * 3600.0


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def _row(b: Batch) -> str:
    c = b.counts
    counts = f"{c.get('completed', 0)}/{c.get('total', 0)} done, {c.get('failed', 0)} failed"
    ends = "-" if not b.running else _when(b.at + _WINDOW)
    collected = ", collected" if b.collected else ", forgotten" if b.lost else ""
    return f"{b.batch_id}  {b.status}{collected}  {counts}  created {_when(b.at)}  ends by {ends}"


async def _refresh(
    state: BatchState, config: cfg.RunConfig, *, cancel: bool
) -> list[tuple[Batch, str | None]]:
    shown: list[tuple[Batch, str | None]] = []
    async with ImagesClient(config) as client:
        api = BatchClient(client, config.base_url, timeout=config.timeout)
        for batch in list(state.batches.values()):
            problem: str | None = None
            try:
                if batch.running:
                    seen: dict[str, Any] = await api.retrieve(batch.batch_id)
                    if cancel and str(seen.get("status")) not in ("cancelling", "cancelled"):
                        seen = await api.cancel(batch.batch_id)
                    await asyncio.to_thread(state.status, batch, seen)
            except APIError as exc:
                problem = str(exc)
            shown.append((batch, problem))
    return shown


@rclick.command("batches")
@rclick.argument("out", type=FILE, metavar="OUT", help="the output directory of a run")
@rclick.option("--cancel", is_flag=True, help="cancel the batches still running (default: off)")
@rclick.option("--yes", "-y", is_flag=True, help="cancel without asking (default: off)")
@rclick.option(
    "--forget",
    metavar="ID",
    multiple=True,
    help="forget a batch the server does not know; the next run submits its images again "
    "(default: none)",
)
@rclick.option(
    "--base-url",
    metavar="URL",
    default=None,
    help=f"base URL (default: ${cfg.BASE_URL_ENV} or pmock's)",
)
@rclick.option(
    "--api-key-env",
    metavar="NAME",
    default=cfg.API_KEY_ENV,
    help=f"variable with the API key (default: {cfg.API_KEY_ENV})",
)
def batches(
    out: Path,
    cancel: bool,
    yes: bool,
    forget: tuple[str, ...],
    base_url: str | None,
    api_key_env: str,
) -> int:
    """List the Batch API batches recorded for OUT; --cancel cancels those still running."""
    if not (out / STATE_NAME).is_file():
        raise UsageError(f"no {STATE_NAME} in {out}: no batches were submitted for it")
    state = BatchState.load(out)
    if forget:
        return _forget(state, out, forget)
    running = [b for b in state.batches.values() if b.running]
    question = f"Cancel {len(running)} running batch(es) on the server?"
    if cancel and running and not yes and not click.confirm(question):
        click.echo("nothing cancelled", err=True)
        cancel = False
    url, key = resolve_endpoint(base_url, api_key_env, mock=not cancel)  # listing: no key needed
    if key is None:
        click.echo(f"no API key in ${api_key_env}: as last recorded, not refreshed", err=True)
        shown: list[tuple[Batch, str | None]] = [(b, None) for b in state.batches.values()]
    else:
        config = cfg.RunConfig(out_dir=out, base_url=url, api_key=key, concurrency=1, timeout=60.0)
        shown = asyncio.run(_refresh(state, config, cancel=cancel and bool(running)))
    for batch, problem in shown:
        click.echo(_row(batch) + (f"  (not refreshed: {problem})" if problem else ""))
    if not state.batches:
        click.echo(f"no batches recorded in {out / STATE_NAME}", err=True)
    return 0


def _forget(state: BatchState, out: Path, ids: tuple[str, ...]) -> int:
    """Record each batch as lost (``--forget``); a run then submits its images again."""
    unknown = [i for i in ids if i not in state.batches]
    if unknown:
        raise UsageError(f"no batch {unknown[0]!r} in {out / STATE_NAME}; nothing was forgotten")
    with run_lock(out):  # not beside a run that may be waiting for it
        for batch_id in ids:
            state.lost(state.batches[batch_id])
            click.echo(f"forgot {batch_id}: the next run submits its images again", err=True)
    return 0
