"""Before a run: what the CLI checks and prepares, none of which prints or sends.

The endpoint and key (:func:`resolve_endpoint`), the network checks
(:func:`check_network`), the retry policy (:func:`retry_policy`), the in-process
mock of ``--mock`` (:func:`endpoint`), and the ``--dry-run`` plan
(:func:`plan_run`), which names files and checks resume as the run does.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .batchapi.state import held_rows
from .capabilities import Capabilities
from .config import BASE_URL_ENV, DEFAULT_BASE_URL, MANIFEST_NAME
from .errors import UsageError
from .files import check_own_file
from .images import file_name
from .jobs import Defaults, Job, ScanResult, iter_jobs
from .network import ProxyRoutes, check_headers, ssl_context
from .resume import DoneIndex
from .retry import RetryPolicy
from .shards import Shard, manifest_paths

if TYPE_CHECKING:  # the mock (and aiohttp.web) is imported only when it is used
    from .mock import MockOptions

from .prices import Prices, shipped_prices
from .prune import stale_files

__all__ = [
    "MAX_PLAN_FILES",
    "Plan",
    "check_batch_api",
    "check_jobs_file",
    "check_network",
    "endpoint",
    "plan_run",
    "resolve_endpoint",
    "retry_policy",
]

MAX_PLAN_FILES = 50  # files a --dry-run plan lists by name
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def resolve_endpoint(
    base_url: str | None, api_key_env: str, *, mock: bool, environ: Mapping[str, str] = os.environ
) -> tuple[str, str | None]:
    """The base URL and key, from flags and environment. Raises UsageError; never shows the key."""
    url = base_url or environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"--base-url must be an http(s) URL, got {url!r}")
    if not _ENV_NAME.fullmatch(api_key_env):  # not echoed: it may be the key, pasted by mistake
        raise UsageError("--api-key-env takes the name of an environment variable, not a key")
    key = environ.get(api_key_env) or None
    if key is not None and not all(33 <= ord(ch) <= 126 for ch in key):
        # Not echoed, not even in part: the message names the variable only.
        raise UsageError(
            f"the API key in {api_key_env} contains whitespace, a control character or a "
            "non-ASCII character (a trailing newline, or a \\r from a file with Windows line "
            "endings?); an HTTP header cannot carry it. Fix the variable. Nothing was sent."
        )
    if key is None and not mock:
        raise UsageError(
            f"no API key: set {api_key_env} (or use --mock to run offline against the mock "
            "server). Nothing was sent."
        )
    return url, key


def check_network(
    headers: Iterable[tuple[str, str]],
    proxy: str | None,
    ca_bundle: Path | None,
    *,
    mock: bool,
    environ: Mapping[str, str] = os.environ,
) -> tuple[tuple[str, str], ...]:
    """Check the headers, the proxy and the CA bundle before anything is sent; return the headers.

    Raises UsageError. With ``mock``, proxy and CA variables are ignored: the
    mock is plain HTTP on loopback.
    """
    environ = {} if mock else environ
    try:
        checked = check_headers(headers)
        ProxyRoutes.resolve(proxy, environ)
        ssl_context(ca_bundle, environ)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return checked


def retry_policy(
    *, max_attempts: int, max_retry_wait: float, max_billed_retries: int
) -> RetryPolicy:
    """The retry policy of a run, from its flags."""
    return RetryPolicy(
        max_attempts=max_attempts,
        max_retry_wait=max_retry_wait,
        max_billed_retries=max_billed_retries,
    )


@contextlib.asynccontextmanager
async def endpoint(mock: MockOptions | None, base_url: str) -> AsyncIterator[str]:
    """Yield the base URL to use: a fresh in-process mock's with ``--mock``, else ``base_url``."""
    if mock is None:
        yield base_url
        return
    from .mock import MockServer

    async with MockServer(mock) as server:
        yield server.base_url


@dataclass(slots=True)
class Plan:
    """What a run would do (``--dry-run``): counts, the first files to write, stale jobs."""

    jobs_file: Path
    out_dir: Path
    jobs: int  # valid jobs in the file
    images: int
    invalid: int  # invalid lines, skipped with --skip-invalid
    done: int  # jobs a previous run finished, that the run would skip
    files: list[tuple[Path, int]] = field(default_factory=list)  # (path, line), at most a limit
    more: bool = False  # more files would be written than ``files`` lists
    stale: list[tuple[str, list[Path]]] | None = None  # with --prune: (job, its files)
    # The owed images' estimated cost, per (model, size, quality): (images, USD or None).
    costs: dict[tuple[str, str, str], tuple[int, float | None]] = field(default_factory=dict)
    batch_discount: float = 1.0
    shard: str | None = None  # "K/N": the plan is that share's only
    in_batches: int = 0  # of ``done``: jobs waiting in Batch API batches on the server

    @property
    def to_run(self) -> int:
        return self.jobs - self.done

    @property
    def cost(self) -> float:
        """The estimate over every owed image that has a price."""
        return sum(usd for _, usd in self.costs.values() if usd is not None)

    @property
    def unpriced(self) -> int:
        """Owed images the price table has no per-image price for."""
        return sum(images for images, usd in self.costs.values() if usd is None)


def plan_run(
    path: Path,
    result: ScanResult,
    out_dir: Path,
    defaults: Defaults,
    caps: Capabilities,
    *,
    shard: Shard | None = None,
    resume: bool = True,
    verify: bool = False,
    prune: bool = False,
    limit: int = MAX_PLAN_FILES,
    prices: Prices | None = None,
) -> Plan:
    """The plan of a run of ``path``, reading OUT as :func:`run_batch` would, writing nothing.

    Resume is checked as the run checks it (the same :class:`DoneIndex`), and
    files are named by :func:`file_name`. The owed images are priced from the
    price table's per-image prices (a run's records are priced from their
    ``usage``). With ``shard``, only its share is planned and counted. Raises
    OutputPathError if the manifest is a link: it is never read through.
    """
    check_own_file(out_dir, shard.manifest_name if shard else MANIFEST_NAME)
    done = DoneIndex.load_all(manifest_paths(out_dir)) if resume else DoneIndex()
    held = held_rows(out_dir) if resume else {}  # in batches on the server: paid there
    prices = prices or shipped_prices()
    plan = Plan(path, out_dir, result.jobs, result.images, len(result.invalid), 0)
    if shard is not None:  # counted below, as the share's
        plan.jobs = plan.images = plan.invalid = 0
        plan.shard = shard.label
    plan.batch_discount = prices.batch_discount
    current: set[str] = set()
    stems: set[str] = set()
    for item in iter_jobs(path, result, defaults=defaults, caps=caps):
        current.add(item.id if item.id is not None else f"#line{item.line}")
        if shard is not None and not shard.owns(item):
            continue
        if not isinstance(item, Job):
            if shard is not None:
                plan.invalid += 1
            continue
        if shard is not None:
            plan.jobs, plan.images = plan.jobs + 1, plan.images + item.request.count
        stems.update(item.stems)
        if done.is_done(item, out_dir, verify=verify):
            plan.done += 1
            continue
        if held and done.pending(item) and any(s in held for s in item.stems):
            plan.done += 1  # the run leaves it to its batch (or collects it): not owed
            plan.in_batches += 1
            continue
        kept = set()  # the images of an n > 1 job an earlier run saved: not owed
        if item.request.count > 1:
            kept = {f.path.rpartition(".")[0] for f in done.kept(item, out_dir, verify=verify)}
        _add_cost(plan, item, prices, item.request.count - len(kept))
        for stem in item.stems:
            if stem in kept:
                continue
            if len(plan.files) < limit:
                plan.files.append((out_dir / file_name(stem, item.request.format), item.line))
            else:
                plan.more = True
    if prune:
        plan.stale = stale_files(out_dir, current, keep=stems)
    return plan


def _add_cost(plan: Plan, job: Job, prices: Prices, count: int) -> None:
    """Add an owed job's ``count`` images to the plan's estimate, by model, size and quality."""
    request = job.request
    entry = prices.lookup(request.model)
    unit = entry.image_price(request.size, request.quality) if entry is not None else None
    key = (request.model, request.size or "auto", request.quality or "auto")
    images, usd = plan.costs.get(key, (0, 0.0))
    total = None if unit is None or usd is None else usd + unit * count
    plan.costs[key] = (images + count, total)


def check_jobs_file(jobs: Path) -> None:
    """The job file exists and is a file (not a folder). Raises UsageError."""
    if jobs.is_dir():
        raise UsageError(f"{jobs} is a directory; give the JSONL job file")
    if not jobs.is_file():
        raise UsageError(f"{jobs}: no such file")


def check_batch_api(*, capped: bool) -> None:
    """What a ``--batch-api`` run cannot do, refused before anything is sent (edits it sends:
    their input images are uploaded first)."""
    if capped:
        raise UsageError(
            "--max-images and --max-cost cap direct runs; with --batch-api use --batch-size"
        )
