"""The mock's ``/images/edits``: read the multipart body, check it as the real API does, and
make the answer's image from the input.

The body is read part by part: ``image`` (one file) or ``image[]`` (repeated,
up to 16), an optional ``mask``, and the request fields as text parts. The
checks, in order: the body is multipart; every file part is ``image/png``,
``image/jpeg`` or ``image/webp`` (``application/octet-stream`` is refused, as
the real API refuses it) and holds an image of that format; at most 50 MiB
per image and 4 MiB for the mask; 1 to 16 images; the mask is a PNG with an
alpha channel, the size of the first image. The fields then go through the
same :func:`~pmock_batch.mock.validation.parse_request` as generations, as an
edit: under the ``openai`` dialect ``input_fidelity`` is accepted only here,
for the models whose capability entry lists it in ``edit_fields``.

The answer's image is the first input tinted (where the mask is transparent,
when there is a mask), so a test can tell that the edit used its input.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web
from PIL import Image, UnidentifiedImageError

from ..inputs import CONTENT_TYPES, MAX_IMAGE_BYTES, MAX_IMAGES, MAX_MASK_BYTES
from ..models import ImageRequest
from .images import ImageSpec, encode_image
from .validation import Rejection, parse_request

__all__ = [
    "EDIT_PATHS",
    "TINT",
    "EditForm",
    "check_edit",
    "check_files",
    "read_edit",
    "stored_form",
    "tinted",
]

EDIT_PATHS = ("/v1/images/edits", "/api/ai/openai/v1/images/edits")
TINT = (255, 0, 160)  # the colour an edit is blended towards
TINT_ALPHA = 0.4
_INT_FIELDS = ("n", "output_compression", "partial_images")
_BOOL_FIELDS = {"true": True, "false": False}  # how a form sends ``stream`` (as the SDK does)
_FILE_PARTS = ("image", "image[]", "mask")
_TYPES = {v: k for k, v in CONTENT_TYPES.items()}  # image/png -> PNG


@dataclass(slots=True)
class Upload:
    """One file part as received."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes
    size: tuple[int, int] = (0, 0)
    alpha: bool = False


@dataclass(slots=True)
class EditForm:
    """A multipart edit body: the text fields, the files, and any problem found reading it."""

    fields: dict[str, Any] = field(default_factory=dict)
    images: list[Upload] = field(default_factory=list)
    mask: Upload | None = None
    rejection: Rejection | None = None

    def parts(self) -> list[dict[str, Any]]:
        """What the stats record of the file parts: name, file name, content type, bytes."""
        files = [*self.images, *([self.mask] if self.mask else [])]
        return [
            {
                "name": f.name,
                "filename": f.filename,
                "content_type": f.content_type,
                "bytes": len(f.data),
            }
            for f in files
        ]

    def body(self) -> dict[str, Any]:
        """The fields, plus the files' names, as the request log shows them."""
        out = dict(self.fields)
        out["image"] = [f.filename for f in self.images]
        if self.mask is not None:
            out["mask"] = self.mask.filename
        return out


def _reject(message: str, param: str | None, code: str) -> Rejection:
    return Rejection(((param or "body", message),), param=param, code=code, text=message)


async def _read_part(part: BodyPartReader, limit: int) -> bytes | None:
    """The part's bytes, or None when it holds more than ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def read_edit(request: web.Request) -> EditForm:
    """Read the multipart body; a problem with its files is kept as ``rejection``."""
    form = EditForm()
    if not request.content_type.startswith("multipart/form-data"):
        form.rejection = _reject(
            "Invalid Content-Type header: /images/edits expects multipart/form-data.",
            None,
            "invalid_request",
        )
        return form
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader) or part.name is None:
            continue
        if part.name not in _FILE_PARTS:
            text = await _read_part(part, 1 << 20)
            form.fields[part.name] = (text or b"").decode("utf-8", "replace")
            continue
        limit = MAX_MASK_BYTES if part.name == "mask" else MAX_IMAGE_BYTES
        data = await _read_part(part, limit)
        if data is None:
            what = "mask" if part.name == "mask" else "image"
            form.rejection = form.rejection or _reject(
                f"Invalid file '{what}': the file is larger than the limit of {limit:,} bytes.",
                what,
                "file_too_large",
            )
            await part.release()
            continue
        upload = Upload(part.name, part.filename, part.headers.get("Content-Type"), data)
        if part.name == "mask":
            form.mask = upload
        else:
            form.images.append(upload)
    return form


def _check_file(upload: Upload, param: str) -> Rejection | None:
    kind = _TYPES.get((upload.content_type or "").partition(";")[0].strip())
    if kind is None:
        return _reject(
            f"Invalid file '{param}': unsupported mimetype ('{upload.content_type}'). Supported "
            "file formats are 'image/jpeg', 'image/png', and 'image/webp'.",
            param,
            "unsupported_file_mimetype",
        )
    try:
        with Image.open(io.BytesIO(upload.data)) as image:
            fmt, upload.size = image.format, image.size
            upload.alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        fmt = None
    if fmt != kind:
        return _reject(
            f"Invalid file '{param}': the file is not a valid {upload.content_type} image.",
            param,
            "invalid_image_format",
        )
    return None


def check_files(form: EditForm) -> Rejection | None:
    """The checks of the form's files (the module docstring's); the first rejection, or None."""
    if form.rejection is not None:
        return form.rejection
    if not form.images:
        return _reject(
            "Missing required parameter: 'image'.", "image", "missing_required_parameter"
        )
    if len(form.images) > MAX_IMAGES:
        text = f"Invalid 'image': too many images ({len(form.images)}); at most {MAX_IMAGES}."
        return _reject(text, "image", "invalid_value")
    for upload in form.images:
        rejected = _check_file(upload, "image")
        if rejected is not None:
            return rejected
    mask = form.mask
    if mask is not None:
        rejected = _check_file(mask, "mask")
        if rejected is not None:
            return rejected
        if mask.content_type != "image/png" or not mask.alpha:
            text = "Invalid 'mask': the mask must be a PNG with an alpha channel."
            return _reject(text, "mask", "invalid_value")
        if mask.size != form.images[0].size:
            text = (
                f"Invalid 'mask': it is {mask.size[0]}x{mask.size[1]}, but the image is "
                f"{form.images[0].size[0]}x{form.images[0].size[1]}; they must match."
            )
            return _reject(text, "mask", "invalid_value")
    return None


def check_edit(form: EditForm, *, dialect: str) -> ImageRequest | Rejection:
    """The checks of the module docstring; the validated request, or the first rejection."""
    rejected = check_files(form)
    if rejected is not None:
        return rejected
    fields: dict[str, Any] = {}
    for name, value in form.fields.items():
        if name in _INT_FIELDS and value.strip().isdigit():
            fields[name] = int(value)
        elif name == "stream" and value.strip().lower() in _BOOL_FIELDS:
            fields[name] = _BOOL_FIELDS[value.strip().lower()]
        else:
            fields[name] = value
    return parse_request(fields, dialect=dialect, edit=True)


def stored_form(images: list[tuple[str, bytes]], mask: tuple[str, bytes] | None) -> EditForm:
    """A Batch API edit's inputs (``(file name, bytes)`` of uploaded files) as a form, each
    file's content type the one its bytes show; check it with :func:`check_files`."""

    def upload(name: str, filename: str, data: bytes) -> Upload:
        try:
            with Image.open(io.BytesIO(data)) as image:
                kind = CONTENT_TYPES.get(image.format or "")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            kind = None
        return Upload(name, filename, kind or "application/octet-stream", data)

    form = EditForm(images=[upload("image[]", name, data) for name, data in images])
    if mask is not None:
        form.mask = upload("mask", *mask)
    return form


def tinted(form: EditForm, spec: ImageSpec) -> bytes:
    """The first input blended towards :data:`TINT` (only where the mask is transparent),
    in ``spec``'s format and size. CPU-bound: call it from a worker thread."""
    with Image.open(io.BytesIO(form.images[0].data)) as source:
        image = source.convert("RGBA")
    tint = Image.new("RGBA", image.size, (*TINT, 255))
    edited = Image.blend(image, tint, TINT_ALPHA)
    if form.mask is not None:
        with Image.open(io.BytesIO(form.mask.data)) as mask:
            keep = mask.convert("RGBA").getchannel("A")  # opaque: keep the input
        edited = Image.composite(image, edited, keep)
    if (spec.width, spec.height) != image.size:
        edited = edited.resize((spec.width, spec.height))
    if spec.format == "jpeg" or (spec.format != "png" and not spec.transparent):
        edited = edited.convert("RGB")
    return encode_image(edited, spec)
