"""The mock server's options: one frozen dataclass, validated on creation."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from .faults import check_download_script, check_fault_rates, check_script
from .ratelimit import LIMITER_KINDS, LimiterKind
from .validation import DIALECTS

__all__ = [
    "DEFAULT_BATCH_CANCEL_DELAY",
    "DEFAULT_BATCH_SECONDS",
    "DEFAULT_HANG_SECONDS",
    "DEFAULT_LOG_LIMIT",
    "DEFAULT_PADDING_BYTES",
    "DEFAULT_RETRY_AFTER",
    "MAX_IMAGE_PX",
    "MAX_PADDING_BYTES",
    "MAX_PAYLOAD_MB",
    "MAX_TRAILING_BYTES",
    "MockOptions",
]

DEFAULT_BATCH_SECONDS = 2.0  # a batch's time from validating to completed (the real: up to 24 h)
DEFAULT_BATCH_CANCEL_DELAY = 0.5  # a batch's time spent cancelling (the real: up to 10 minutes)
DEFAULT_RETRY_AFTER = 1.0  # seconds, the Retry-After of a 429 that does not name one
DEFAULT_HANG_SECONDS = 3600.0  # far past any client timeout
DEFAULT_LOG_LIMIT = 10_000  # received requests kept in the stats log
MAX_PAYLOAD_MB = 256  # the largest payload_mb: noise is kept in memory
MAX_IMAGE_PX = 4096  # the largest image_px
MAX_TRAILING_BYTES = 16 * 1024 * 1024  # the most trailing_bytes
DEFAULT_PADDING_BYTES = 8 * 1024 * 1024  # whitespace of padded_json and gzip_bomb answers
MAX_PADDING_BYTES = 4 * 1024 * 1024 * 1024  # gzip_bomb compresses it about 1000:1


@dataclass(frozen=True, slots=True, kw_only=True)
class MockOptions:
    """How the mock behaves. Every option has a default that gives a plain, fast server.

    Raises ``ValueError`` on creation when an option is out of range, so a bad
    CLI flag fails before the server starts.
    """

    latency: float = 0.0  # seconds added to every generation request
    latency_jitter: float = 0.0  # up to this many more seconds, drawn per request
    revised_prompt: bool = False  # add ``revised_prompt`` to every data item
    fault_rates: Mapping[str, float] = field(default_factory=dict)  # outcome -> probability
    script: Mapping[str, Sequence[str]] = field(default_factory=dict)  # prompt or "*" -> outcomes
    seed: int | None = None  # makes fault draws and jitter reproducible
    retry_after: float = DEFAULT_RETRY_AFTER  # Retry-After of a 429 that names no wait
    hang_seconds: float = DEFAULT_HANG_SECONDS  # how long a ``hang`` outcome waits
    rpm: int | None = None  # requests allowed per minute; beyond: 429
    limiter: LimiterKind = "window"  # how rpm is enforced: sliding window or token bucket
    burst: int | None = None  # the bucket's capacity (default: one second's worth of rpm)
    require_key: str | None = field(default=None, repr=False)  # the only accepted bearer key
    moderation_words: Sequence[str] = ()  # a prompt with one of these gets moderation_blocked
    payload_mb: float | None = None  # pad images with noise to about this many MB (10**6 B)
    image_px: int | None = None  # draw every image this many pixels square, whatever its size
    log_limit: int = DEFAULT_LOG_LIMIT  # received requests kept in the stats log
    dialect: str = "pmock"  # "pmock": pmock's documented rules; "openai": the real API's
    trailing_bytes: int = 0  # junk after each image's end (PNG IEND, JPEG EOI, WebP RIFF data)
    download_script: Sequence[str] = ()  # outcomes of each image file's GETs, by attempt
    padding_bytes: int = (
        DEFAULT_PADDING_BYTES  # whitespace before the JSON of padded_json, gzip_bomb
    )
    # A hostile server: every text it writes (error message, code, type, param; revised_prompt)
    # carries the request's bearer key and terminal control sequences (see mock.responses).
    hostile: bool = False
    url_redirects: int = 0  # image URLs redirect this many times before the file
    partial_delay: float = 0.0  # seconds before each event of a streamed answer
    # The Batch API (see mock.batches): its compressed clock and what it can simulate.
    batch_seconds: float = DEFAULT_BATCH_SECONDS  # validating -> completed
    batch_expire_after_fraction: float | None = None  # expire with this fraction of rows done
    batch_fail_rows: int = 0  # the first K rows of each batch end in its error file (a 500)
    batch_cancel_delay: float = DEFAULT_BATCH_CANCEL_DELAY  # time spent cancelling

    def __post_init__(self) -> None:
        for name in (
            "latency",
            "latency_jitter",
            "retry_after",
            "hang_seconds",
            "partial_delay",
            "batch_seconds",
            "batch_cancel_delay",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        fraction = self.batch_expire_after_fraction
        if fraction is not None and not (
            isinstance(fraction, int | float)
            and not isinstance(fraction, bool)
            and 0 <= fraction <= 1
        ):
            raise ValueError(
                f"batch_expire_after_fraction must be a number from 0 to 1, not {fraction!r}"
            )
        rows = self.batch_fail_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"batch_fail_rows must be a whole number >= 0, not {rows!r}")
        if self.rpm is not None and (not isinstance(self.rpm, int) or self.rpm < 1):
            raise ValueError(f"rpm must be a whole number >= 1, not {self.rpm!r}")
        if self.limiter not in LIMITER_KINDS:
            kinds = " or ".join(LIMITER_KINDS)
            raise ValueError(f"limiter must be {kinds}, not {self.limiter!r}")
        if self.burst is not None:
            if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
                raise ValueError(f"burst must be a whole number >= 1, not {self.burst!r}")
            if self.limiter != "bucket":
                raise ValueError("burst applies to the bucket limiter only")
        if self.payload_mb is not None and not (
            isinstance(self.payload_mb, int | float) and 0 < self.payload_mb <= MAX_PAYLOAD_MB
        ):
            raise ValueError(
                f"payload_mb must be above 0 and at most {MAX_PAYLOAD_MB}, not {self.payload_mb!r}"
            )
        if self.image_px is not None and not (
            isinstance(self.image_px, int)
            and not isinstance(self.image_px, bool)
            and 1 <= self.image_px <= MAX_IMAGE_PX
        ):
            raise ValueError(
                f"image_px must be a whole number from 1 to {MAX_IMAGE_PX}, not {self.image_px!r}"
            )
        if self.dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {self.dialect!r}")
        if not (
            isinstance(self.trailing_bytes, int)
            and not isinstance(self.trailing_bytes, bool)
            and 0 <= self.trailing_bytes <= MAX_TRAILING_BYTES
        ):
            raise ValueError(
                f"trailing_bytes must be a whole number from 0 to {MAX_TRAILING_BYTES}, "
                f"not {self.trailing_bytes!r}"
            )
        object.__setattr__(self, "download_script", check_download_script(self.download_script))
        for name, top in (("padding_bytes", MAX_PADDING_BYTES), ("url_redirects", 20)):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= top):
                raise ValueError(f"{name} must be a whole number from 0 to {top}, not {value!r}")
        if self.log_limit < 0:
            raise ValueError(f"log_limit must be >= 0, not {self.log_limit!r}")
        if isinstance(self.moderation_words, str):
            raise ValueError("moderation_words must be a list of words, not one string")
        words = tuple(w.strip().lower() for w in self.moderation_words if w.strip())
        object.__setattr__(self, "moderation_words", words)
        rates = MappingProxyType(check_fault_rates(self.fault_rates))
        object.__setattr__(self, "fault_rates", rates)
        object.__setattr__(self, "script", MappingProxyType(check_script(self.script)))
