"""What one request POSTs: a generation's JSON, or an edit's multipart body streamed from files.

An edit's form is built the way the official SDK builds it: the request
fields as plain parts, then one file as ``image`` or several as repeated
``image[]``, then ``mask``. Every file part carries its file name and its
real content type (``image/png``, ``image/jpeg`` or ``image/webp``): the real
API refuses ``application/octet-stream``, aiohttp's default for a file. The
files are opened, not read: aiohttp streams each part from its file as it
sends, so a body of sixteen 50 MB images never sits in memory. A form is sent
once; each attempt builds a new one, and :func:`posting` closes its files
afterwards. A file that changed since it was checked and hashed is not sent
(:class:`~pmock_batch.errors.InputFileError`): its fingerprint would be wrong.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

import aiohttp

from .config import RunConfig
from .inputs import EditInputs

__all__ = ["Body", "EditBody", "edit_form", "form_value", "posting"]


@dataclass(frozen=True, slots=True)
class EditBody:
    """An edit request: its fields and its input files."""

    fields: Mapping[str, Any]
    inputs: EditInputs


Body: TypeAlias = Mapping[str, Any] | EditBody


def form_value(value: Any) -> str:
    """A request field's value as a form part: text as is, numbers in decimal, JSON else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@contextmanager
def edit_form(fields: Mapping[str, Any], inputs: EditInputs) -> Iterator[aiohttp.FormData]:
    """The multipart body of one edit request; its files are closed on leaving."""
    form = aiohttp.FormData()
    for name, value in fields.items():
        form.add_field(name, form_value(value))
    key = "image" if len(inputs.images) == 1 else "image[]"
    parts = [(key, f) for f in inputs.images]
    if inputs.mask is not None:
        parts.append(("mask", inputs.mask))
    with ExitStack() as stack:
        for name, file in parts:
            handle = stack.enter_context(file.open())
            form.add_field(name, handle, filename=file.filename, content_type=file.content_type)
        yield form


@contextmanager
def posting(body: Body, config: RunConfig) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(url, what, keyword arguments of the POST)`` for ``body``; files closed on leaving."""
    if not isinstance(body, EditBody):
        yield config.endpoint, "POST /images/generations", {"json": body}
        return
    with edit_form(body.fields, body.inputs) as form:
        yield config.edits_endpoint, "POST /images/edits", {"data": form}
