"""A spending cap: ``--max-images N`` and ``--max-cost USD``.

Before each request the runner asks :meth:`Budget.reserve` with the request's
estimated cost (its per-image list price). The request goes only if what has
been spent, plus what is in flight, plus this one stays within the caps; else
the run stops dispatching, lets the requests in flight finish, and records the
rest as not run (kind ``budget``), so the next run (the next cron tick)
continues. After the answer, :meth:`Budget.settle` turns the reservation into
spending: an answer the server billed (a 2xx, usable or not) or may have billed
(a timeout) counts, at its ``usage`` cost when it has one; a refused or failed
request (a 4xx, a 5xx, a refused connection) costs nothing. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .models import ImageRequest
from .prices import Prices, cost_usd, format_usd

__all__ = ["Budget", "image_cost"]


def image_cost(
    request: ImageRequest, usage: dict[str, Any] | None, prices: Prices | None
) -> float | None:
    """One image's cost: from its ``usage`` once answered, else the per-image list price."""
    return cost_usd(usage, request.model, request.size, request.quality, prices=prices)


@dataclass(slots=True)
class Budget:
    """What a run may spend, and what it has spent and holds in flight."""

    max_images: int | None = None
    max_cost: float | None = None  # USD
    images: int = 0  # billed, or possibly billed, so far
    cost: float = 0.0  # USD, estimated, of those
    _held_images: int = 0  # requests in flight
    _held_cost: float = 0.0
    _refused: float = 0.0  # the dearest request the cap refused (USD, estimated)
    maybe_cost: float = 0.0  # of ``cost``: timeouts and cut streams, that may have been billed

    @property
    def capped(self) -> bool:
        return self.max_images is not None or self.max_cost is not None

    def reserve(self, estimate: float | None) -> bool:
        """Hold room for one more request costing about ``estimate``; False when none is left."""
        if self.max_images is not None and self.images + self._held_images + 1 > self.max_images:
            return False
        cost = estimate or 0.0
        if self.max_cost is not None and self.cost + self._held_cost + cost > self.max_cost + 1e-9:
            self._refused = max(self._refused, cost)
            return False
        self._held_images += 1
        self._held_cost += cost
        return True

    def settle(
        self, estimate: float | None, *, billed: bool, cost: float | None, maybe: bool = False
    ) -> None:
        """The request that held ``estimate`` is answered: count it if it was billed, or
        ``maybe`` billed (a timeout: the server may have made the image)."""
        self._held_images -= 1
        self._held_cost -= estimate or 0.0
        if billed:
            self.images += 1
            spent = cost if cost is not None else (estimate or 0.0)
            self.cost += spent
            self.maybe_cost += spent if maybe else 0.0

    def reached(self) -> str:
        """Why the budget stops the run, in words: what was spent of what was allowed."""
        if self.max_cost is not None:
            text = f"budget reached: {format_usd(self.cost)} of {format_usd(self.max_cost)} spent"
        else:
            text = f"budget reached: {self.images} of {self.max_images} images spent"
        text += f", {self._held_images} in flight" if self._held_images else ""
        if self.max_cost is not None and self.maybe_cost:
            text += f" ({format_usd(self.maybe_cost)} of it for timeouts that may have been billed)"
        if self.max_cost is not None and self._refused > self.max_cost:  # no run ever fits
            text += f" (one image costs about {format_usd(self._refused)}: raise --max-cost)"
        return text
