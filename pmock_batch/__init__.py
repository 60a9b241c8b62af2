"""pmock-batch: JSONL prompts in, verified images and a manifest out.

The data flows one way: :mod:`~pmock_batch.jobs` (JSONL -> validated jobs),
:mod:`~pmock_batch.pool` (a bounded worker pool feeding
:mod:`~pmock_batch.attempt`, over :mod:`~pmock_batch.client`, retried by
:mod:`~pmock_batch.retry`), and
:mod:`~pmock_batch.images` plus :mod:`~pmock_batch.manifest` (images and
records on disk). :mod:`~pmock_batch.cli` is the only module that prints.
"""

from __future__ import annotations

from .config import RunConfig
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    IncompleteStreamError,
    InvalidResponseError,
    OutputPathError,
    PmockBatchError,
    ProxyRefusedError,
    UntrustedCertificateError,
    UsageError,
)
from .jobs import Defaults, InvalidLine, Job, ScanResult, iter_jobs, scan
from .models import ImageRequest, ImagesResponse, JobRecord
from .run import Run, RunObserver, run_batch
from .tally import Summary
from .version import __version__

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "Defaults",
    "ImageRequest",
    "ImagesResponse",
    "IncompleteStreamError",
    "InvalidLine",
    "InvalidResponseError",
    "Job",
    "JobRecord",
    "OutputPathError",
    "PmockBatchError",
    "ProxyRefusedError",
    "Run",
    "RunConfig",
    "RunObserver",
    "ScanResult",
    "Summary",
    "UntrustedCertificateError",
    "UsageError",
    "__version__",
    "iter_jobs",
    "run_batch",
    "scan",
]
