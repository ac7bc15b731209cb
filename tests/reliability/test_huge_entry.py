"""An entry larger than the aggregator can hold in memory (issue 11, item 5), under a real memory limit.

Redis accepts entries up to its ``proto-max-bulk-len`` (512 MB unless configured lower: the shipped
single-server configurations say 2mb, the cluster nodes keep the default). Reading one costs about twice its size in the client, so under a memory limit
every read that reached it failed with ``MemoryError``, again and again, while ``/readyz`` said ready.
Here the test's Redis accepts 512 MB, a 300 MB entry is written, and ``boilerhouse aggregator`` (and
``replay``, and ``aggregator --rebuild``) run with their address space limited to 700 MiB (``prlimit
--as``, what ``ulimit -v`` sets): the entry is dead-lettered by id as ``too_large`` with an empty payload,
the entries around it are folded, the consumer reports progress, and replay and rebuild agree with it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
import redis

from services.embedded import EmbeddedRedis, free_port
from shared.events.codec import ENTRY_FIELD, encode_batch
from shared.events.streams import dead_letter_key, stream_key
from tests.reliability.support import PREFIX, STABLE_ENV, comparable, diff, total, vm_hwm_kib
from tests.support.expo import Samples, parse
from tests.support.procs import BOILERHOUSE, Proc, wait_http
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

HUGE_BYTES = 300 << 20
#: The aggregator's address-space limit: reading the huge entry whole takes about twice its size.
LIMIT_BYTES = 700 << 20
SRC = "api:huge-test:1:00000001"
STREAM = stream_key(0)


def _prlimit() -> str:
    found = shutil.which("prlimit")
    if found is None:
        pytest.fail("prlimit (util-linux) is not installed")
    return found


def limited(args: list[str], workdir: Path, name: str, env: dict[str, str] | None = None) -> Proc:
    """A ``boilerhouse`` command with its address space limited to :data:`LIMIT_BYTES` (prlimit execs it:
    the pid is the command's)."""
    return Proc(
        [_prlimit(), f"--as={LIMIT_BYTES}", "--", *BOILERHOUSE, *args],
        workdir,
        name,
        {**STABLE_ENV, "BOILERHOUSE_CHECKPOINT_INTERVAL_S": "0.2", **(env or {})},
    )


def events(first_seq: int, n: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for seq in range(first_seq, first_seq + n):
        if seq == 1:
            out.append({"type": "source.started", "seq": 1, "ts": time.time(), "service": "api",
                        "version": "1", "host": "h", "pid": 1, "start_time_s": 1.0})  # fmt: skip
        else:
            out.append(
                {"type": "container.health_check_failed", "seq": seq, "ts": time.time(), "pool_id": "p"}
            )
    return out


def scrape(url: str) -> Samples:
    return parse(httpx.get(url + "/metrics", timeout=30).text)


def wait_samples(url: str, proc: Proc, what: str, check: object) -> Samples:
    def probe() -> Samples | None:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{proc.name} exited:\n{proc.output()[-3000:]}")
        try:
            return scrape(url)
        except httpx.HTTPError:  # not serving yet
            return None

    return wait_for(probe, what, within_s=90, accept=check, show=lambda s: proc.output()[-3000:])


def failures(health: Samples) -> float:
    return total(health, PREFIX + "aggregator_events_applied_total", type="container.health_check_failed")


@pytest.fixture
def big_redis(tmp_path: Path) -> EmbeddedRedis:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run ./scripts/install-system-deps.sh")
    server = EmbeddedRedis(
        workdir=tmp_path / "redis",
        binary=binary,
        allow_fake=False,
        extra_args=("--proto-max-bulk-len", "512mb"),  # what Redis accepts unless configured lower
    )
    server.start()
    yield server
    server.stop()


def test_an_entry_too_large_to_hold_is_dead_lettered_by_id_and_the_rest_is_folded(
    tmp_path: Path, big_redis: EmbeddedRedis
) -> None:
    client = redis.Redis.from_url(big_redis.url, protocol=2)
    huge_id = client.xadd(STREAM, {ENTRY_FIELD: b"\x00" * HUGE_BYTES}).decode()  # first and last entry
    client.xadd(STREAM, {ENTRY_FIELD: encode_batch(SRC, events(1, 4))})

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    agg = limited(["aggregator", "--redis-url", big_redis.url, "--port", str(port)], tmp_path, "aggregator")
    try:
        s = wait_samples(
            url,
            agg,
            "the huge entry dead-lettered and the next one folded",
            lambda s: failures(s) == 3 and total(s, PREFIX + "aggregator_dead_letters_total") == 1,
        )
        assert total(s, PREFIX + "aggregator_dead_letters_total", reason="too_large") == 1
        ready = httpx.get(url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert total(s, PREFIX + "aggregator_stalled_seconds", partition="0") == 0.0

        # Dead-lettered by id, without its payload; acknowledged with the checkpoint.
        (_, letter), *more = client.xrange(dead_letter_key(0))
        assert not more
        assert letter[b"entry_id"].decode() == huge_id and letter[b"reason"] == b"too_large"
        assert letter[b"payload"] == b"" and str(HUGE_BYTES).encode() in letter[b"detail"]
        wait_for(lambda: client.xpending(STREAM, "aggregator")["pending"] == 0 or None, "all acknowledged")

        # The huge entry stays the stream's first: entries after it are folded, also after a restart.
        client.xadd(STREAM, {ENTRY_FIELD: encode_batch(SRC, events(5, 3))})
        wait_samples(url, agg, "entries after it folded", lambda s: failures(s) == 6)
        peak_kib = vm_hwm_kib(agg.pid)
        agg.stop()
        agg = limited(["aggregator", "--redis-url", big_redis.url, "--port", str(port)], tmp_path, "again")
        wait_http(url + "/readyz", timeout=60, proc=agg)
        client.xadd(STREAM, {ENTRY_FIELD: encode_batch(SRC, events(8, 2))})
        live = wait_samples(url, agg, "folded after a restart", lambda s: failures(s) == 8)
        assert total(live, PREFIX + "aggregator_dead_letters_total") == 1, "dead-lettered once"
        assert client.xlen(dead_letter_key(0)) == 1
        print(
            f"aggregator peak RSS (VmHWM) under a {LIMIT_BYTES >> 20} MiB address-space limit: {peak_kib >> 10} MiB"
        )
        for log in ("aggregator", "again"):
            text = (tmp_path / f"{log}.log").read_text()
            assert "consumer loop failed" not in text and "Traceback" not in text, text[-3000:]
    finally:
        agg.stop()

    # Replay and rebuild, under the same limit, fold the same stream to the same numbers.
    replay = limited(["replay", "--redis-url", big_redis.url, "--at", "now", "-q"], tmp_path, "replay")
    code = replay.popen.wait(timeout=120)
    assert code == 0, replay.output()[-3000:]
    replayed = parse(replay.output())
    assert comparable(replayed) == comparable(live), diff(comparable(replayed), comparable(live))

    rebuilt_port = free_port()
    rebuilt = limited(
        ["aggregator", "--rebuild", "--redis-url", big_redis.url, "--port", str(rebuilt_port)],
        tmp_path,
        "rebuilt",
        {"BOILERHOUSE_CONSUMER_GROUP": "rebuilt"},
    )
    try:
        wait_http(f"http://127.0.0.1:{rebuilt_port}/readyz", timeout=120, proc=rebuilt)
        samples = comparable(scrape(f"http://127.0.0.1:{rebuilt_port}"))
        assert samples == comparable(live), diff(samples, comparable(live))
    finally:
        rebuilt.stop()
