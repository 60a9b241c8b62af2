"""What a record cost, estimated: ``prices.toml`` plus the user's own table.

One :class:`PriceEntry` per model family holds its per-token prices (USD per
1M tokens) and, for models billed per image, a per-image table by quality and
size. :func:`cost_usd` is pure: from an answer's ``usage`` (or the per-image
table) and the model, size, quality and runner, it gives the estimate in USD,
or None when the table cannot price it. An unknown model gets no estimate,
never a guess. The Batch API charges ``batch_discount`` of the direct price.

Both runners call :func:`price_record` on the records they build, so the
summary, ``--json`` and report.html count the same numbers.
"""

from __future__ import annotations

import fnmatch
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import UsageError
from .models import JobRecord
from .tables import check_table, read_table

__all__ = [
    "PriceEntry",
    "Prices",
    "cost_usd",
    "format_usd",
    "load_prices",
    "price_record",
    "shipped_prices",
]

PER_MILLION = 1_000_000
DIGITS = 6  # cost_usd is rounded to a millionth of a dollar
TOKEN_KEYS = (
    "text_input",
    "text_cached_input",
    "image_input",
    "image_cached_input",
    "image_output",
    "text_output",
)
_ENTRY_KEYS = frozenset({"match", "per_image", "default_quality", "default_size", *TOKEN_KEYS})
_TOP_KEYS = frozenset({"date", "batch_discount", "models"})
PerImage = Mapping[str, Mapping[str, float]]  # quality -> size -> USD per image


@dataclass(frozen=True, slots=True)
class PriceEntry:
    """The prices of one model family."""

    name: str
    match: tuple[str, ...]
    tokens: Mapping[str, float] = field(default_factory=dict)  # TOKEN_KEYS -> USD per 1M
    per_image: PerImage = field(default_factory=dict)
    default_quality: str | None = None
    default_size: str | None = None

    def token_cost(self, usage: Mapping[str, Any] | None) -> float | None:
        """The direct price of ``usage``, or None without ``output_tokens`` or a needed price."""
        if not usage or _count(usage.get("output_tokens")) is None:
            return None
        parts = _token_counts(usage)
        if "text_output" not in self.tokens:  # not priced apart: at the (higher) image price
            parts["image_output"] += parts.pop("text_output")
        total = 0.0
        for key, count in parts.items():
            if not count:
                continue
            price = self.tokens.get(key)
            if price is None and key.endswith("_cached_input"):
                price = self.tokens.get(key.replace("_cached", ""))  # no discount known
            if price is None:
                return None  # tokens the table cannot price: no estimate, not a wrong one
            total += count * price / PER_MILLION
        return total

    def image_price(self, size: str | None, quality: str | None) -> float | None:
        """The per-image price for ``size`` and ``quality``, or None."""
        if quality in (None, "auto"):
            quality = self.default_quality
        if size in (None, "auto"):
            size = self.default_size
        if quality is None or size is None:
            return None
        by_size = self.per_image.get(quality, {})
        price = by_size.get(size)
        if price is None and "image_output" in self.tokens and self.default_size in by_size:
            # A size the table does not list: scaled from the default size by pixel count
            # (output tokens grow with the area), an estimate for gpt-image-2's free sizes.
            area, base = _pixels(size), _pixels(self.default_size or "")
            if area and base:
                price = by_size[self.default_size or ""] * area / base
        return price


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value)


def _token_counts(usage: Mapping[str, Any]) -> dict[str, int]:
    """``usage`` split by price: what the details say, the rest inferred sensibly.

    Without ``input_tokens_details`` every input token is prompt text (a
    generation's only input); with one of its counts, the other is the rest.
    Cached tokens (``cached_tokens``) are taken from the image tokens first.
    Without ``output_tokens_details`` every output token is an image token.
    """
    total_in = _count(usage.get("input_tokens")) or 0
    details = usage.get("input_tokens_details")
    details = details if isinstance(details, Mapping) else {}
    text, image = _count(details.get("text_tokens")), _count(details.get("image_tokens"))
    if text is None and image is None:
        text, image = total_in, 0
    elif text is None:
        text = max(0, total_in - (image or 0))
    elif image is None:
        image = max(0, total_in - text)
    cached = _count(details.get("cached_tokens")) or 0
    cached_image = min(cached, image or 0)
    cached_text = min(cached - cached_image, text)
    total_out = _count(usage.get("output_tokens")) or 0
    out = usage.get("output_tokens_details")
    out = out if isinstance(out, Mapping) else {}
    out_text, out_image = _count(out.get("text_tokens")), _count(out.get("image_tokens"))
    if out_image is None:
        out_image = max(0, total_out - (out_text or 0))
    return {
        "text_input": text - cached_text,
        "text_cached_input": cached_text,
        "image_input": (image or 0) - cached_image,
        "image_cached_input": cached_image,
        "image_output": out_image,
        "text_output": out_text or 0,
    }


class Prices:
    """The price table: the entries, looked up by model name, and the Batch API discount."""

    def __init__(
        self, models: Sequence[PriceEntry], *, date: str = "", batch_discount: float = 0.5
    ) -> None:
        self.models = tuple(models)
        self.date = date
        self.batch_discount = batch_discount
        # Longest pattern first, so the most specific one wins.
        self._patterns = sorted(
            ((pattern, entry) for entry in self.models for pattern in entry.match),
            key=lambda item: -len(item[0]),
        )

    def lookup(self, model: str) -> PriceEntry | None:
        """The entry for ``model``; None when no entry matches."""
        for pattern, entry in self._patterns:
            if fnmatch.fnmatchcase(model, pattern):
                return entry
        return None

    def merged(self, data: Mapping[str, Any], *, source: str) -> Prices:
        """A new table: ``data`` (a parsed TOML table) merged over this one."""
        unknown = set(data) - _TOP_KEYS
        if unknown:
            keys = ", ".join(sorted(unknown))
            raise UsageError(
                f"{source}: unknown top-level key(s) {keys}; known: date, batch_discount, models"
            )
        date = data.get("date", self.date)
        if not isinstance(date, str):
            date = str(date)  # a bare TOML date
        discount = data.get("batch_discount", self.batch_discount)
        if not _number(discount) or not 0 < discount <= 1:
            raise UsageError(f"{source}: batch_discount: expected a number above 0, at most 1")
        models = {entry.name: entry for entry in self.models}
        raw_models = data.get("models", {})
        if not isinstance(raw_models, dict):
            raise UsageError(f"{source}: [models] must be a table")
        for name, raw in raw_models.items():
            base = models.get(name) or PriceEntry(name=name, match=(name,))
            models[name] = _merge_entry(base, raw, f"{source}: [models.{name}]")
        return Prices(list(models.values()), date=date, batch_discount=float(discount))


def _number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _price(value: Any, where: str) -> float:
    if not _number(value):
        raise UsageError(f"{where}: expected a price in USD, a number of 0 or more")
    return float(value)


def _merge_entry(base: PriceEntry, raw: Any, where: str) -> PriceEntry:
    """``base`` updated with the keys of ``raw``; ``per_image`` is merged size by size."""
    raw = check_table(raw, _ENTRY_KEYS, where)
    match = base.match
    if "match" in raw:
        value = raw["match"]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise UsageError(f"{where}.match: expected a list of model names")
        match = tuple(value)
    tokens = dict(base.tokens)
    for key in TOKEN_KEYS:
        if key in raw:
            tokens[key] = _price(raw[key], f"{where}.{key}")
    per_image = {quality: dict(sizes) for quality, sizes in base.per_image.items()}
    raw_images = raw.get("per_image", {})
    if not isinstance(raw_images, dict):
        raise UsageError(f"{where}.per_image: expected a table of qualities")
    for quality, sizes in raw_images.items():
        if not isinstance(sizes, dict):
            raise UsageError(f"{where}.per_image.{quality}: expected a table of sizes")
        table = per_image.setdefault(quality, {})
        for size, value in sizes.items():
            table[size] = _price(value, f"{where}.per_image.{quality}.{size}")
    defaults = {}
    for key in ("default_quality", "default_size"):
        if key in raw and not isinstance(raw[key], str):
            raise UsageError(f"{where}.{key}: expected a string")
        defaults[key] = raw.get(key, getattr(base, key))
    return replace(base, match=match, tokens=tokens, per_image=per_image, **defaults)


@lru_cache(maxsize=1)
def shipped_prices() -> Prices:
    """The table shipped with pmock-batch (``prices.toml``)."""
    text = resources.files("pmock_batch").joinpath("prices.toml").read_text("utf-8")
    return Prices([]).merged(tomllib.loads(text), source="prices.toml")


def load_prices(path: Path | None = None) -> Prices:
    """The shipped table, with the user's file (``--prices FILE``) merged over it."""
    table = shipped_prices()
    if path is None:
        return table
    return table.merged(read_table(path, "price table"), source=str(path))


def cost_usd(
    usage: Mapping[str, Any] | None,
    model: str | None,
    size: str | None,
    quality: str | None,
    via: str | None = None,
    *,
    images: int = 1,
    prices: Prices | None = None,
) -> float | None:
    """The estimated cost in USD of ``images`` images, or None when it cannot be priced.

    Token-priced models are priced from ``usage``; without a usage block (or
    for models billed per image) the per-image table is used, ``images`` times.
    ``via="batch"`` applies the Batch API discount.
    """
    table = prices or shipped_prices()
    entry = table.lookup(model) if model else None
    if entry is None:
        return None
    cost = entry.token_cost(usage) if entry.tokens else None
    if cost is None:
        each = entry.image_price(size, quality)
        if each is None:
            return None
        cost = each * images
    if via == "batch":
        cost *= table.batch_discount
    return round(cost, DIGITS)


def format_usd(value: float) -> str:
    """``$12.34``; below a dollar, ``$0.053``, so that a few images do not read $0.05."""
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.3f}"


def price_record(
    record: JobRecord, *, via: str | None = None, prices: Prices | None = None
) -> JobRecord:
    """Set ``record.cost_usd`` (and, for a Batch API record, ``cost_direct_usd``); return it.

    The model, size and quality are the recorded request's; the number of
    images is the record's files. ``via`` defaults to the record's own ``via``
    (``"batch"`` for the Batch API runner). A record that saved no image and
    carries no usage cost nothing that is known: 0.
    """
    via = via or getattr(record, "via", None) or "direct"
    images = max(0, len(record.files) - record.kept)  # those an earlier run saved: paid then
    if not images and not record.usage:
        record.cost_usd = 0.0
        if via == "batch":
            record.cost_direct_usd = 0.0  # type: ignore[attr-defined]  # an extra field
        return record
    request = record.request or {}
    model, size, quality = (request.get(key) for key in ("model", "size", "quality"))
    args = (
        record.usage,
        model if isinstance(model, str) else None,
        size if isinstance(size, str) else None,
        quality if isinstance(quality, str) else None,
    )
    record.cost_usd = cost_usd(*args, via, images=images, prices=prices)
    if via == "batch":
        direct = cost_usd(*args, "direct", images=images, prices=prices)
        record.cost_direct_usd = direct  # type: ignore[attr-defined]  # an extra field
    return record


def _pixels(size: str) -> int | None:
    """``1536x864`` -> 1327104; None for anything else."""
    width, _, height = size.partition("x")
    if width.isdigit() and height.isdigit():
        return int(width) * int(height)
    return None
