"""The HTTP client against the mock: image downloads over the size cap, malformed image URLs."""

from __future__ import annotations

import pytest
from helpers import RUN_KEY

from pmock_batch.config import RunConfig
from pmock_batch.images import ImageSink
from pmock_batch.mock import MockOptions

KEY = RUN_KEY


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    """Every test here talks to a mock with this key (conftest isolates the rest)."""
    monkeypatch.setenv("PMOCK_API_KEY", KEY)


async def test_url_download_over_the_cap_fails_without_retry(tmp_path, make_mock):
    from pmock_batch.client import ImagesClient
    from pmock_batch.errors import ResponseTooLargeError

    server = await make_mock(MockOptions())
    config = RunConfig(out_dir=tmp_path / "out", base_url=server.base_url, api_key=KEY)
    async with ImagesClient(config, max_download_bytes=1000) as client:
        reply = await client.generate({"prompt": "an owl", "response_format": "url"})
        url = reply.body.data[0].url
        assert url is not None and url.startswith("http://127.0.0.1:")
        sink = ImageSink(tmp_path / "out", "owl")
        with pytest.raises(ResponseTooLargeError):
            await client.download(url, sink)
        sink.discard()
        with pytest.raises(Exception, match="scheme 'file'"):
            await client.download("file:///etc/passwd", sink)


async def test_a_malformed_image_url_is_an_invalid_response(tmp_path, make_mock):
    from pmock_batch.client import ImagesClient
    from pmock_batch.errors import InvalidResponseError

    server = await make_mock(MockOptions())
    config = RunConfig(out_dir=tmp_path / "out", base_url=server.base_url, api_key=KEY)
    sink = ImageSink(tmp_path / "out", "x")
    async with ImagesClient(config) as client:
        with pytest.raises(InvalidResponseError, match="malformed"):
            await client.download("http://[bad", sink)
