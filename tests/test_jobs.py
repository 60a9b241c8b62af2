"""The job reader: every validation rule of the job file, with its message and line number.

Each rule is checked through :func:`scan` on a real file in ``tmp_path``, as
``str(Problem)`` (``FILE:LINE: field: problem``) and as the stored
:class:`InvalidLine`; :func:`iter_jobs` is checked for order and line numbers.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmock_batch.jobs import (
    Defaults,
    InvalidLine,
    Job,
    ScanResult,
    iter_jobs,
    scan,
)
from pmock_batch.names import check_id as _check_id
from pmock_batch.names import slug

NOT_A_SIZE = "is not a size: use WxH, such as 1024x1024, or auto"
UNSAFE_NAME = "is not a safe name: each '/'-separated part must match [A-Za-z0-9_][A-Za-z0-9._-]*"
SAME_REQUEST = (
    "prompt: same request as line {line}, so it would overwrite the same file; to get "
    'variants of one prompt set n (e.g. "n": 2), or give each line its own id'
)
FIDELITY_WARNING = (
    "{path}:{line}: input_fidelity only affects image edits; it is not sent to generations"
)
SAFE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*\Z")


def write(tmp_path: Path, *lines: str | dict[str, Any], name: str = "jobs.jsonl") -> Path:
    """Write a job file; dicts become JSON, strings are written as they are."""
    text = [json.dumps(line) if isinstance(line, dict) else line for line in lines]
    path = tmp_path / name
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def problems(result: ScanResult) -> list[str]:
    return [str(p) for p in result.problems]


def jobs_of(path: Path, result: ScanResult | None = None, **kwargs: Any) -> list[Job]:
    scanned = result or scan(path, **kwargs)
    out = list(iter_jobs(path, scanned, **kwargs))
    assert all(isinstance(item, Job) for item in out), out
    return [item for item in out if isinstance(item, Job)]


def canonical_sha(body: dict[str, Any]) -> str:
    """The fingerprint computed independently: SHA-256 of sorted, compact, snake_case JSON."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- one bad line: its exact message, on its own line number -----------------------------

INVALID_LINES = [
    # not JSON
    ("not json", "not valid JSON: Expecting value (column 1)"),
    ('{"prompt": "p"', "not valid JSON: Expecting ',' delimiter (column 15)"),
    (
        "{'prompt': 'p'}",
        "not valid JSON: Expecting property name enclosed in double quotes (column 2)",
    ),
    # JSON, but not an object or a string
    ("[1, 2]", "expected a JSON object or string, got an array"),
    ("42", "expected a JSON object or string, got 42"),
    ("null", "expected a JSON object or string, got null"),
    ("true", "expected a JSON object or string, got true"),
    # the prompt
    ("{}", "prompt: required"),
    ('{"size": "auto"}', "prompt: required"),
    ('{"prompt": ""}', "prompt: must not be empty"),
    ('""', "prompt: must not be empty"),
    ('{"prompt": 5}', "prompt: expected a string, got 5"),
    ('{"prompt": null}', "prompt: expected a string, got null"),
    ('{"prompt": ["a"]}', 'prompt: expected a string, got ["a"]'),
    (
        json.dumps({"prompt": "x" * 32_001}),
        "prompt: is 32,001 characters long; at most 32,000 are allowed",
    ),
    # unknown fields: rejected, with a did-you-mean where one is close
    ('{"prompt": "p", "quailty": "high"}', "'quailty': unknown field; did you mean 'quality'?"),
    ('{"prompt": "p", "sise": "auto"}', "'sise': unknown field; did you mean 'size'?"),
    (
        '{"prompt": "p", "outputFormt": "png"}',
        "'outputFormt': unknown field; did you mean 'outputFormat'?",
    ),
    ('{"prompt": "p", "colour": "red"}', "'colour': unknown field"),
    # wrong types
    ('{"prompt": "p", "n": "2"}', "n: expected an integer, got '2'"),
    ('{"prompt": "p", "n": true}', "n: expected an integer, got true"),
    ('{"prompt": "p", "n": 1.5}', "n: expected an integer, got 1.5"),
    ('{"prompt": "p", "n": 2.0}', "n: expected an integer, got 2.0"),
    ('{"prompt": "p", "partialImages": "2"}', "partial_images: expected an integer, got '2'"),
    ('{"prompt": "p", "model": 5}', "model: expected a string, got 5"),
    ('{"prompt": "p", "user": 5}', "user: expected a string, got 5"),
    # ranges
    ('{"prompt": "p", "n": 0}', "n: 0 is out of range; must be at least 1"),
    ('{"prompt": "p", "n": -3}', "n: -3 is out of range; must be at least 1"),
    (
        '{"prompt": "p", "output_compression": 101, "output_format": "jpeg"}',
        "output_compression: 101 is out of range; must be from 0 to 100",
    ),
    (
        '{"prompt": "p", "outputCompression": -1, "outputFormat": "webp"}',
        "output_compression: -1 is out of range; must be from 0 to 100",
    ),
    (
        '{"prompt": "p", "partial_images": 4}',
        "partial_images: 4 is out of range; must be from 0 to 3",
    ),
    ('{"prompt": "p", "model": ""}', "model: must not be empty"),
    # enum values list what is allowed
    (
        '{"prompt": "p", "size": "1000x1000"}',
        "size: '1000x1000' is not allowed for gpt-image-2: both edges must be multiples of 16",
    ),
    ('{"prompt": "p", "size": 1024}', "size: expected a string, got 1024"),
    (
        '{"prompt": "p", "quality": "ultra"}',
        "quality: 'ultra' is not one of auto, low, medium, high for gpt-image-2",
    ),
    (
        '{"prompt": "p", "background": "clear"}',
        "background: 'clear' is not one of transparent, opaque, auto for gpt-image-2",
    ),
    (
        '{"prompt": "p", "moderation": "high"}',
        "moderation: 'high' is not one of auto, low for gpt-image-2",
    ),
    (
        '{"prompt": "p", "outputFormat": "gif"}',
        "output_format: 'gif' is not one of png, jpeg, webp",
    ),
    (
        '{"prompt": "p", "response_format": "xml"}',
        "response_format: 'xml' is not one of url, b64_json",
    ),
    ('{"prompt": "p", "inputFidelity": "max"}', "input_fidelity: 'max' is not one of high, low"),
    # cross-field rules
    (
        '{"prompt": "p", "output_compression": 50, "output_format": "png"}',
        "output_compression: allowed only with output_format jpeg or webp, not png",
    ),
    (
        '{"prompt": "p", "output_compression": 50}',
        "output_compression: allowed only with output_format jpeg or webp, not png",
    ),
    (
        '{"prompt": "p", "background": "transparent", "output_format": "jpeg"}',
        "background: 'transparent' needs output_format png or webp, not jpeg",
    ),
    # both spellings of one field
    (
        '{"prompt": "p", "outputFormat": "png", "output_format": "png"}',
        "output_format: given twice, as 'outputFormat' and 'output_format'; use one",
    ),
    (
        '{"prompt": "p", "response_format": "url", "responseFormat": "url"}',
        "response_format: given twice, as 'response_format' and 'responseFormat'; use one",
    ),
]


@pytest.mark.parametrize(("line", "expected"), INVALID_LINES)
def test_invalid_line_is_reported_with_file_line_and_message(
    tmp_path: Path, line: str, expected: str
) -> None:
    path = write(tmp_path, "# a comment", '{"prompt": "a valid one", "id": "ok"}', "", line)
    result = scan(path)
    assert problems(result) == [f"{path}:4: {expected}"]
    assert result.invalid == {4: InvalidLine(line=4, id=None, message=expected)}
    assert (result.jobs, result.images, result.ok) == (1, 1, False)


def test_prompt_of_exactly_32000_characters_is_valid(tmp_path: Path) -> None:
    path = write(tmp_path, {"prompt": "x" * 32_000, "id": "long"})
    result = scan(path)
    assert (result.ok, result.jobs, problems(result)) == (True, 1, [])
    [job] = jobs_of(path, result)
    assert len(job.request.prompt) == 32_000


def test_prompt_length_counts_characters_not_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, {"prompt": "é" * 32_000, "id": "accents"})
    assert scan(path).ok


def test_one_line_with_several_problems_reports_each(tmp_path: Path) -> None:
    path = write(tmp_path, {"prompt": "p", "id": "../x", "n": "2", "size": "bad"})
    result = scan(path)
    id_msg = "id: '../x' contains '..'; output must stay in the output directory"
    n_msg = "n: expected an integer, got '2'"
    size_msg = f"size: 'bad' {NOT_A_SIZE}"
    assert problems(result) == [f"{path}:1: {m}" for m in (id_msg, n_msg, size_msg)]
    assert result.invalid[1].message == f"{id_msg}; {n_msg}; {size_msg}"


def test_the_first_20_problems_are_kept_but_every_invalid_line_is_counted(tmp_path: Path) -> None:
    lines = ['{"prompt": "good", "id": "good"}'] + [f"bad {i}" for i in range(25)]
    path = write(tmp_path, *lines)
    result = scan(path)
    assert len(result.invalid) == 25
    assert sorted(result.invalid) == list(range(2, 27))
    assert problems(result) == [
        f"{path}:{n}: not valid JSON: Expecting value (column 1)" for n in range(2, 22)
    ]
    assert result.jobs == 1


def test_the_20_problem_limit_counts_problems_not_lines(tmp_path: Path) -> None:
    bad = {"prompt": 1, "n": "x", "size": "x"}  # three problems per line
    path = write(tmp_path, *[bad] * 10)
    result = scan(path)
    assert len(result.invalid) == 10
    assert len(result.problems) == 20
    assert [p.line for p in result.problems] == [n for n in range(1, 8) for _ in range(3)][:20]


def test_a_valid_file_has_no_problems(tmp_path: Path) -> None:
    path = write(tmp_path, '"one"', {"prompt": "two", "n": 3}, {"prompt": "three", "id": "x"})
    result = scan(path)
    assert (result.ok, result.jobs, result.images, result.problems, result.invalid) == (
        True,
        3,
        5,
        [],
        {},
    )
    assert result.file == str(path)


# --- ids ----------------------------------------------------------------------------------

ABSOLUTE = "is an absolute path; ids are relative to the output directory"
DOTDOT = "contains '..'; output must stay in the output directory"

UNSAFE_IDS: list[tuple[Any, str]] = [
    ("../x", f"'../x' {DOTDOT}"),
    ("a/../b", f"'a/../b' {DOTDOT}"),
    ("a/..", f"'a/..' {DOTDOT}"),
    ("/abs", f"'/abs' {ABSOLUTE}"),
    ("\\abs", f"'\\\\abs' {ABSOLUTE}"),
    ("C:x", f"'C:x' {ABSOLUTE}"),
    ("a//b", f"'a//b' {UNSAFE_NAME}"),
    (".hidden", f"'.hidden' {UNSAFE_NAME}"),
    ("a/./b", f"'a/./b' {UNSAFE_NAME}"),
    ("a/", f"'a/' {UNSAFE_NAME}"),
    ("-dash", f"'-dash' {UNSAFE_NAME}"),
    ("a b", f"'a b' {UNSAFE_NAME}"),
    ("a\\b", f"'a\\\\b' {UNSAFE_NAME}"),
    ("ü", f"'ü' {UNSAFE_NAME}"),
    ("a" * 201, "is 201 characters long; at most 200 are allowed"),
    ("", "must not be empty"),
    (5, "expected a string, got 5"),
    (True, "expected a string, got true"),
    (["a"], 'expected a string, got ["a"]'),
]


@pytest.mark.parametrize(("job_id", "expected"), UNSAFE_IDS)
def test_unsafe_id_is_rejected(tmp_path: Path, job_id: Any, expected: str) -> None:
    path = write(tmp_path, '"first"', {"id": job_id, "prompt": "p"})
    result = scan(path)
    assert problems(result) == [f"{path}:2: id: {expected}"]
    assert result.invalid[2].message == f"id: {expected}"


@pytest.mark.parametrize(
    "job_id", ["icons/home", "a", "A_b.c-d", "_x", "1/2/3", "a..b", "v1.2", "a" * 200]
)
def test_safe_id_becomes_the_name(tmp_path: Path, job_id: str) -> None:
    path = write(tmp_path, {"id": job_id, "prompt": "p"})
    [job] = jobs_of(path)
    assert (job.id, job.named, job.stems) == (job_id, True, [job_id])


def test_check_id_returns_the_id_and_raises_value_error() -> None:
    assert _check_id("icons/home") == "icons/home"
    with pytest.raises(ValueError, match=re.escape(f"'../x' {DOTDOT}")):
        _check_id("../x")


def test_duplicate_id_names_the_first_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"id": "x", "prompt": "one"},
        {"id": "y", "prompt": "two"},
        {"id": "x", "prompt": "three"},
        {"id": "x", "prompt": "four"},
    )
    result = scan(path)
    message = "id: duplicate id 'x' (first used on line 1)"
    assert problems(result) == [f"{path}:3: {message}", f"{path}:4: {message}"]
    assert result.invalid[3] == InvalidLine(line=3, id=None, message=message)  # line 1's key
    assert result.jobs == 2


def test_ids_that_differ_only_in_case_collide(tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "Icons/Home", "prompt": "a"}, {"id": "icons/home", "prompt": "b"})
    assert problems(scan(path)) == [
        f"{path}:2: id: output name 'icons/home' collides with 'Icons/Home' on line 1 "
        "on case-insensitive file systems"
    ]


def test_two_idless_identical_requests_suggest_n(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '"a cat"',
        {"prompt": "a cat", "size": "auto"},  # a different request: fine
        {"prompt": "a cat"},  # the same request as line 1, spelled as an object
        {"prompt": "a cat", "model": "gpt-image-2"},  # the default model: still the same
    )
    result = scan(path)
    assert problems(result) == [
        f"{path}:3: {SAME_REQUEST.format(line=1)}",
        f"{path}:4: {SAME_REQUEST.format(line=1)}",
    ]
    assert result.jobs == 2


def test_same_prompt_with_distinct_ids_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "a", "prompt": "a cat"}, {"id": "b", "prompt": "a cat"})
    assert scan(path).ok


# --- fan-out ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "stems"),
    [(None, ["set"]), (1, ["set"]), (2, ["set-1", "set-2"]), (3, ["set-1", "set-2", "set-3"])],
)
def test_n_fans_out_into_numbered_stems(tmp_path: Path, n: int | None, stems: list[str]) -> None:
    line: dict[str, Any] = {"id": "set", "prompt": "p"}
    if n is not None:
        line["n"] = n
    path = write(tmp_path, line)
    result = scan(path)
    [job] = jobs_of(path, result)
    assert job.stems == stems
    assert (result.jobs, result.images) == (1, len(stems))


def test_idless_fan_out_numbers_the_slug(tmp_path: Path) -> None:
    path = write(tmp_path, {"prompt": "two cats", "n": 2})
    [job] = jobs_of(path)
    assert job.stems == [f"two-cats-{job.fingerprint[:8]}-1", f"two-cats-{job.fingerprint[:8]}-2"]


def test_fan_out_name_collides_with_a_later_explicit_id(tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "a", "prompt": "p", "n": 2}, {"id": "a-1", "prompt": "q"})
    result = scan(path)
    assert problems(result) == [f"{path}:2: id: duplicate id 'a-1' (first used on line 1)"]
    assert result.invalid[2].id == "a-1"
    assert (result.jobs, result.images) == (1, 2)


def test_fan_out_name_collides_with_an_earlier_explicit_id(tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "a-1", "prompt": "q"}, {"id": "a", "prompt": "p", "n": 2})
    result = scan(path)
    [problem] = result.problems
    assert (problem.line, problem.field) == (2, "id")
    assert "'a-1'" in problem.message and "line 1" in problem.message
    assert result.invalid[2].id == "a"


def test_fan_out_collision_message_does_not_call_the_stem_an_id(tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "a-1", "prompt": "q"}, {"id": "a", "prompt": "p", "n": 2})
    [problem] = scan(path).problems
    assert not problem.message.startswith("duplicate id 'a-1'")
    assert "'a-1'" in problem.message and "line 1" in problem.message


# --- spellings and line kinds -------------------------------------------------------------


def test_camel_and_snake_case_give_the_same_request_and_fingerprint(tmp_path: Path) -> None:
    snake = {
        "prompt": "a lighthouse",
        "output_format": "webp",
        "output_compression": 70,
        "partial_images": 2,
        "response_format": "url",
        "input_fidelity": "low",
        "background": "transparent",
    }
    camel = {
        "prompt": "a lighthouse",
        "outputFormat": "webp",
        "outputCompression": 70,
        "partialImages": 2,
        "responseFormat": "url",
        "inputFidelity": "low",
        "background": "transparent",
    }
    [a] = jobs_of(write(tmp_path, snake, name="snake.jsonl"))
    [b] = jobs_of(write(tmp_path, camel, name="camel.jsonl"))
    assert a.request == b.request
    assert a.fingerprint == b.fingerprint
    assert a.id == b.id
    assert a.request.canonical() == {**snake, "model": "gpt-image-2"}


def test_bare_string_line_is_the_prompt(tmp_path: Path) -> None:
    path = write(tmp_path, '"a red fox"')
    [job] = jobs_of(path)
    body = {"prompt": "a red fox", "model": "gpt-image-2", "response_format": "b64_json"}
    assert job.request.canonical() == body
    assert job.fingerprint == canonical_sha(body)
    assert (job.id, job.named, job.line) == (f"a-red-fox-{canonical_sha(body)[:8]}", False, 1)


def test_batch_api_line_uses_custom_id_and_body(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "custom_id": "icons/home",
            "method": "POST",
            "url": "/v1/images/generations",
            "body": {"prompt": "a house", "outputFormat": "webp", "size": "1024x1024"},
        },
        {"custom_id": "b", "url": "/api/ai/openai/v1/images/generations/", "body": {"prompt": "b"}},
        {"body": {"prompt": "no custom id"}},
    )
    [a, b, c] = jobs_of(path)
    assert (a.id, a.named, a.line) == ("icons/home", True, 1)
    assert a.request.canonical() == {
        "prompt": "a house",
        "output_format": "webp",
        "size": "1024x1024",
        "model": "gpt-image-2",
        "response_format": "b64_json",
    }
    assert (b.id, b.line) == ("b", 2)
    assert (c.id, c.named) == (f"no-custom-id-{c.fingerprint[:8]}", False)


BATCH = {"custom_id": "j", "method": "POST", "url": "/v1/images/generations"}

INVALID_BATCH_LINES: list[tuple[dict[str, Any], list[str]]] = [
    (
        {**BATCH, "body": {"prompt": "p", "size": "1"}},
        [f"body.size: '1' {NOT_A_SIZE}"],
    ),
    ({**BATCH, "body": {"prompt": ""}}, ["body.prompt: must not be empty"]),
    ({**BATCH, "body": {"size": "auto"}}, ["body.prompt: required"]),
    ({**BATCH, "body": {"prompt": "p", "n": "2"}}, ["body.n: expected an integer, got '2'"]),
    (
        {**BATCH, "body": {"prompt": "p", "output_compression": 5}},
        ["body.output_compression: allowed only with output_format jpeg or webp, not png"],
    ),
    ({**BATCH, "method": "GET", "body": {"prompt": "p"}}, ["method: 'GET' is not POST"]),
    (
        {**BATCH, "url": "/v1/chat/completions", "body": {"prompt": "p"}},
        ["url: '/v1/chat/completions' is not /v1/images/generations"],
    ),
    ({**BATCH, "url": 5, "body": {"prompt": "p"}}, ["url: 5 is not /v1/images/generations"]),
    ({"custom_id": "j"}, ["body: required, as a JSON object"]),
    ({**BATCH, "body": "a prompt"}, ["body: required, as a JSON object"]),
    (
        {**BATCH, "body": {"prompt": "p"}, "prompt": "p"},
        ["'prompt': unknown field in a Batch API line"],
    ),
    (
        {**BATCH, "custom_id": "../j", "body": {"prompt": "p"}},
        [f"custom_id: '../j' {DOTDOT}"],
    ),
    ({**BATCH, "custom_id": 7, "body": {"prompt": "p"}}, ["custom_id: expected a string, got 7"]),
    (
        {**BATCH, "body": {"prompt": "p", "sizee": "auto"}},
        ["'sizee': unknown field; did you mean 'size'?"],
    ),
    (
        {**BATCH, "method": "GET", "url": "/x", "body": {"prompt": "p", "size": "1"}},
        [
            "method: 'GET' is not POST",
            "url: '/x' is not /v1/images/generations",
            f"body.size: '1' {NOT_A_SIZE}",
        ],
    ),
]


@pytest.mark.parametrize(("line", "expected"), INVALID_BATCH_LINES)
def test_invalid_batch_api_line(tmp_path: Path, line: dict[str, Any], expected: list[str]) -> None:
    path = write(tmp_path, '"first"', line)
    result = scan(path)
    assert problems(result) == [f"{path}:2: {m}" for m in expected]
    assert result.invalid[2].message == "; ".join(expected)


def test_batch_custom_id_collides_with_an_object_id(tmp_path: Path) -> None:
    path = write(tmp_path, {"id": "x", "prompt": "a"}, {"custom_id": "x", "body": {"prompt": "b"}})
    assert problems(scan(path)) == [f"{path}:2: id: duplicate id 'x' (first used on line 1)"]


def test_bom_crlf_blank_and_comment_lines(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf# made on Windows\r\n"
        b"\r\n"
        b'{"id": "a", "prompt": "first"}\r\n'
        b"   \r\n"
        b"  # an indented comment\r\n"
        b'"second"\r\n'
        b"\t\r\n"
        b'{"id": "c", "prompt": "third", "size": "bad"}\r\n'
    )
    result = scan(path)
    assert problems(result) == [f"{path}:8: size: 'bad' {NOT_A_SIZE}"]
    items = list(iter_jobs(path, result))
    assert [(type(i).__name__, i.line) for i in items] == [
        ("Job", 3),
        ("Job", 6),
        ("InvalidLine", 8),
    ]
    first, second = items[0], items[1]
    assert isinstance(first, Job) and isinstance(second, Job)
    assert (first.id, first.request.prompt) == ("a", "first")
    assert second.request.prompt == "second"  # no stray \r


def test_bom_before_a_json_first_line(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "p"}\n')
    [job] = jobs_of(path)
    assert (job.id, job.line) == ("a", 1)


def test_file_without_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b'"one"\n"two"')
    assert [j.request.prompt for j in jobs_of(path)] == ["one", "two"]


def test_invalid_utf8_line_is_reported_and_the_rest_still_read(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b'"one"\n{"prompt": "caf\xe9"}\n"three"\n')
    result = scan(path)
    assert problems(result) == [f"{path}:2: not valid UTF-8"]
    assert result.invalid == {2: InvalidLine(line=2, id=None, message="not valid UTF-8")}
    assert result.jobs == 2


def test_empty_and_comment_only_files(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing here", "", "   ")
    result = scan(path)
    assert (result.ok, result.jobs, result.images) == (True, 0, 0)
    assert list(iter_jobs(path, result)) == []


# --- defaults -----------------------------------------------------------------------------

FULL_DEFAULTS = Defaults(
    model="m2",
    size="1024x1536",
    quality="high",
    output_format="jpeg",
    background="opaque",
    moderation="low",
    output_compression=80,
)

FILL_CASES: list[tuple[Defaults, dict[str, Any], dict[str, Any]]] = [
    (Defaults(), {"prompt": "p"}, {"prompt": "p"}),
    (Defaults(size="auto"), {"prompt": "p"}, {"prompt": "p", "size": "auto"}),
    (Defaults(size="auto"), {"size": "1024x1024"}, {"size": "1024x1024"}),  # the line wins
    (Defaults(model="m2"), {"model": "m1"}, {"model": "m1"}),
    (
        FULL_DEFAULTS,
        {},
        {
            "model": "m2",
            "size": "1024x1536",
            "quality": "high",
            "output_format": "jpeg",
            "background": "opaque",
            "moderation": "low",
            "output_compression": 80,
        },
    ),
    # output_compression is only filled in for jpeg and webp
    (Defaults(output_compression=80), {}, {}),
    (Defaults(output_compression=80), {"output_format": "png"}, {"output_format": "png"}),
    (
        Defaults(output_compression=80),
        {"output_format": "webp"},
        {"output_format": "webp", "output_compression": 80},
    ),
    (
        Defaults(output_compression=80),
        {"output_format": "jpeg", "output_compression": 10},
        {"output_format": "jpeg", "output_compression": 10},
    ),
    (
        Defaults(output_format="jpeg", output_compression=80),
        {"output_format": "png"},
        {"output_format": "png"},
    ),
    (
        Defaults(output_format="webp", output_compression=80),
        {},
        {"output_format": "webp", "output_compression": 80},
    ),
]


@pytest.mark.parametrize(("defaults", "values", "expected"), FILL_CASES)
def test_defaults_fill(
    defaults: Defaults, values: dict[str, Any], expected: dict[str, Any]
) -> None:
    before = dict(values)
    assert defaults.fill(values) == expected
    assert values == before  # not mutated


def test_defaults_apply_through_scan_and_the_line_wins(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {"id": "a", "prompt": "p"},
        {"id": "b", "prompt": "p", "outputFormat": "png", "quality": "low"},
        {"id": "c", "prompt": "p", "output_compression": 10, "size": "auto"},
    )
    result = scan(path, defaults=FULL_DEFAULTS)
    assert result.ok
    a, b, c = jobs_of(path, result, defaults=FULL_DEFAULTS)
    common = {"model": "m2", "background": "opaque", "moderation": "low", "prompt": "p"}
    assert a.request.canonical() == {
        **common,
        "size": "1024x1536",
        "quality": "high",
        "output_format": "jpeg",
        "output_compression": 80,
        "response_format": "b64_json",
    }
    assert b.request.canonical() == {
        **common,
        "size": "1024x1536",
        "quality": "low",
        "output_format": "png",
        "response_format": "b64_json",
    }
    assert c.request.canonical() == {
        **common,
        "size": "auto",
        "quality": "high",
        "output_format": "jpeg",
        "output_compression": 10,
        "response_format": "b64_json",
    }
    assert a.fingerprint == canonical_sha(a.request.canonical())


def test_defaults_change_the_fingerprint(tmp_path: Path) -> None:
    path = write(tmp_path, '"p"')
    [plain] = jobs_of(path)
    [sized] = jobs_of(path, defaults=Defaults(size="auto"))
    assert plain.fingerprint != sized.fingerprint
    assert plain.id != sized.id


def test_invalid_default_is_reported_on_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '"p"')
    assert problems(scan(path, defaults=Defaults(size="big"))) == [
        f"{path}:1: size: 'big' {NOT_A_SIZE}"
    ]


# --- warnings -----------------------------------------------------------------------------


def test_input_fidelity_warns_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '"plain"',
        {"prompt": "a", "input_fidelity": "high"},
        {"prompt": "b", "inputFidelity": "low"},
        '"plain again"',
        {"prompt": "c", "input_fidelity": "high"},
    )
    result = scan(path)
    assert result.ok
    assert result.warnings == [FIDELITY_WARNING.format(path=path, line=2)]
    [_, a, *_] = jobs_of(path, result)
    assert "input_fidelity" not in a.wire_body()  # an edits field: never sent to generations
    assert a.request.input_fidelity == "high"  # but still part of what the job asked for


def test_no_warning_without_input_fidelity(tmp_path: Path) -> None:
    assert scan(write(tmp_path, '"a"', '"b"')).warnings == []


# --- names of id-less jobs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        ("a red fox", "a-red-fox"),
        ("Hello, World! Ünïcödé", "hello-world-unicode"),
        ("  --Hi--  ", "hi"),
        ("日本語", "image"),
        ("!!!", "image"),
        ("word " * 30, "-".join(["word"] * 8)),  # at most 40 characters, no trailing dash
        ("abcdefghij" * 5, "abcdefghij" * 4),
    ],
)
def test_slug(prompt: str, words: str) -> None:
    digest = "0123456789abcdef" * 4
    assert slug(prompt, digest) == f"{words}-01234567"


def test_slug_names_are_stable_when_lines_are_reordered_or_inserted(tmp_path: Path) -> None:
    before = write(tmp_path, '"a cat"', '"a dog"', name="before.jsonl")
    after = write(
        tmp_path,
        '"a new first line"',
        "# a comment",
        '{"prompt": "a dog"}',
        '"something else"',
        '"a cat"',
        name="after.jsonl",
    )
    names_before = {j.request.prompt: (j.id, j.fingerprint) for j in jobs_of(before)}
    names_after = {j.request.prompt: (j.id, j.fingerprint) for j in jobs_of(after)}
    assert names_after["a cat"] == names_before["a cat"]
    assert names_after["a dog"] == names_before["a dog"]
    cat_sha = canonical_sha(
        {"prompt": "a cat", "model": "gpt-image-2", "response_format": "b64_json"}
    )
    assert names_before["a cat"] == (f"a-cat-{cat_sha[:8]}", cat_sha)


def test_slug_changes_when_the_request_changes(tmp_path: Path) -> None:
    [a, b] = jobs_of(write(tmp_path, '"a cat"', {"prompt": "a cat", "quality": "high"}))
    assert a.id != b.id
    assert a.id.startswith("a-cat-") and b.id.startswith("a-cat-")
    assert (a.id[-8:], b.id[-8:]) == (a.fingerprint[:8], b.fingerprint[:8])


# --- iter_jobs ----------------------------------------------------------------------------


def test_iter_jobs_yields_jobs_and_invalid_lines_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# header",
        '"one"',
        "",
        "oops",
        {"id": "x", "prompt": "two"},
        {"id": "x", "prompt": "three"},
        {"custom_id": "y", "body": {"prompt": "four", "n": 2}},
        '{"prompt": "five", "quailty": "high"}',
    )
    result = scan(path)
    items = list(iter_jobs(path, result))
    one = canonical_sha({"prompt": "one", "model": "gpt-image-2", "response_format": "b64_json"})
    assert [(type(i).__name__, i.line, i.id) for i in items] == [
        ("Job", 2, f"one-{one[:8]}"),
        ("InvalidLine", 4, None),
        ("Job", 5, "x"),
        ("InvalidLine", 6, None),  # line 5's key is "x": this record is keyed by its line
        ("Job", 7, "y"),
        ("InvalidLine", 8, None),
    ]
    assert items[1] == result.invalid[4]
    assert items[3] == InvalidLine(6, None, "id: duplicate id 'x' (first used on line 5)")
    assert items[5] == InvalidLine(8, None, "'quailty': unknown field; did you mean 'quality'?")
    job = items[4]
    assert isinstance(job, Job) and job.stems == ["y-1", "y-2"]


def test_iter_jobs_reports_a_line_that_broke_after_the_scan(tmp_path: Path) -> None:
    path = write(tmp_path, '"one"', '"two"')
    result = scan(path)
    write(tmp_path, '"one"', "[]")
    items = list(iter_jobs(path, result))
    assert isinstance(items[0], Job)
    assert items[1] == InvalidLine(2, None, "expected a JSON object or string, got an array")


# --- property: any prompt survives a bare-string line -------------------------------------


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(prompt=st.text(min_size=1, max_size=200), ascii_only=st.booleans())
def test_any_prompt_round_trips_through_a_bare_string_line(
    tmp_path: Path, prompt: str, ascii_only: bool
) -> None:
    path = tmp_path / "prop.jsonl"
    path.write_text(json.dumps(prompt, ensure_ascii=ascii_only) + "\n", encoding="utf-8")
    result = scan(path)
    assert result.ok, problems(result)
    [job] = list(iter_jobs(path, result))
    assert isinstance(job, Job)
    assert job.request.prompt == prompt
    assert job.line == 1
    assert SAFE_ID.match(job.id), job.id
    assert _check_id(job.id) == job.id
    assert job.id.endswith("-" + job.fingerprint[:8])


# --- hostile job files (issue 9) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[" * 100_000, "nested too deeply to be a job"),
        (
            '{"prompt": "a", "extra_body": {"k": ' + "[" * 300 + "]" * 300 + "}}",
            "extra_body: nested more than 32 levels deep",  # validates, then fails to be sent
        ),
        ('{"prompt": "a", "user": "\\ud800"}', "user: contains a lone surrogate"),
        ('"\\udfff lone"', "contains a lone surrogate"),
        ('{"prompt": "a", "extra_body": {"k": ["\\ud800"]}}', "extra_body: contains a lone"),
        ('{"id": "b", "id": "c", "prompt": "p"}', "'id': given twice on the line; use it once"),
        ('{"prompt": "p", "extra_body": {"x": 1, "x": 2}}', "'x': given twice on the line"),
    ],
)
def test_hostile_lines_are_per_line_errors(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path, '"fine"', line)
    result = scan(path)
    assert list(result.invalid) == [2]
    [problem] = problems(result)
    assert problem.startswith(f"{path}:2: {expected}"), problem


@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("manifest.jsonl", "'manifest.jsonl' is a name pmock-batch writes in OUT"),
        ("Report.html/x", "'Report.html' is a name pmock-batch writes in OUT"),
        ("CON", "'CON' is a reserved device name on Windows"),
        ("icons/nul.txt", "'nul.txt' is a reserved device name on Windows"),
        ("lpt9", "'lpt9' is a reserved device name on Windows"),
        ("com1/x", "'com1' is a reserved device name on Windows"),
        ("name.", "a part may not end in a dot"),
        ("a./b", "a part may not end in a dot"),
        ("a b", "is not a safe name"),
        (".rejected/x", "is not a safe name"),
    ],
)
def test_ids_that_cannot_be_files_everywhere_are_refused(tmp_path, job_id, expected) -> None:
    path = write(tmp_path, {"id": job_id, "prompt": "p"})
    assert expected in problems(scan(path))[0]


@pytest.mark.parametrize("job_id", ["console", "com10", "lpt", "nul_map", "auxiliary/x", "a.b"])
def test_names_close_to_reserved_ones_are_fine(tmp_path, job_id) -> None:
    assert scan(write(tmp_path, {"id": job_id, "prompt": "p"})).ok


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ({"id": "x", "prompt": "p"}, {"id": "x.png/y", "prompt": "q"}, "its folder 'x.png'"),
        ({"id": "x.png/y", "prompt": "q"}, {"id": "x", "prompt": "p"}, "its file x.png would be"),
        (
            {"id": "a/x", "prompt": "p", "output_format": "jpeg"},
            {"id": "A/X.JPG/y", "prompt": "q"},
            "its folder 'A/X.JPG'",
        ),
        ({"id": "v", "prompt": "p", "n": 2}, {"id": "v-2.webp/z", "prompt": "q"}, "v-2.webp"),
    ],
)
def test_a_file_that_another_line_needs_as_a_folder_is_refused(tmp_path, first, second, expected):
    path = write(tmp_path, first, second)
    result = scan(path)
    assert list(result.invalid) == [2]
    assert expected in problems(result)[0]


def test_folders_shared_by_many_ids_are_fine(tmp_path) -> None:
    path = write(
        tmp_path,
        {"id": "a/b", "prompt": "p"},
        {"id": "a/c", "prompt": "q"},
        {"id": "a", "prompt": "r"},
    )
    assert scan(path).ok


async def test_validate_reports_hostile_lines_with_exit_2(tmp_path, capsys) -> None:
    from helpers import run_cli

    path = write(tmp_path, '"fine"', "[" * 100_000, '{"prompt":"a","user":"\\ud800"}')
    for argv in (["validate", str(path)], [str(path), "--mock", "--skip-invalid", "--dry-run"]):
        result = await run_cli(argv, capsys)
        assert "Traceback" not in result.err
        if argv[0] == "validate":
            assert result.code == 2
            assert f"{path}:2: nested too deeply to be a job" in result.err
            assert f"{path}:3: user: contains a lone surrogate" in result.err
        else:
            assert result.code == 0
            assert "2 invalid line(s) would be skipped" in result.out


def test_a_duplicate_id_is_refused_whatever_the_n(tmp_path: Path) -> None:
    """Two lines with one id would share one manifest record, and each run would pay for
    one of them again: the second is refused, even when its n (its file names) differs."""
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"id": "a", "prompt": "x", "n": 2}\n{"id": "a", "prompt": "y"}\n')
    assert problems(scan(path)) == [f"{path}:2: id: duplicate id 'a' (first used on line 1)"]


def test_an_invalid_line_never_takes_a_valid_jobs_record(tmp_path: Path) -> None:
    """A typo on one line must not make another job with the same id pay again: the valid
    job keeps its id, and the invalid line is recorded by its line number."""
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"id": "a", "prompt": "x", "quailty": "high"}\n{"id": "a", "prompt": "y"}\n')
    result = scan(path)
    assert result.jobs == 1 and sorted(result.invalid) == [1]
    assert result.invalid[1].id is None
    path.write_text('{"id": "b", "quailty": 1}\n{"id": "b", "prompt": "y", "size": "9"}\n')
    result = scan(path)
    assert [result.invalid[n].id for n in (1, 2)] == ["b", None]  # one record each
