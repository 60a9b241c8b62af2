"""The capability table: what each model accepts, what is sent, and the user's own table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import read_manifest, run_cli, write_jobs

from pmock_batch.capabilities import (
    gpt_image_2_size_problem,
    load_capabilities,
    shipped_capabilities,
)
from pmock_batch.errors import UsageError
from pmock_batch.jobs import iter_jobs, scan
from pmock_batch.mock import MockOptions
from pmock_batch.models import ImageRequest

KEY = "sk-test-0123456789abcdefCAPS"


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-image-2", "gpt-image-2"),
        ("gpt-image-2-2026-04-21", "gpt-image-2"),
        ("gpt-image-2.5", "gpt-image-2"),
        ("gpt-image-2.5-2027-01-01", "gpt-image-2"),
        ("gpt-image-1.5", "gpt-image-1.5"),
        ("gpt-image-1.5-2025-12-16", "gpt-image-1.5"),
        ("gpt-image-1", "gpt-image-1"),
        ("gpt-image-1-2025-04-15", "gpt-image-1"),
        ("gpt-image-1-mini", "gpt-image-1-mini"),
        ("gpt-image-1-mini-2025-10-06", "gpt-image-1-mini"),
        ("dall-e-3", "dall-e-3"),
        ("dall-e-2", "dall-e-2"),
    ],
)
def test_every_model_family_and_its_snapshots_find_their_entry(model: str, family: str) -> None:
    entry = shipped_capabilities().lookup(model)
    assert (entry.name, entry.known) == (family, True)


def test_an_unknown_model_gets_the_permissive_seed_entry() -> None:
    entry = shipped_capabilities().lookup("my-gateway-image-model")
    assert not entry.known
    assert "input_fidelity" in entry.fields and entry.response_format
    assert "standard" in entry.enums["quality"]


@pytest.mark.parametrize(
    ("size", "problem"),
    [
        ("1536x864", None),
        ("3840x2160", None),
        ("2160x3840", None),
        ("1024x1024", None),
        ("1000x1000", "both edges must be multiples of 16"),
        ("4096x1024", "the longest edge must be at most 3840"),
        ("3072x1008", "the aspect ratio must be at most 3:1"),
        ("768x768", "the image must have 655,360 to 8,294,400 pixels"),
        ("3840x2176", "the image must have 655,360 to 8,294,400 pixels"),
    ],
)
def test_gpt_image_2_size_rule(size: str, problem: str | None) -> None:
    width, height = (int(part) for part in size.split("x"))
    assert gpt_image_2_size_problem(width, height) == problem


# (line, the problem reported, or None when valid)
CHECKS = [
    ({"prompt": "p", "size": "1536x864"}, None),
    (
        {"prompt": "p", "model": "gpt-image-1", "size": "1536x864"},
        ("size: '1536x864' is not one of auto, 1024x1024, 1536x1024, 1024x1536 for gpt-image-1"),
    ),
    (
        {"prompt": "p", "quality": "standard"},
        ("quality: 'standard' is not one of auto, low, medium, high for gpt-image-2"),
    ),
    (
        {"prompt": "p", "quality": "hgih"},
        (
            "quality: 'hgih' is not one of auto, low, medium, high for gpt-image-2; "
            "did you mean 'high'?"
        ),
    ),
    ({"prompt": "p", "n": 10}, None),
    ({"prompt": "p", "n": 11}, "n: 11 is more than 10, the most for gpt-image-2"),
    ({"prompt": "p", "n": 100_000_000}, "n: 100,000,000 is more than 10, the most for gpt-image-2"),
    ({"prompt": "p", "model": "dall-e-3", "n": 2}, "n: 2 is more than 1, the most for dall-e-3"),
    ({"prompt": "p", "model": "dall-e-3", "quality": "hd", "size": "1792x1024"}, None),
    (
        {"prompt": "p", "model": "dall-e-3", "output_format": "webp"},
        ("output_format: not accepted by dall-e-3"),
    ),
    (
        {"prompt": "p", "model": "dall-e-2", "size": "1024x1536"},
        ("size: '1024x1536' is not one of 256x256, 512x512, 1024x1024 for dall-e-2"),
    ),
    (
        {"prompt": "p", "output_format": "jpg"},
        ("output_format: 'jpg' is not one of png, jpeg, webp; did you mean 'jpeg'?"),
    ),
    ({"prompt": "p", "safety_identifier": "user-42"}, None),
    (
        {"prompt": "p", "model": "dall-e-3", "safety_identifier": "u"},
        ("safety_identifier: not accepted by dall-e-3"),
    ),
    (
        {"prompt": "p", "model": "some-new-model", "size": "1536x864"},
        (
            "size: '1536x864' is not one of auto, 1024x1024, 1024x1536, 1536x1024, 2048x2048, "
            "2048x1152, 3840x2160, 2160x3840"
        ),
    ),
    ({"prompt": "p", "model": "some-new-model", "quality": "standard"}, None),
    ({"prompt": "p", "extra_body": "x"}, "extra_body: expected an object, got 'x'"),
]


@pytest.mark.parametrize(("line", "problem"), CHECKS)
def test_each_job_is_checked_against_its_model(tmp_path: Path, line, problem) -> None:
    path = write_jobs(tmp_path / "jobs.jsonl", [line])
    result = scan(path)
    if problem is None:
        assert result.ok, result.problems
    else:
        assert [str(p) for p in result.problems] == [f"{path}:1: {problem}"]


def _jobs(path: Path):
    result = scan(path)
    assert result.ok, result.problems
    return result, list(iter_jobs(path, result))


def test_fields_the_model_refuses_are_not_sent_and_warned_once(tmp_path: Path) -> None:
    path = write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {"id": "a", "prompt": "a", "response_format": "b64_json"},
            {"id": "b", "prompt": "b", "responseFormat": "url", "input_fidelity": "high"},
            {"id": "c", "prompt": "c", "partial_images": 2},
            {"id": "d", "prompt": "d", "partial_images": 1, "input_fidelity": "low"},
            {"id": "e", "prompt": "e", "model": "dall-e-3", "response_format": "b64_json"},
        ],
    )
    result, jobs = _jobs(path)
    assert result.warnings == [
        f"{path}:1: gpt-image-2 always returns b64_json; response_format is not sent",
        f"{path}:2: input_fidelity only affects image edits; it is not sent to generations",
        f"{path}:3: partial_images needs streaming (stream: true or --stream); not sent",
    ]
    bodies = {job.id: job.wire_body() for job in jobs}
    assert bodies["a"] == {"prompt": "a", "model": "gpt-image-2"}
    assert bodies["b"] == {"prompt": "b", "model": "gpt-image-2"}
    assert bodies["c"] == {"prompt": "c", "model": "gpt-image-2"}
    assert bodies["e"] == {"prompt": "e", "model": "dall-e-3", "response_format": "b64_json"}


def test_an_unknown_model_warns_once_and_sends_everything(tmp_path: Path) -> None:
    path = write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {"id": "a", "prompt": "a", "model": "gw-image", "response_format": "url"},
            {"id": "b", "prompt": "b", "model": "gw-image", "quality": "standard"},
        ],
    )
    result, jobs = _jobs(path)
    assert result.warnings == [
        f"{path}:1: model 'gw-image' is not in the capability table: its fields are checked "
        "against pmock's documented values only and sent as given (describe it with "
        "--capabilities FILE)"
    ]
    assert jobs[0].wire_body()["response_format"] == "url"
    assert jobs[1].wire_body()["quality"] == "standard"


def test_response_format_unset_keeps_the_fingerprint_it_always_had(tmp_path: Path) -> None:
    """Old manifests recorded fingerprints with response_format b64_json: resume must match."""
    plain = ImageRequest(prompt="a cat")
    explicit = ImageRequest(prompt="a cat", response_format="b64_json")
    assert plain.canonical() == explicit.canonical()
    assert plain.canonical()["response_format"] == "b64_json"
    assert "response_format" not in plain.wire_body()


def test_extra_body_is_sent_as_is_and_counts_in_the_fingerprint(tmp_path: Path) -> None:
    path = write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {"id": "a", "prompt": "p", "extra_body": {"style": "vivid", "seed_hint": 7}},
            {"id": "b", "prompt": "p", "extra_body": {"style": "natural"}},
            {"id": "c", "prompt": "p"},
        ],
    )
    _, jobs = _jobs(path)
    assert jobs[0].wire_body() == {
        "prompt": "p",
        "model": "gpt-image-2",
        "style": "vivid",
        "seed_hint": 7,
    }
    assert jobs[0].wire_body("camel")["seed_hint"] == 7  # extra keys are never re-spelled
    assert len({job.fingerprint for job in jobs}) == 3


def _user_table(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "caps.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_user_table_adds_a_model_and_changes_a_shipped_one(tmp_path: Path) -> None:
    caps = load_capabilities(
        _user_table(
            tmp_path,
            """
[models.gpt-image-3]
match = ["gpt-image-3*"]
fields = ["prompt", "model", "n", "size", "quality"]
size_rule = "gpt-image-2"
max_n = 4
response_format = false
[models.gpt-image-3.enums]
quality = ["low", "high", "ultra"]

[models.gpt-image-1.enums]
quality = ["auto", "low", "medium", "high", "max"]
""",
        )
    )
    new = caps.lookup("gpt-image-3-preview")
    assert (new.name, new.known, new.max_n, new.size_rule) == (
        "gpt-image-3",
        True,
        4,
        "gpt-image-2",
    )
    assert new.enums["quality"] == ("low", "high", "ultra")
    old = caps.lookup("gpt-image-1")
    assert old.enums["quality"][-1] == "max"
    assert old.enums["background"] == ("transparent", "opaque", "auto")  # merged, not replaced
    assert old.sizes == shipped_capabilities().lookup("gpt-image-1").sizes
    assert caps.lookup("gpt-image-2").name == "gpt-image-2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models.x]\nmax_n = 0\n", "max_n: expected a whole number from 1 to 100"),
        ("[models.x]\nsizes = 3\n", "sizes: expected a list of strings"),
        ("[models.x]\nsize_rule = 'square'\n", "size_rule: 'square' is not one of gpt-image-2"),
        ("[models.x]\ncolour = 'red'\n", "unknown key(s) colour"),
        ("[modles.x]\n", "unknown top-level key(s): modles"),
        ("[models.x\n", "not a valid TOML file"),
    ],
)
def test_a_bad_user_table_is_a_usage_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_capabilities(_user_table(tmp_path, text))


async def test_capabilities_flag_lets_a_new_model_through_validate_and_run(
    tmp_path, capsys, make_mock, monkeypatch
):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a cat", "model": "gpt-image-2", "n": 12}]
    )
    refused = await run_cli(["validate", str(jobs)], capsys)
    assert refused.code == 2
    assert "n: 12 is more than 10, the most for gpt-image-2" in refused.err
    table = _user_table(tmp_path, "[models.gpt-image-2]\nmax_n = 12\n")
    ok = await run_cli(["validate", str(jobs), "--capabilities", str(table)], capsys)
    assert ok.code == 0, ok.err
    out = tmp_path / "out"
    argv = [
        str(jobs),
        "--base-url",
        server.base_url,
        "--out",
        str(out),
        "--capabilities",
        str(table),
    ]
    result = await run_cli(argv, capsys)
    assert result.code == 0, result.err
    assert server.stats.requests == 12  # n is fanned out into single-image requests
    assert all("n" not in entry.body for entry in server.stats.log)
    [record] = read_manifest(out)
    assert len(record["files"]) == 12
    bad = await run_cli(
        ["validate", str(jobs), "--capabilities", str(tmp_path / "nope.toml")], capsys
    )
    assert bad.code == 2
    assert "cannot read the capability table" in bad.err


async def test_extra_body_reaches_the_server(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {"id": "a", "prompt": "a cat", "extra_body": {"style": "vivid", "seed_hint": 7}},
            {"id": "b", "prompt": "a dog", "extra_body": {"colour": "red"}},
        ],
    )
    out = tmp_path / "out"
    result = await run_cli([str(jobs), "--base-url", server.base_url, "--out", str(out)], capsys)
    assert result.code == 1  # pmock does not know these fields: it says so, per job
    bodies = {entry.body["prompt"]: entry.body for entry in server.stats.log}
    assert (bodies["a cat"]["style"], bodies["a cat"]["seed_hint"]) == ("vivid", 7)
    assert bodies["a dog"]["colour"] == "red"
    records = {r["id"]: r for r in read_manifest(out)}
    assert records["b"]["status"] == "failed"
    assert records["b"]["error"]["code"] == "unknown_parameter"
    assert records["b"]["error"]["param"] == "colour"
    assert json.loads(json.dumps(records["a"]["request"]))["style"] == "vivid"


@pytest.mark.parametrize("key", ["prompt", "n", "model", "outputFormat", "response_format"])
def test_extra_body_cannot_override_a_checked_field(tmp_path, key) -> None:
    path = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a", "extra_body": {key: 5}}])
    [problem] = scan(path).problems
    assert str(problem) == (
        f"{path}:1: extra_body: {key!r} is a request field: set it on the line, where it is "
        "checked, not in extra_body"
    )


async def test_mock_dialect_flag_runs_the_in_process_mock_as_openai(tmp_path, capsys):
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {"id": "a", "prompt": "a cat", "response_format": "b64_json", "size": "1536x864"},
            {"id": "b", "prompt": "a dog", "model": "dall-e-2", "size": "512x512"},
        ],
    )
    out = tmp_path / "out"
    argv = [str(jobs), "--mock", "--mock-dialect", "openai", "--out", str(out)]
    result = await run_cli([*argv, "--response-format", "url"], capsys)
    assert result.code == 0, result.err
    assert "gpt-image-2 always returns b64_json; response_format is not sent" in result.err
    records = {r["id"]: r for r in read_manifest(out)}
    assert "response_format" not in records["a"]["request"]
    assert records["b"]["request"]["response_format"] == "url"  # from the flag
    assert (records["a"]["files"][0]["width"], records["b"]["files"][0]["width"]) == (1536, 512)


def test_edits_and_edit_fields_are_data_a_user_table_can_change(tmp_path):
    from pmock_batch.capabilities import load_capabilities
    from pmock_batch.errors import UsageError
    from pmock_batch.models import ImageRequest

    table = tmp_path / "caps.toml"
    table.write_text(
        '[models.dall-e-3]\nedits = true\n[models.gpt-image-2]\nedit_fields = ["input_fidelity"]\n'
        '[models.gpt-image-2.enums]\ninput_fidelity = ["high"]\n',
        encoding="utf-8",
    )
    caps = load_capabilities(table)
    assert caps.lookup("dall-e-3").edits
    request = ImageRequest(prompt="p", model="gpt-image-2", input_fidelity="high")
    checked = caps.check(request, edit=True)
    assert checked.problems == [] and checked.unsent == ()
    low = ImageRequest(prompt="p", model="gpt-image-2", input_fidelity="low")
    assert caps.check(low, edit=True).problems[0][0] == "input_fidelity"
    assert caps.check(request).unsent == ("input_fidelity",)  # never on generations
    shipped = load_capabilities()
    dalle = ImageRequest(prompt="p", model="dall-e-3")
    assert shipped.check(dalle, edit=True).problems == [
        ("model", "dall-e-3 does not edit images (no /images/edits)")
    ]
    assert shipped.check(request, mode="server", edit=True).problems == [
        ("input_fidelity", "not accepted by gpt-image-2")
    ]
    table.write_text('[models.dall-e-3]\nedits = "yes"\n', encoding="utf-8")
    with pytest.raises(UsageError, match=r"edits: expected true or false"):
        load_capabilities(table)


def test_auto_for_a_model_without_it_names_the_models_sizes(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"prompt": "x", "size": "auto", "model": "dall-e-3"}\n')
    (problem,) = scan(path).problems
    assert problem.message == "'auto' is not one of 1024x1024, 1792x1024, 1024x1792 for dall-e-3"
