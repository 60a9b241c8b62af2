"""The cost estimate: the price table as data, cost_usd, the tally, and a run end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import read_manifest, run_cli, write_jobs

from pmock_batch.config import RunConfig
from pmock_batch.console import summary_json
from pmock_batch.errors import UsageError
from pmock_batch.mock import MockOptions
from pmock_batch.mock.responses import usage as mock_usage
from pmock_batch.models import FileRecord, JobRecord
from pmock_batch.prices import (
    cost_usd,
    format_usd,
    load_prices,
    price_record,
    shipped_prices,
)
from pmock_batch.tally import summarize

PROMPT = "a red fox in fresh snow, watercolour, soft morning light"
# ../shared/reference/openai-images.md, section 7: gpt-image-2, 1024x1024
REFERENCE_1024 = {"low": 0.006, "medium": 0.053, "high": 0.211}


def _usage(text: int, out: int, image: int | None = 0) -> dict[str, object]:
    details: dict[str, int] = {"text_tokens": text}
    if image is not None:
        details["image_tokens"] = image
    return {
        "input_tokens": text + (image or 0),
        "output_tokens": out,
        "total_tokens": text + (image or 0) + out,
        "input_tokens_details": details,
    }


# -- the table ------------------------------------------------------------------


def test_shipped_table_has_a_date_the_discount_and_the_models():
    table = shipped_prices()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", table.date)
    assert table.batch_discount == 0.5
    names = {entry.name for entry in table.models}
    assert {"gpt-image-2", "gpt-image-1.5", "gpt-image-1", "gpt-image-1-mini"} <= names
    assert {"dall-e-2", "dall-e-3"} <= names
    entry = table.lookup("gpt-image-2")
    assert entry is not None
    assert dict(entry.tokens) == {
        "text_input": 5.0,
        "image_input": 8.0,
        "image_cached_input": 2.0,
        "image_output": 30.0,
    }


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("gpt-image-2", "gpt-image-2"),
        ("gpt-image-2-2026-04-21", "gpt-image-2"),
        ("gpt-image-1", "gpt-image-1"),
        ("gpt-image-1-mini", "gpt-image-1-mini"),
        ("gpt-image-1-mini-2025-10-06", "gpt-image-1-mini"),
        ("gpt-image-1.5", "gpt-image-1.5"),
        ("dall-e-3", "dall-e-3"),
        ("gpt-image-2.5-sunburst", None),  # another model: no guess from gpt-image-2
        ("gpt-image-2-mini", None),
        ("my-local-model", None),
    ],
)
def test_lookup_matches_families_and_their_snapshots_only(model, entry):
    found = shipped_prices().lookup(model)
    assert (found.name if found else None) == entry


# -- cost_usd -------------------------------------------------------------------


@pytest.mark.parametrize("quality", ["low", "medium", "high"])
def test_mock_usage_for_gpt_image_2_lands_near_the_reference_per_image_price(quality):
    usage = mock_usage(PROMPT, width=1024, height=1024, quality=quality, model="gpt-image-2")
    cost = cost_usd(usage, "gpt-image-2", "1024x1024", quality, "direct")
    assert cost == pytest.approx(REFERENCE_1024[quality], rel=0.05)


def test_token_prices_per_million():
    # 100 text tokens at $5, 1,000 input image tokens at $8, 2,000 output tokens at $30
    cost = cost_usd(_usage(100, 2000, image=1000), "gpt-image-2", "1024x1024", "high", "direct")
    assert cost == pytest.approx(0.0005 + 0.008 + 0.06)
    assert cost == round(cost, 6)


def test_batch_is_half_price():
    usage = _usage(40, 1760)
    direct = cost_usd(usage, "gpt-image-2", None, None, "direct")
    batch = cost_usd(usage, "gpt-image-2", None, None, "batch")
    assert direct is not None and batch is not None
    assert batch == pytest.approx(direct / 2, abs=1e-6)
    assert cost_usd(None, "dall-e-3", None, None, "batch") == 0.02


def test_missing_details_fall_back_to_the_totals():
    no_details = {"input_tokens": 100, "output_tokens": 1000, "total_tokens": 1100}
    # All input is prompt text, all output is image.
    assert cost_usd(no_details, "gpt-image-2", None, None) == pytest.approx(0.0005 + 0.03)
    # Only image_tokens given: the rest of the input is text.
    one = {"input_tokens": 300, "output_tokens": 0, "input_tokens_details": {"image_tokens": 200}}
    assert cost_usd(one, "gpt-image-2", None, None) == pytest.approx(100 * 5e-6 + 200 * 8e-6)


def test_cached_and_output_text_tokens():
    usage = {
        "input_tokens": 1100,
        "output_tokens": 1100,
        "input_tokens_details": {"text_tokens": 100, "image_tokens": 1000, "cached_tokens": 400},
        "output_tokens_details": {"text_tokens": 100, "image_tokens": 1000},
    }
    # gpt-image-1.5: text in $5, image in $8, cached image $2, image out $32, text out $10
    expected = (100 * 5 + 600 * 8 + 400 * 2 + 1000 * 32 + 100 * 10) / 1e6
    assert cost_usd(usage, "gpt-image-1.5", None, None) == pytest.approx(expected)
    # gpt-image-2 lists no text output price: those tokens are priced as image output.
    expected = (100 * 5 + 600 * 8 + 400 * 2 + 1100 * 30) / 1e6
    assert cost_usd(usage, "gpt-image-2", None, None) == pytest.approx(expected)


def test_unknown_model_or_unpriceable_usage_gives_no_estimate():
    usage = _usage(10, 1000)
    assert cost_usd(usage, "gpt-image-2.5", "1024x1024", "high", "direct") is None
    assert cost_usd(usage, None, "1024x1024", "high", "direct") is None
    # No usage, a size the table does not list: a token-priced model's image is scaled
    # from the default size by pixel count (output tokens grow with the area) ...
    assert cost_usd(None, "gpt-image-2", "2048x2048", "high") == pytest.approx(4 * 0.211)
    # ... and `auto` quality is estimated at the entry's default, medium.
    assert cost_usd(None, "gpt-image-2", "1024x1024", "auto") == pytest.approx(0.053)
    # A quality the table does not price: unknown, not zero.
    assert cost_usd(None, "gpt-image-2", "1024x1024", "ultra") is None
    # No usage: the per-image table, times the images.
    assert cost_usd(None, "gpt-image-2", "1024x1024", "medium", images=3) == pytest.approx(0.159)


@pytest.mark.parametrize(
    ("model", "size", "quality", "expected"),
    [
        ("dall-e-3", "1024x1024", "standard", 0.04),
        ("dall-e-3", "1792x1024", "hd", 0.12),
        ("dall-e-3", None, None, 0.04),  # the API's defaults: standard, 1024x1024
        ("dall-e-2", "256x256", None, 0.016),
        ("dall-e-2", "512x512", "standard", 0.018),
        ("dall-e-3", "256x256", "standard", None),  # not a dall-e-3 size
    ],
)
def test_dall_e_is_priced_per_image(model, size, quality, expected):
    assert cost_usd({"irrelevant": 1}, model, size, quality, "direct") == expected


# -- the user's table -----------------------------------------------------------


def test_user_file_is_merged_over_the_shipped_table(tmp_path):
    path = tmp_path / "prices.toml"
    path.write_text(
        'date = "2027-01-15"\n'
        "batch_discount = 0.4\n"
        "[models.gpt-image-2]\n"
        "image_output = 60.0\n"
        "[models.gpt-image-2.per_image.high]\n"
        '"2048x2048" = 0.5\n'
        "[models.local]\n"
        'match = ["my-local-*"]\n'
        "text_input = 0\n"
        "image_output = 1.0\n",
        encoding="utf-8",
    )
    table = load_prices(path)
    assert table.date == "2027-01-15" and table.batch_discount == 0.4
    usage = _usage(0, 1000)
    assert cost_usd(usage, "gpt-image-2", None, None, prices=table) == pytest.approx(0.06)
    assert cost_usd(usage, "gpt-image-2", None, None, "batch", prices=table) == pytest.approx(0.024)
    entry = table.lookup("gpt-image-2")
    assert entry is not None and entry.tokens["text_input"] == 5.0  # kept, key by key
    assert entry.per_image["high"] == {
        "1024x1024": 0.211,
        "1024x1536": 0.165,
        "1536x1024": 0.165,
        "2048x2048": 0.5,
    }
    assert cost_usd(usage, "my-local-7b", None, None, prices=table) == pytest.approx(0.001)
    assert shipped_prices().lookup("my-local-7b") is None  # the shipped table is untouched


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models.gpt-image-2\n", "not a valid TOML file"),
        ("currency = 'EUR'\n", "unknown top-level key(s) currency"),
        ("batch_discount = 2\n", "batch_discount"),
        ("[models.gpt-image-2]\nimage_output = -1\n", "image_output: expected a price"),
        ("[models.gpt-image-2]\nimage_output = 'cheap'\n", "image_output: expected a price"),
        ("[models.gpt-image-2]\noutput = 3\n", "unknown key(s) output"),
        ("[models.x]\nmatch = 'x'\n", "match: expected a list"),
        ("[models.x.per_image]\nhd = 1\n", "per_image.hd: expected a table of sizes"),
    ],
)
def test_bad_user_file_is_a_usage_error(tmp_path, text, message):
    path = tmp_path / "prices.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=re.escape(message)):
        load_prices(path)


def test_missing_user_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot read the price table"):
        load_prices(tmp_path / "nope.toml")


async def test_bad_price_file_exits_2_before_sending(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", "sk-test")
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a cat"}])
    bad = tmp_path / "prices.toml"
    bad.write_text("[models.gpt-image-2]\nimage_output = 'cheap'\n", encoding="utf-8")
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(tmp_path / "out")]
    result = await run_cli([*argv, "--prices", str(bad)], capsys)
    assert result.code == 2
    assert "image_output: expected a price" in result.err
    assert not server.stats.log


# -- records and the tally --------------------------------------------------------


def _file(name: str) -> FileRecord:
    return FileRecord(path=name, sha256="0" * 64, bytes=1, format="png", width=1, height=1)


def _record(ident: str, **fields: object) -> JobRecord:
    base: dict[str, object] = {
        "id": ident,
        "line": 1,
        "status": "ok",
        "files": [_file(f"{ident}.png")],
        "request": {"prompt": "p", "model": "gpt-image-2", "size": "1024x1024"},
        "usage": _usage(40, 1760),
    }
    base.update(fields)
    return JobRecord.model_validate(base)


def test_price_record_for_both_runners():
    direct = price_record(_record("a"))
    assert direct.cost_usd == pytest.approx(0.0530)
    assert "cost_direct_usd" not in (direct.model_extra or {})
    batch = price_record(_record("b", via="batch"))  # the Batch API runner's records
    assert batch.cost_usd == pytest.approx(0.0265)
    assert batch.cost_direct_usd == pytest.approx(0.0530)  # type: ignore[attr-defined]
    nothing = price_record(_record("c", status="failed", files=[], usage=None))
    assert nothing.cost_usd == 0.0
    unknown = price_record(_record("d", request={"prompt": "p", "model": "mystery"}))
    assert unknown.cost_usd is None
    # The record keeps it through the manifest's JSON.
    again = JobRecord.model_validate_json(batch.model_dump_json())
    assert again.cost_usd == batch.cost_usd
    assert again.cost_direct_usd == batch.cost_direct_usd  # type: ignore[attr-defined]


def test_tally_sums_costs_counts_unpriced_and_the_direct_equivalent():
    records = [
        price_record(_record("a")),
        price_record(_record("b", via="batch")),
        price_record(_record("c", via="batch")),
        price_record(_record("d", request={"prompt": "p", "model": "mystery"})),
        JobRecord(id="e", line=5, status="invalid"),  # nothing spent: not unpriced
    ]
    summary = summarize(records)
    assert summary.cost_usd == pytest.approx(0.053 + 2 * 0.0265)
    assert summary.cost_direct_usd == pytest.approx(3 * 0.053)
    assert summary.cost_unpriced == 1
    counts = summary.counts()
    assert counts["cost_usd"] == pytest.approx(0.106)
    assert counts["cost_direct_usd"] == pytest.approx(0.159)
    assert counts["cost_unpriced"] == 1
    direct_only = summarize([price_record(_record("a"))]).counts()
    assert "cost_direct_usd" not in direct_only and direct_only["cost_unpriced"] == 0


def test_summary_table_and_report_show_the_saving(tmp_path):
    from rich.console import Console

    from pmock_batch.console import render_summary

    records = [price_record(_record(i, via="batch")) for i in ("a", "b")]
    summary = summarize(records)
    screen = Console(width=160, record=True, force_terminal=False)
    render_summary(summary, RunConfig(out_dir=tmp_path), screen)
    text = screen.export_text()
    assert re.search(r"cost \(estimate\) +\| \$0\.053 \(direct: \$0\.106, saved \$0\.053\)", text)
    assert summary_json(summary, RunConfig(out_dir=tmp_path), exit_code=0)["cost_direct_usd"] == (
        pytest.approx(0.106)
    )


def test_format_usd():
    assert format_usd(0) == "$0.00"
    assert format_usd(0.0531) == "$0.053"
    assert format_usd(12.345) == "$12.35"
    assert format_usd(1234.5) == "$1,234.50"


# -- end to end -----------------------------------------------------------------


async def test_run_against_the_mock_records_and_sums_the_cost(
    tmp_path: Path, capsys, make_mock, monkeypatch
):
    server = await make_mock(MockOptions(dialect="openai"))
    monkeypatch.setenv("PMOCK_API_KEY", "sk-test")
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {"id": "low", "prompt": PROMPT, "quality": "low", "size": "1024x1024"},
            {"id": "medium", "prompt": PROMPT, "quality": "medium", "size": "1024x1024"},
            {"id": "high", "prompt": PROMPT, "quality": "high", "size": "1024x1024"},
            {"id": "two", "prompt": PROMPT, "quality": "medium", "size": "1024x1024", "n": 2},
            {"id": "dalle", "prompt": PROMPT, "model": "dall-e-3", "quality": "hd"},
        ],
    )
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), "--json"]
    result = await run_cli(argv, capsys)
    assert result.code == 0, result.err
    records = {r["id"]: r for r in read_manifest(out)}
    for quality, price in REFERENCE_1024.items():
        assert records[quality]["cost_usd"] == pytest.approx(price, rel=0.05)
    assert records["two"]["cost_usd"] == pytest.approx(2 * records["medium"]["cost_usd"])
    assert records["dalle"]["cost_usd"] == 0.08
    total = sum(r["cost_usd"] for r in records.values())
    data = json.loads(result.out)
    assert data["cost_usd"] == pytest.approx(total, abs=1e-6)
    assert data["cost_unpriced"] == 0
    assert "cost_direct_usd" not in data  # no Batch API record
    assert re.search(
        rf"^\| cost \(estimate\) +\| {re.escape(format_usd(total))} +\|$", result.err, re.M
    ), result.err
    report = (out / "report.html").read_text(encoding="utf-8")
    assert 'data-stat="cost"' in report and format_usd(total) in report
    assert f'"cost_usd":{data["cost_usd"]}' in report  # the embedded counts, as --json


async def test_user_prices_change_the_estimate(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", "sk-test")
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "a cat", "model": "x-1"}])
    prices = tmp_path / "prices.toml"
    prices.write_text(
        '[models.x]\nmatch = ["x-*"]\ntext_input = 0\nimage_output = 1000.0\n', encoding="utf-8"
    )
    out = tmp_path / "out"
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), "--json"]
    unpriced = await run_cli([*argv, "--force"], capsys)
    assert unpriced.code == 0, unpriced.err
    assert json.loads(unpriced.out)["cost_unpriced"] == 1
    assert read_manifest(out)[-1]["cost_usd"] is None
    assert re.search(r"cost \(estimate\) +\| unknown; 1 job\(s\) not priced", unpriced.err)
    report = (out / "report.html").read_text(encoding="utf-8")
    assert re.search(r'data-stat="cost"[^>]*><span class="value">—</span>', report)
    priced = await run_cli([*argv, "--force", "--prices", str(prices)], capsys)
    assert priced.code == 0, priced.err
    record = read_manifest(out)[-1]
    assert record["cost_usd"] == pytest.approx(record["usage"]["output_tokens"] * 1000 / 1e6)
    assert json.loads(priced.out)["cost_unpriced"] == 0


async def test_the_dry_run_estimates_the_owed_images_by_hand(tmp_path, capsys):
    from helpers import run_cli, write_jobs

    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {"id": "a", "prompt": "a", "quality": "high", "size": "1024x1024"},
            {"id": "b", "prompt": "b", "quality": "high", "size": "1024x1024"},
            {"id": "c", "prompt": "c", "quality": "low", "size": "1536x1024"},
            {"id": "d", "prompt": "d", "quality": "medium", "n": 3},  # no size: 1024x1024
            {"id": "e", "prompt": "e", "model": "my-gateway-model"},  # no price at all
        ],
    )
    result = await run_cli([str(jobs), "--dry-run"], capsys)
    assert result.code == 0, result.err
    # 2 x 0.211 + 0.005 + 3 x 0.053 = 0.586; the Batch API charges half.
    assert (
        "Estimated cost of the 6 owed image(s) with a price: $0.586 (through the Batch API: $0.293)"
    ) in result.out
    assert "  3 × gpt-image-2 auto medium: $0.159" in result.out
    assert "  1 image(s) have no price in the table (see --prices)" in result.out
