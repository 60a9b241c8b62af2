"""What a failed attempt means: one table, one row per rule of README's "Failures and resume".

Every exception the client can raise (or the disk can) goes through
:func:`pmock_batch.failures.describe`, the only status switch; this table is the
whole of "what is retried / fails / aborts". A change to a rule changes a row here.
"""

from __future__ import annotations

import errno

import pytest
from PIL import Image

from pmock_batch.config import DEFAULT_MAX_RETRY_WAIT
from pmock_batch.errors import (
    APIConnectionError,
    APITimeoutError,
    CannotConnectError,
    Decision,
    DownloadError,
    InvalidResponseError,
    OutputPathError,
    ProxyRefusedError,
    ResponseTooLargeError,
    UntrustedCertificateError,
    status_error,
)
from pmock_batch.failures import Where, abort_message, describe
from pmock_batch.retry import RetryPolicy

RETRY, FAIL, ABORT = Decision.RETRY, Decision.FAIL, Decision.ABORT


def http(status: int, code: str | None = None, **headers: str) -> BaseException:
    fixed = {k.replace("_", "-"): v for k, v in headers.items()}
    return status_error(f"status {status}", status=status, code=code, headers=fixed)


def answered(exc: BaseException) -> BaseException:
    exc.answered = True  # type: ignore[attr-defined]
    return exc


# (README section, the failure, kind, decision, billed)
TABLE = [
    # What is retried
    ("retried", http(408), "conflict", RETRY, False),
    ("retried", http(409), "conflict", RETRY, False),
    ("retried", http(429), "rate_limit", RETRY, False),
    ("retried", http(500), "server", RETRY, False),
    ("retried", http(502), "server", RETRY, False),
    ("retried", http(503), "server", RETRY, False),
    ("retried", http(504), "server", RETRY, False),
    ("retried", http(599), "server", RETRY, False),
    ("retried", APIConnectionError("reset"), "connection", RETRY, False),
    (
        "retried",
        CannotConnectError("x", host="h", port=1, reason="refused"),
        "connection",
        RETRY,
        False,
    ),
    ("retried", answered(APIConnectionError("cut after the 200")), "connection", RETRY, True),
    ("retried", APITimeoutError("slow"), "timeout", RETRY, False),
    ("retried", InvalidResponseError("not JSON"), "invalid_response", RETRY, True),
    ("retried", DownloadError("the URL answered 500", status=500), "invalid_response", RETRY, True),
    ("retried", ProxyRefusedError("bad gateway", status=502), "proxy", RETRY, False),
    ("retried", http(400, x_should_retry="true"), "bad_request", RETRY, False),
    # What fails a job
    ("fails", http(400), "bad_request", FAIL, False),
    ("fails", http(422), "bad_request", FAIL, False),
    ("fails", http(400, "moderation_blocked"), "moderation", FAIL, False),
    ("fails", http(404, "model_not_found"), "not_found", FAIL, False),
    ("fails", http(503, x_should_retry="false"), "server", FAIL, False),
    ("fails", http(429, retry_after="121"), "rate_limit", FAIL, False),  # longer than allowed
    ("fails", http(503, retry_after_ms="120500"), "server", FAIL, False),
    ("fails", ResponseTooLargeError("too large"), "invalid_response", FAIL, False),
    ("fails", OutputPathError("outside OUT"), "write", FAIL, False),
    ("fails", OSError(errno.EIO, "I/O error"), "write", FAIL, False),
    ("fails", Image.DecompressionBombError("bomb"), "invalid_response", FAIL, False),
    ("fails", MemoryError(), "memory", FAIL, False),
    ("fails", ValueError("a bug"), "internal", FAIL, False),
    # What aborts the run
    ("aborts", http(401), "auth", ABORT, False),
    ("aborts", http(403), "auth", ABORT, False),
    ("aborts", http(401, x_should_retry="true"), "auth", ABORT, False),  # never overridden
    ("aborts", http(404), "not_found", ABORT, False),
    ("aborts", http(429, "insufficient_quota"), "quota", ABORT, False),
    ("aborts", http(407), "proxy", ABORT, False),
    ("aborts", ProxyRefusedError("auth", status=407), "proxy", ABORT, False),
    ("aborts", ProxyRefusedError("forbidden", status=403), "proxy", ABORT, False),
    ("aborts", UntrustedCertificateError("self-signed"), "certificate", ABORT, False),
    ("aborts", OSError(errno.ENOSPC, "No space left on device"), "write", ABORT, False),
    ("aborts", OSError(errno.EACCES, "Permission denied"), "write", ABORT, False),
    ("aborts", OSError(errno.EROFS, "Read-only file system"), "write", ABORT, False),
]


@pytest.mark.parametrize(
    ("section", "error", "kind", "decision", "billed"),
    TABLE,
    ids=[f"{row[0]}-{row[2]}-{i}" for i, row in enumerate(TABLE)],
)
def test_what_each_failure_means(section, error, kind, decision, billed) -> None:
    failure = describe(error, RetryPolicy(max_retry_wait=DEFAULT_MAX_RETRY_WAIT))
    assert (failure.kind, failure.decision, failure.billed) == (kind, decision, billed)
    assert section == {RETRY: "retried", FAIL: "fails", ABORT: "aborts"}[failure.decision]
    assert failure.record().kind == kind


def test_the_servers_wait_is_read_once_and_capped_by_the_policy() -> None:
    error = http(429, retry_after="30")
    assert describe(error, RetryPolicy(max_retry_wait=60)).decision is RETRY
    assert describe(error, RetryPolicy(max_retry_wait=60)).wait == 30.0
    again = http(429, retry_after="30")
    failure = describe(again, RetryPolicy(max_retry_wait=10))
    assert failure.decision is FAIL
    assert failure.message == (
        "status 429 (the server asked to wait 30s, more than --max-retry-wait 10s)"
    )


def test_a_status_failure_keeps_the_servers_words_for_the_manifest() -> None:
    error = status_error("Unknown parameter: 'x'.", status=400, code="unknown_parameter", param="x")
    record = describe(error).record()
    assert (record.kind, record.status, record.code, record.param, record.message) == (
        "bad_request",
        400,
        "unknown_parameter",
        "x",
        "Unknown parameter: 'x'.",
    )


WHERE = Where(endpoint="http://h/v1/images/generations", out_dir="out", api_key_env="MY_KEY")


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (http(401), "the server refused the API key (HTTP 401: status 401); check MY_KEY"),
        (
            http(404),
            "http://h/v1/images/generations was not found (HTTP 404: status 404); "
            "check --base-url or PMOCK_BASE_URL",
        ),
        (
            http(429, "insufficient_quota"),
            "the account has no quota left (HTTP 429: status 429); check its plan and billing",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device"),
            "cannot write to the output directory out: No space left on device; "
            "free some disk space or fix its permissions",
        ),
    ],
)
def test_an_abort_says_what_to_check(error: BaseException, message: str) -> None:
    assert abort_message(describe(error), WHERE) == message
