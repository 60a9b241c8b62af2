"""The retry policy, table-style: classify, the server's wait, backoff, and tenacity end to end.

No test sleeps: :class:`RetryPolicy` takes the sleep as a parameter, and the
tests pass one that only records how long it was asked to wait.
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from pmock_batch.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    Decision,
    DownloadError,
    InvalidResponseError,
    OutputPathError,
    ResponseTooLargeError,
)
from pmock_batch.errors import status_error as make_status_error
from pmock_batch.failures import describe, server_wait
from pmock_batch.retry import RetryPolicy, backoff, download_retryable

RETRY, FAIL, ABORT = Decision.RETRY, Decision.FAIL, Decision.ABORT


def status_error(
    status: int, *, code: str | None = None, headers: dict[str, str] | None = None
) -> APIStatusError:
    return make_status_error(f"status {status}", status=status, code=code, headers=headers)


class MaxRandom(random.Random):
    """A Random whose ``uniform`` always returns its upper bound: the backoff ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


class MinRandom(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


class SleepRecorder:
    """An async sleep that returns at once and records every wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


# --- classify -----------------------------------------------------------------------------

STATUS_ROWS = [
    (400, None, FAIL),
    (400, "moderation_blocked", FAIL),
    (401, None, ABORT),
    (403, None, ABORT),
    (404, None, ABORT),
    (408, None, RETRY),
    (409, None, RETRY),
    (413, None, FAIL),
    (422, None, FAIL),
    (429, None, RETRY),
    (429, "rate_limit_exceeded", RETRY),
    (429, "insufficient_quota", ABORT),
    (500, None, RETRY),
    (501, None, RETRY),
    (502, None, RETRY),
    (503, None, RETRY),
    (504, None, RETRY),
    (520, None, RETRY),
]


@pytest.mark.parametrize(("status", "code", "expected"), STATUS_ROWS)
def test_classify_status(status: int, code: str | None, expected: Decision) -> None:
    assert describe(status_error(status, code=code)).decision is expected


SHOULD_RETRY_ROWS = [
    # the header overrides the status ...
    (400, None, "true", RETRY),
    (422, None, "true", RETRY),
    (400, "moderation_blocked", "true", RETRY),
    (500, None, "false", FAIL),
    (503, None, "false", FAIL),
    (429, None, "false", FAIL),
    (408, None, "false", FAIL),
    (500, None, " FALSE ", FAIL),  # trimmed, any case
    (400, None, "True", RETRY),
    (500, None, "maybe", RETRY),  # an unknown value is ignored
    (400, None, "", FAIL),
    # ... but never an abort
    (401, None, "true", ABORT),
    (403, None, "true", ABORT),
    (404, None, "true", ABORT),
    (429, "insufficient_quota", "true", ABORT),
    (401, None, "false", ABORT),
    (429, "insufficient_quota", "false", ABORT),
]


@pytest.mark.parametrize(("status", "code", "header", "expected"), SHOULD_RETRY_ROWS)
def test_classify_x_should_retry(
    status: int, code: str | None, header: str, expected: Decision
) -> None:
    error = status_error(status, code=code, headers={"x-should-retry": header})
    assert describe(error).decision is expected


@pytest.mark.parametrize(
    ("status", "header", "expected"), [(500, "false", FAIL), (400, "true", RETRY)]
)
def test_classify_x_should_retry_header_name_is_case_insensitive(
    status: int, header: str, expected: Decision
) -> None:
    error = status_error(status, headers={"X-Should-Retry": header})
    assert describe(error).decision is expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (APIConnectionError("connection reset"), RETRY),
        (APIConnectionError("body cut off mid-transfer"), RETRY),
        (APITimeoutError("timed out"), RETRY),
        (InvalidResponseError("200 without data"), RETRY),
        (OutputPathError("outside OUT"), FAIL),
        (ValueError("boom"), FAIL),
        (RuntimeError("boom"), FAIL),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_classify_exception_types(error: BaseException, expected: Decision) -> None:
    assert describe(error).decision is expected


@pytest.mark.parametrize(
    "error",
    [OSError(errno.ENOSPC, "No space left on device"), PermissionError(errno.EACCES, "denied")],
    ids=["ENOSPC", "EACCES"],
)
def test_classify_disk_full_and_permission_errors_abort(error: OSError) -> None:
    assert describe(error).decision is ABORT


# --- server_wait --------------------------------------------------------------------------

NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()

SERVER_WAIT_ROWS: list[tuple[dict[str, str], float | None]] = [
    ({}, None),
    ({"retry-after-ms": "1500"}, 1.5),
    ({"Retry-After-Ms": "250"}, 0.25),
    ({"retry-after-ms": "0"}, 0.0),
    ({"retry-after-ms": "-40"}, 0.0),
    ({"Retry-After": "3"}, 3.0),
    ({"retry-after": "2.5"}, 2.5),
    ({"RETRY-AFTER": "0"}, 0.0),
    ({"Retry-After": "-5"}, 0.0),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}, 30.0),
    ({"Retry-After": "Wednesday, 21-Oct-15 07:30:00 GMT"}, 120.0),  # RFC 850 form
    ({"Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT"}, 0.0),  # in the past
    ({"Retry-After": "soon"}, None),
    ({"Retry-After": ""}, None),
    ({"retry-after-ms": "abc"}, None),
    # precedence: -ms first; a broken -ms falls back to Retry-After
    ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
    ({"Retry-After": "9", "retry-after-ms": "250"}, 0.25),
    ({"retry-after-ms": "abc", "Retry-After": "4"}, 4.0),
    ({"retry-after-ms": "100", "Retry-After": "Wed, 21 Oct 2015 07:29:00 GMT"}, 0.1),
]


@pytest.mark.parametrize(("headers", "expected"), SERVER_WAIT_ROWS)
def test_server_wait(headers: dict[str, str], expected: float | None) -> None:
    assert server_wait(headers, now=NOW) == expected


def test_server_wait_http_date_uses_the_clock_by_default() -> None:
    later = datetime.fromtimestamp(time.time() + 3600, tz=UTC)
    header = later.strftime("%a, %d %b %Y %H:%M:%S GMT")
    wait = server_wait({"Retry-After": header})
    assert wait is not None and 3590 < wait <= 3600


@pytest.fixture
def local_time_utc_plus_3(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run the test with the process's local time zone three hours east of UTC."""
    monkeypatch.setenv("TZ", "XYZ-3")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_time_utc_plus_3")
@pytest.mark.parametrize(
    "header",
    ["Wed Oct 21 07:28:30 2015", "Wed, 21 Oct 2015 07:28:30 -0000"],
    ids=["asctime", "-0000"],
)
def test_server_wait_zoneless_http_date_is_gmt(header: str) -> None:
    assert server_wait({"Retry-After": header}, now=NOW) == 30.0


def test_local_time_zone_does_not_affect_a_gmt_date(local_time_utc_plus_3: None) -> None:
    assert server_wait({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}, now=NOW) == 30.0


# --- backoff ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (8, 60.0), (50, 60.0)],
)
def test_backoff_ceiling_doubles_up_to_the_cap(attempt: int, ceiling: float) -> None:
    assert backoff(attempt, rng=MaxRandom()) == ceiling
    assert backoff(attempt, rng=MinRandom()) == 0.0


@pytest.mark.parametrize(
    ("attempt", "initial", "cap", "ceiling"),
    [(1, 0.5, 8.0, 0.5), (4, 0.5, 8.0, 4.0), (5, 0.5, 8.0, 8.0), (9, 0.5, 8.0, 8.0), (3, 0, 9, 0)],
)
def test_backoff_initial_and_cap(attempt: int, initial: float, cap: float, ceiling: float) -> None:
    assert backoff(attempt, rng=MaxRandom(), initial=initial, cap=cap) == ceiling


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 8])
def test_backoff_is_full_jitter_from_a_seeded_rng(attempt: int) -> None:
    ceiling = min(60.0, 2.0 ** (attempt - 1))
    expected = random.Random(7).uniform(0.0, ceiling)
    assert backoff(attempt, rng=random.Random(7)) == expected

    rng = random.Random(1234)
    samples = [backoff(attempt, rng=rng) for _ in range(2000)]
    assert all(0.0 <= s <= ceiling for s in samples)
    # full jitter: the whole range [0, ceiling] is used, not just its upper half
    assert min(samples) < 0.01 * ceiling
    assert max(samples) > 0.99 * ceiling


# --- RetryPolicy.wait_too_long and wait_for -----------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (status_error(429, headers={"Retry-After": "121"}), 121.0),
        (status_error(503, headers={"retry-after-ms": "120500"}), 120.5),
        (status_error(429, headers={"Retry-After": "120"}), None),  # equal to the cap: fine
        (status_error(429, headers={"Retry-After": "5"}), None),
        (status_error(429), None),
        (status_error(429, headers={"Retry-After": "garbage"}), None),
        (APIConnectionError("reset"), None),
    ],
)
def test_wait_too_long(error: BaseException, expected: float | None) -> None:
    assert wait_too_long(RetryPolicy(max_retry_wait=120.0), error) == expected


def wait_too_long(policy: RetryPolicy, error: BaseException) -> float | None:
    """The wait the server asked for, when it made the job fail rather than wait."""
    failure = describe(error, policy)
    too_long = failure.decision is FAIL and "more than --max-retry-wait" in failure.message
    return failure.wait if too_long else None


def test_wait_too_long_uses_the_configured_cap() -> None:
    error = status_error(429, headers={"Retry-After": "30"})
    assert wait_too_long(RetryPolicy(max_retry_wait=10.0), error) == 30.0
    assert (
        wait_too_long(
            RetryPolicy(max_retry_wait=30.0),
            make_status_error("x", status=429, headers={"Retry-After": "30"}),
        )
        is None
    )


@pytest.mark.parametrize(
    ("error", "attempt", "expected"),
    [
        (status_error(429, headers={"Retry-After": "7"}), 1, 7.0),
        (status_error(429, headers={"retry-after-ms": "40"}), 3, 0.04),
        (status_error(500), 3, 4.0),  # no header: the backoff ceiling (MaxRandom)
        (APITimeoutError("slow"), 2, 2.0),
    ],
)
def test_wait_for(error: BaseException, attempt: int, expected: float) -> None:
    policy = RetryPolicy(rng=MaxRandom(), initial=1.0, cap=60.0)
    assert policy.wait_for(describe(error), attempt) == expected


# --- RetryPolicy.retrying, driven end to end ----------------------------------------------


async def drive(policy: RetryPolicy, outcomes: Sequence[Any]) -> tuple[Any, int]:
    """Run one image's attempts; attempt k raises or returns ``outcomes[k-1]``."""
    calls = 0
    result: Any = None
    async for attempt in policy.retrying():
        with attempt:
            calls += 1
            outcome = outcomes[calls - 1]
            if isinstance(outcome, BaseException):
                raise outcome
            result = outcome
    return result, calls


def policy_with(sleep: SleepRecorder, **kwargs: Any) -> RetryPolicy:
    kwargs.setdefault("rng", MaxRandom())
    return RetryPolicy(sleep=sleep, initial=1.0, cap=60.0, **kwargs)


@pytest.mark.parametrize("failures", [0, 1, 2, 3, 5])
async def test_fails_n_times_then_succeeds(failures: int) -> None:
    sleep = SleepRecorder()
    outcomes = [status_error(500) for _ in range(failures)] + ["ok"]
    result, calls = await drive(policy_with(sleep, max_attempts=6), outcomes)
    assert (result, calls) == ("ok", failures + 1)
    assert sleep.waits == [2.0 ** (k - 1) for k in range(1, failures + 1)]


@pytest.mark.parametrize(
    "error",
    [
        status_error(429),
        status_error(408),
        APIConnectionError("dropped"),
        APITimeoutError("timed out"),
        InvalidResponseError("no data"),
    ],
    ids=["429", "408", "connection", "timeout", "invalid_response"],
)
async def test_every_retryable_kind_is_retried(error: BaseException) -> None:
    sleep = SleepRecorder()
    result, calls = await drive(policy_with(sleep), [error, "ok"])
    assert (result, calls, sleep.waits) == ("ok", 2, [1.0])


@pytest.mark.parametrize("max_attempts", [1, 3, 6])
async def test_stops_after_max_attempts_and_reraises_the_last_error(max_attempts: int) -> None:
    sleep = SleepRecorder()
    errors = [status_error(503) for _ in range(max_attempts + 2)]
    with pytest.raises(APIStatusError) as caught:
        await drive(policy_with(sleep, max_attempts=max_attempts), errors)
    assert caught.value is errors[max_attempts - 1]
    assert len(sleep.waits) == max_attempts - 1


async def test_waits_are_capped() -> None:
    sleep = SleepRecorder()
    policy = RetryPolicy(sleep=sleep, rng=MaxRandom(), initial=1.0, cap=5.0, max_attempts=7)
    result, _ = await drive(policy, [APIConnectionError("x")] * 6 + ["ok"])
    assert result == "ok"
    assert sleep.waits == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


async def test_seeded_jitter_is_reproducible() -> None:
    runs = []
    for _ in range(2):
        sleep = SleepRecorder()
        policy = RetryPolicy(sleep=sleep, rng=random.Random(42), max_attempts=5)
        await drive(policy, [status_error(500)] * 4 + ["ok"])
        runs.append(sleep.waits)
    assert runs[0] == runs[1]
    assert all(0.0 <= w <= 2.0**k for k, w in enumerate(runs[0]))


@pytest.mark.parametrize(
    "error",
    [
        status_error(400),
        status_error(422),
        status_error(400, code="moderation_blocked"),
        status_error(500, headers={"x-should-retry": "false"}),
        status_error(401),
        status_error(403),
        status_error(404),
        status_error(429, code="insufficient_quota"),
        ValueError("not an API error"),
    ],
    ids=["400", "422", "moderation", "500-should-not", "401", "403", "404", "quota", "ValueError"],
)
async def test_fail_and_abort_decisions_are_not_retried(error: BaseException) -> None:
    sleep = SleepRecorder()
    with pytest.raises(type(error)) as caught:
        await drive(policy_with(sleep), [error, "ok"])
    assert caught.value is error
    assert sleep.waits == []


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "Retry-After": "7"}, 0.25),
        ({"Retry-After": "120"}, 120.0),
        ({"Retry-After": "0"}, 0.0),
    ],
)
async def test_retry_after_is_the_wait(headers: dict[str, str], wait: float) -> None:
    sleep = SleepRecorder()
    result, calls = await drive(policy_with(sleep), [status_error(429, headers=headers), "ok"])
    assert (result, calls, sleep.waits) == ("ok", 2, [wait])


async def test_retry_after_longer_than_the_cap_is_not_retried() -> None:
    sleep = SleepRecorder()
    error = status_error(429, headers={"Retry-After": "121"})
    policy = policy_with(sleep, max_retry_wait=120.0)
    with pytest.raises(APIStatusError) as caught:
        await drive(policy, [error, "ok"])
    assert caught.value is error
    assert sleep.waits == []
    assert wait_too_long(policy, caught.value) == 121.0


async def test_mixed_failures_use_each_errors_own_wait() -> None:
    sleep = SleepRecorder()
    outcomes = [
        status_error(503),
        status_error(429, headers={"Retry-After": "3"}),
        APITimeoutError("slow"),
        "ok",
    ]
    result, calls = await drive(policy_with(sleep), outcomes)
    assert (result, calls) == ("ok", 4)
    assert sleep.waits == [1.0, 3.0, 4.0]


async def test_a_fresh_controller_per_image() -> None:
    sleep = SleepRecorder()
    policy = policy_with(sleep, max_attempts=2)
    assert await drive(policy, [status_error(500), "a"]) == ("a", 2)
    assert await drive(policy, [status_error(500), "b"]) == ("b", 2)
    assert sleep.waits == [1.0, 1.0]


async def test_before_sleep_is_told_about_each_retry() -> None:
    sleep = SleepRecorder()
    seen: list[tuple[int, float]] = []

    def on_retry(failure: Any, attempt: int, wait: float) -> None:
        seen.append((attempt, wait))
        assert failure.status == 502

    policy = policy_with(sleep)
    calls = 0
    async for attempt in policy.retrying(on_retry=on_retry):
        with attempt:
            calls += 1
            if calls < 3:
                raise status_error(502)
    assert seen == [(1, 1.0), (2, 2.0)]
    assert sleep.waits == [1.0, 2.0]


def test_a_404_model_not_found_fails_only_that_job() -> None:
    exc = make_status_error("The model 'x' does not exist", status=404, code="model_not_found")
    assert describe(exc).decision is Decision.FAIL
    assert describe(make_status_error("Not Found", status=404)).decision is Decision.ABORT


# --- billed failures: a 2xx whose image was unusable -----------------------------------------


def cut_after_200(kind: type[APIConnectionError] = APIConnectionError) -> APIConnectionError:
    """A connection cut (or timeout) after a 2xx body had started: marked answered."""
    exc = kind("the answer was cut off mid-transfer")
    exc.answered = True
    return exc


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (InvalidResponseError("the PNG image is truncated (no IEND chunk)"), True),
        (DownloadError("downloading the image URL answered 500", status=500), True),
        (ResponseTooLargeError("too large"), False),
        (cut_after_200(), True),
        (cut_after_200(APITimeoutError), True),
        (APIConnectionError("refused"), False),
        (APITimeoutError("no answer"), False),  # ambiguous, not known to be billed
        (status_error(500), False),
        (status_error(429), False),
        (OSError(errno.ENOSPC, "full"), False),
        (ValueError("x"), False),
    ],
    ids=[
        "invalid",
        "download",
        "too-large",
        "cut-after-200",
        "timeout-after-200",
        "refused",
        "timeout",
        "500",
        "429",
        "disk",
        "ValueError",
    ],
)
def test_billed(error: BaseException, expected: bool) -> None:
    assert describe(error).billed is expected


BILLED = InvalidResponseError("the PNG image is truncated (no IEND chunk)")

SHOULD_RETRY_ROWS = [
    # (error, billed retries so far, max_billed_retries, retry?)
    (BILLED, 0, 1, True),
    (BILLED, 1, 1, False),
    (BILLED, 0, 0, False),
    (BILLED, 2, 3, True),
    (BILLED, 3, 3, False),
    (cut_after_200(), 1, 1, False),
    (status_error(500), 1, 1, True),  # not billed: the normal budget
    (status_error(500), 9, 0, True),
    (APIConnectionError("refused"), 1, 1, True),
    (APITimeoutError("no answer"), 1, 1, True),
    (status_error(400), 0, 1, False),
    (ResponseTooLargeError("too large"), 0, 1, False),
]


@pytest.mark.parametrize(("error", "so_far", "cap", "expected"), SHOULD_RETRY_ROWS)
def test_should_retry_caps_billed_retries(
    error: BaseException, so_far: int, cap: int, expected: bool
) -> None:
    policy = RetryPolicy(max_billed_retries=cap)
    assert policy.should_retry(describe(error), billed_retries=so_far) is expected


@pytest.mark.parametrize(("cap", "calls"), [(0, 1), (1, 2), (2, 3)])
async def test_billed_failures_are_retried_at_most_max_billed_retries(cap: int, calls: int) -> None:
    sleep = SleepRecorder()
    errors = [InvalidResponseError(f"corrupt {k}") for k in range(6)]
    with pytest.raises(InvalidResponseError) as caught:
        await drive(policy_with(sleep, max_attempts=6, max_billed_retries=cap), [*errors, "ok"])
    assert caught.value is errors[calls - 1]
    assert len(sleep.waits) == calls - 1


async def test_other_failures_keep_their_own_budget_around_a_billed_one() -> None:
    sleep = SleepRecorder()
    outcomes = [
        status_error(500),
        status_error(503),
        BILLED,
        APIConnectionError("refused"),
        status_error(502),
        "ok",
    ]
    result, calls = await drive(policy_with(sleep, max_attempts=6), outcomes)
    assert (result, calls) == ("ok", 6)
    second_billed = [status_error(500), BILLED, status_error(500), cut_after_200(), "ok"]
    with pytest.raises(APIConnectionError):
        await drive(policy_with(sleep, max_attempts=6), second_billed)


async def test_the_billed_count_is_per_image() -> None:
    policy = policy_with(SleepRecorder(), max_billed_retries=1)
    assert await drive(policy, [BILLED, "a"]) == ("a", 2)
    assert await drive(policy, [BILLED, "b"]) == ("b", 2)


# --- downloads: the GET alone ------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (APIConnectionError("cut"), True),
        (APITimeoutError("slow"), True),
        (DownloadError("downloading the image URL answered 404", status=404), True),
        (InvalidResponseError("the image URL is malformed"), False),
        (ResponseTooLargeError("too large"), False),
        (status_error(500), False),
    ],
)
def test_download_retryable(error: BaseException, expected: bool) -> None:
    assert download_retryable(error) is expected


async def test_download_retrying_stops_after_download_attempts() -> None:
    sleep = SleepRecorder()
    policy = policy_with(sleep, download_attempts=3)
    calls = 0
    with pytest.raises(DownloadError):
        async for get in policy.download_retrying():
            with get:
                calls += 1
                raise DownloadError("answered 503", status=503)
    assert calls == 3
    assert sleep.waits == [1.0, 2.0]
    calls = 0
    with pytest.raises(InvalidResponseError):
        async for get in policy.download_retrying():
            with get:
                calls += 1
                raise InvalidResponseError("the image URL is malformed")
    assert calls == 1
