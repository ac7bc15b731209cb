"""Where the partitions live on a Redis Cluster, and ``boilerhouse placement [--apply]`` to even it out.

Each partition's keys share one hash slot (the ``{p}`` tag), so a partition lives on the master that
serves that slot. Slots are spread over masters in ranges, and the slots of ``{0}``, ``{1}`` ... fall
where CRC16 puts them: with 8 partitions on 3 masters holding equal slot ranges, one master serves 4
of them. :func:`plan` picks the fewest partition moves after which every master serves ``P // M`` or
``P // M + 1`` partitions (masters without slots included: a master just added takes its share);
:func:`move_slot` moves one slot live, as ``redis-cli --cluster reshard`` moves each slot
(``SETSLOT IMPORTING/MIGRATING``, ``MIGRATE`` of its keys, ``SETSLOT NODE`` on every master), which
``redis-cli`` cannot be told to do for one given slot.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from shared.events.bus import Client, RedisSettings, node_at, refresh
from shared.events.streams import stream_key

from .commands import add_command, guarded
from .settings import AggregatorSettings

#: Keys moved per MIGRATE, and how long a MIGRATE may stay idle (ms); a partition has three keys.
MIGRATE_BATCH = 100
MIGRATE_TIMEOUT_MS = 20_000


@dataclass(frozen=True, slots=True)
class Master:
    """A master of the cluster as ``CLUSTER NODES`` lists it."""

    name: str  # host:port
    node_id: str
    slots: tuple[tuple[int, int], ...]

    def serves(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)


@dataclass(frozen=True, slots=True)
class Move:
    partition: int
    slot: int
    source: Master
    target: Master


def masters(client: RedisCluster) -> list[Master]:
    """The cluster's masters that are not failing, in name order."""
    out = []
    for name, node in client.cluster_nodes().items():
        flags = set(str(node.get("flags", "")).split(","))
        if "master" not in flags or flags & {"fail", "fail?", "handshake", "noaddr"}:
            continue
        ranges = cast("list[list[str]]", node.get("slots") or [])
        slots = tuple((int(r[0]), int(r[-1])) for r in ranges)  # a single slot is [slot]
        out.append(Master(str(name), str(node["node_id"]), slots))
    return sorted(out, key=lambda m: m.name)


def owners(all_masters: Sequence[Master], partitions: int, prefix: str) -> dict[int, Master]:
    """The master serving each partition."""
    out = {}
    for p in range(partitions):
        slot = key_slot(stream_key(p, prefix).encode())
        out[p] = next(m for m in all_masters if m.serves(slot))
    return out


def plan(owned: Mapping[int, str], names: Sequence[str]) -> list[tuple[int, str, str]]:
    """The fewest moves ``(partition, from, to)`` after which each of ``names`` serves ``P // M`` or
    ``P // M + 1`` of the partitions; ``owned`` maps each partition to its master's name.

    Masters that serve the most keep the extra ones, so nothing moves that need not; the partitions
    given away are each master's highest-numbered ones.
    """
    count = dict.fromkeys(names, 0)
    for name in owned.values():
        count[name] += 1
    base, extra = divmod(len(owned), len(names))
    by_load = sorted(names, key=lambda n: (-count[n], n))
    target = {name: base + (1 if i < extra else 0) for i, name in enumerate(by_load)}
    give = []
    for name in by_load:
        mine = sorted((p for p, owner in owned.items() if owner == name), reverse=True)
        give += [(p, name) for p in mine[: max(0, count[name] - target[name])]]
    take = [name for name in sorted(names) for _ in range(max(0, target[name] - count[name]))]
    return [(p, source, to) for (p, source), to in zip(sorted(give), take, strict=True)]


def moves(client: RedisCluster, partitions: int, prefix: str) -> list[Move]:
    """The moves that would even out the placement of ``partitions`` over the cluster's masters."""
    all_masters = masters(client)
    by_name = {m.name: m for m in all_masters}
    owned = owners(all_masters, partitions, prefix)
    return [
        Move(p, key_slot(stream_key(p, prefix).encode()), by_name[source], by_name[to])
        for p, source, to in plan({p: m.name for p, m in owned.items()}, list(by_name))
    ]


def move_slot(
    client: RedisCluster, slot: int, source: Master, target: Master, bus: RedisSettings | None = None
) -> int:
    """Move ``slot`` with its keys from ``source`` to ``target`` while clients use it; returns the keys
    moved. Clients follow: single commands through ASK/MOVED, transactions retry (see
    docs/scaling.md)."""
    src, dst = node_at(client, source.name), node_at(client, target.name)
    _run(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
    _run(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
    host, _, port = target.name.rpartition(":")
    auth: list[str] = []
    if bus is not None and bus.password is not None:
        auth = ["AUTH2", bus.username, bus.password] if bus.username else ["AUTH", bus.password]
    moved = 0
    while keys := _run(src, "CLUSTER", "GETKEYSINSLOT", slot, MIGRATE_BATCH):
        _run(src, "MIGRATE", host, int(port), "", 0, MIGRATE_TIMEOUT_MS, *auth, "KEYS", *keys)
        moved += len(keys)
    # The target first, then the source (so it stops answering ASK), then every other master.
    others = [m for m in masters(client) if m.name not in (source.name, target.name)]
    for node in (dst, src, *(node_at(client, m.name) for m in others)):
        _run(node, "CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
    refresh(client)
    return moved


def _run(node: redis.Redis, *args: Any) -> Any:
    return node.execute_command(*args)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated


# ---- the command ------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``placement`` to the ``boilerhouse`` command."""
    cmd = add_command(
        subparsers,
        "placement",
        help="which Redis Cluster master serves each partition; --apply moves partitions to even it out",
        epilog="See docs/scaling.md.",
    )
    cmd.add_argument("--apply", action="store_true", help="move partitions' slots (live) as planned")
    cmd.set_defaults(func=guarded(_placement))


def _placement(args: argparse.Namespace, settings: AggregatorSettings, client: Client) -> int:
    """Show each master's partitions and the moves that would even them out; --apply makes them."""
    if not isinstance(client, RedisCluster):
        print("the event bus is a single Redis: every partition is on it")
        return 0
    all_masters = masters(client)
    owned = owners(all_masters, settings.partitions, settings.key_prefix)
    for m in all_masters:
        mine = [p for p, owner in owned.items() if owner.name == m.name]
        listed = ", ".join(map(str, mine)) or "-"
        print(f"{m.name:<22} {len(mine):>4} partition{'s' if len(mine) != 1 else ' '}  {listed}")
    planned = moves(client, settings.partitions, settings.key_prefix)
    if not planned:
        print(f"balanced: {settings.partitions} partitions over {len(all_masters)} masters")
        return 0
    for move in planned:
        verb = "moving" if args.apply else "would move"
        print(
            f"{verb} partition {move.partition} (slot {move.slot}) {move.source.name} -> {move.target.name}"
        )
        if args.apply:
            started = time.monotonic()
            keys = move_slot(client, move.slot, move.source, move.target, settings.redis)
            print(f"  moved {keys} keys in {time.monotonic() - started:.2f}s")
    if not args.apply:
        print("run with --apply to move them (live; clients follow the slots)")
    return 0
