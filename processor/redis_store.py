"""The live processor's state store: one task's state in Redis, committed in step with Kafka.

A task is one input partition; the live runner makes one `RedisTaskStore` per task it is
assigned and drives every batch like this:

    store = RedisTaskStore(client, app, task)
    epoch = store.claim(committed_offsets)    # once, when the task is assigned
    store.prefetch(order_ids, tracking_numbers, due_by=clock)    # one round trip
    ... the engine works through the StateStore methods, all in memory ...
    store.stage(next_offsets)       # one script: the whole batch into a `pending` hash
    producer.commit_transaction()   # outputs + next_offsets, atomically, in Kafka
    store.apply()                   # one script: pending -> the real keys
    # on a Kafka abort instead: store.discard()

Every key of a task shares the Redis Cluster hash tag `{<app>:<task>}`, so each script
touches one slot, atomically, on one node or a Cluster. `claim` increments the task's
epoch, which fences every older owner: their `stage` and `apply` check the epoch inside
the script and raise `FencedError` without writing. A batch that was staged but not
applied is applied by the next `claim` if Kafka committed its offsets, and dropped if it
did not, so Redis always ends up holding exactly what Kafka committed.
docs/state-store.md has the key layout and walks through every crash point.
"""

from __future__ import annotations

import heapq
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from enum import Enum
from typing import Any, Final, Generic, TypeVar, cast

import redis
from redis.commands.core import Script

from processor.engine import EXPIRE_ORPHANS_TIMER
from processor.metrics import REDIS_APPLY, REDIS_CLAIM, REDIS_PREFETCH, REDIS_STAGE
from processor.policy import EXPIRE_HELD_TIMER
from processor.state import ORDER_STATE_ADAPTER, ORPHAN_BUCKET_ADAPTER, OrderState, OrphanBucket
from processor.store import Timer

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "FencedError",
    "RedisTaskStore",
    "StateAheadOfKafkaError",
    "StateBehindKafkaError",
    "StateMismatchError",
    "parse_timer_member",
    "timer_member",
]

DEFAULT_CACHE_SIZE: Final = 10_000
#: A state holding events for a missing piece has exactly one of these timers.
_HOLDER_TIMERS: Final = frozenset({EXPIRE_HELD_TIMER, EXPIRE_ORPHANS_TIMER})


#: What a StateBehindKafkaError says to do.
LOST_STATE_ADVICE: Final = (
    "Refusing to process: going on would decide on lost state (refunds paid twice or "
    "never). Restore Redis, or start over under a new application_id (docs/live.md, "
    '"Recovering from StateBehindKafkaError").'
)


class FencedError(RuntimeError):
    """Another owner claimed the task after us: we are a zombie and must not write."""


class StateMismatchError(RuntimeError):
    """What Redis applied is not what Kafka committed, and no pending batch explains it."""


class StateBehindKafkaError(StateMismatchError):
    """Redis lost writes whose Kafka transaction committed (e.g. a restart without fsync)."""


class StateAheadOfKafkaError(StateMismatchError):
    """Redis holds batches Kafka has no commit for (offsets reset, expired or lost)."""


def lost_state(finding: str) -> StateBehindKafkaError:
    """The error for a `finding` that shows Redis lost what a claim wrote (an epoch never
    goes away otherwise): one wording, wherever it is found."""
    return StateBehindKafkaError(
        f"{finding}: Redis lost it (a restart without persistence, a flush, a failover to "
        f"an empty replica). {LOST_STATE_ADVICE}"
    )


def meta_key(app: str, task: str) -> str:
    """The hash of a task's epoch, clock and applied offsets (`RedisTaskStore.meta_key`)."""
    return "{" + f"{app}:{task}" + "}:meta"


def tasks_without_state(client: redis.Redis, app: str, tasks: Sequence[str]) -> list[str]:
    """The tasks among `tasks` of which Redis holds nothing, not even the epoch that every
    claim, since the first version, writes before its owner's first commit: for a task
    whose offsets Kafka committed, Redis lost it. One round trip."""
    pipe = client.pipeline(transaction=False)
    for task in tasks:
        pipe.exists(meta_key(app, task))
    return [task for task, found in zip(tasks, pipe.execute(), strict=True) if not found]


# Pending-hash fields. The field name says what to do with its value at apply time:
#   s:<key> -> SET key value        d:<key> -> DEL key
#   t:<tracking number> -> HSET tracking number order_id
#   a:<timer member> -> ZADD timers value(score) member   r:<timer member> -> ZREM
#   o -> the batch's offsets (JSON)  c -> the clock  e -> the epoch that staged it
_SET: Final = "s:"
_DEL: Final = "d:"
_LINK: Final = "t:"
_ADD_TIMER: Final = "a:"
_REMOVE_TIMER: Final = "r:"

# KEYS[1] meta, KEYS[2] pending, KEYS[3] the set of batches set aside. A claim deletes
# no staged batch: it cannot know whether the owner that staged it is still the current
# one, whose transaction may yet commit (docs/state-store.md, "A zombie's claim"). It
# sets the pending batch aside, named after the epoch that staged it, and reports every
# batch set aside: {epoch, applied offsets, {{key, offsets, fields}, ...}}. Set-aside
# keys share the task's hash tag, so they live on its Redis Cluster slot.
_CLAIM_LUA: Final = """
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local applied = redis.call('HGET', KEYS[1], 'applied_offsets')
if redis.call('EXISTS', KEYS[2]) == 1 then
  local aside = KEYS[2] .. '@' .. (redis.call('HGET', KEYS[2], 'e') or '?')
  redis.call('RENAME', KEYS[2], aside)
  redis.call('SADD', KEYS[3], aside)
end
local batches = {}
for _, key in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local offsets = redis.call('HGET', key, 'o')
  if offsets then
    batches[#batches + 1] = {key, offsets, redis.call('HKEYS', key)}
  else
    redis.call('SREM', KEYS[3], key)
  end
end
return {epoch, applied, batches}
"""

# KEYS[1] meta, KEYS[2] pending; ARGV[1] our epoch, ARGV[2] the applied offsets as we last
# applied or claimed them ('' for none), ARGV[3..] field, value, field, value...
# Returns {1} staged, {0, epoch} fenced, {2, applied offsets} if Redis no longer stands
# where we left it (it lost writes: a restart without fsync, a failover to a replica that
# lagged). Our own leftover (a discard whose DEL failed) is replaced; the client refuses
# to stage over a batch it has not applied or discarded.
_STAGE_LUA: Final = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch ~= ARGV[1] then return {0, epoch} end
local applied = redis.call('HGET', KEYS[1], 'applied_offsets') or ''
if applied ~= ARGV[2] then return {2, applied} end
redis.call('DEL', KEYS[2])
local n = #ARGV
local i = 3
while i <= n do
  local j = math.min(i + 999, n)
  redis.call('HSET', KEYS[2], unpack(ARGV, i, j))
  i = j + 1
end
return {1}
"""

# KEYS[1] meta, KEYS[2] the batch (pending, or set aside), KEYS[3] tracking, KEYS[4] timers,
# KEYS[5] the set of batches set aside, KEYS[6..] the state keys the batch sets or deletes
# (declared for Redis Cluster; the batch's hash is the truth). ARGV[1] our epoch, ARGV[2]
# the batch's offsets as staged, ARGV[3] '1' to delete every batch set aside: only an
# owner's apply after its own Kafka commit, which shows it is the current owner, so no
# other batch can commit any more. Returns {1} applied, {2} already applied (a retry
# whose first reply was lost), {0, epoch} fenced.
_APPLY_LUA: Final = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch ~= ARGV[1] then return {0, epoch} end
local offsets = redis.call('HGET', KEYS[2], 'o')
if not offsets then
  if redis.call('HGET', KEYS[1], 'applied_offsets') == ARGV[2] then return {2} end
  return redis.error_reply('NOPENDING no staged batch to apply')
end
if offsets ~= ARGV[2] then
  return redis.error_reply('MISMATCH the staged batch has other offsets')
end
local flat = redis.call('HGETALL', KEYS[2])
local sets, dels, links, adds, removes = {}, {}, {}, {}, {}
local meta = {'applied_offsets', offsets}
for i = 1, #flat, 2 do
  local field, value = flat[i], flat[i + 1]
  local kind, name = string.sub(field, 1, 2), string.sub(field, 3)
  if kind == 's:' then sets[#sets + 1] = name; sets[#sets + 1] = value
  elseif kind == 'd:' then dels[#dels + 1] = name
  elseif kind == 't:' then links[#links + 1] = name; links[#links + 1] = value
  elseif kind == 'a:' then adds[#adds + 1] = value; adds[#adds + 1] = name
  elseif kind == 'r:' then removes[#removes + 1] = name
  elseif field == 'c' then meta[#meta + 1] = 'clock'; meta[#meta + 1] = value
  end
end
local function chunks(args, step, run)
  for i = 1, #args, step do run(unpack(args, i, math.min(i + step - 1, #args))) end
end
chunks(sets, 1000, function(...) redis.call('MSET', ...) end)
chunks(dels, 500, function(...) redis.call('DEL', ...) end)
chunks(links, 1000, function(...) redis.call('HSET', KEYS[3], ...) end)
chunks(adds, 1000, function(...) redis.call('ZADD', KEYS[4], ...) end)
chunks(removes, 500, function(...) redis.call('ZREM', KEYS[4], ...) end)
redis.call('HSET', KEYS[1], unpack(meta))
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[5], KEYS[2])
if ARGV[3] == '1' then
  for _, key in ipairs(redis.call('SMEMBERS', KEYS[5])) do redis.call('DEL', key) end
  redis.call('DEL', KEYS[5])
end
return {1}
"""

# KEYS[1] meta, KEYS[2] pending; ARGV[1] our epoch. Returns {1} dropped, {0, epoch} fenced.
_DROP_LUA: Final = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch ~= ARGV[1] then return {0, epoch} end
redis.call('DEL', KEYS[2])
return {1}
"""

# Timer members: escaped owner, separator, escaped name, separator, deadline. NUL is
# escaped as NUL 0x01 and the separator is NUL NUL, which keeps byte order equal to
# (owner, name) order: members with the same score (deadline) sort as Timers do.
_MEMBER_SEP: Final = b"\x00\x00"


def _escape(text: str) -> bytes:
    return text.encode().replace(b"\x00", b"\x00\x01")


def _unescape(raw: bytes) -> str:
    return raw.replace(b"\x00\x01", b"\x00").decode()


def timer_member(timer: Timer) -> bytes:
    """The sorted-set member of a timer (its score is the deadline)."""
    return (
        _escape(timer.owner)
        + _MEMBER_SEP
        + _escape(timer.name)
        + _MEMBER_SEP
        + str(timer.deadline).encode()
    )


def parse_timer_member(member: bytes) -> Timer:
    owner, name, deadline = member.split(_MEMBER_SEP)
    return Timer(int(deadline), _unescape(owner), _unescape(name))


def encode_offsets(offsets: Mapping[str, int]) -> str:
    """Canonical JSON (sorted keys, no spaces), so the scripts can compare it as a string."""
    return json.dumps({key: int(offsets[key]) for key in sorted(offsets)}, separators=(",", ":"))


def delete_keys(client: redis.Redis, prefix: str) -> None:
    """Deletes the keys that start with `prefix`, as they are or in a hash tag (`{prefix`,
    as a task store's keys are), a thousand a command: what a run left in a Redis that
    outlives it. `prefix` is taken as SCAN's glob."""
    for pattern in (f"{prefix}*", "{" + prefix + "*"):
        keys = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])


def _decode_offsets(raw: bytes | None) -> dict[str, int]:
    return {} if raw is None else cast(dict[str, int], json.loads(raw))


def _copy_bucket(bucket: OrphanBucket) -> OrphanBucket:
    """The engine changes buckets it loaded in place: the store hands out and keeps copies."""
    return OrphanBucket(bucket.tracking_number, list(bucket.held), dict(bucket.seen))


class _Missing(Enum):
    MISSING = 0


_MISSING: Final = _Missing.MISSING
_V = TypeVar("_V")


class _Lru(Generic[_V]):
    """A bounded map that forgets the least recently used entry first, but never one the
    current batch read or put (`unpin` ends the batch).

    The bound is per task, and a batch of a big backlog can read more orders than it
    holds: without the pins, entries its prefetch loaded were evicted before their events
    were decided, each then read again with its own round trip.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[str, _V] = OrderedDict()
        self._pinned: dict[str, _V] = {}

    def get(self, key: str) -> _V | _Missing:
        value = self._pinned.get(key, _MISSING)
        if value is _MISSING:
            value = self._data.get(key, _MISSING)
            if value is not _MISSING:
                self._data.move_to_end(key)
                self._pinned[key] = value
        return value

    def put(self, key: str, value: _V) -> None:
        self._pinned[key] = value
        data = self._data
        data[key] = value
        data.move_to_end(key)
        if len(data) > self.capacity:
            data.popitem(last=False)

    def pop(self, key: str) -> None:
        self._pinned.pop(key, None)
        self._data.pop(key, None)

    def clear(self) -> None:
        self._pinned.clear()
        self._data.clear()

    def unpin(self) -> None:
        """The batch is over: what it read may be evicted again."""
        self._pinned = {}

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys not held, in order; pins those held (a batch's worth in one call)."""
        pinned, data = self._pinned, self._data
        absent: list[str] = []
        for key in keys:
            if key in pinned:
                continue
            value = data.get(key, _MISSING)
            if value is _MISSING:
                absent.append(key)
            else:
                data.move_to_end(key)
                pinned[key] = value
        return absent


class RedisTaskStore:
    """The StateStore of one task, plus the commit protocol `claim`/`stage`/`apply`/`discard`.

    Writes only change an in-memory overlay until `stage`; reads see the overlay, then a
    bounded cache of committed values (kept across batches: while our epoch holds we are
    the task's only writer; what a batch read stays until it ends), then Redis. The
    task's timers live in a local heap loaded at `claim`, so `pop_due_timer` never leaves
    the process. Order states are shared, not copied: the policy core never changes a
    state it was given (it works on `clone()`). Not thread-safe: one task, one thread.
    """

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        app: str,
        task: str,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        for label, value in (("app", app), ("task", task)):
            if not value or "{" in value or "}" in value:
                raise ValueError(f"{label} must be non-empty and free of braces: {value!r}")
        if client.get_encoder().decode_responses:
            raise ValueError("the Redis client must return bytes (decode_responses=False)")
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1: {cache_size}")
        self.app = app
        self.task = task
        self._client = client
        self.hash_tag = "{" + f"{app}:{task}" + "}"
        self._order_prefix = f"{self.hash_tag}:order:"
        self._orphans_prefix = f"{self.hash_tag}:orphans:"
        self.tracking_key = f"{self.hash_tag}:tracking"
        self.timers_key = f"{self.hash_tag}:timers"
        self.meta_key = meta_key(app, task)
        self.pending_key = f"{self.hash_tag}:pending"
        self.aside_key = f"{self.hash_tag}:aside"
        self._claim_script: Script = client.register_script(_CLAIM_LUA)
        self._stage_script: Script = client.register_script(_STAGE_LUA)
        self._apply_script: Script = client.register_script(_APPLY_LUA)
        self._drop_script: Script = client.register_script(_DROP_LUA)

        self._epoch: int | None = None
        # The offsets Redis stands at, as it holds them ('' for none): stage checks it still
        # does.
        self._applied_raw = ""
        # Committed values (None: known to be absent).
        self._orders: _Lru[OrderState | None] = _Lru(cache_size)
        self._orphans: _Lru[OrphanBucket | None] = _Lru(cache_size)
        self._links: _Lru[str | None] = _Lru(cache_size)
        self._clock: int | None = None
        # The overlay: this batch's writes.
        self._dirty_orders: dict[str, OrderState] = {}
        self._dirty_orphans: dict[str, OrphanBucket | None] = {}
        self._dirty_links: dict[str, str] = {}
        self._dirty_timers: dict[Timer, bool] = {}  # True: add, False: remove
        self._dirty_clock: int | None = None
        # Timers, committed and overlay together: the set is the truth, the heap has lazy
        # deletions. None: not loaded (before claim, after a discard that touched timers).
        self._timers: set[Timer] | None = None
        self._heap: list[Timer] = []
        self._holding = 0  # timers of _timers named in _HOLDER_TIMERS
        # For the metrics: the committed state's timers and holders (those of _HOLDER_TIMERS:
        # an order or tracking number holding events), as of the last claim or apply, and
        # the timers this batch fired.
        self.timers_pending = 0
        self.holders = 0
        self.timers_fired = 0
        # The commit protocol: offsets of the staged batch (JSON), the state keys it writes,
        # whether it is empty (nothing to write: no round trip), and whether Redis may hold
        # a pending hash of ours (a stage was attempted and not yet applied or dropped).
        self._staged: str | None = None
        self._staged_keys: list[str] = []
        self._staged_nothing = False
        self._maybe_pending = False

    @classmethod
    def from_url(
        cls, url: str, app: str, task: str, *, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> RedisTaskStore:
        return cls(redis.Redis.from_url(url), app, task, cache_size=cache_size)

    # Key names.

    def order_key(self, order_id: str) -> str:
        return self._order_prefix + order_id

    def orphans_key(self, tracking_number: str) -> str:
        return self._orphans_prefix + tracking_number

    @property
    def epoch(self) -> int | None:
        """Our epoch since the last successful `claim` (None before, or once fenced)."""
        return self._epoch

    # The commit protocol.

    def claim(self, committed_offsets: Mapping[str, int]) -> int:
        """Takes the task over: fences older owners, recovers, loads timers and clock.

        `committed_offsets` are the consumer group's committed offsets of the task's input
        partitions (the next offset to read, as sent with the transaction), read after
        Kafka fenced the previous owner; partitions with no committed offset are left out.
        A staged batch is applied if its offsets are exactly these (its transaction
        committed) and set aside otherwise, until this owner's first `apply` deletes it:
        the claimer may itself be stale, and the batch's owner current. Raises
        `StateBehindKafkaError` (or `StateAheadOfKafkaError`) if Redis then does not stand
        at these offsets, and `StateMismatchError`, applying nothing, if two staged batches
        have them (offsets without batch markers).
        """
        self._reset_local()
        self._epoch = None
        with REDIS_CLAIM.time():
            reply = cast(
                list[Any],
                self._claim_script(keys=[self.meta_key, self.pending_key, self.aside_key]),
            )
        epoch = int(reply[0])
        applied = _decode_offsets(reply[1])
        applied_raw = "" if reply[1] is None else cast(bytes, reply[1]).decode()
        committed = {key: int(value) for key, value in committed_offsets.items()}
        matching: list[tuple[bytes, bytes, list[bytes]]] = []
        kept: list[bytes] = []  # aborted, or their transactions may yet commit
        for aside in cast(list[tuple[bytes, bytes, list[bytes]]], reply[2]):
            if _decode_offsets(aside[1]) == committed:
                matching.append(aside)
            else:
                kept.append(aside[1])
        if len(matching) > 1:
            # Each batch's offsets carry its owner's batch marker (runner), so at most one
            # can match: otherwise which one Kafka committed cannot be told.
            raise StateMismatchError(
                f"task {self.task}: {len(matching)} staged batches carry Kafka's committed "
                f"offsets {committed}, so which one committed cannot be told: a batch's "
                "offsets must carry its owner's batch marker (docs/state-store.md, claim)"
            )
        for batch, staged_raw, fields in matching:
            keys = [f[2:].decode() for f in fields if f[:2] in (b"s:", b"d:")]
            with REDIS_CLAIM.time():
                status, current = self._run_apply(
                    epoch, staged_raw.decode(), keys, batch=batch.decode(), clear_aside=False
                )
            if status == 0:
                raise self._fenced(epoch, "claim (applying a staged batch)", current)
            applied, applied_raw = committed, staged_raw.decode()
        if applied != committed:
            raise self._mismatch(applied, committed, kept)
        pipe = self._client.pipeline(transaction=False)
        pipe.zrange(self.timers_key, 0, -1)
        pipe.hget(self.meta_key, "clock")
        with REDIS_CLAIM.time():
            members, clock = cast(tuple[list[bytes], bytes | None], pipe.execute())
        self._load_timers(members)
        self._count_committed_timers()
        self._clock = None if clock is None else int(clock)
        self._applied_raw = applied_raw
        self._epoch = epoch
        return epoch

    def stage(self, offsets: Mapping[str, int]) -> None:
        """Writes this batch (the overlay) and `offsets` into the task's pending hash.

        `offsets` are the offsets this batch's transaction commits for the task's input
        partitions; partitions left out keep theirs, as in Kafka. One script call; nothing
        visible changes. Raises `FencedError` (writing nothing) if another owner claimed
        the task since our `claim`, and `StateBehindKafkaError` (writing nothing) if Redis
        no longer stands at the offsets we last applied: it lost writes Kafka committed,
        and deciding on would pay refunds twice or never.

        A batch that changes state must move an offset forward: `claim` tells a committed
        batch from an aborted one by its offsets alone (ValueError otherwise). A batch that
        changes nothing and moves no offset costs no round trip.
        """
        epoch = self._require_epoch()
        if self._staged is not None:
            raise RuntimeError("a staged batch is waiting for apply() or discard()")
        applied = _decode_offsets(self._applied_raw.encode() or None)
        for partition, offset in offsets.items():
            if offset < applied.get(partition, offset):
                raise ValueError(
                    f"task {self.task}: offset of {partition} goes back from "
                    f"{applied[partition]} to {offset}"
                )
        merged = applied | {partition: int(offset) for partition, offset in offsets.items()}
        encoded = encode_offsets(merged)
        if merged == applied:
            if self._has_changes():
                raise ValueError(
                    f"task {self.task}: a batch that changes state must advance an offset "
                    f"(still {encoded}): claim() could not tell whether Kafka committed it"
                )
            self._staged, self._staged_keys, self._staged_nothing = encoded, [], True
            return
        args: list[str | bytes | int] = [epoch, self._applied_raw, "o", encoded, "e", epoch]
        keys: list[str] = []
        dump_order = ORDER_STATE_ADAPTER.dump_json
        for order_id, state in self._dirty_orders.items():
            key = self._order_prefix + order_id
            keys.append(key)
            args += (_SET + key, dump_order(state))
        for tracking_number, bucket in self._dirty_orphans.items():
            key = self._orphans_prefix + tracking_number
            keys.append(key)
            if bucket is None:
                args += (_DEL + key, "")
            else:
                args += (_SET + key, ORPHAN_BUCKET_ADAPTER.dump_json(bucket))
        for tracking_number, order_id in self._dirty_links.items():
            args += (_LINK + tracking_number, order_id)
        for timer, add in self._dirty_timers.items():
            if add:
                args += (_ADD_TIMER.encode() + timer_member(timer), timer.deadline)
            else:
                args += (_REMOVE_TIMER.encode() + timer_member(timer), "")
        if self._dirty_clock is not None:
            args += ("c", self._dirty_clock)
        self._maybe_pending = True
        with REDIS_STAGE.time():
            reply = cast(
                list[Any], self._stage_script(keys=[self.meta_key, self.pending_key], args=args)
            )
        if reply[0] != 1:
            self._maybe_pending = False  # the script wrote nothing
            if reply[0] == 0:
                raise self._fenced(epoch, "stage", reply[1])
            # What we applied, Kafka committed: Redis standing elsewhere lost it. Nothing
            # local is to be trusted any more, and only a claim may take the task again.
            self._reset_local()
            self._epoch = None
            raise self._mismatch(_decode_offsets(reply[1] or None), applied, ())
        self._staged = encoded
        self._staged_keys = keys
        self._staged_nothing = False

    def apply(self) -> None:
        """Makes the staged batch the task's state (call once Kafka committed it).

        One script call. Raises `FencedError` (writing nothing) if another owner claimed
        the task; that owner applied the batch itself if Kafka committed it. Safe to call
        again after a lost reply.
        """
        epoch = self._require_epoch()
        if self._staged is None:
            raise RuntimeError("nothing staged to apply")
        if not self._staged_nothing:
            with REDIS_APPLY.time():
                status, current = self._run_apply(
                    epoch, self._staged, self._staged_keys, batch=self.pending_key, clear_aside=True
                )
            if status == 0:
                raise self._fenced(epoch, "apply", current)
            self._applied_raw = self._staged
        self._maybe_pending = False
        self._staged = None
        self._staged_keys = []
        self._staged_nothing = False
        for order_id, state in self._dirty_orders.items():
            self._orders.put(order_id, state)
        for tracking_number, bucket in self._dirty_orphans.items():
            self._orphans.put(tracking_number, bucket)
        for tracking_number, order_id in self._dirty_links.items():
            self._links.put(tracking_number, order_id)
        if self._dirty_clock is not None:
            self._clock = self._dirty_clock
        self._count_committed_timers()
        self._clear_overlay()

    def discard(self) -> None:
        """Forgets this batch (Kafka aborted it) and deletes its pending hash if we still own
        the task. Never raises FencedError: a new owner has already dealt with the batch."""
        for order_id in self._dirty_orders:
            self._orders.pop(order_id)
        for tracking_number in self._dirty_orphans:
            self._orphans.pop(tracking_number)
        for tracking_number in self._dirty_links:
            self._links.pop(tracking_number)
        if self._dirty_timers:
            self._timers = None  # reloaded from Redis when next needed
            self._heap = []
        self._clear_overlay()
        self._staged = None
        self._staged_keys = []
        self._staged_nothing = False
        if self._maybe_pending and self._epoch is not None:
            self._run_drop(self._epoch)
        self._maybe_pending = False

    def prefetch(
        self,
        order_ids: Iterable[str] = (),
        tracking_numbers: Iterable[str] = (),
        *,
        due_by: int | None = None,
    ) -> None:
        """Loads what a batch will read and the cache lacks, in one pipelined round trip.

        `tracking_numbers` loads both their orphan buckets and their tracking links.
        `due_by` (the clock the batch will reach) also loads the owners of the timers due
        by then, which the engine reads when it fires them.
        """
        orders = dict.fromkeys(order_ids)
        buckets = dict.fromkeys(tracking_numbers)
        links = list(buckets)
        if due_by is not None:
            for timer in self._due_timers(due_by):
                kind, _, key = timer.owner.partition(":")
                if kind == "order":
                    orders[key] = None
                elif kind == "tracking":
                    buckets[key] = None
        wanted_orders = self._orders.missing(o for o in orders if o not in self._dirty_orders)
        wanted_buckets = self._orphans.missing(t for t in buckets if t not in self._dirty_orphans)
        wanted_links = self._links.missing(t for t in links if t not in self._dirty_links)
        if not (wanted_orders or wanted_buckets or wanted_links):
            return
        # One command per kind, not per key: redis-py's work is per command. The keys
        # share the task's hash tag, so MGET is fine on Redis Cluster, where redis-py's
        # pipeline blocks its `mget` (which may span slots) but not the command itself.
        pipe = self._client.pipeline(transaction=False)
        if wanted_orders:
            pipe.execute_command("MGET", *[self._order_prefix + o for o in wanted_orders])
        if wanted_buckets:
            pipe.execute_command("MGET", *[self._orphans_prefix + t for t in wanted_buckets])
        if wanted_links:
            pipe.hmget(self.tracking_key, wanted_links)
        with REDIS_PREFETCH.time():
            replies = iter(cast(list[list[bytes | None]], pipe.execute()))
        if wanted_orders:
            load_order = ORDER_STATE_ADAPTER.validate_json
            for order_id, raw in zip(wanted_orders, next(replies), strict=True):
                self._orders.put(order_id, None if raw is None else load_order(raw))
        if wanted_buckets:
            load_bucket = ORPHAN_BUCKET_ADAPTER.validate_json
            for number, raw in zip(wanted_buckets, next(replies), strict=True):
                self._orphans.put(number, None if raw is None else load_bucket(raw))
        if wanted_links:
            for number, linked in zip(wanted_links, next(replies), strict=True):
                self._links.put(number, None if linked is None else linked.decode())

    # The StateStore protocol.

    def load_order(self, order_id: str) -> OrderState | None:
        state = self._dirty_orders.get(order_id)
        if state is not None:
            return state
        cached = self._orders.get(order_id)
        if cached is not _MISSING:
            return cached
        raw = cast(bytes | None, self._client.get(self._order_prefix + order_id))
        loaded = None if raw is None else ORDER_STATE_ADAPTER.validate_json(raw)
        self._orders.put(order_id, loaded)
        return loaded

    def save_order(self, state: OrderState) -> None:
        self._check_writable()
        self._dirty_orders[state.order_id] = state

    def load_orphans(self, tracking_number: str) -> OrphanBucket | None:
        if tracking_number in self._dirty_orphans:
            bucket = self._dirty_orphans[tracking_number]
        else:
            cached = self._orphans.get(tracking_number)
            if cached is _MISSING:
                raw = cast(bytes | None, self._client.get(self._orphans_prefix + tracking_number))
                cached = None if raw is None else ORPHAN_BUCKET_ADAPTER.validate_json(raw)
                self._orphans.put(tracking_number, cached)
            bucket = cached
        return None if bucket is None else _copy_bucket(bucket)

    def save_orphans(self, bucket: OrphanBucket) -> None:
        self._check_writable()
        self._dirty_orphans[bucket.tracking_number] = _copy_bucket(bucket)

    def delete_orphans(self, tracking_number: str) -> None:
        self._check_writable()
        self._dirty_orphans[tracking_number] = None

    def order_for_tracking(self, tracking_number: str) -> str | None:
        order_id = self._dirty_links.get(tracking_number)
        if order_id is not None:
            return order_id
        cached = self._links.get(tracking_number)
        if cached is not _MISSING:
            return cached
        raw = cast(bytes | None, self._client.hget(self.tracking_key, tracking_number))
        loaded = None if raw is None else raw.decode()
        self._links.put(tracking_number, loaded)
        return loaded

    def link_tracking(self, tracking_number: str, order_id: str) -> None:
        self._check_writable()
        self._dirty_links[tracking_number] = order_id

    def set_timer(self, timer: Timer) -> None:
        self._check_writable()
        timers = self._timer_set()
        if timer not in timers:
            timers.add(timer)
            self._holding += timer.name in _HOLDER_TIMERS
            self._dirty_timers[timer] = True
            heapq.heappush(self._heap, timer)
            if len(self._heap) > 2 * len(timers) + 64:
                self._heap = list(timers)
                heapq.heapify(self._heap)

    def cancel_timer(self, timer: Timer) -> None:
        self._check_writable()
        timers = self._timer_set()
        if timer in timers:
            timers.discard(timer)
            self._holding -= timer.name in _HOLDER_TIMERS
            self._dirty_timers[timer] = False

    def pop_due_timer(self, clock: int) -> Timer | None:
        timers = self._timer_set()
        heap = self._heap
        while heap and heap[0] not in timers:
            heapq.heappop(heap)
        if heap and heap[0].deadline <= clock:
            self._check_writable()
            timer = heapq.heappop(heap)
            timers.discard(timer)
            self._holding -= timer.name in _HOLDER_TIMERS
            self._dirty_timers[timer] = False
            self.timers_fired += 1
            return timer
        return None

    def get_clock(self) -> int | None:
        return self._clock if self._dirty_clock is None else self._dirty_clock

    def set_clock(self, clock: int) -> None:
        self._check_writable()
        self._dirty_clock = clock

    # Internals.

    def _has_changes(self) -> bool:
        return bool(
            self._dirty_orders
            or self._dirty_orphans
            or self._dirty_links
            or self._dirty_timers
            or self._dirty_clock is not None
        )

    def _check_writable(self) -> None:
        if self._staged is not None:
            raise RuntimeError("the batch is staged: apply() or discard() it before writing")

    def _require_epoch(self) -> int:
        if self._epoch is None:
            raise RuntimeError(f"task {self.task} is not claimed (claim() first)")
        return self._epoch

    def _timer_set(self) -> set[Timer]:
        if self._timers is None:
            self._load_timers(cast(list[bytes], self._client.zrange(self.timers_key, 0, -1)))
            assert self._timers is not None
        return self._timers

    def _load_timers(self, members: Sequence[bytes]) -> None:
        self._timers = {parse_timer_member(member) for member in members}
        self._holding = sum(timer.name in _HOLDER_TIMERS for timer in self._timers)
        self._heap = list(self._timers)
        heapq.heapify(self._heap)

    def _due_timers(self, clock: int) -> Iterator[Timer]:
        """Live timers with deadline <= clock: walks only the heap's due top."""
        timers = self._timer_set()
        heap = self._heap
        todo = [0] if heap else []
        while todo:
            index = todo.pop()
            timer = heap[index]
            if timer.deadline > clock:
                continue
            if timer in timers:
                yield timer
            todo.extend(child for child in (2 * index + 1, 2 * index + 2) if child < len(heap))

    def _run_apply(
        self, epoch: int, offsets: str, keys: Sequence[str], *, batch: str, clear_aside: bool
    ) -> tuple[int, Any]:
        """(1 applied | 2 applied before | 0 fenced, the current epoch when fenced)."""
        reply = cast(
            list[Any],
            self._apply_script(
                keys=[
                    self.meta_key,
                    batch,
                    self.tracking_key,
                    self.timers_key,
                    self.aside_key,
                    *keys,
                ],
                args=[epoch, offsets, int(clear_aside)],
            ),
        )
        return int(reply[0]), reply[1] if len(reply) > 1 else None

    def _run_drop(self, epoch: int) -> tuple[bool, Any]:
        """(dropped, the current epoch when fenced)."""
        reply = cast(
            list[Any], self._drop_script(keys=[self.meta_key, self.pending_key], args=[epoch])
        )
        return int(reply[0]) == 1, reply[1] if len(reply) > 1 else None

    def _count_committed_timers(self) -> None:
        """Called once the timers (overlay included, if loaded) are what Redis holds."""
        if self._timers is not None:
            self.timers_pending = len(self._timers)
            self.holders = self._holding

    def _clear_overlay(self) -> None:
        """Ends the batch: its writes are applied or dropped, and its reads unpinned."""
        for cache in (self._orders, self._orphans, self._links):
            cache.unpin()
        self.timers_fired = 0
        self._dirty_orders = {}
        self._dirty_orphans = {}
        self._dirty_links = {}
        self._dirty_timers = {}
        self._dirty_clock = None

    def _reset_local(self) -> None:
        """Forgets everything local: after a claim or a fence, Redis is the only truth."""
        self._clear_overlay()
        self._orders.clear()
        self._orphans.clear()
        self._links.clear()
        self._clock = None
        self._timers = None
        self._heap = []
        self._staged = None
        self._staged_keys = []
        self._staged_nothing = False
        self._maybe_pending = False
        self._applied_raw = ""

    def _fenced(self, epoch: int, during: str, current: Any) -> FencedError | StateBehindKafkaError:
        """Forgets all local state (a new owner has the task, or Redis lost it) and builds
        the error. A claim never removes the epoch: with none, Redis lost the task's state,
        and waiting for a rebalance, as a fenced instance does, would wait for ever."""
        self._reset_local()
        self._epoch = None
        if current is None:
            return lost_state(
                f"task {self.task}: Redis has no epoch for the task any more ({during})"
            )
        return FencedError(
            f"task {self.task}: fenced in {during}: another owner claimed the task after our "
            f"epoch {epoch} (epoch now {int(current)}); nothing was written"
        )

    def _mismatch(
        self, applied: dict[str, int], committed: dict[str, int], staged: Sequence[bytes]
    ) -> StateMismatchError:
        pending = "".join(f", and a pending batch at {raw.decode()} (kept)" for raw in staged)
        if any(applied.get(key, -1) < value for key, value in committed.items()):
            return StateBehindKafkaError(
                f"task {self.task}: Redis state stands at offsets {applied}{pending} but Kafka "
                f"committed {committed}: Redis lost writes Kafka acknowledged (e.g. a restart "
                f"without AOF fsync). {LOST_STATE_ADVICE}"
            )
        return StateAheadOfKafkaError(
            f"task {self.task}: Redis state stands at offsets {applied}{pending} but Kafka "
            f"committed {committed}: Redis holds batches Kafka has no commit for (offsets "
            "reset, expired, or lost). Refusing to process: their outputs may be lost."
        )
