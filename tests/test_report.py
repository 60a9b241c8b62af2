"""The HTML report: built from a real mock batch, checked as markup and in headless Chromium.

One batch runs against the mock server (ok jobs, a moderation block, an
invalid line, ``n=2``, nested ids and a prompt full of HTML), then
:func:`write_report` builds the page from its manifest. The markup tests parse
it with :mod:`html.parser`; the browser tests render it with Debian's
``chromium`` headless, with ``--dump-dom`` (the DOM after the page's script
ran) and ``--screenshot``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from helpers import by_id, isolate_env, read_manifest, write_jobs
from PIL import Image

from pmock_batch.cli import main
from pmock_batch.errors import UsageError
from pmock_batch.files import TMP_SUFFIX
from pmock_batch.models import ErrorRecord, FileRecord, JobRecord
from pmock_batch.report import REPORT_NAME, write_report
from pmock_batch.thumbs import THUMB_PX, THUMBS_DIR

XSS = "<script>alert(1)</script> & \"quotes\" 'single'"
JOBS = [
    {"id": "icons/home", "prompt": "A flat home icon", "size": "1024x1024"},
    {"id": "photos/deep/fox", "prompt": "A red fox in snow", "output_format": "jpeg"},
    {"id": "variants/robot", "prompt": "A friendly robot", "n": 2},
    {"id": "blocked", "prompt": "A forbidden door"},
    {"id": "typo", "prompt": "A typo", "quailty": "high"},
    {"id": "xss", "prompt": XSS},
]
STATUSES = {
    "icons/home": "ok",
    "photos/deep/fox": "ok",
    "variants/robot": "ok",
    "blocked": "failed",
    "typo": "invalid",
    "xss": "ok",
}
NOT_OK = {"blocked", "typo"}
TIMES = "\N{MULTIPLICATION SIGN}"

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
)
# Load every image at once, so the DOM and the screenshot do not depend on scrolling.
EAGER = "--blink-settings=lazyLoadEnabled=false"
CHROMIUM_TIMEOUT = 60  # seconds for one headless run; each takes about one


# -- reading a page back --------------------------------------------------------------


@dataclass
class Card:
    id: str
    status: str
    hidden: bool
    imgs: list[dict[str, str]] = field(default_factory=list)
    hrefs: list[str] = field(default_factory=list)
    text: str = ""


class Page(HTMLParser):
    """The parts of a report page the tests look at, from our HTML or Chromium's DOM."""

    VOID = frozenset({"img", "meta", "input", "br", "hr", "link"})

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.cards: list[Card] = []
        self.imgs: list[dict[str, str]] = []
        self.hrefs: list[str] = []
        self.tags: list[str] = []
        self.metas: list[dict[str, str]] = []
        self.stats: dict[str, str] = {}
        self.pressed: dict[str, str] = {}
        self.html_attrs: dict[str, str] = {}
        self.by_elem_id: dict[str, str] = {}
        self._card: Card | None = None
        self._stat: str | None = None
        self._value = False
        self._elem_id: str | None = None
        self.feed(source)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if tag == "html":
            self.html_attrs = a
        if tag == "meta":
            self.metas.append(a)
        if tag == "article" and "card" in a.get("class", "").split():
            self._card = Card(a["data-id"], a["data-status"], "hidden" in a)
            self.cards.append(self._card)
        if tag == "img":
            self.imgs.append(a)
            if self._card is not None:
                self._card.imgs.append(a)
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
            if self._card is not None:
                self._card.hrefs.append(a["href"])
        if tag == "div" and "data-stat" in a:
            self._stat = a["data-stat"]
        if tag == "span" and a.get("class") == "value":
            self._value = True
        if tag == "button" and "data-filter" in a:
            self.pressed[a["data-filter"]] = a.get("aria-pressed", "")
        if "id" in a and tag not in self.VOID:
            self._elem_id = a["id"]
            self.by_elem_id.setdefault(a["id"], "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "article":
            self._card = None
        if tag == "span":
            self._value = False
        if tag in ("span", "p", "input", "main"):
            self._elem_id = None

    def handle_data(self, data: str) -> None:
        if self._card is not None:
            self._card.text += data + " "
        if self._stat is not None and self._value:
            self.stats[self._stat] = data.strip()
            self._stat = None
        if self._elem_id is not None:
            self.by_elem_id[self._elem_id] += data

    def card(self, card_id: str) -> Card:
        return next(c for c in self.cards if c.id == card_id)

    def visible(self) -> set[str]:
        return {c.id for c in self.cards if not c.hidden}


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real batch against the mock: its output directory, with report.html written."""
    root = tmp_path_factory.mktemp("report-batch")
    jobs = write_jobs(root / "jobs.jsonl", JOBS)
    out = root / "out"
    argv = [
        str(jobs),
        "--mock",
        "--out",
        str(out),
        "--skip-invalid",
        "--mock-moderation-word",
        "forbidden",
        "--mock-revised-prompt",
        "-q",
    ]
    with pytest.MonkeyPatch.context() as mp:
        isolate_env(mp)  # module-scoped: before conftest's per-test isolation
        with ThreadPoolExecutor(max_workers=1) as pool:  # the CLI runs its own event loop
            code = pool.submit(main, argv).result(timeout=60)
    assert code == 1  # one job failed and one line was invalid
    assert write_report(out) == out / REPORT_NAME
    return out


@pytest.fixture(scope="module")
def html(batch: Path) -> str:
    return (batch / REPORT_NAME).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def page(html: str) -> Page:
    return Page(html)


Chromium = Callable[..., str]


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    """``chromium(*args)`` runs Debian's Chromium headless and returns its stdout."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it with apt-get")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")

    def run(*args: str) -> str:
        proc = subprocess.run(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=CHROMIUM_TIMEOUT,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    yield run


def _record(job_id: str, line: int, files: list[FileRecord], **extra: object) -> JobRecord:
    return JobRecord.model_validate(
        {
            "id": job_id,
            "line": line,
            "status": "ok" if files else "failed",
            "files": files,
            "attempts": 1,
            "request": {"prompt": f"prompt of {job_id}"},
            **extra,
        }
    )


def _png(out: Path, relative: str, size: tuple[int, int] = (64, 48)) -> FileRecord:
    path = out / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 60, 40)).save(path, "PNG")
    return FileRecord(
        path=relative,
        sha256="0" * 64,
        bytes=path.stat().st_size,
        format="png",
        width=size[0],
        height=size[1],
    )


def _write_manifest(out: Path, lines: list[str]) -> None:
    (out / "manifest.jsonl").write_text("\n".join(lines), encoding="utf-8")


# -- the page as markup ------------------------------------------------------------------


def test_every_job_has_a_card_with_its_status(batch, page):
    manifest = by_id(read_manifest(batch))
    assert {c.id: c.status for c in page.cards} == {k: r["status"] for k, r in manifest.items()}
    assert {c.id: c.status for c in page.cards} == STATUSES
    assert not any(c.hidden for c in page.cards)
    assert [c.id for c in page.cards] == [j["id"] for j in JOBS]  # input order


def test_cards_show_what_the_manifest_says(batch, page):
    manifest = by_id(read_manifest(batch))
    home = page.card("icons/home")
    for text in ("A flat home icon", f"1024{TIMES}1024", "PNG", "0 retries", "Revised prompt"):
        assert text in home.text
    assert manifest["icons/home"]["revised_prompt"] in home.text
    assert "JPEG" in page.card("photos/deep/fox").text
    robot = page.card("variants/robot")
    assert len(robot.imgs) == 2 and len(robot.hrefs) == 2
    # Two images of one job, each got at the first try: no "attempts" to confuse with images.
    assert "0 retries" in robot.text and "attempt" not in robot.text

    blocked = page.card("blocked")
    assert blocked.imgs == []
    assert "moderation" in blocked.text and "moderation_blocked" in blocked.text
    assert manifest["blocked"]["error"]["message"] in blocked.text
    typo = page.card("typo")
    assert typo.imgs == [] and "unknown field" in typo.text and "line 5" in typo.text


def test_prompts_are_escaped(html, page):
    assert "<script>alert" not in html
    assert html.count("<script") == 1  # the page's own
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot; &#x27;single&#x27;" in (
        html
    )
    assert XSS in page.card("xss").text
    assert page.tags.count("script") == 1


def test_images_are_relative_links_to_files_on_disk(batch, page):
    assert len(page.imgs) == 5  # home, fox, robot x2, xss
    for url in [img["src"] for img in page.imgs] + page.hrefs:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and not url.startswith("/"), url
        assert (batch / unquote(url)).is_file(), url
    for img in page.imgs:
        assert img["loading"] == "lazy"
        assert int(img["width"]) > 0 and int(img["height"]) > 0


def test_page_is_self_contained(html, page):
    assert "http://" not in html and "https://" not in html
    assert "link" not in page.tags and "@import" not in html and "url(" not in html
    csp = next(m["content"] for m in page.metas if m.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    assert "PMOCK_API_KEY" not in html and "Bearer" not in html


def test_header_summarises_the_run(batch, page):
    records = read_manifest(batch)
    assert page.stats["jobs"] == "6"
    assert page.stats["ok"] == "4"
    assert page.stats["failed"] == "1"
    assert page.stats["invalid"] == "1"
    assert page.stats["not_run"] == "0"
    assert page.stats["images"] == "5"
    assert page.stats["attempts"] == str(sum(r["attempts"] for r in records))
    assert page.pressed == {"all": "true", "ok": "false", "failed": "false"}


def test_writing_opens_no_image(batch, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("write_report decoded an image")

    monkeypatch.setattr(Image, "open", refuse)
    write_report(batch)
    assert not (batch / THUMBS_DIR).exists()


def test_thumbnails_are_small_jpegs_linking_to_full_images(batch, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(batch, out)
    write_report(out, thumbnails=True)
    page = Page((out / REPORT_NAME).read_text(encoding="utf-8"))
    assert len(page.imgs) == 5
    for card in page.cards:
        for img, href in zip(card.imgs, card.hrefs, strict=True):
            assert img["src"].startswith(f"{THUMBS_DIR}/") and img["src"].endswith(".jpg")
            assert not href.startswith(THUMBS_DIR) and (out / unquote(href)).is_file()
            with Image.open(out / unquote(img["src"])) as thumb:
                assert thumb.format == "JPEG" and max(thumb.size) <= THUMB_PX
    stamps = {p: p.stat().st_mtime_ns for p in (out / THUMBS_DIR).rglob("*.jpg")}
    write_report(out, thumbnails=True)  # reused, not remade
    assert {p: p.stat().st_mtime_ns for p in (out / THUMBS_DIR).rglob("*.jpg")} == stamps


# -- the manifest as input ----------------------------------------------------------------


def test_latest_record_wins_and_a_torn_line_is_skipped(tmp_path):
    failed = _record("a", 1, [], error=ErrorRecord(kind="server", status=500, message="boom"))
    ok = _record("a", 1, [_png(tmp_path, "a.png")])
    other = _record("b", 2, [_png(tmp_path, "b.png")])
    torn = '{"id": "c", "line": 3, "status": "o'
    _write_manifest(
        tmp_path, [failed.model_dump_json(), ok.model_dump_json(), other.model_dump_json(), torn]
    )
    page = Page(write_report(tmp_path).read_text(encoding="utf-8"))
    assert [(c.id, c.status) for c in page.cards] == [("a", "ok"), ("b", "ok")]
    assert "boom" not in page.card("a").text


def test_ids_and_paths_are_percent_encoded(tmp_path):
    weird = _png(tmp_path, "a b/c#d%?.png")
    record = _record("a b/c#d%?", 1, [weird])
    _write_manifest(tmp_path, [record.model_dump_json()])
    page = Page(write_report(tmp_path).read_text(encoding="utf-8"))
    assert [img["src"] for img in page.imgs] == ["a%20b/c%23d%25%3F.png"]
    assert page.hrefs == ["a%20b/c%23d%25%3F.png"]
    assert (tmp_path / unquote(page.imgs[0]["src"])).is_file()
    assert page.cards[0].id == "a b/c#d%?"


def test_paths_outside_the_output_directory_are_not_linked(tmp_path):
    bad = [
        FileRecord(path=p, sha256="0" * 64, bytes=1, format="png", width=1, height=1)
        for p in ("../escape.png", "/etc/passwd", "//evil.example/x.png", "")
    ]
    record = _record("sneaky", 1, [*bad, _png(tmp_path, "fine.png")])
    _write_manifest(tmp_path, [record.model_dump_json()])
    page = Page(write_report(tmp_path).read_text(encoding="utf-8"))
    assert [img["src"] for img in page.imgs] == ["fine.png"]
    assert page.hrefs == ["fine.png"]


def test_write_is_atomic(tmp_path, monkeypatch):
    _write_manifest(tmp_path, [_record("a", 1, [_png(tmp_path, "a.png")]).model_dump_json()])
    target = write_report(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "manifest.jsonl", REPORT_NAME]
    before = target.read_bytes()

    def broken_replace(*args, **kwargs):
        raise OSError(28, "No space left on device")

    _write_manifest(tmp_path, [_record("b", 1, [_png(tmp_path, "b.png")]).model_dump_json()])
    monkeypatch.setattr("pmock_batch.files.os.replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        write_report(tmp_path)
    assert target.read_bytes() == before
    assert not list(tmp_path.rglob(f"*{TMP_SUFFIX}"))


def test_missing_manifest_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no manifest"):
        write_report(tmp_path)
    assert not (tmp_path / REPORT_NAME).exists()


def test_not_run_and_usage_are_summarised(tmp_path):
    usage = {"input_tokens": 3, "output_tokens": 1000, "input_tokens_details": {"x": 1}}
    ok = _record("a", 1, [_png(tmp_path, "a.png")], usage=usage, elapsed_s=1.5)
    not_run = JobRecord(
        id="b",
        line=2,
        status="not_run",
        error=ErrorRecord(kind="not_run", message="aborted: 401"),
        request={"prompt": "b", "size": "1024x1536", "output_format": "webp"},
    )
    _write_manifest(tmp_path, [ok.model_dump_json(), json.dumps(not_run.model_dump())])
    html = write_report(tmp_path).read_text(encoding="utf-8")
    page = Page(html)
    assert page.stats["not_run"] == "1" and page.stats["job_time"] == "1.50 s"
    assert "input_tokens 3" in html and "output_tokens 1,000" in html
    card = page.card("b")
    assert card.status == "not_run" and "aborted: 401" in card.text
    assert f"1024{TIMES}1536" in card.text and "WEBP" in card.text


# -- the page in a real browser -----------------------------------------------------------


def test_browser_shows_every_card_and_loads_every_image(batch, chromium):
    dom = Page(
        chromium(EAGER, "--virtual-time-budget=2000", "--dump-dom", (batch / REPORT_NAME).as_uri())
    )
    assert {c.id: c.status for c in dom.cards} == STATUSES
    assert dom.visible() == set(STATUSES)
    assert dom.by_elem_id["shown"].strip() == "6 of 6"
    classes = [img.get("class", "") for img in dom.imgs]
    assert len(classes) == 5 and all(c == "loaded" for c in classes), classes


@pytest.mark.parametrize(
    ("fragment", "expected"), [("failed", NOT_OK), ("ok", set(STATUSES) - NOT_OK)]
)
def test_browser_fragment_sets_the_filter(batch, chromium, fragment, expected):
    uri = f"{(batch / REPORT_NAME).as_uri()}#{fragment}"
    dom = Page(chromium("--virtual-time-budget=2000", "--dump-dom", uri))
    assert dom.html_attrs.get("data-filter") == fragment  # the script ran
    assert dom.visible() == expected
    assert {c.id for c in dom.cards if c.hidden} == set(STATUSES) - expected
    assert dom.pressed[fragment] == "true" and dom.pressed["all"] == "false"
    assert dom.by_elem_id["shown"].strip() == f"{len(expected)} of 6"


def test_browser_search_from_the_query(batch, chromium):
    uri = f"{(batch / REPORT_NAME).as_uri()}?q=ROBOT"
    dom = Page(chromium("--virtual-time-budget=2000", "--dump-dom", uri))
    assert dom.visible() == {"variants/robot"}


def test_browser_loads_percent_encoded_paths(tmp_path, chromium):
    _write_manifest(
        tmp_path, [_record("a b/c#d%?", 1, [_png(tmp_path, "a b/c#d%?.png")]).model_dump_json()]
    )
    uri = write_report(tmp_path).as_uri()
    dom = Page(chromium(EAGER, "--virtual-time-budget=2000", "--dump-dom", uri))
    assert [img.get("class") for img in dom.imgs] == ["loaded"]


def test_browser_screenshot(batch, chromium, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(
        EAGER,
        "--virtual-time-budget=2000",
        "--window-size=1280,900",
        f"--screenshot={shot}",
        (batch / REPORT_NAME).as_uri(),
    )
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.size == (1280, 900)
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 100  # text, badges and images, not a blank page
