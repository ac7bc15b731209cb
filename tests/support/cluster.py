"""A real Redis Cluster for tests: ``redis-server --cluster-enabled yes`` processes, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.cluster

from services import children
from services.embedded import stop_pid, wait_for_port

HOST = "127.0.0.1"
#: The cluster bus of a node listens on its port + 10000, so node ports must stay at or below this.
MAX_PORT = 65535 - 10000
SLOTS = 16384

#: Ports handed out by this process and not yet released: never offered twice.
_taken: set[int] = set()
_taken_lock = threading.Lock()


class ClusterError(RuntimeError):
    """The cluster could not be started or did not reach the state waited for."""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free loopback port ``p <= 55535`` whose bus port ``p + 10000`` is free too.

    Both are taken below the kernel's ephemeral range when it leaves room (10000..22767 with the
    usual 32768 start), so no outgoing connection of any program can be handed one of them while a
    node is down between ``kill`` and ``restart``.
    """
    top = min(MAX_PORT, _ephemeral_low() - 10000 - 1)
    low = 10000 if top > 12000 else 1024
    for _ in range(1000):
        port = random.randint(low, top)
        with _taken_lock:
            if port in _taken or not (_bindable(port) and _bindable(port + 10000)):
                continue
            _taken.add(port)
            return port
    raise ClusterError(f"no free port pair (p, p+10000) found in {low}..{top}")


def release_port(port: int) -> None:
    with _taken_lock:
        _taken.discard(port)


def cluster_binaries() -> tuple[str, str]:
    """Paths of ``redis-server`` and ``redis-cli``; ClusterError if either is missing."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        raise ClusterError(
            "redis-server and redis-cli are needed for cluster tests: run ./scripts/install-system-deps.sh"
        )
    return server, cli


@dataclass(frozen=True)
class NodeView:
    """One line of ``CLUSTER NODES`` as seen by some node."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})


def parse_cluster_nodes(text: str) -> list[NodeView]:
    """``CLUSTER NODES`` text -> its lines; migrating/importing markers (``[s->-id]``) are skipped."""
    views = []
    for line in text.strip().splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        addr = parts[1].split("@", 1)[0].split(",", 1)[0]
        port = int(addr.rsplit(":", 1)[1] or 0)
        slots = []
        for item in parts[8:]:
            if item.startswith("["):
                continue
            lo, _, hi = item.partition("-")
            slots.append((int(lo), int(hi or lo)))
        views.append(
            NodeView(
                node_id=parts[0],
                port=port,
                flags=frozenset(parts[2].split(",")),
                master_id=None if parts[3] == "-" else parts[3],
                slots=tuple(slots),
            )
        )
    return views


@dataclass(eq=False)
class Node:
    """One ``redis-server`` of the cluster: its port, process, and role as last seen."""

    port: int
    workdir: Path
    node_id: str = ""
    role: str = "master"  # "master" or "replica", as of the last refresh()
    master_id: str | None = None  # the master a replica follows
    pid: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _clients: dict[bool, redis.Redis] = field(default_factory=dict, repr=False)

    @property
    def addr(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pidfile(self) -> Path:
        return self.workdir / "redis.pid"

    @property
    def log(self) -> Path:
        return self.workdir / "redis.log"

    def client(self, decode: bool = True) -> redis.Redis:
        """A plain (non-cluster) client of this node alone, for admin commands; cached."""
        if decode not in self._clients:
            self._clients[decode] = redis.Redis(
                host=HOST,
                port=self.port,
                protocol=2,
                decode_responses=decode,
                socket_timeout=10,
                socket_connect_timeout=2,
            )
        return self._clients[decode]

    def close_clients(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()

    def info(self, section: str) -> dict[str, Any]:
        return dict(self.client().info(section))

    def cluster_info(self) -> dict[str, str]:
        text = str(self.client().execute_command("CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)

    def cluster_nodes(self) -> list[NodeView]:
        return parse_cluster_nodes(str(self.client().execute_command("CLUSTER", "NODES")))

    def log_tail(self, chars: int = 1500) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class LocalRedisCluster:
    """A Redis Cluster of real ``redis-server`` processes on loopback, for tests.

    ``masters`` x (1 + ``replicas``) nodes are started (each in its own directory under ``workdir``,
    with its ``nodes.conf``, pidfile and log), joined with ``redis-cli --cluster create``, and
    waited for: ``cluster_state:ok`` everywhere, every node agreeing on the slot map, replicas
    linked and caught up. Every process is stopped by its pid, never by name or port.

    ``node_timeout_ms`` is ``cluster-node-timeout``: a master unreachable that long is flagged and
    its replica promoted (failover takes roughly 1-2x that). Keep it large (the default 15000) for a
    cluster without replicas, where a falsely failed master would make the whole cluster fail.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        workdir: str | os.PathLike[str] | None = None,
        node_timeout_ms: int = 15000,
        appendonly: bool = False,
        extra_args: Iterable[str] = (),
    ) -> None:
        self.server, self.cli = cluster_binaries()
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="boilerhouse-cluster-")
        self.workdir = Path(workdir or self._tmp.name).absolute()  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.n_masters = masters
        self.n_replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        self.extra_args = tuple(extra_args)
        self.nodes: list[Node] = []

    # ---- processes -------------------------------------------------------------------------------

    def _args(self, node: Node) -> list[str]:
        return [
            self.server,
            "--bind",
            HOST,
            "--port",
            str(node.port),
            "--dir",
            str(node.workdir),
            "--pidfile",
            str(node.pidfile),
            "--logfile",
            str(node.log),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--protected-mode",
            "no",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(node.workdir / "nodes.conf"),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            # A replica may always take over, however long its link was down (tests kill things).
            "--cluster-replica-validity-factor",
            "0",
            # Full syncs start at once instead of waiting 5 s for more replicas to join.
            "--repl-diskless-sync-delay",
            "0",
            *self.extra_args,
        ]

    def _spawn(self, node: Node) -> None:
        node.proc = subprocess.Popen(
            self._args(node),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            # A test run killed outright takes its cluster with it.
            preexec_fn=children.die_with_parent(signal.SIGTERM),  # noqa: PLW1509
        )
        node.pid = node.proc.pid
        try:
            wait_for_port(HOST, node.port, timeout=10)
            node.node_id = str(node.client().execute_command("CLUSTER", "MYID"))
        except Exception as exc:
            self._reap(node, signal.SIGKILL)
            raise ClusterError(f"redis-server on {node.port} did not start: {node.log_tail()}") from exc

    def _new_node(self) -> Node:
        for attempt in range(3):
            port = free_cluster_port()
            workdir = self.workdir / f"node-{port}"
            workdir.mkdir(parents=True, exist_ok=True)
            node = Node(port=port, workdir=workdir)
            try:
                self._spawn(node)
            except ClusterError:  # the port (or its bus port) was taken meanwhile: another pair
                release_port(port)
                if attempt == 2:
                    raise
                continue
            self.nodes.append(node)
            return node
        raise AssertionError("unreachable")

    def _reap(self, node: Node, sig: int) -> None:
        node.close_clients()
        if node.proc is not None:
            stop_pid(node.proc.pid, timeout=10, sig=sig)
            node.proc.wait(5)  # stop_pid reaped it: let Popen record that (no ResourceWarning)
        node.proc = None
        node.pid = None

    def _run_cli(self, *args: str, timeout: float = 120) -> str:
        proc = subprocess.run(
            [self.cli, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        out = proc.stdout + proc.stderr
        if proc.returncode != 0 or "[ERR]" in out:
            raise ClusterError(f"redis-cli {' '.join(args)} failed ({proc.returncode}):\n{out[-4000:]}")
        return out

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> LocalRedisCluster:
        try:
            for _ in range(self.n_masters * (1 + self.n_replicas)):
                self._new_node()
            self._run_cli(
                "--cluster",
                "create",
                *(n.addr for n in self.nodes),
                "--cluster-replicas",
                str(self.n_replicas),
                "--cluster-yes",
            )
            # redis-cli returns before every replica has run its CLUSTER REPLICATE and synced.
            self.wait_ok(expect_nodes=len(self.nodes), replicas_each=self.n_replicas)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node by its pid (SIGTERM, then SIGKILL) and free the ports."""
        for node in self.nodes:
            self._reap(node, signal.SIGTERM)
            release_port(node.port)

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ---- topology --------------------------------------------------------------------------------

    def live_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.alive]

    def _any_live(self) -> Node:
        for node in self.live_nodes():
            with contextlib.suppress(redis.RedisError):
                node.client().ping()
                return node
        raise ClusterError("no node of the cluster is answering")

    def refresh(self) -> None:
        """Update every node's role and master from a live node's view (CLUSTER NODES)."""
        by_id = {v.node_id: v for v in self._any_live().cluster_nodes()}
        for node in self.nodes:
            view = by_id.get(node.node_id)
            if view is not None:
                node.role = "master" if view.is_master else "replica"
                node.master_id = view.master_id

    def node_by_id(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def node_by_port(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def masters(self) -> list[Node]:
        """Live nodes that are masters owning at least one slot, in port order."""
        views = self._any_live().cluster_nodes()
        owners = {v.node_id for v in views if v.is_master and v.slots and not v.failed}
        self.refresh()
        return sorted((n for n in self.live_nodes() if n.node_id in owners), key=lambda n: n.port)

    def replicas_of(self, master: Node) -> list[Node]:
        self.refresh()
        return [n for n in self.live_nodes() if n.role == "replica" and n.master_id == master.node_id]

    def slot_owners(self) -> dict[int, str]:
        """slot -> node id of its master, per a live node's CLUSTER NODES."""
        owners: dict[int, str] = {}
        for view in self._any_live().cluster_nodes():
            if view.is_master and not view.failed:
                for lo, hi in view.slots:
                    for slot in range(lo, hi + 1):
                        owners[slot] = view.node_id
        return owners

    def slot_of(self, key: str | bytes) -> int:
        return int(self._any_live().client().execute_command("CLUSTER", "KEYSLOT", key))

    def node_for_slot(self, slot: int) -> Node:
        return self.node_by_id(self.slot_owners()[slot])

    def node_for_key(self, key: str | bytes) -> Node:
        return self.node_for_slot(self.slot_of(key))

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:port`` of one live master."""
        return self.masters()[0].url

    @property
    def seed_urls(self) -> list[str]:
        return [n.url for n in self.live_nodes()]

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A redis-py cluster client seeded with every live node (protocol 2 unless given)."""
        kwargs.setdefault("protocol", 2)
        seeds = [redis.cluster.ClusterNode(HOST, n.port) for n in self.live_nodes()]
        return redis.cluster.RedisCluster(startup_nodes=seeds, **kwargs)

    def flushall(self) -> None:
        for node in self.masters():
            node.client().flushall()

    # ---- waiting ---------------------------------------------------------------------------------

    def _problems(self, expect_nodes: int | None = None, replicas_each: int | None = None) -> list[str]:
        """What keeps the live nodes from being one healthy cluster (empty when there is nothing)."""
        problems: list[str] = []
        live = self.live_nodes()
        live_ids = {n.node_id for n in live}
        maps = set()
        roles = set()
        for node in live:
            try:
                info = node.cluster_info()
                views = node.cluster_nodes()
                repl = node.info("replication")
            except redis.RedisError as exc:
                problems.append(f"{node.port}: {exc!r}")
                continue
            if info.get("cluster_state") != "ok":
                problems.append(f"{node.port}: cluster_state {info.get('cluster_state')}")
            known = {v.node_id for v in views}
            if not live_ids <= known:
                problems.append(f"{node.port}: does not know {sorted(live_ids - known)}")
            if expect_nodes is not None and len(known) < expect_nodes:
                problems.append(f"{node.port}: knows {len(known)} of {expect_nodes} nodes")
            flagged = [v.port for v in views if v.node_id in live_ids and v.failed]
            if flagged:
                problems.append(f"{node.port}: sees live nodes {flagged} as failed")
            maps.add(
                tuple(sorted((v.node_id, v.slots) for v in views if v.is_master and v.slots and not v.failed))
            )
            # Each live node's role and master as this node sees it: a restarted old master turns into
            # a replica of its successor in its own view first, and the others learn it by gossip.
            roles.add(
                tuple(
                    sorted(
                        (v.node_id, v.is_master, v.master_id or "") for v in views if v.node_id in live_ids
                    )
                )
            )
            if repl.get("role") == "slave":
                if repl.get("master_link_status") != "up" or repl.get("master_sync_in_progress"):
                    problems.append(f"{node.port}: replica link {repl.get('master_link_status')}")
            else:
                unsynced = [
                    k
                    for k, v in repl.items()
                    if k.startswith("slave") and isinstance(v, dict) and v.get("state") != "online"
                ]
                if unsynced:
                    problems.append(f"{node.port}: replicas not online {unsynced}")
        if replicas_each is not None and not problems:
            views = self._any_live().cluster_nodes()
            for master in (v for v in views if v.is_master and v.slots):
                followers = [v for v in views if v.master_id == master.node_id and not v.failed]
                if len(followers) != replicas_each:
                    problems.append(f"{master.port} has {len(followers)} replicas, not {replicas_each}")
        if len(roles) > 1:
            problems.append(f"nodes disagree on which node is whose replica ({len(roles)} versions)")
        if len(maps) > 1:
            problems.append(f"nodes disagree on the slot map ({len(maps)} versions)")
        elif maps:
            covered = sum(hi - lo + 1 for _, slots in next(iter(maps)) for lo, hi in slots)
            if covered != SLOTS:
                problems.append(f"{covered} of {SLOTS} slots covered")
        return problems

    def wait_ok(
        self, timeout: float = 30.0, expect_nodes: int | None = None, replicas_each: int | None = None
    ) -> None:
        """Until every live node says ``cluster_state:ok``, all agree on one slot map covering every
        slot, none sees a live node as failed, and every replica is linked with no sync running;
        also until every node knows ``expect_nodes`` nodes and every master has ``replicas_each``
        replicas, when given."""
        deadline = time.monotonic() + timeout
        problems = ["not checked"]
        while time.monotonic() < deadline:
            problems = self._problems(expect_nodes, replicas_each)
            if not problems:
                self.refresh()
                return
            time.sleep(0.05)
        raise ClusterError(f"cluster not ok after {timeout}s: {problems}\n{self.describe()}")

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Until every live replica has applied its master's whole replication stream (no writes
        should be in flight)."""
        deadline = time.monotonic() + timeout
        lagging: list[str] = []
        while time.monotonic() < deadline:
            lagging = []
            for master in self.masters():
                offset = int(master.info("replication")["master_repl_offset"])
                for replica in self.replicas_of(master):
                    got = int(replica.info("replication").get("slave_repl_offset", -1))
                    if got < offset:
                        lagging.append(f"{replica.port} at {got} < {master.port} at {offset}")
            if not lagging:
                return
            time.sleep(0.05)
        raise ClusterError(f"replicas not in sync after {timeout}s: {lagging}")

    def describe(self) -> str:
        lines = []
        for node in self.nodes:
            state = "alive" if node.alive else "down"
            lines.append(f"  {node.port} pid={node.pid} {node.role} id={node.node_id[:8]} {state}")
        with contextlib.suppress(ClusterError, redis.RedisError):
            lines.append(str(self._any_live().client().execute_command("CLUSTER", "NODES")))
        return "\n".join(lines)

    # ---- faults ----------------------------------------------------------------------------------

    def kill(self, node: Node, sig: int = signal.SIGKILL) -> None:
        """Signal one node by pid. SIGKILL/SIGTERM/SIGINT: wait for it to exit (it is then down
        until ``restart``); any other signal (SIGSTOP, SIGCONT) is only sent."""
        if node.proc is None:
            return
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            self._reap(node, sig)
        else:
            os.kill(node.proc.pid, sig)

    def restart(self, node: Node, wait: bool = True, timeout: float = 30.0) -> None:
        """Start a stopped node again on its port and directory: it keeps its node id (nodes.conf)
        and rejoins; an old master whose slots were taken over comes back as a replica."""
        if node.alive:
            raise ClusterError(f"node {node.port} is still running")
        self._spawn(node)
        if wait:
            self.wait_ok(timeout)

    def wait_failover(self, old_master: Node, timeout: float = 30.0) -> Node:
        """Until a former replica of ``old_master`` is a master owning its slots and the cluster is
        ok again; returns the promoted node."""
        replica_ids = {n.node_id for n in self.nodes if n.master_id == old_master.node_id}
        if not replica_ids:
            raise ClusterError(f"{old_master.port} has no replica to promote")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError, ClusterError):
                owners = set(self.slot_owners().values())
                promoted = [self.node_by_id(i) for i in replica_ids & owners]
                if promoted and not self._problems():
                    self.refresh()
                    return promoted[0]
            time.sleep(0.05)
        raise ClusterError(f"no failover of {old_master.port} after {timeout}s\n{self.describe()}")

    # ---- slots -----------------------------------------------------------------------------------

    def begin_migration(self, slot: int, to: Node) -> Node:
        """Mark ``slot`` IMPORTING on ``to`` and MIGRATING on its owner; returns the owner. From now
        on the owner answers ASK for keys of the slot it no longer holds, TRYAGAIN for multi-key
        commands whose keys are split between the two."""
        source = self.node_for_slot(slot)
        if source is to:
            raise ClusterError(f"slot {slot} is already on {to.port}")
        to.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", to.node_id)
        return source

    def migrate_keys(self, slot: int, source: Node, to: Node, count: int | None = None) -> int:
        """MIGRATE up to ``count`` (all if None) of the slot's keys from ``source`` to ``to``."""
        moved = 0
        client = source.client(decode=False)
        while count is None or moved < count:
            batch = min(100, count - moved) if count is not None else 100
            keys = client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            client.execute_command("MIGRATE", HOST, to.port, "", 0, 10000, "KEYS", *keys)
            moved += len(keys)
        return moved

    def finish_migration(self, slot: int, source: Node, to: Node) -> None:
        """Assign the slot to ``to`` (target first, then the source, then every other master), as
        ``redis-cli --cluster reshard`` does, and wait until the cluster agrees."""
        others = [n for n in self.masters() if n not in (source, to)]
        for node in (to, source, *others):
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", to.node_id)
        self.wait_ok()

    def move_slot(
        self, slot: int, to: Node, batch: int = 100, between: Callable[[int], None] | None = None
    ) -> None:
        """Live-migrate one slot with its keys to master ``to``.

        ``redis-cli --cluster reshard`` moves a number of slots chosen by itself (the lowest of each
        source), never one given slot, so this is the sequence it runs per slot: SETSLOT IMPORTING /
        MIGRATING, GETKEYSINSLOT + MIGRATE in batches of ``batch`` keys, SETSLOT NODE. ``between(n)``
        is called after each batch (n keys moved so far) while the slot is half migrated.
        """
        source = self.begin_migration(slot, to)
        moved = 0
        while True:
            n = self.migrate_keys(slot, source, to, batch)
            if n == 0:
                break
            moved += n
            if between is not None:
                between(moved)
        self.finish_migration(slot, source, to)

    def reshard(self, source: Node, to: Node, slots: int) -> str:
        """``redis-cli --cluster reshard``: move the ``slots`` lowest slots of ``source`` to ``to``, live
        (with their keys); returns its output."""
        out = self._run_cli(
            "--cluster",
            "reshard",
            source.addr,
            "--cluster-from",
            source.node_id,
            "--cluster-to",
            to.node_id,
            "--cluster-slots",
            str(slots),
            "--cluster-yes",
            timeout=300,
        )
        self.wait_ok()
        return out

    def rebalance(self, use_empty_masters: bool = True) -> str:
        """``redis-cli --cluster rebalance`` (live: slots move with their keys); returns its output."""
        args = ["--cluster", "rebalance", self.masters()[0].addr]
        if use_empty_masters:
            args.append("--cluster-use-empty-masters")
        out = self._run_cli(*args, timeout=300)
        self.wait_ok()
        return out

    def add_master(self, rebalance: bool = False) -> Node:
        """Start a new empty node and ``redis-cli --cluster add-node`` it as a master (no slots until
        a rebalance, which ``rebalance=True`` runs)."""
        node = self._new_node()
        self._run_cli("--cluster", "add-node", node.addr, self.masters()[0].addr)
        self.wait_ok(expect_nodes=len(self.live_nodes()))
        if rebalance:
            self.rebalance()
        return node

    def add_replica(self, master: Node) -> Node:
        """Start a new node and add it as a replica of ``master``."""
        node = self._new_node()
        self._run_cli(
            "--cluster",
            "add-node",
            node.addr,
            master.addr,
            "--cluster-slave",
            "--cluster-master-id",
            master.node_id,
        )
        self.wait_ok(expect_nodes=len(self.live_nodes()))
        return node


@contextlib.contextmanager
def running_cluster(**kwargs: Any) -> Iterator[LocalRedisCluster]:
    cluster = LocalRedisCluster(**kwargs)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.cleanup()
