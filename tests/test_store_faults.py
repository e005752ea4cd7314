"""Fault injection on the store: what the application is told, and what the store holds afterwards.

A store deleted, replaced or damaged under a running exporter; a read-only filesystem and a full disk (small tmpfs
mounts, so these need root); a writer killed mid-stream. The exporter never raises, never counts a span stored
that is not in the file at its path, and never writes over a file.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import AttributeValue

from costspan import semconv
from costspan.cli import main as cli_main
from costspan.store.exporter import CostspanSpanExporter
from costspan.store.sqlite import SCHEMA_VERSION, Store

SRC = Path(__file__).resolve().parents[1] / "src"
EXPORTER_LOG = "costspan.store.exporter"


def llm_spans(count: int, feature: str = "search") -> list[ReadableSpan]:
    """Finished LLM spans, as the instrumentor makes them (only the attributes the store keeps)."""
    recorded = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(recorded))
    tracer = provider.get_tracer("test")
    for _ in range(count):
        attributes: dict[str, AttributeValue] = {
            semconv.GEN_AI_OPERATION_NAME: "chat",
            semconv.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
            semconv.GEN_AI_USAGE_INPUT_TOKENS: 100,
            semconv.GEN_AI_USAGE_OUTPUT_TOKENS: 10,
            semconv.GEN_AI_USAGE_COST_AMOUNT: 0.001,
            "feature": feature,
        }
        with tracer.start_as_current_span("chat gpt-4o-mini", attributes=attributes):
            pass
    return list(recorded.get_finished_spans())


def span_ids(spans: list[ReadableSpan]) -> set[str]:
    return {f"{span.context.span_id:016x}" for span in spans if span.context is not None}


def stored_ids(path: Path) -> set[str]:
    with Store(path, create=False) as store:
        assert store.query_landed("PRAGMA integrity_check")[0][0] == "ok"
        return {row["span_id"] for row in store.query("SELECT span_id FROM spans")}


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == EXPORTER_LOG and r.levelname == "WARNING"]


def damaged_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.damaged-*"))


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[CostspanSpanExporter]:
    exporter = CostspanSpanExporter(tmp_path / "spans.sqlite3", timeout_s=0.5)
    yield exporter
    exporter.shutdown()


# --- the file changes under a running exporter ------------------------------------------------------------------


def test_a_store_deleted_while_open_is_left_and_the_batch_goes_to_a_new_one(
    exporter: CostspanSpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = llm_spans(3), llm_spans(4)
    assert exporter.export(first) == SpanExportResult.SUCCESS
    exporter.path.unlink()  # `rm spans.sqlite3` while the app runs: its -wal and -shm stay

    assert exporter.export(second) == SpanExportResult.SUCCESS
    assert (exporter.stored_spans, exporter.failed_spans) == (7, 0)
    (warning,) = warnings(caplog)
    assert f"the store {exporter.path} was deleted or replaced" in warning and "the 3 LLM span(s)" in warning
    assert stored_ids(exporter.path) == span_ids(second)  # a new store, with the batch that found the old one gone


def test_a_store_replaced_while_open_keeps_its_own_rows_and_gets_the_batch(
    exporter: CostspanSpanExporter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    restored, old, batch = llm_spans(2, "restored"), llm_spans(300), llm_spans(5)
    backup = CostspanSpanExporter(tmp_path / "backup.sqlite3")
    assert backup.export(restored) == SpanExportResult.SUCCESS
    backup.shutdown()
    assert exporter.export(old) == SpanExportResult.SUCCESS
    os.rename(backup.path, exporter.path)  # a backup restored over the store while the app runs

    assert exporter.export(batch) == SpanExportResult.SUCCESS
    assert exporter.failed_spans == 0
    assert "was deleted or replaced" in warnings(caplog)[0]
    # The old file's -wal, named for the path, must not become the restored file's: its rows stay its own.
    assert stored_ids(exporter.path) == span_ids(restored) | span_ids(batch)


def index_root_page(path: Path) -> int:
    """The root page of the span-id index: every insert reads it."""
    with sqlite3.connect(path) as db:
        (page,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_spans_1'").fetchone()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself
    db.close()
    return int(page)


def write_garbage(path: Path, page: int) -> None:
    """4 KiB of garbage over one page of the file, as a stray write or a bad disk block does."""
    page_size = int.from_bytes(path.read_bytes()[16:18], "big")
    with path.open("r+b") as file:
        file.seek((page - 1) * page_size)
        file.write(os.urandom(4096))


def test_garbage_in_a_store_is_found_on_write_and_the_store_moved_aside(
    exporter: CostspanSpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    old, batch = llm_spans(300), llm_spans(5)
    assert exporter.export(old) == SpanExportResult.SUCCESS
    exporter.shutdown()
    write_garbage(exporter.path, index_root_page(exporter.path))
    before = exporter.path.read_bytes()

    restarted = CostspanSpanExporter(exporter.path)  # the app starts again on the damaged store
    assert restarted.export(batch) == SpanExportResult.SUCCESS
    assert (restarted.stored_spans, restarted.failed_spans) == (5, 0)
    (damaged,) = damaged_files(exporter.path)
    assert damaged.read_bytes() == before  # moved, not written to
    (warning,) = warnings(caplog)
    assert f"the store {exporter.path} is damaged" in warning and str(damaged) in warning
    assert stored_ids(exporter.path) == span_ids(batch)
    restarted.shutdown()


def test_a_store_damaged_while_open_is_found_when_sqlite_reads_the_page_again(
    exporter: CostspanSpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    assert exporter.export(llm_spans(300)) == SpanExportResult.SUCCESS
    write_garbage(exporter.path, index_root_page(exporter.path))
    # The exporter's page cache still holds the page; another process's commit makes SQLite read it again.
    other = sqlite3.connect(exporter.path, isolation_level=None)
    other.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")  # rewrites page 1, changes nothing
    other.close()

    batch = llm_spans(5)
    assert exporter.export(batch) == SpanExportResult.SUCCESS
    assert exporter.failed_spans == 0
    assert len(damaged_files(exporter.path)) == 1 and "is damaged" in warnings(caplog)[0]
    assert stored_ids(exporter.path) == span_ids(batch)


def test_a_damaged_store_another_process_has_open_is_not_moved_and_the_batch_is_counted_failed(
    exporter: CostspanSpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    assert exporter.export(llm_spans(300)) == SpanExportResult.SUCCESS
    exporter.shutdown()
    write_garbage(exporter.path, index_root_page(exporter.path))
    holder = subprocess.Popen(  # another app process, idle with the store open
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); db.execute('PRAGMA journal_mode').fetchall(); "
            "print('open', flush=True); sys.stdin.read()",
            str(exporter.path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "open\n"
    restarted = CostspanSpanExporter(exporter.path)
    try:
        assert restarted.export(llm_spans(5)) == SpanExportResult.FAILURE
        assert (restarted.stored_spans, restarted.failed_spans) == (0, 5)
        (warning,) = warnings(caplog)
        assert "another process still has it open" in warning and "fuser" in warning
        assert damaged_files(exporter.path) == []

        holder.communicate("")  # the other process exits: the next batch moves the store aside
        batch = llm_spans(2)
        assert restarted.export(batch) == SpanExportResult.SUCCESS
        assert len(damaged_files(exporter.path)) == 1
        assert stored_ids(exporter.path) == span_ids(batch)
    finally:
        holder.kill()
        restarted.shutdown()


def test_a_damaged_sqlite_file_that_is_no_store_is_never_moved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "spans.sqlite3"  # another application's database at the store's path, and damaged
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (body TEXT)")
    db.commit()
    db.close()
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(3996)  # its schema page, past the header
    path.write_bytes(data)

    exporter = CostspanSpanExporter(path)
    assert exporter.export(llm_spans(2)) == SpanExportResult.FAILURE
    assert (exporter.stored_spans, exporter.failed_spans) == (0, 2)
    assert "not a costspan store" in warnings(caplog)[0]
    assert damaged_files(path) == [] and path.read_bytes() == data
    exporter.shutdown()


# --- a read-only filesystem and a full disk (small tmpfs mounts) -------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "mnt"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def report(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli_main(["report", "--by", "feature", "--store", str(path), "--format", "json"])
    out, err = capsys.readouterr()
    return status, out, err


def test_a_store_on_a_read_only_filesystem_is_read_in_place_and_never_written(
    tmpfs: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmpfs / "spans.sqlite3"
    writer = CostspanSpanExporter(path)
    assert writer.export(llm_spans(3)) == SpanExportResult.SUCCESS
    writer.shutdown()  # the last writer closes: no -wal or -shm left
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)

    status, out, _ = report(path, capsys)
    assert status == 0 and json.loads(out)[0]["requests"] == 3  # reading works, in place

    exporter = CostspanSpanExporter(path)
    assert exporter.export(llm_spans(2)) == SpanExportResult.FAILURE  # the app's call itself is untouched
    assert (exporter.stored_spans, exporter.failed_spans) == (0, 2)
    (warning,) = warnings(caplog)
    assert "cannot be written" in warning and "the store is intact" in warning and "COSTSPAN_STORE_PATH" in warning
    exporter.shutdown()
    assert sorted(p.name for p in tmpfs.iterdir()) == ["spans.sqlite3"]
    status, out, _ = report(path, capsys)
    assert status == 0 and json.loads(out)[0]["requests"] == 3
    assert cli_main(["reprice", "--store", str(path)]) == 2  # a command that writes says what to do
    err = capsys.readouterr().err
    assert "the store is intact" in err and "Copy it" in err and "--store" in err

    elsewhere = CostspanSpanExporter(tmpfs / "new" / "spans.sqlite3")  # no store yet, and none can be made
    assert elsewhere.export(llm_spans(1)) == SpanExportResult.FAILURE
    assert elsewhere.failed_spans == 1
    assert "its filesystem is read-only" in caplog.records[-1].getMessage()


WRITER = """
import sys
from opentelemetry.sdk.trace import TracerProvider
from tests.test_store_faults import llm_spans
from costspan.store.exporter import CostspanSpanExporter

exporter = CostspanSpanExporter(sys.argv[1])
for batch in range(int(sys.argv[2])):
    assert exporter.export(llm_spans(50)).name == "SUCCESS"
    print(batch, flush=True)
print("done", flush=True)
sys.stdin.read()
"""


def start_writer(path: Path, batches: int) -> subprocess.Popen[str]:
    """A process exporting ``batches`` batches of 50 spans, printing a line after each; it waits on stdin at the
    end, holding the store open."""
    root = str(Path(__file__).resolve().parents[1])
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(batches)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), root])},
    )


def test_a_store_with_a_wal_on_a_read_only_filesystem_is_read_with_its_committed_rows(
    tmpfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmpfs / "spans.sqlite3"
    writer = start_writer(path, 2)
    assert writer.stdout is not None
    while writer.stdout.readline() != "done\n":
        pass
    writer.send_signal(signal.SIGKILL)  # its rows stay in the -wal, which only a clean close moves into the file
    writer.wait()
    assert {p.name for p in tmpfs.iterdir()} == {"spans.sqlite3", "spans.sqlite3-wal", "spans.sqlite3-shm"}
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)

    status, out, _ = report(path, capsys)
    assert status == 0 and json.loads(out)[0]["requests"] == 100


def fill(directory: Path) -> None:
    """Fill the filesystem up (again, after something freed space)."""
    with (directory / "filler").open("ab") as file:
        try:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
        except OSError:
            pass


def test_a_full_disk_fails_the_batch_with_advice_and_loses_nothing_stored(
    tmpfs: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmpfs / "spans.sqlite3"
    exporter = CostspanSpanExporter(path)
    first, later = llm_spans(3), llm_spans(2)
    assert exporter.export(first) == SpanExportResult.SUCCESS
    fill(tmpfs)

    assert exporter.export(llm_spans(2000)) == SpanExportResult.FAILURE
    assert (exporter.stored_spans, exporter.failed_spans) == (3, 2000)
    (warning,) = warnings(caplog)
    assert "the disk is full" in warning and "Free disk space; nothing was written" in warning
    status, out, _ = report(path, capsys)  # the open store's -shm is there to read through
    assert status == 0 and json.loads(out)[0]["requests"] == 3

    (tmpfs / "filler").unlink()
    assert exporter.export(later) == SpanExportResult.SUCCESS  # the exporter goes on once there is room
    exporter.shutdown()  # the last writer closes: its -wal and -shm go
    fill(tmpfs)
    status, _, err = report(path, capsys)  # reading now needs a few KiB for a -shm
    assert status == 2 and "the disk is full" in err and "Free disk space" in err
    assert "nothing stored before was lost" in err

    (tmpfs / "filler").unlink()
    assert stored_ids(path) == span_ids(first) | span_ids(later)


# --- a writer killed mid-stream ----------------------------------------------------------------------------------


def test_a_writer_killed_mid_stream_leaves_whole_batches_and_a_new_writer_continues(tmp_path: Path) -> None:
    path = tmp_path / "spans.sqlite3"
    writer = start_writer(path, 1000)
    assert writer.stdout is not None
    for _ in range(5):
        writer.stdout.readline()
    writer.send_signal(signal.SIGKILL)  # between or inside a transaction, whichever it is in
    writer.wait()

    stored = stored_ids(path)  # opens, passes the integrity check
    assert len(stored) >= 250 and len(stored) % 50 == 0  # whole batches only

    again = CostspanSpanExporter(path)
    batch = llm_spans(50)
    assert again.export(batch) == SpanExportResult.SUCCESS
    assert again.export(batch) == SpanExportResult.SUCCESS  # a batch delivered twice is stored once
    assert (again.stored_spans, again.failed_spans) == (50, 0)
    again.shutdown()
    assert stored_ids(path) == stored | span_ids(batch)
