"""What an aiofiles thread hop costs, and how many hops the writer makes.

Every aiofiles call is one job handed to the event loop's default executor
(a thread pool): the coroutine waits for a worker thread to run the call and
for the loop to pick up the result. This script measures, in one run:

1. ``hop``: one ``await aiofiles.os.stat()`` with the loop idle and under load
   (64 coroutines doing hops, and/or a thread decoding base64 as
   ``decode_and_verify`` does, with or without hashing), in microseconds per hop.
2. ``write``: writing N images three ways: (a) ``pmock_batch.images.ImageSink``
   as it is (``feed_raw`` then ``commit``: write, fsync and rename through
   ``files.AtomicFile`` in one hop for an image under 1 MB), (b) temp file,
   fsync and rename with many small aiofiles writes, (c) one
   ``asyncio.to_thread`` call doing write, fsync and rename synchronously with
   the standard library; with the loop idle, and while a base64 thread runs.
   (Until issue 10, (a) was ``images.write_atomic``, 7 hops per image; it was
   used only by tests and is gone.)
3. ``manifest``: appending N records with ``ManifestWriter.append`` against a
   plain synchronous write and flush per record, and one ``to_thread`` each.

Within each benchmark the variants run alternated (A B C A B C ...), so drift
on a shared machine hits all of them alike; the table shows medians and
ratios. Hops are counted exactly: the loop's default executor is replaced by
one that counts the jobs submitted to it.

Usage::

    .venv/bin/python benchmarks/aiofiles_hops.py            # about 45 s on 2 cores
    .venv/bin/python benchmarks/aiofiles_hops.py --quick    # about 5 s
    .venv/bin/python benchmarks/aiofiles_hops.py --help

It writes only inside a temporary directory and needs no network.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO, TypeVar

import aiofiles
import aiofiles.os

from pmock_batch.config import DEFAULT_CONCURRENCY
from pmock_batch.files import TMP_SUFFIX
from pmock_batch.images import ImageSink
from pmock_batch.manifest import ManifestWriter
from pmock_batch.models import JobRecord

T = TypeVar("T")
KIB = 1024

# Defaults for a full run (about 45 s on a 2-core machine) and for --quick (about 5 s).
FULL = {
    "reps": 3,
    "hop_seconds": 0.4,
    "large_count": 200,
    "large_kib": 1536,
    "small_count": 2000,
    "small_kib": 20,
    "busy_count": 16,
    "records": 5000,
}
QUICK = {
    "reps": 3,
    "hop_seconds": 0.1,
    "large_count": 20,
    "large_kib": 1536,
    "small_count": 150,
    "small_kib": 20,
    "busy_count": 8,
    "records": 500,
}


# --------------------------------------------------------------------------- machinery


class CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, counting each job submitted: one job is one thread hop."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="hop")
        self.submitted = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        self.submitted += 1  # only the loop thread submits
        return super().submit(fn, *args, **kwargs)


@dataclass(frozen=True)
class Work:
    """What the CPU-busy thread does, over and over, to one image's base64 text.

    ``binascii`` holds the GIL for the whole decode (about 4 ms for a large
    image); ``hashlib`` releases it while hashing a large buffer (about 1 ms).
    decode_and_verify does both, so ``sha256=True`` is the engine's case; with
    ``sha256=False`` the thread holds the GIL nearly all the time: the worst case.
    """

    blob: bytes
    sha256: bool

    @property
    def label(self) -> str:
        return "b64decode+sha256 thread" if self.sha256 else "b64decode-only thread"

    def once(self) -> None:
        data = base64.b64decode(self.blob, validate=True)
        if self.sha256:
            hashlib.sha256(data).hexdigest()


class Busy:
    """A thread doing :class:`Work` in a loop while the ``with`` block runs."""

    def __init__(self, work: Work) -> None:
        self.work = work
        self.decodes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="busy-b64", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.work.once()
            self.decodes += 1

    def __enter__(self) -> Busy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()


def busy(work: Work | None) -> contextlib.AbstractContextManager[Busy | None]:
    """A running :class:`Busy` thread, or nothing when ``work`` is None."""
    return Busy(work) if work is not None else contextlib.nullcontext()


@dataclass
class Sample:
    """One run of one variant."""

    wall: float  # seconds
    ops: int  # hops, files or records done
    hops: int  # executor jobs submitted during the run
    latency: float = 0.0  # median seconds per awaited hop (benchmark 1 only)
    latency_mean: float = 0.0  # mean of the same
    decodes: float = float("nan")  # decodes per second done by the base64 thread, if any


@dataclass
class Variant:
    key: str
    label: str
    run: Callable[[int], Awaitable[Sample]]  # called with the repetition number
    samples: list[Sample] = field(default_factory=list)


async def alternate(variants: list[Variant], reps: int) -> None:
    """Run the variants A B C A B C ... ``reps`` times over."""
    for rep in range(reps):
        for variant in variants:
            variant.samples.append(await variant.run(rep))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


_EXECUTOR: list[CountingExecutor] = []  # the one amain() installs


def executor() -> CountingExecutor:
    return _EXECUTOR[0]


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------- 1. one hop


async def _hop_worker(path: Path, deadline: float, latencies: list[float]) -> int:
    done = 0
    clock = time.perf_counter
    while clock() < deadline:
        t0 = clock()
        await aiofiles.os.stat(path)
        latencies.append(clock() - t0)
        done += 1
    return done


async def hop_run(path: Path, seconds: float, coroutines: int, work: Work | None) -> Sample:
    ex = executor()
    latencies: list[float] = []
    with busy(work) as thread:
        before = ex.submitted
        start = time.perf_counter()
        deadline = start + seconds
        counts = await asyncio.gather(
            *(_hop_worker(path, deadline, latencies) for _ in range(coroutines))
        )
        wall = time.perf_counter() - start
        hops = ex.submitted - before
        decodes = thread.decodes / wall if thread is not None else float("nan")
    return Sample(
        wall=wall,
        ops=sum(counts),
        hops=hops,
        latency=median(latencies),
        latency_mean=statistics.fmean(latencies),
        decodes=decodes,
    )


def sync_stat_us(path: Path, work: Work | None = None, n: int = 20000) -> float:
    with busy(work):
        start = time.perf_counter()
        for _ in range(n):
            os.stat(path)
        return (time.perf_counter() - start) / n * 1e6


def decode_ms(work: Work, n: int = 10) -> float:
    """What decode_and_verify spends on base64 and SHA-256 for one image (stdlib only)."""
    start = time.perf_counter()
    for _ in range(n):
        work.once()
    return (time.perf_counter() - start) / n * 1e3


async def bench_hops(root: Path, args: argparse.Namespace, blob: bytes) -> None:
    path = root / "stat-me"
    path.write_bytes(b"x")
    n = args.load_coroutines
    await hop_run(path, 0.05, n, None)  # warm up: start the executor threads
    verify = Work(blob, sha256=True)
    decode = Work(blob, sha256=False)
    loads: list[tuple[int, Work | None]] = [
        (1, None),
        (1, verify),
        (1, decode),
        (n, None),
        (n, verify),
        (n, decode),
    ]
    variants = []
    for key, (coroutines, work) in zip("ABCDEF", loads, strict=True):
        label = f"{coroutines} coroutine{'s' if coroutines > 1 else ''}"
        if work is not None:
            label += f" + {work.label}"
        elif coroutines == 1:
            label += ", idle loop"
        variants.append(
            Variant(
                key,
                label,
                lambda _, c=coroutines, w=work: hop_run(path, args.hop_seconds, c, w),
            )
        )
    await alternate(variants, args.reps)
    stat_us = median([sync_stat_us(path) for _ in range(3)])
    stat_busy_us = median([sync_stat_us(path, decode, 2000) for _ in range(3)])
    dec_ms = median([decode_ms(verify) for _ in range(3)])

    base_lat = median([s.latency for s in variants[0].samples])
    rows = []
    for v, (_, work) in zip(variants, loads, strict=True):
        assert all(s.hops == s.ops for s in v.samples), "a stat() that was not one hop"
        lat = median([s.latency for s in v.samples]) * 1e6
        rows.append(
            [
                f"{v.key}  {v.label}",
                f"{lat:,.0f}",
                f"{median([s.latency_mean for s in v.samples]) * 1e6:,.0f}",
                f"{lat / (base_lat * 1e6):.1f}x",
                f"{median([s.wall / s.ops * 1e6 for s in v.samples]):,.1f}",
                "-" if work is None else f"{median([s.decodes for s in v.samples]):,.0f}",
            ]
        )
    print(
        f"\n1. One thread hop: await aiofiles.os.stat(), {args.hop_seconds} s per run, "
        f"median of {args.reps} runs"
    )
    print(
        table(
            ["variant", "latency us", "mean us", "vs A", "wall us/hop", "decodes/s"],
            rows,
        )
    )
    print(
        f"  reference: sync os.stat() in the loop, no hop: {stat_us:.1f} us idle, "
        f"{stat_busy_us:.1f} us with a {decode.label}"
    )
    print(
        f"  reference: b64decode + sha256 of one {args.large_kib} KiB image (stdlib): "
        f"{dec_ms:.1f} ms = {dec_ms * 1e3 / base_lat / 1e6:,.0f} idle hops"
    )
    print(
        "  latency, mean = median and mean time one 'await' takes (what a write waits);\n"
        "  wall = run time / hops done (throughput); decodes/s = images the busy thread\n"
        f"  got through per second (b64decode+sha256 alone: {1e3 / dec_ms:,.0f})"
    )


# --------------------------------------------------------------------------- 2. image writes


def _tmp_name(target: Path) -> Path:
    return target.parent / f".{target.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"


async def write_chunked(out_dir: Path, relative: str, data: bytes, chunk: int) -> Path:
    """Temp file, fsync and rename, with one aiofiles write per ``chunk`` bytes."""
    target = out_dir / relative  # the benchmark's own names: no need to check them
    await aiofiles.os.makedirs(target.parent, exist_ok=True)
    tmp = _tmp_name(target)
    try:
        async with aiofiles.open(tmp, "wb") as fh:
            view = memoryview(data)
            for start in range(0, len(view), chunk):
                await fh.write(view[start : start + chunk])
            await fh.flush()
            await aiofiles.os.wrap(os.fsync)(fh.fileno())
        await aiofiles.os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            await aiofiles.os.remove(tmp)
        raise
    return target


def _write_sync(target: Path, data: bytes) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(target)
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return target


async def write_one_hop(out_dir: Path, relative: str, data: bytes) -> Path:
    """The same steps, all in one worker thread: one hop per image."""
    return await asyncio.to_thread(_write_sync, out_dir / relative, data)


async def write_sink(out_dir: Path, relative: str, data: bytes) -> Path:
    """What the engine does with a downloaded image, less the checks: the sink as it is."""
    sink = ImageSink(out_dir, relative.rsplit(".", 1)[0])
    try:
        await sink.feed_raw(data)
        return await sink.commit(out_dir, relative)
    finally:
        sink.discard()


Writer = Callable[[Path, str, bytes], Awaitable[Path]]


async def write_run(
    root: Path,
    name: str,
    writer: Writer,
    data: bytes,
    count: int,
    writers: int,
    work: Work | None,
) -> Sample:
    out_dir = root / name
    out_dir.mkdir()
    os.sync()  # start every run with no dirty pages left by the one before
    ex = executor()
    todo = iter(range(count))

    async def worker() -> None:
        for i in todo:
            await writer(out_dir, f"images/{i:05d}.png", data)

    with busy(work):
        before = ex.submitted
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(writers)))
        wall = time.perf_counter() - start
        hops = ex.submitted - before
    files = list((out_dir / "images").iterdir())
    assert len(files) == count, f"{name}: {len(files)} files, expected {count}"
    shutil.rmtree(out_dir)
    return Sample(wall=wall, ops=count, hops=hops)


async def bench_writes(
    root: Path,
    args: argparse.Namespace,
    title: str,
    count: int,
    kib: int,
    work: Work | None = None,
) -> None:
    data = os.urandom(kib * KIB)
    chunk = args.chunk_kib * KIB

    async def chunked(out_dir: Path, relative: str, data: bytes) -> Path:
        return await write_chunked(out_dir, relative, data, chunk)

    writers: list[tuple[str, str, Writer]] = [
        ("a", "ImageSink (as is)", write_sink),
        ("b", f"aiofiles, {args.chunk_kib} KiB writes", chunked),
        ("c", "one to_thread per image", write_one_hop),
    ]
    variants = [
        Variant(
            key,
            text,
            lambda rep, key=key, fn=fn: write_run(
                root, f"write-{key}-{rep}", fn, data, count, args.writers, work
            ),
        )
        for key, text, fn in writers
    ]
    await alternate(variants, args.reps)

    base = median([s.wall for s in variants[0].samples])
    rows = []
    for v in variants:
        wall = median([s.wall for s in v.samples])
        hops = median([s.hops / s.ops for s in v.samples])
        rows.append(
            [
                f"{v.key}  {v.label}",
                f"{wall:.3f}",
                f"{wall / count * 1e3:.2f}",
                f"{hops:.1f}",
                f"{count * len(data) / wall / 1e6:,.0f}",
                f"{wall / base:.2f}x",
            ]
        )
    busy = f", while a {work.label} runs" if work is not None else ""
    print(
        f"\n{title}. Write {count} images of {kib} KiB{busy}, {args.writers} concurrent "
        f"writers, median of {args.reps} runs"
    )
    print(table(["variant", "wall s", "ms/image", "hops/image", "MB/s", "vs a"], rows))


# --------------------------------------------------------------------------- 3. manifest


def _record(i: int) -> JobRecord:
    return JobRecord.model_validate(
        {
            "id": f"job-{i:06d}",
            "line": i + 1,
            "status": "ok",
            "files": [
                {
                    "path": f"job-{i:06d}.png",
                    "sha256": hashlib.sha256(str(i).encode()).hexdigest(),
                    "bytes": 1_572_864,
                    "format": "png",
                    "width": 1024,
                    "height": 1024,
                }
            ],
            "attempts": 1,
            "elapsed_s": 41.5,
            "http_status": 200,
            "revised_prompt": "A watercolour lighthouse at dusk, gulls over a calm sea",
            "usage": {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210},
            "started_at": "2025-01-01T00:00:00+00:00",
            "finished_at": "2025-01-01T00:00:41+00:00",
        }
    )


class SyncLog:
    """A plain append-mode text file, flushed after every line."""

    def __init__(self, path: Path) -> None:
        self.fh: TextIO = path.open("a", encoding="utf-8")

    def append(self, record: JobRecord) -> None:
        self.fh.write(record.model_dump_json() + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


async def _timed_appends(
    append: Callable[[JobRecord], Awaitable[None]], records: list[JobRecord]
) -> Sample:
    ex = executor()
    before = ex.submitted
    start = time.perf_counter()
    for record in records:
        await append(record)
    wall = time.perf_counter() - start
    return Sample(wall=wall, ops=len(records), hops=ex.submitted - before)


async def manifest_aiofiles(path: Path, records: list[JobRecord]) -> Sample:
    async with ManifestWriter(path) as writer:
        return await _timed_appends(writer.append, records)


async def manifest_sync(path: Path, records: list[JobRecord]) -> Sample:
    log = SyncLog(path)

    async def append(record: JobRecord) -> None:
        log.append(record)

    try:
        return await _timed_appends(append, records)
    finally:
        log.close()


async def manifest_to_thread(path: Path, records: list[JobRecord]) -> Sample:
    log = SyncLog(path)

    async def append(record: JobRecord) -> None:
        await asyncio.to_thread(log.append, record)

    try:
        return await _timed_appends(append, records)
    finally:
        log.close()


async def bench_manifest(root: Path, args: argparse.Namespace) -> None:
    records = [_record(i) for i in range(args.records)]
    kinds = [
        ("A", "ManifestWriter.append (aiofiles)", manifest_aiofiles),
        ("B", "sync write + flush in the loop", manifest_sync),
        ("C", "one to_thread per record", manifest_to_thread),
    ]

    async def run(key: str, fn: Callable[..., Awaitable[Sample]], rep: int) -> Sample:
        path = root / f"manifest-{key}-{rep}" / "manifest.jsonl"
        path.parent.mkdir()
        sample = await fn(path, records)
        lines = path.read_bytes().count(b"\n")
        assert lines == len(records), f"{key}: {lines} lines, expected {len(records)}"
        shutil.rmtree(path.parent)
        return sample

    variants = [
        Variant(key, text, lambda rep, key=key, fn=fn: run(key, fn, rep)) for key, text, fn in kinds
    ]
    await alternate(variants, args.reps)

    sync_us = median([s.wall / s.ops * 1e6 for s in variants[1].samples])
    rows = []
    for v in variants:
        per = median([s.wall / s.ops * 1e6 for s in v.samples])
        rows.append(
            [
                f"{v.key}  {v.label}",
                f"{median([s.wall for s in v.samples]):.3f}",
                f"{per:,.1f}",
                f"{median([s.hops / s.ops for s in v.samples]):.1f}",
                f"{per / sync_us:.1f}x",
            ]
        )
    print(
        f"\n3. Append {args.records} manifest records one after another "
        f"(serialisation included), median of {args.reps} runs"
    )
    print(table(["variant", "wall s", "us/record", "hops/record", "vs B"], rows))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--quick", action="store_true", help=f"small sizes, about 5 s: {QUICK}")
    parser.add_argument(
        "--only",
        choices=["hop", "write", "manifest"],
        action="append",
        help="run only this benchmark (repeatable); default: all",
    )
    parser.add_argument("--reps", type=int, help=f"runs per variant (default {FULL['reps']})")
    parser.add_argument(
        "--hop-seconds",
        type=float,
        help=f"seconds per hop run (default {FULL['hop_seconds']})",
    )
    parser.add_argument(
        "--load-coroutines",
        type=int,
        default=64,
        help="coroutines under load (default %(default)s)",
    )
    parser.add_argument(
        "--large-count", type=int, help=f"large images to write (default {FULL['large_count']})"
    )
    parser.add_argument(
        "--large-kib", type=int, help=f"size of a large image (default {FULL['large_kib']})"
    )
    parser.add_argument(
        "--small-count", type=int, help=f"small images to write (default {FULL['small_count']})"
    )
    parser.add_argument(
        "--small-kib", type=int, help=f"size of a small image (default {FULL['small_kib']})"
    )
    parser.add_argument(
        "--busy-count",
        type=int,
        help=f"large images to write while a base64 thread runs (default {FULL['busy_count']})",
    )
    parser.add_argument(
        "--busy-work",
        choices=["verify", "decode"],
        default="verify",
        help="what the busy thread of 2.3 does: b64decode+sha256 like decode_and_verify, "
        "or b64decode only (holds the GIL nearly all the time: the worst case); "
        "default %(default)s",
    )
    parser.add_argument(
        "--chunk-kib", type=int, default=64, help="write size of variant b (default %(default)s)"
    )
    parser.add_argument(
        "--writers",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="concurrent image writers (default %(default)s, the engine's default concurrency)",
    )
    parser.add_argument(
        "--records", type=int, help=f"manifest records to append (default {FULL['records']})"
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="set sys.setswitchinterval() in seconds (default: leave Python's, 0.005)",
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to make the temporary directory"
    )
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


async def amain(args: argparse.Namespace) -> None:
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    threads = min(32, (os.cpu_count() or 1) + 4)  # the stdlib default for the default executor
    _EXECUTOR[:] = [CountingExecutor(threads)]
    asyncio.get_running_loop().set_default_executor(_EXECUTOR[0])
    only = set(args.only or ["hop", "write", "manifest"])
    # The busy thread decodes what the engine decodes: the base64 text of a large image.
    blob = base64.b64encode(os.urandom(args.large_kib * KIB))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"aiofiles hops: Python {platform.python_version()}, aiofiles {version('aiofiles')}, "
        f"{os.cpu_count()} CPUs, default executor {threads} threads, "
        f"GIL switch interval {sys.getswitchinterval() * 1e3:g} ms, load avg {load:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="aiofiles-hops-", dir=args.dir) as tmp:
        root = Path(tmp)
        print(f"writing under {root}")
        started = time.perf_counter()
        if "hop" in only:
            await bench_hops(root, args, blob)
        if "write" in only:
            await bench_writes(root, args, "2.1", args.large_count, args.large_kib)
            await bench_writes(root, args, "2.2", args.small_count, args.small_kib)
            work = Work(blob, sha256=args.busy_work == "verify")
            await bench_writes(root, args, "2.3", args.busy_count, args.large_kib, work)
        if "manifest" in only:
            await bench_manifest(root, args)
        print(f"\ntotal {time.perf_counter() - started:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
