"""Defaults as named constants, and the frozen configuration of one run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .prices import Prices
    from .shards import Shard

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_DOWNLOAD_ATTEMPTS",
    "DEFAULT_GRACE",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_BILLED_RETRIES",
    "DEFAULT_MAX_RETRY_WAIT",
    "DEFAULT_MODEL",
    "DEFAULT_TIMEOUT",
    "INITIAL_RETRY_DELAY",
    "MANIFEST_NAME",
    "MAX_DOWNLOAD_REDIRECTS",
    "MAX_RESPONSE_EXTRA_BYTES",
    "MAX_RETRY_DELAY",
    "RunConfig",
]

DEFAULT_BASE_URL = "https://ai.pmock.com/api/ai/openai/v1"
DEFAULT_MODEL = "gpt-image-2"
DEFAULT_CONCURRENCY = 4
DEFAULT_TIMEOUT = 600.0  # seconds per request: high-quality 4K generations take minutes
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds to open a connection
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_MAX_BILLED_RETRIES = 1  # new generations after a billed 200 whose image was unusable
DEFAULT_DOWNLOAD_ATTEMPTS = 4  # GETs of a 200's image URL, before the POST counts as failed
INITIAL_RETRY_DELAY = 1.0  # seconds, the first backoff ceiling
MAX_RETRY_DELAY = 60.0  # seconds, the largest backoff ceiling
DEFAULT_MAX_RETRY_WAIT = 120.0  # seconds: a longer Retry-After fails the job instead
DEFAULT_GRACE = 10.0  # seconds that jobs in flight get to finish after Ctrl-C or an abort
# Bytes of a 200's body outside its b64_json value (after decompression): the rest of the
# JSON, which is held in memory and parsed. The whole body may be the image's base64 plus this.
MAX_RESPONSE_EXTRA_BYTES = 4 * 1024 * 1024
MAX_DOWNLOAD_REDIRECTS = 3  # redirects an image URL may take, http(s) only

API_KEY_ENV = "PMOCK_API_KEY"
BASE_URL_ENV = "PMOCK_BASE_URL"

MANIFEST_NAME = "manifest.jsonl"


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything one batch run needs, resolved from flags and environment."""

    out_dir: Path
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)  # never shown in a repr or log
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    grace: float = DEFAULT_GRACE
    rpm: float | None = None  # requests per minute to pace at; None: learn it from the server
    field_case: str = "snake"  # "snake" or "camel": the spelling of the JSON body on the wire
    api_key_env: str = API_KEY_ENV  # the variable the key was read from, named in messages
    # Extra headers for API calls (not image downloads); their values may be secrets.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # The proxy for every request; wins over the environment; may hold a password.
    proxy: str | None = field(default=None, repr=False)
    ca_bundle: Path | None = None  # PEM CAs to trust instead of the system's
    trust_env: bool = True  # honour HTTP(S)_PROXY, ALL_PROXY, NO_PROXY, SSL_CERT_FILE, SSL_CERT_DIR
    prices: Prices | None = None  # the price table for cost_usd; None: the shipped one
    max_images: int | None = None  # --max-images: stop dispatching past this many billed images
    max_cost: float | None = None  # --max-cost: ... past this many USD, estimated
    save_partials: bool = False  # keep a streamed job's partial images in OUT/.partials/
    shard: Shard | None = None  # --shard K/N: only this share of the jobs, its own manifest

    @property
    def endpoint(self) -> str:
        return self.base_url.rstrip("/") + "/images/generations"

    @property
    def edits_endpoint(self) -> str:
        return self.base_url.rstrip("/") + "/images/edits"

    @property
    def manifest_path(self) -> Path:
        """``OUT/manifest.jsonl``, or a shard's ``OUT/manifest.shard-K-of-N.jsonl``."""
        return self.out_dir / (self.shard.manifest_name if self.shard else MANIFEST_NAME)

    @property
    def report_path(self) -> Path:
        """``OUT/report.html``, or a shard's ``OUT/report.shard-K-of-N.html``."""
        return self.out_dir / (self.shard.report_name if self.shard else "report.html")
