"""Real networks: proxies, CA bundles, extra headers and the key's variable.

Every run crosses real loopback sockets: the CLI, a real forward proxy
(proxy.py from PyPI, started here as a subprocess) and the project's mock,
served over TLS with a throwaway CA from trustme where HTTPS is tested.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from helpers import by_id, open_image, read_manifest, run_cli, write_jobs

from pmock_batch.answers import status_from_body as _status_error
from pmock_batch.config import RunConfig
from pmock_batch.errors import (
    APIConnectionError,
    Decision,
    ProxyRefusedError,
    UntrustedCertificateError,
    status_error,
)
from pmock_batch.failures import describe
from pmock_batch.mock import MockOptions
from pmock_batch.network import (
    ProxyRoutes,
    check_headers,
    check_proxy,
    parse_header,
    safe_url,
    ssl_context,
)

KEY = "sk-test-0123456789abcdefSECRET"
PROXY_PASSWORD = "pr0xy-Pa55word"
ORG = "org-Secret0rgValue42"
TOKEN = "gw-Secret-Token-9876543210"
GENERATIONS = "/v1/images/generations"


# -- a real forward proxy on loopback ---------------------------------------------------

_FORWARDED = re.compile(r" - forwarded (?P<method>[A-Z]+) (?P<target>\S+)$", re.M)
TESTS = Path(__file__).resolve().parent


class ForwardProxy:
    """proxy.py in a subprocess on 127.0.0.1, with a plugin that marks and logs each request."""

    def __init__(self, workdir: Path, *, basic_auth: str | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = workdir / "proxy.log"
        port_file = workdir / "proxy.port"
        argv = [
            sys.executable,
            "-m",
            "proxy",
            "--hostname",
            "127.0.0.1",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--num-acceptors",
            "1",
            "--threaded",
            "--log-level",
            "INFO",
            "--log-file",
            str(self._log),
            "--plugins",
            "proxy_plugin.MarkRequests",
        ]
        if basic_auth is not None:
            argv += ["--basic-auth", basic_auth]
        self._proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=_plain_env(),
            start_new_session=True,  # its acceptors are forked children: stop() kills the group
        )
        deadline = time.monotonic() + 15
        while True:
            text = port_file.read_text().strip() if port_file.exists() else ""
            if text:
                self.port = int(text)
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    break
                except OSError:
                    pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the proxy did not start")
            time.sleep(0.02)

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}"

    def forwarded(self) -> list[tuple[str, str]]:
        """(method, target) of every request it handled, such as ("CONNECT", "127.0.0.1:4431")."""
        text = self._log.read_text(errors="replace") if self._log.exists() else ""
        return [(m["method"], m["target"]) for m in _FORWARDED.finditer(text)]

    def stop(self) -> None:
        """Kill its process group: a graceful stop waits a second for idle connections, and
        killing only the parent would leave its forked acceptors running after the tests."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait(timeout=10)


def _plain_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith("PMOCK_")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def proxy(tmp_path) -> Iterator[ForwardProxy]:
    server = ForwardProxy(tmp_path / "proxy")
    yield server
    server.stop()


@pytest.fixture
def auth_proxy(tmp_path) -> Iterator[ForwardProxy]:
    server = ForwardProxy(tmp_path / "auth-proxy", basic_auth=f"robot:{PROXY_PASSWORD}")
    yield server
    server.stop()


def _dead_url() -> str:
    """An http URL on a loopback port nothing listens on: traffic sent there fails."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- a private CA, and the mock over TLS ---------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_pem(ca, tmp_path) -> Path:
    path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def tls_context(ca) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def _jobs(tmp_path: Path, *, url_job: bool = True) -> Path:
    lines: list[dict[str, str]] = [
        {"id": "cat", "prompt": "a cat"},
        {"id": "dog", "prompt": "a dog"},
    ]
    if url_job:
        lines.append(
            {"id": "owl", "prompt": "an owl", "response_format": "url", "model": "dall-e-2"}
        )
    return write_jobs(tmp_path / "jobs.jsonl", lines)


def _assert_images(out: Path, ids: tuple[str, ...] = ("cat", "dog", "owl")) -> None:
    records = by_id(read_manifest(out))
    assert {i: records[i]["status"] for i in ids} == dict.fromkeys(ids, "ok")
    for i in ids:
        assert open_image(out / f"{i}.png").size == (1024, 1024)


def _host(server) -> str:
    return f"127.0.0.1:{server.port}"


def _assert_all_marked(server) -> None:
    """Every request the mock received, API call or download, came through the proxy."""
    assert server.stats.requests == 3 and server.stats.downloads == 1
    for headers in [*(e.headers for e in server.stats.log), *server.stats.download_headers]:
        assert headers.get("X-Test-Proxy") == "proxy.py", headers


# -- proxies, end to end ------------------------------------------------------------------------


async def test_http_proxy_variable_carries_api_calls_and_downloads(
    tmp_path, capsys, make_mock, proxy, monkeypatch
):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    monkeypatch.setenv("HTTP_PROXY", proxy.url())
    monkeypatch.setenv("HTTPS_PROXY", _dead_url())  # the wrong variable for an http URL
    out = tmp_path / "o"
    argv = [str(_jobs(tmp_path)), "--base-url", server.base_url, "--out", str(out)]
    result = await run_cli(argv, capsys)
    assert result.code == 0, result.err
    _assert_images(out)
    seen = sorted(proxy.forwarded())
    assert [m for m, _ in seen] == ["GET", "POST", "POST", "POST"]
    assert seen[0][1].startswith(f"{_host(server)}/_mock/files/")
    assert {t for _, t in seen[1:]} == {_host(server) + GENERATIONS}
    _assert_all_marked(server)
    assert server.stats.requests == 3 and server.stats.downloads == 1


async def test_https_proxy_variable_tunnels_to_a_tls_server_with_credentials(
    tmp_path, capsys, make_mock, auth_proxy, tls_context, ca_pem, monkeypatch
):
    server = await make_mock(MockOptions(), ssl_context=tls_context)
    assert server.base_url.startswith("https://127.0.0.1:")
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    monkeypatch.setenv("https_proxy", auth_proxy.url(f"robot:{PROXY_PASSWORD}@"))
    monkeypatch.setenv("HTTPS_PROXY", _dead_url())  # the lower-case variable wins, as in curl
    monkeypatch.setenv("HTTP_PROXY", _dead_url())  # the wrong variable for an https URL
    out = tmp_path / "o"
    argv = [str(_jobs(tmp_path)), "--base-url", server.base_url, "--out", str(out)]
    result = await run_cli([*argv, "--ca-bundle", str(ca_pem), "-v", "--json"], capsys)
    assert result.code == 0, result.err
    _assert_images(out)
    seen = auth_proxy.forwarded()
    # Only CONNECT tunnels to the mock: the proxy never saw a request in clear.
    assert seen and set(seen) == {("CONNECT", _host(server))}
    assert server.stats.requests == 3 and server.stats.downloads == 1
    for text in (result.out, result.err, (out / "manifest.jsonl").read_text()):
        assert PROXY_PASSWORD not in text


@pytest.mark.parametrize("tls", [True, False], ids=["https-connect", "plain-http"])
async def test_wrong_proxy_password_aborts_at_once_and_is_never_shown(
    tmp_path, capsys, make_mock, auth_proxy, tls_context, ca_pem, monkeypatch, tls
):
    server = await make_mock(MockOptions(), ssl_context=tls_context if tls else None)
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    wrong = "wr0ng-Pa55word"
    out = tmp_path / "o"
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(8)]
    )
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), "--ca-bundle", str(ca_pem)]
    started = time.monotonic()
    result = await run_cli(
        [*argv, "--concurrency", "1", "--json", "--proxy", auth_proxy.url(f"robot:{wrong}@")],
        capsys,
    )
    assert time.monotonic() - started < 5  # not retried: the same credentials fail again
    assert result.code == 3, result.err
    assert "check the user and password in --proxy" in result.err
    assert json.loads(result.out)["retries"] == 0
    records = by_id(read_manifest(out))
    assert records["j0"]["status"] == "failed" and records["j0"]["attempts"] == 1
    assert records["j0"]["error"]["kind"] == "proxy"
    if tls:
        assert "the proxy refused the tunnel: HTTP 407" in records["j0"]["error"]["message"]
    else:
        assert records["j0"]["http_status"] == 407
    assert {r["status"] for r in records.values()} == {"failed", "not_run"}
    assert server.stats.requests == 0
    for text in (result.out, result.err, (out / "manifest.jsonl").read_text()):
        assert wrong not in text


async def test_explicit_proxy_wins_over_the_environment(
    tmp_path, capsys, make_mock, proxy, monkeypatch
):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    monkeypatch.setenv("HTTP_PROXY", _dead_url())
    monkeypatch.setenv("ALL_PROXY", _dead_url())
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # ignored too: --proxy is for all
    out = tmp_path / "o"
    argv = [str(_jobs(tmp_path)), "--base-url", server.base_url, "--out", str(out)]
    # Without a scheme, as proxies are often written: http:// is meant.
    result = await run_cli([*argv, "--proxy", f"127.0.0.1:{proxy.port}"], capsys)
    assert result.code == 0, result.err
    _assert_images(out)
    assert sorted(m for m, _ in proxy.forwarded()) == ["GET", "POST", "POST", "POST"]
    _assert_all_marked(server)


async def test_no_proxy_and_an_empty_proxy_bypass_the_proxy_variables(
    tmp_path, capsys, make_mock, monkeypatch
):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    dead = _dead_url()
    monkeypatch.setenv("HTTP_PROXY", dead)
    jobs = _jobs(tmp_path)
    base = [str(jobs), "--base-url", server.base_url, "--max-attempts", "1"]
    # Control: loopback is not bypassed by default, so the dead proxy is used and fails,
    # and since no connection was ever made, the run aborts at once (exit 3).
    proxied = await run_cli([*base, "--out", str(tmp_path / "p")], capsys)
    assert proxied.code == 3, proxied.err
    reason = f"cannot connect to the proxy {dead[7:]} (Connection refused)"
    assert f"{reason}: 3 attempts failed" in proxied.err
    assert "check --proxy or HTTPS_PROXY/HTTP_PROXY" in proxied.err
    assert server.stats.requests == 0
    for no_proxy in ("127.0.0.1", "localhost,127.0.0.0/8", "*"):
        monkeypatch.setenv("no_proxy", no_proxy)
        out = tmp_path / f"o{len(no_proxy)}"
        result = await run_cli([*base, "--out", str(out)], capsys)
        assert result.code == 0, (no_proxy, result.err)
        _assert_images(out)
    monkeypatch.delenv("no_proxy")
    direct = await run_cli([*base, "--out", str(tmp_path / "d"), "--proxy", ""], capsys)
    assert direct.code == 0, direct.err  # --proxy '': connect directly, as in curl
    assert server.stats.requests == 12 and server.stats.downloads == 4


async def test_mock_ignores_proxy_variables(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", _dead_url())
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    out = tmp_path / "o"
    result = await run_cli([str(_jobs(tmp_path)), "--mock", "--out", str(out)], capsys)
    assert result.code == 0, result.err
    _assert_images(out)


@pytest.mark.parametrize(
    ("env", "flag", "message"),
    [
        ({}, "socks5://robot:hunter22@127.0.0.1:1080", "--proxy: socks5:// proxies are not"),
        ({}, "http://robot:hunter22@127.0.0.1:notaport", "--proxy is not a valid proxy URL"),
        ({"HTTPS_PROXY": "https://robot:hunter22@proxy.corp:3128"}, None, "HTTPS_PROXY: https://"),
        ({"all_proxy": "socks5h://robot:hunter22@proxy.corp"}, None, "all_proxy: socks5h://"),
    ],
)
async def test_unusable_proxy_is_a_usage_error_without_its_password(
    tmp_path, capsys, make_mock, monkeypatch, env, flag, message
):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = [str(_jobs(tmp_path)), "--base-url", server.base_url]
    result = await run_cli([*argv, *(["--proxy", flag] if flag else [])], capsys)
    assert result.code == 2
    assert message in result.err and "***@" in result.err
    assert "hunter22" not in result.err and "Traceback" not in result.err
    assert server.stats.requests == 0


# -- TLS: CA bundles ------------------------------------------------------------------------------


async def test_ca_bundle_and_ssl_cert_file_trust_a_private_ca(
    tmp_path, capsys, make_mock, tls_context, ca_pem, monkeypatch
):
    server = await make_mock(MockOptions(), ssl_context=tls_context)
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    argv = [str(_jobs(tmp_path)), "--base-url", server.base_url]
    result = await run_cli(
        [*argv, "--out", str(tmp_path / "a"), "--ca-bundle", str(ca_pem)], capsys
    )
    assert result.code == 0, result.err
    _assert_images(tmp_path / "a")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_pem))
    result = await run_cli([*argv, "--out", str(tmp_path / "b")], capsys)
    assert result.code == 0, result.err
    _assert_images(tmp_path / "b")
    assert server.stats.requests == 6 and server.stats.downloads == 2


async def test_untrusted_certificate_aborts_at_once_with_a_clear_message(
    tmp_path, capsys, make_mock, tls_context, monkeypatch
):
    server = await make_mock(MockOptions(), ssl_context=tls_context)
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    out = tmp_path / "o"
    jobs = write_jobs(
        tmp_path / "jobs.jsonl", [{"id": f"j{i}", "prompt": f"p{i}"} for i in range(20)]
    )
    argv = [str(jobs), "--base-url", server.base_url, "--out", str(out), "--json"]
    started = time.monotonic()
    result = await run_cli([*argv, "--concurrency", "2"], capsys)
    assert time.monotonic() - started < 5  # no backoff: a certificate is not worth retrying
    assert result.code == 3, result.err
    assert f"the TLS certificate of {_host(server)} is not trusted" in result.err
    assert "certificate verify failed" in result.err or "local issuer" in result.err
    assert "pass --ca-bundle FILE (or set SSL_CERT_FILE)" in result.err
    assert "Traceback" not in result.err
    summary = json.loads(result.out)
    assert summary["retries"] == 0
    records = read_manifest(out)
    assert len(records) == 20
    failed = [r for r in records if r["status"] == "failed"]
    assert 1 <= len(failed) <= 2 and all(r["attempts"] == 1 for r in failed)
    assert {r["error"]["kind"] for r in failed} == {"certificate"}
    assert {r["status"] for r in records} == {"failed", "not_run"}
    assert server.stats.requests == 0  # no HTTP request got past the handshake


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("flag-missing", "--ca-bundle {path}: no such file"),
        ("flag-not-pem", "--ca-bundle {path}: not a PEM bundle of CA certificates"),
        ("env-missing", "SSL_CERT_FILE {path}: no such file"),
        ("dir-missing", "SSL_CERT_DIR={path}: no such directory"),
    ],
)
async def test_unusable_ca_bundle_is_a_usage_error(
    tmp_path, capsys, make_mock, monkeypatch, setup, message
):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    path = tmp_path / "bundle.pem"
    argv = [str(_jobs(tmp_path)), "--base-url", server.base_url]
    if setup == "flag-missing":
        argv += ["--ca-bundle", str(path)]
    elif setup == "flag-not-pem":
        path.write_text("not a certificate\n")
        argv += ["--ca-bundle", str(path)]
    elif setup == "env-missing":
        monkeypatch.setenv("SSL_CERT_FILE", str(path))
    else:
        monkeypatch.setenv("SSL_CERT_DIR", str(path))
    result = await run_cli(argv, capsys)
    assert result.code == 2
    [line] = result.err.strip().splitlines()  # one line, no traceback
    assert line.startswith(f"pmock-batch: error: {message.format(path=path)}")
    assert server.stats.requests == 0


# -- extra headers --------------------------------------------------------------------------------


async def test_headers_go_with_api_calls_only_and_are_never_shown(
    tmp_path, capsys, make_mock, monkeypatch
):
    server = await make_mock(MockOptions(require_key=KEY))
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    out = tmp_path / "o"
    argv = [str(_jobs(tmp_path)), "--base-url", server.base_url, "--out", str(out)]
    argv += ["--header", f"OpenAI-Organization: {ORG}", "--header", f"x-gateway-token:{TOKEN}"]
    result = await run_cli([*argv, "-v", "--log-format", "json", "--json"], capsys)
    assert result.code == 0, result.err
    _assert_images(out)
    assert len(server.stats.log) == 3
    for entry in server.stats.log:
        assert entry.headers["OpenAI-Organization"] == ORG
        assert entry.headers["x-gateway-token"] == TOKEN
        assert entry.authorization == f"Bearer {KEY}"
    [download] = server.stats.download_headers
    lowered = {k.lower() for k in download}
    assert not lowered & {"openai-organization", "x-gateway-token", "authorization"}
    report = (out / "report.html").read_text()
    for text in (result.out, result.err, (out / "manifest.jsonl").read_text(), report):
        for secret in (ORG, TOKEN, KEY):
            assert secret not in text


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (f"OpenAI-Organization {ORG}", "a header must look like 'Name: value'"),
        (f"Bad Name: {ORG}", "'Bad Name' is not a valid header name"),
        (f"Authorization: Bearer {ORG}", "Authorization cannot be set with --header"),
        (f"Proxy-Authorization: Basic {ORG}", "put proxy credentials in the proxy URL"),
        (f"X-Token: {ORG}\r\nX-Evil: 1", "the value of X-Token has a control character"),
        ("X-Empty:", "the X-Empty header has an empty value"),
    ],
)
async def test_bad_header_exits_2_without_showing_its_value(
    tmp_path, capsys, make_mock, monkeypatch, header, message
):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    argv = [str(_jobs(tmp_path)), "--base-url", server.base_url, "--header", header]
    result = await run_cli(argv, capsys)
    assert result.code == 2
    assert message in result.err
    assert ORG not in result.err
    assert server.stats.requests == 0


async def test_a_header_given_twice_exits_2(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions())
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    argv = [str(_jobs(tmp_path)), "--base-url", server.base_url]
    argv += ["--header", f"OpenAI-Project: {ORG}", "--header", "openai-project: proj-2"]
    result = await run_cli(argv, capsys)
    assert result.code == 2
    assert "--header openai-project is given more than once" in result.err
    assert ORG not in result.err and server.stats.requests == 0


def test_a_server_echoing_a_header_value_is_redacted():
    raw = json.dumps({"error": {"message": f"unknown organization {ORG} for this key"}}).encode()
    exc = _status_error(401, raw, {}, (KEY, ORG))
    assert ORG not in str(exc) and "unknown organization [redacted]" in str(exc)


# -- --api-key-env ------------------------------------------------------------------------------


async def test_api_key_env_reads_the_named_variable(tmp_path, capsys, make_mock, monkeypatch):
    server = await make_mock(MockOptions(require_key=KEY))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("PMOCK_API_KEY", "sk-not-this-one-0123456789")
    out = tmp_path / "o"
    argv = [str(_jobs(tmp_path)), "--base-url", server.base_url, "--out", str(out)]
    result = await run_cli([*argv, "--api-key-env", "OPENAI_API_KEY"], capsys)
    assert result.code == 0, result.err
    _assert_images(out)
    assert {entry.authorization for entry in server.stats.log} == {f"Bearer {KEY}"}


async def test_api_key_env_is_named_when_missing_or_refused(
    tmp_path, capsys, make_mock, monkeypatch
):
    server = await make_mock(MockOptions(require_key="sk-the-right-one"))
    monkeypatch.setenv("PMOCK_API_KEY", KEY)
    argv = [str(_jobs(tmp_path)), "--base-url", server.base_url, "--api-key-env", "OPENAI_API_KEY"]
    missing = await run_cli(argv, capsys)
    assert missing.code == 2
    assert "no API key: set OPENAI_API_KEY" in missing.err and "PMOCK_API_KEY" not in missing.err
    assert server.stats.requests == 0
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    refused = await run_cli([*argv, "--out", str(tmp_path / "o")], capsys)
    assert refused.code == 3
    assert "check OPENAI_API_KEY" in refused.err and KEY not in refused.err
    pasted = await run_cli([str(_jobs(tmp_path)), "--api-key-env", KEY, "--mock"], capsys)
    assert pasted.code == 2
    assert "takes the name of an environment variable, not a key" in pasted.err
    assert KEY not in pasted.err


# -- the pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "url", "expected"),
    [
        ({}, "https://api.openai.com/v1", None),
        ({"HTTPS_PROXY": "http://p:3128"}, "https://api.openai.com/v1", "http://p:3128"),
        ({"HTTPS_PROXY": "http://p:3128"}, "http://api.openai.com/v1", None),
        ({"HTTP_PROXY": "p:3128"}, "http://img.example/x.png", "http://p:3128"),
        ({"https_proxy": "http://low", "HTTPS_PROXY": "http://up"}, "https://a", "http://low"),
        ({"https_proxy": "", "HTTPS_PROXY": "http://up"}, "https://a", None),
        ({"ALL_PROXY": "http://all"}, "https://a", "http://all"),
        ({"ALL_PROXY": "http://all", "HTTPS_PROXY": "http://s"}, "https://a", "http://s"),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "*"}, "https://a", None),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": "openai.com"}, "https://api.openai.com", None),
        ({"HTTPS_PROXY": "http://p", "NO_PROXY": ".openai.com"}, "https://openai.com", None),
        (
            {"HTTPS_PROXY": "http://p", "NO_PROXY": "openai.com"},
            "https://notopenai.com",
            "http://p",
        ),
        ({"HTTPS_PROXY": "http://p", "no_proxy": "10.0.0.0/8"}, "https://10.1.2.3/v1", None),
        ({"HTTPS_PROXY": "http://p", "no_proxy": "10.0.0.0/8"}, "https://11.1.2.3", "http://p"),
        ({"HTTPS_PROXY": "http://p", "no_proxy": "a.corp:8443"}, "https://a.corp:8443", None),
        ({"HTTPS_PROXY": "http://p", "no_proxy": "a.corp:8443"}, "https://a.corp", "http://p"),
        ({"HTTPS_PROXY": "http://p", "no_proxy": "::1"}, "https://[::1]:8443/v1", None),
        ({"HTTPS_PROXY": "http://p", "no_proxy": " x.y , LOCALHOST "}, "https://localhost", None),
    ],
)
def test_proxy_routes_from_the_environment(environ, url, expected):
    assert ProxyRoutes.resolve(None, environ).for_url(url) == expected


def test_empty_explicit_proxy_means_direct():
    routes = ProxyRoutes.resolve("", {"HTTPS_PROXY": "http://x", "ALL_PROXY": "http://y"})
    assert routes.for_url("https://a/v1") is None and routes.for_url("http://b") is None


def test_explicit_proxy_is_used_for_every_url():
    routes = ProxyRoutes.resolve("http://u:pw@p:1", {"NO_PROXY": "*", "HTTPS_PROXY": "http://x"})
    assert routes.for_url("https://a/v1") == routes.for_url("http://b/x.png") == "http://u:pw@p:1"
    assert "pw" not in repr(routes) and "***@p:1" in repr(routes)


def test_proxy_urls_are_checked_without_showing_credentials():
    assert check_proxy(" proxy.corp:3128 ", "HTTPS_PROXY") == "http://proxy.corp:3128"
    assert safe_url("http://user:p@ss@host:1") == "http://***@host:1"
    assert safe_url("host:1") == "host:1"
    for bad in (
        "https://u:secret@h:1",
        "socks5://u:secret@h",
        "http://u:secret@h:1/path",
        "http://",
    ):
        with pytest.raises(ValueError) as info:
            check_proxy(bad, "--proxy")
        assert "secret" not in str(info.value)


def test_headers_parse_and_secrets_stay_out_of_the_config_repr():
    assert parse_header("OpenAI-Project:  proj_abc ") == ("OpenAI-Project", "proj_abc")
    assert parse_header("X-A: a: b") == ("X-A", "a: b")
    with pytest.raises(ValueError, match="non-ASCII"):
        parse_header("X-A: caf\u00e9")
    with pytest.raises(ValueError, match="more than once"):
        check_headers([("X-A", "1"), ("x-a", "2")])
    config = RunConfig(
        out_dir=Path("o"),
        api_key=KEY,
        headers=(("OpenAI-Organization", ORG),),
        proxy=f"http://robot:{PROXY_PASSWORD}@p:1",
    )
    text = repr(config)
    for secret in (KEY, ORG, PROXY_PASSWORD):
        assert secret not in text


def test_ssl_context_sources(tmp_path, ca_pem):
    default = ssl_context(None, {})
    assert default.verify_mode is ssl.CERT_REQUIRED and default.check_hostname
    private = ssl_context(ca_pem, {"SSL_CERT_FILE": str(tmp_path / "ignored.pem")})
    assert len(private.get_ca_certs()) == 1  # the bundle replaces the system's CAs
    from_env = ssl_context(None, {"SSL_CERT_FILE": str(ca_pem)})
    assert len(from_env.get_ca_certs()) == 1
    with pytest.raises(ValueError, match="SSL_CERT_FILE"):
        ssl_context(None, {"SSL_CERT_FILE": str(tmp_path / "nope.pem")})


def test_an_untrusted_certificate_or_a_refusing_proxy_aborts_and_the_rest_retries():
    assert describe(UntrustedCertificateError("x")).decision is Decision.ABORT
    assert describe(ProxyRefusedError("x", status=407)).decision is Decision.ABORT
    assert describe(ProxyRefusedError("x", status=403)).decision is Decision.ABORT
    assert describe(ProxyRefusedError("x", status=502)).decision is Decision.RETRY
    assert describe(status_error("x", status=407)).decision is Decision.ABORT
    assert describe(APIConnectionError("x")).decision is Decision.RETRY
