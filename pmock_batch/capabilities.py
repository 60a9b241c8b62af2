"""What each image model accepts, as data: ``capabilities.toml`` plus the user's own table.

One :class:`ModelEntry` per model family says which request fields the model
accepts, the allowed values of its enums, its size rule, its largest ``n`` and
whether ``response_format`` may be sent. :meth:`Capabilities.check` checks a
validated :class:`~pmock_batch.models.ImageRequest` against its model's entry
and says what not to send. The job reader uses it (``client`` mode: fields
that would be refused are dropped with a warning where the image comes back
the same); the mock's ``openai`` dialect uses it to refuse what the real API
refuses (``server`` mode). So the client and the mock cannot drift apart.

An edit (a job with input images) is checked with ``edit=True``: the entry
must say ``edits`` (dall-e-3's does not), and its ``edit_fields`` are accepted
besides its ``fields`` (``input_fidelity`` for gpt-image-1, -1.5 and -1-mini).

A model no entry matches gets the ``[default]`` entry: the pmock seed's enums
are checked, everything set is sent, and a warning says the model is unknown.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .errors import UsageError
from .models import ImageRequest, did_you_mean
from .tables import check_table, read_table

__all__ = [
    "Capabilities",
    "Checked",
    "ModelEntry",
    "gpt_image_2_size_problem",
    "load_capabilities",
    "shipped_capabilities",
]

SIZE_RULES = ("gpt-image-2",)
_SIZE = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})\Z")
_ENTRY_KEYS = frozenset(
    {
        "match",
        "fields",
        "enums",
        "sizes",
        "size_rule",
        "max_n",
        "response_format",
        "edits",
        "edit_fields",
    }
)
# Never sent to generations: an edits field, and a streaming field (see models.py).
EDITS_ONLY = "input_fidelity"
STREAM_ONLY = "partial_images"
# gpt-image-2's size rule (../shared/reference/openai-images.md, section 1).
_EDGE_STEP = 16
_MAX_EDGE = 3840
_MAX_RATIO = 3.0
_MIN_PIXELS = 655_360
_MAX_PIXELS = 8_294_400

Mode = Literal["client", "server"]


def gpt_image_2_size_problem(width: int, height: int) -> str | None:
    """Why ``WxH`` breaks gpt-image-2's size rule, or None when it follows it."""
    if width % _EDGE_STEP or height % _EDGE_STEP:
        return f"both edges must be multiples of {_EDGE_STEP}"
    if max(width, height) > _MAX_EDGE:
        return f"the longest edge must be at most {_MAX_EDGE}"
    if max(width, height) > _MAX_RATIO * min(width, height):
        return "the aspect ratio must be at most 3:1"
    if not _MIN_PIXELS <= width * height <= _MAX_PIXELS:
        return f"the image must have {_MIN_PIXELS:,} to {_MAX_PIXELS:,} pixels"
    return None


@dataclass(frozen=True, slots=True)
class Checked:
    """What :meth:`Capabilities.check` found for one request."""

    entry: ModelEntry
    problems: list[tuple[str, str]] = field(default_factory=list)  # (field, problem)
    unsent: tuple[str, ...] = ()  # fields set on the job but not sent
    notes: list[tuple[str, str]] = field(default_factory=list)  # (key, warning): say each once


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """What one model family accepts on ``/images/generations``."""

    name: str
    match: tuple[str, ...]
    fields: frozenset[str]
    enums: Mapping[str, tuple[str, ...]]
    sizes: tuple[str, ...]
    size_rule: str | None
    max_n: int
    response_format: bool
    known: bool = True  # False for the [default] entry given to an unknown model
    edits: bool = True  # whether the model serves /images/edits
    edit_fields: frozenset[str] = frozenset()  # fields accepted on edits besides ``fields``

    def size_problem(self, size: str) -> str | None:
        """Why ``size`` is not allowed for this model, or None."""
        if size in self.sizes:
            return None
        match = _SIZE.match(size)
        if size == "auto":  # a size, but not one this model takes
            return f"{size!r} is not one of {', '.join(self.sizes)}{self._for()}"
        if match is None:
            return f"{size!r} is not a size: use WxH, such as 1024x1024, or auto"
        if self.size_rule == "gpt-image-2":
            why = gpt_image_2_size_problem(int(match[1]), int(match[2]))
            if why is None:
                return None
            return f"{size!r} is not allowed for {self.name}: {why}"
        listed = ", ".join(self.sizes)
        return f"{size!r} is not one of {listed}{self._for()}"

    def _for(self) -> str:
        return f" for {self.name}" if self.known else ""


def _set_fields(request: ImageRequest) -> dict[str, Any]:
    return {k: v for k, v in vars(request).items() if v is not None and k != "extra_body"}


class Capabilities:
    """The capability table: a default entry and the model entries, looked up by name."""

    def __init__(self, default: ModelEntry, models: Sequence[ModelEntry]) -> None:
        self.default = default
        self.models = tuple(models)
        # Longest pattern first, so the most specific one wins.
        self._patterns = sorted(
            ((pattern, entry) for entry in self.models for pattern in entry.match),
            key=lambda item: -len(item[0]),
        )
        self._looked_up: dict[str, ModelEntry] = {}  # a job file names few models, many times

    def lookup(self, model: str) -> ModelEntry:
        """The entry for ``model``; the default entry (``known=False``) when none matches."""
        cached = self._looked_up.get(model)
        if cached is None:
            cached = self._looked_up[model] = self._lookup(model)
        return cached

    def _lookup(self, model: str) -> ModelEntry:
        for pattern, entry in self._patterns:
            if fnmatch.fnmatchcase(model, pattern):
                return entry
        return ModelEntry(
            name=model,
            match=(model,),
            fields=self.default.fields,
            enums=self.default.enums,
            sizes=self.default.sizes,
            size_rule=self.default.size_rule,
            max_n=self.default.max_n,
            response_format=self.default.response_format,
            known=False,
            edits=self.default.edits,
            edit_fields=self.default.edit_fields,
        )

    def check(
        self,
        request: ImageRequest,
        *,
        mode: Mode = "client",
        entry: ModelEntry | None = None,
        edit: bool = False,
    ) -> Checked:
        """Check a validated request against its model's entry.

        In ``client`` mode (the job reader) ``response_format`` for a model that
        refuses it, ``input_fidelity``, ``stream`` for a model that does not
        stream, and ``partial_images`` without streaming are dropped with a
        warning, since the image that comes back is the same (``stream: false``
        silently: it is the default). In ``server``
        mode (the mock's ``openai`` dialect) every field the entry does not
        list is a problem, as the real API answers 400 ``unknown_parameter``.
        ``entry`` overrides the lookup (the mock's ``pmock`` dialect checks
        every model against the seed's ``[default]`` entry). With ``edit`` the
        request is an edit: the model must serve edits, and its ``edit_fields``
        are accepted too (``input_fidelity`` is sent where they list it).
        """
        entry = entry or self.lookup(request.model)
        out = Checked(entry)
        unsent: list[str] = []
        accepted = entry.fields | entry.edit_fields if edit else entry.fields
        if edit and not entry.edits:
            out.problems.append(("model", f"{entry.name} does not edit images (no /images/edits)"))
        if not entry.known and mode == "client":
            out.notes.append(
                (
                    f"model:{request.model}",
                    f"model {request.model!r} is not in the capability table: its fields are "
                    "checked against pmock's documented values only and sent as given "
                    "(describe it with --capabilities FILE)",
                )
            )
        for name, value in _set_fields(request).items():
            if mode == "client" and name == "stream" and value is False:
                unsent.append(name)  # the default: the answer comes whole either way
                continue
            dropped = self._dropped(entry, name, request, edit) if mode == "client" else None
            if dropped is not None:  # still a known value, though it is not sent
                unsent.append(name)
                out.notes.append((name, dropped))
                allowed, whose = self.default.enums.get(name), ""
            elif name not in accepted:
                out.problems.append((name, f"not accepted by {entry.name}"))
                continue
            else:
                allowed, whose = entry.enums.get(name), entry._for()
            if allowed is not None and value not in allowed:
                hint = did_you_mean(value, allowed) if isinstance(value, str) else ""
                shown = repr(value) if isinstance(value, str) else str(value)
                out.problems.append(
                    (name, f"{shown} is not one of {', '.join(allowed)}{whose}{hint}")
                )
        if request.size is not None and "size" in accepted:
            why = entry.size_problem(request.size)
            if why is not None:
                out.problems.append(("size", why))
        if request.n is not None and request.n > entry.max_n:
            out.problems.append(
                ("n", f"{request.n:,} is more than {entry.max_n}, the most{entry._for()}")
            )
        return Checked(entry, out.problems, tuple(unsent), out.notes)

    @staticmethod
    def _dropped(entry: ModelEntry, name: str, request: ImageRequest, edit: bool) -> str | None:
        """The warning for a field the client does not send to this model, or None."""
        if name == EDITS_ONLY and not edit:
            return "input_fidelity only affects image edits; it is not sent to generations"
        if name == EDITS_ONLY and name not in entry.edit_fields:
            return f"{entry.name} ignores input_fidelity on edits; it is not sent"
        if name == "stream" and name not in entry.fields:
            return f"{entry.name} does not stream; its answer is read whole, stream is not sent"
        if name == STREAM_ONLY and not (request.stream and "stream" in entry.fields):
            return "partial_images needs streaming (stream: true or --stream); not sent"
        if name == "response_format" and not entry.response_format:
            return f"{entry.name} always returns b64_json; response_format is not sent"
        return None

    def merged(self, data: Mapping[str, Any], *, source: str) -> Capabilities:
        """A new table: ``data`` (a parsed TOML table) merged over this one."""
        unknown = set(data) - {"default", "models"}
        if unknown:
            raise UsageError(f"{source}: unknown top-level key(s): {', '.join(sorted(unknown))}")
        default = self.default
        if "default" in data:
            default = _merge_entry(default, data["default"], f"{source}: [default]")
        models = {entry.name: entry for entry in self.models}
        raw_models = data.get("models", {})
        if not isinstance(raw_models, dict):
            raise UsageError(f"{source}: [models] must be a table")
        for name, raw in raw_models.items():
            where = f"{source}: [models.{name}]"
            base = models.get(name)
            if base is None:
                base = replace(default, name=name, match=(name,), known=True)
            models[name] = _merge_entry(base, raw, where)
        return Capabilities(default, list(models.values()))


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{where}: expected a list of strings")
    return tuple(value)


def _merge_entry(base: ModelEntry, raw: Any, where: str) -> ModelEntry:
    """``base`` updated with the keys of ``raw``; enums are merged value list by value list."""
    raw = check_table(raw, _ENTRY_KEYS, where)
    enums = dict(base.enums)
    raw_enums = raw.get("enums", {})
    if not isinstance(raw_enums, dict):
        raise UsageError(f"{where}.enums: expected a table")
    for name, values in raw_enums.items():
        enums[name] = _strings(values, f"{where}.enums.{name}")
    size_rule = raw.get("size_rule", base.size_rule)
    if size_rule is not None and size_rule not in SIZE_RULES:
        raise UsageError(f"{where}.size_rule: {size_rule!r} is not one of {', '.join(SIZE_RULES)}")
    max_n = raw.get("max_n", base.max_n)
    if not isinstance(max_n, int) or isinstance(max_n, bool) or not 1 <= max_n <= 100:
        raise UsageError(f"{where}.max_n: expected a whole number from 1 to 100")
    response_format = raw.get("response_format", base.response_format)
    if not isinstance(response_format, bool):
        raise UsageError(f"{where}.response_format: expected true or false")
    edits = raw.get("edits", base.edits)
    if not isinstance(edits, bool):
        raise UsageError(f"{where}.edits: expected true or false")
    edit_fields = base.edit_fields
    if "edit_fields" in raw:
        edit_fields = frozenset(_strings(raw["edit_fields"], f"{where}.edit_fields"))
    return ModelEntry(
        name=base.name,
        match=_strings(raw["match"], f"{where}.match") if "match" in raw else base.match,
        fields=frozenset(_strings(raw["fields"], f"{where}.fields"))
        if "fields" in raw
        else base.fields,
        enums=enums,
        sizes=_strings(raw["sizes"], f"{where}.sizes") if "sizes" in raw else base.sizes,
        size_rule=size_rule,
        max_n=max_n,
        response_format=response_format,
        known=base.known,
        edits=edits,
        edit_fields=edit_fields,
    )


_EMPTY = ModelEntry("default", (), frozenset(), {}, (), None, 1, True, known=False)


@lru_cache(maxsize=1)
def shipped_capabilities() -> Capabilities:
    """The table shipped with pmock-batch (``capabilities.toml``)."""
    text = resources.files("pmock_batch").joinpath("capabilities.toml").read_text("utf-8")
    return Capabilities(_EMPTY, []).merged(tomllib.loads(text), source="capabilities.toml")


def load_capabilities(path: Path | None = None) -> Capabilities:
    """The shipped table, with the user's file (``--capabilities FILE``) merged over it."""
    table = shipped_capabilities()
    if path is None:
        return table
    return table.merged(read_table(path, "capability table"), source=str(path))
