"""What the mock received and how it answered, for tests to assert on.

:meth:`MockStats.to_json` (served at ``GET /_mock/stats``) uses the same names
as the attributes::

    {
      "requests": 12,                 generation requests received
      "in_flight": 0,                 being handled now
      "peak_in_flight": 4,            most at once, from arrival to the end of the response
      "attempts": {"a fox": 3},       requests per prompt (a string "prompt" in the body)
      "successes": {"a fox": 1},      ``ok`` answers per prompt
      "outcomes": {"ok": 10, "500": 2, "drop": 1, "429": 3},
      "downloads": 0,                 files served whole from /_mock/files/
      "download_attempts": {"ab12.png": 2},  GETs of /_mock/files/ per file name
      "log": [{"path": "/v1/images/generations", "body": {...} or null,
               "has_authorization": true, "authorization": "Bearer sk-test-…",
               "outcome": "ok"}],     the latest requests, oldest first (capped); an
                                      edit's has "parts": [{"name": "image[]", "filename",
                                      "content_type", "bytes"}] and its files' names in body
      "files_uploaded": [{"id": "file-…", "filename": "a.jsonl", "purpose": "batch",
                          "bytes": 812}],         every upload, oldest first
      "files_deleted": ["file-…"],                ids deleted, in order
      "file_downloads": {"file-…": 1},            GETs of /v1/files/{id}/content per id
      "batches_created": [{"id": "batch_…", "input_file_id": "file-…",
                           "endpoint": "/v1/images/generations", "metadata": {...} or null,
                           "custom_ids": ["a", "b"]}],   every batch, oldest first
      "batch_cancels": ["batch_…"]                 batches a cancel was accepted for
    }

Each row of a batch counts as an attempt of its prompt when the batch is
created (``attempts``), and as a success when the batch ends with it done
(``successes``); ``requests`` and ``outcomes`` count HTTP generation requests only.

The endpoint shows only the first 8 characters of a bearer key (and the
scheme), so a real key pointed at the mock by mistake is not on display.
In-process tests can also read the whole ``authorization``, every header a request carried
(``ReceivedRequest.headers``) and those of the latest downloads
(``MockStats.download_headers``); the endpoint leaves them out.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .options import DEFAULT_LOG_LIMIT

__all__ = ["MockStats", "ReceivedRequest"]


KEY_SHOWN = 8  # characters of a bearer key /_mock/stats shows


def _shown(authorization: str | None) -> str | None:
    """``Bearer sk-abcdefgh…``: the scheme and the key's first characters, never all of it."""
    if authorization is None:
        return None
    scheme, _, key = authorization.partition(" ")
    if not key:
        return scheme[:KEY_SHOWN] + ("…" if len(scheme) > KEY_SHOWN else "")
    return f"{scheme} {key[:KEY_SHOWN]}" + ("…" if len(key) > KEY_SHOWN else "")


@dataclass(slots=True)
class ReceivedRequest:
    """One generation request as the mock saw it."""

    path: str
    body: Any  # the parsed JSON body, or None when it was not JSON
    authorization: str | None  # the Authorization header exactly as received
    outcome: str | None = None  # the stats key of the answer, once decided
    headers: dict[str, str] = field(default_factory=dict)  # every header, as received
    parts: list[dict[str, Any]] | None = None  # an edit's file parts: name, filename, type, bytes

    @property
    def prompt(self) -> str | None:
        """The body's ``prompt`` when it is a string, else None."""
        prompt = self.body.get("prompt") if isinstance(self.body, dict) else None
        return prompt if isinstance(prompt, str) else None

    @property
    def has_authorization(self) -> bool:
        """Whether the request carried an Authorization header."""
        return self.authorization is not None

    def to_json(self) -> dict[str, Any]:
        """This entry as a JSON-ready dict."""
        return {
            "path": self.path,
            "body": self.body,
            "has_authorization": self.has_authorization,
            "authorization": _shown(self.authorization),
            "outcome": self.outcome,
            **({"parts": self.parts} if self.parts is not None else {}),
        }


class MockStats:
    """Counters and a capped log of received generation requests."""

    def __init__(self, *, log_limit: int = DEFAULT_LOG_LIMIT) -> None:
        self.log_limit = log_limit
        self.in_flight = 0
        self.requests = 0
        self.peak_in_flight = 0
        self.attempts: Counter[str] = Counter()
        self.successes: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.downloads = 0
        self.download_attempts: Counter[str] = Counter()
        self.download_headers: deque[dict[str, str]] = deque(maxlen=log_limit)
        self.log: deque[ReceivedRequest] = deque(maxlen=log_limit)
        self.files_uploaded: list[dict[str, Any]] = []
        self.files_deleted: list[str] = []
        self.file_downloads: Counter[str] = Counter()
        self.batches_created: list[dict[str, Any]] = []
        self.batch_cancels: list[str] = []

    def reset(self) -> None:
        """Zero every counter and clear the log. Requests in flight stay counted."""
        self.requests = 0
        self.peak_in_flight = self.in_flight
        self.attempts.clear()
        self.successes.clear()
        self.outcomes.clear()
        self.downloads = 0
        self.download_attempts.clear()
        self.download_headers.clear()
        self.log.clear()
        self.files_uploaded.clear()
        self.files_deleted.clear()
        self.file_downloads.clear()
        self.batches_created.clear()
        self.batch_cancels.clear()

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count one request in flight for the duration of the block."""
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1

    def receive(self, entry: ReceivedRequest) -> int:
        """Count a received request; return its attempt number for its prompt (0 if none)."""
        self.requests += 1
        self.log.append(entry)
        prompt = entry.prompt
        if prompt is None:
            return 0
        self.attempts[prompt] += 1
        return self.attempts[prompt]

    def row(self, prompt: str) -> int:
        """Count a batch row as an attempt of ``prompt``; return its attempt number."""
        self.attempts[prompt] += 1
        return self.attempts[prompt]

    def answer(self, entry: ReceivedRequest, outcome: str) -> None:
        """Count the outcome given to ``entry``; an ``ok`` is a success for its prompt."""
        entry.outcome = outcome
        self.outcomes[outcome] += 1
        if outcome == "ok" and entry.prompt is not None:
            self.successes[entry.prompt] += 1

    def to_json(self) -> dict[str, Any]:
        """The stats as a JSON-ready dict (see the module docstring)."""
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "attempts": dict(self.attempts),
            "successes": dict(self.successes),
            "outcomes": dict(self.outcomes),
            "downloads": self.downloads,
            "download_attempts": dict(self.download_attempts),
            "log": [entry.to_json() for entry in self.log],
            "files_uploaded": list(self.files_uploaded),
            "files_deleted": list(self.files_deleted),
            "file_downloads": dict(self.file_downloads),
            "batches_created": list(self.batches_created),
            "batch_cancels": list(self.batch_cancels),
        }
