"""The collector: exact deltas and totals across intervals, evictions and flows that come back,
also when distinct keys share a hash (the hash is replaced by colliding ones), and its read of
the real kernel map (kernel tier: packets through BPF_PROG_TEST_RUN, or the map read directly).

The pure tests drive a fake map with a seeded random workload and check every interval
against what was sent: every exported flow's total is the sum of all deltas reported for it,
no count is reported twice, and at the end every packet sent was reported exactly once.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Iterator

import numpy as np
import pytest
from frames import ETH_P_IP, IPPROTO_UDP, ether, ipv4, udp

from xtrace_catch.errors import MapError
from xtrace_catch.flows import collector as collector_mod
from xtrace_catch.flows.collector import NV, Collector, Interval, V, key_hash
from xtrace_catch.kernel import libbpf
from xtrace_catch.kernel.datapath import PROG_XDP, Datapath, DatapathConfig
from xtrace_catch.kernel.layout import FLOW_KEY, FLOW_VALUE, STATS, STATS_FIELDS, TYPE_SLOTS
from xtrace_catch.kernel.maps import CounterReader, IterReader

PK, BY = V["packets"], V["bytes"]


def key(i: int) -> bytes:
    """A distinct 48-byte flow key per `i` (IPv4 UDP, source port i)."""
    k = np.zeros(1, dtype=FLOW_KEY)
    k["src_addr"][0, 10:] = [0xFF, 0xFF, 198, 51, 100, 1 + i % 200]
    k["dst_addr"][0, 10:] = [0xFF, 0xFF, 203, 0, 113, 1]
    k["src_port"] = 1024 + i
    k["dst_port"] = 5201
    k["eth_proto"] = ETH_P_IP
    k["protocol"] = IPPROTO_UDP
    return k.tobytes()


def row(packets: int, nbytes: int) -> np.ndarray:
    r = np.zeros(NV, dtype=np.uint64)
    r[PK], r[BY] = packets, nbytes
    return r


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class FakeMap:
    """A FlowSource over a dict, with the kernel's counters: `hit` adds to a flow, a full map
    sends new flows to the overflow table, and `race` adds counts that land between the
    collector's read and its delete of that flow."""

    def __init__(self, capacity: int = 1 << 20) -> None:
        self.capacity = capacity
        self.flows: dict[bytes, np.ndarray] = {}
        self.race: dict[bytes, np.ndarray] = {}
        self.sent: dict[bytes, np.ndarray] = {}
        self.stats = np.zeros(len(STATS_FIELDS), dtype=np.uint64)
        self.overflow = np.zeros((2, TYPE_SLOTS, NV), dtype=np.uint64)

    def hit(self, k: bytes, packets: int, nbytes: int) -> None:
        self.stats[STATS_FIELDS.index("seen")] += packets
        if k not in self.flows and len(self.flows) >= self.capacity:
            self.overflow[0, 0] += row(packets, nbytes)
            self.stats[STATS_FIELDS.index("overflowed")] += packets
            return
        self.flows[k] = self.flows.get(k, np.zeros(NV, dtype=np.uint64)) + row(packets, nbytes)
        self.sent[k] = self.sent.get(k, np.zeros(NV, dtype=np.uint64)) + row(packets, nbytes)
        self.stats[STATS_FIELDS.index("counted")] += packets

    def read_flows(self) -> tuple[np.ndarray, np.ndarray]:
        items = list(self.flows.items())
        random.Random(len(items)).shuffle(items)  # the kernel's order is not ours
        keys = np.frombuffer(b"".join(k for k, _ in items), dtype=FLOW_KEY) if items else np.empty(0, FLOW_KEY)
        vals = np.array([v for _, v in items], dtype=np.uint64).reshape(-1, NV)
        return keys, vals.view(FLOW_VALUE).reshape(-1)

    def read_stats(self) -> np.void:
        return self.stats.copy().view(STATS)[0]

    def read_overflow(self) -> np.ndarray:
        return self.overflow.copy().view(FLOW_VALUE).reshape(2, TYPE_SLOTS)

    def take_flow(self, k: bytes) -> np.ndarray | None:
        v = self.flows.pop(k, None)
        extra = self.race.pop(k, None)
        if v is not None and extra is not None:
            v = v + extra
            self.sent[k] = self.sent[k] + extra
        return v

    def settle_races(self) -> None:
        """Racing counts of flows that were not taken reach the map."""
        for k, extra in self.race.items():
            if k in self.flows:
                self.flows[k] = self.flows[k] + extra
                self.sent[k] = self.sent[k] + extra
        self.race.clear()


def flows_of(iv: Interval, which: str = "all") -> dict[bytes, tuple[list[int], list[int]]]:
    """key -> (delta, totals) of the interval's active (`which="active"`) or exported flows."""
    keys, delta, totals = (iv.keys, iv.delta, iv.totals) if which == "active" else \
        (iv.all_keys, iv.all_delta, iv.all_totals)
    kl = np.ascontiguousarray(keys).view(f"V{FLOW_KEY.itemsize}").reshape(-1).tolist()
    assert len(set(kl)) == len(kl), "a flow appears twice in one interval"
    return {k: (d.tolist(), t.tolist()) for k, d, t in zip(kl, delta, totals)}


class Ledger:
    """Checks each interval against the deltas reported before it."""

    def __init__(self) -> None:
        self.reported: dict[bytes, np.ndarray] = {}
        self.overflow = np.zeros((2, TYPE_SLOTS, NV), dtype=np.uint64)
        self.stats = np.zeros(len(STATS_FIELDS), dtype=np.uint64)

    def check(self, iv: Interval, col: Collector) -> None:
        exported = flows_of(iv)
        for k, (d, t) in exported.items():
            self.reported[k] = self.reported.get(k, np.zeros(NV, dtype=np.uint64)) + np.array(d, dtype=np.uint64)
            assert t == self.reported[k].tolist()
        active = flows_of(iv, "active")
        assert active == {k: dt for k, dt in exported.items() if dt[0][PK] > 0}
        assert [int(b) for b in iv.delta[:, BY]] == sorted((int(b) for b in iv.delta[:, BY]), reverse=True)
        assert iv.flows_tracked == col.flows_tracked
        self.overflow += iv.overflow_delta
        assert (self.overflow == iv.overflow_total).all()
        self.stats += np.array([iv.stats_delta[f] for f in STATS_FIELDS], dtype=np.uint64)
        assert self.stats.tolist() == [iv.stats_total[f] for f in STATS_FIELDS]

    def assert_all_reported(self, m: FakeMap) -> None:
        assert {k: v.tolist() for k, v in self.reported.items() if v.any()} == {k: v.tolist() for k, v in m.sent.items()}


def constant_hash(ks: np.ndarray) -> np.ndarray:
    return np.zeros(len(ks), dtype=np.uint64)


def coarse_hash(ks: np.ndarray) -> np.ndarray:
    return key_hash(ks) & np.uint64(7)


def pair_hash(ks: np.ndarray) -> np.ndarray:
    """Keys 2i and 2i+1 (source ports 1024+2i, 1025+2i) collide; others do not."""
    port = ks.view(FLOW_KEY)["src_port"].astype(np.uint64)
    return (port // np.uint64(2)) * np.uint64(0x9E3779B97F4A7C15)


HASHES = {"real": key_hash, "constant": constant_hash, "coarse": coarse_hash, "pairs": pair_hash}


@pytest.fixture(params=list(HASHES))
def hash_fn(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(collector_mod, "key_hash", HASHES[request.param])
    yield request.param


# -- the hash -------------------------------------------------------------------------------


def test_key_hash_exact_values() -> None:
    def ref(k: bytes) -> int:
        mix = [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
               0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53]
        h = 0
        for j in range(6):
            h ^= int.from_bytes(k[8 * j:8 * j + 8], "little")
            h = (h * mix[j]) & (2**64 - 1)
            h ^= h >> 32
        return h

    ks = [key(i) for i in range(50)] + [b"\0" * 48, b"\xff" * 48]
    got = key_hash(np.array(ks, dtype="V48")).tolist()
    assert got == [ref(k) for k in ks]
    assert len(set(got)) == len(ks)
    assert key_hash(np.empty(0, dtype="V48")).tolist() == []


# -- exact values, by hand --------------------------------------------------------------------


def test_deltas_totals_and_order_exact(hash_fn: str) -> None:
    m = FakeMap()
    a, b, c = key(0), key(1), key(2)
    m.hit(a, 5, 500)
    m.hit(b, 7, 700)
    col = Collector(m, idle_timeout=60.0)  # type: ignore[arg-type]
    iv = col.collect()
    assert flows_of(iv, "active") == {b: (row(7, 700).tolist(),) * 2, a: (row(5, 500).tolist(),) * 2}
    assert iv.keys.tobytes() == b + a and (iv.packets, iv.bytes, iv.flows_tracked) == (12, 1200, 2)

    iv = col.collect()
    assert (len(iv.keys), iv.packets, iv.flows_tracked) == (0, 0, 2)
    assert flows_of(iv) == {a: (row(0, 0).tolist(), row(5, 500).tolist()),
                            b: (row(0, 0).tolist(), row(7, 700).tolist())}

    m.hit(a, 3, 3000)
    m.hit(c, 1, 60)
    iv = col.collect()
    assert iv.keys.tobytes() == a + c
    assert iv.delta.tolist() == [row(3, 3000).tolist(), row(1, 60).tolist()]
    assert iv.totals.tolist() == [row(8, 3500).tolist(), row(1, 60).tolist()]
    assert iv.flows_tracked == 3 and col.flows_tracked == 3


def test_colliding_keys_keep_their_own_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two keys with one hash, one of them gone from the map then back, the other evicted."""
    monkeypatch.setattr(collector_mod, "key_hash", constant_hash)
    clock = Clock()
    m = FakeMap()
    a, b = key(10), key(11)
    m.hit(a, 1, 100)
    m.hit(b, 2, 200)
    col = Collector(m, idle_timeout=10.0, clock=clock)  # type: ignore[arg-type]
    assert flows_of(col.collect(), "active") == {a: ([1, 100] + [0] * 10,) * 2, b: ([2, 200] + [0] * 10,) * 2}
    for step in range(3):
        clock.now += 3
        m.hit(b, 1, 10)
        iv = col.collect()
        assert flows_of(iv, "active") == {b: ([1, 10] + [0] * 10, [3 + step, 210 + 10 * step] + [0] * 10)}
        assert iv.evicted == 0
    # `a` idle for 12 s: evicted with two racing packets; `b` stays.
    clock.now += 3
    m.race[a] = row(2, 20)
    iv = col.collect()
    assert iv.evicted == 1 and col.flows_tracked == 1
    assert flows_of(iv, "active") == {a: ([2, 20] + [0] * 10, [3, 120] + [0] * 10)}
    # `a` comes back: its totals continue, `b` is still matched to its own row.
    m.hit(a, 4, 400)
    clock.now += 1
    iv = col.collect()
    assert flows_of(iv) == {a: ([4, 400] + [0] * 10, [7, 520] + [0] * 10),
                            b: ([0] * 12, [5, 230] + [0] * 10)}


def test_empty_map_then_flows_then_empty_again() -> None:
    clock = Clock()
    m = FakeMap()
    col = Collector(m, idle_timeout=5.0, clock=clock)  # type: ignore[arg-type]
    for _ in range(2):
        iv = col.collect()
        assert (len(iv.keys), len(iv.all_keys), iv.flows_tracked, iv.evicted) == (0, 0, 0, 0)
    m.hit(key(1), 2, 128)
    assert flows_of(col.collect(), "active") == {key(1): (row(2, 128).tolist(),) * 2}
    clock.now += 5
    iv = col.collect()
    assert (len(iv.keys), iv.flows_tracked, iv.evicted, len(m.flows)) == (0, 0, 1, 0)
    iv = col.collect()
    assert (len(iv.all_keys), iv.flows_tracked, iv.evicted) == (0, 0, 0)


def test_counter_that_goes_backwards_counts_from_zero() -> None:
    m = FakeMap()
    k = key(3)
    m.hit(k, 10, 1000)
    col = Collector(m)  # type: ignore[arg-type]
    col.collect()
    m.flows[k] = row(4, 400)  # the entry was replaced behind our back
    iv = col.collect()
    assert iv.delta.tolist() == [row(4, 400).tolist()] and iv.totals.tolist() == [row(14, 1400).tolist()]


def test_an_interval_keeps_its_values_after_the_next_collect() -> None:
    m = FakeMap()
    for i in range(20):
        m.hit(key(i), 1 + i, 100 * (1 + i))
    col = Collector(m)  # type: ignore[arg-type]
    first = col.collect()
    snap = flows_of(first)
    for i in range(0, 20, 3):
        m.hit(key(i), 1, 1)
    col.collect()
    col.collect()
    assert flows_of(first) == snap
    with pytest.raises(ValueError):
        first.all_totals[0, 0] = 0  # shared with the collector's state, so read-only


def test_retired_totals_are_bounded() -> None:
    clock = Clock()
    m = FakeMap()
    col = Collector(m, idle_timeout=1.0, retired_max=2, clock=clock)  # type: ignore[arg-type]
    for i in range(4):
        m.hit(key(i), 1, 10)
    col.collect()
    clock.now += 2
    assert col.collect().evicted == 4
    for i in range(4):
        m.hit(key(i), 1, 10)
    iv = col.collect()
    # The two evicted last are remembered (totals 2); the others start again (1).
    assert sorted(int(t) for t in iv.totals[:, PK]) == [1, 1, 2, 2]


# -- a random workload against the ledger -----------------------------------------------------


def run_workload(seed: int, capacity: int, steps: int = 40, universe: int = 300) -> list[dict[bytes, tuple]]:
    """Flows start, get packets, idle out (some with packets racing the delete), come back; a
    small map overflows. Returns each interval's exported flows."""
    rnd = random.Random(seed)
    clock = Clock()
    m = FakeMap(capacity)
    col = Collector(m, idle_timeout=5.0, clock=clock)  # type: ignore[arg-type]
    ledger = Ledger()
    out = []
    keys = [key(i) for i in range(universe)]
    for _ in range(steps):
        for k in rnd.sample(keys, rnd.randrange(1, universe // 3)):
            p = rnd.randrange(1, 5)
            m.hit(k, p, p * rnd.randrange(60, 1500))
        for k in rnd.sample(sorted(m.flows), min(len(m.flows), rnd.randrange(0, 6))):
            p = rnd.randrange(1, 3)
            m.race[k] = row(p, 64 * p)
        clock.now += rnd.choice([1.0, 1.0, 2.0, 6.0])
        iv = col.collect()
        ledger.check(iv, col)
        out.append(flows_of(iv))
        m.settle_races()
    clock.now += 1.0
    iv = col.collect()
    ledger.check(iv, col)
    out.append(flows_of(iv))
    ledger.assert_all_reported(m)
    assert col.evicted_total > 0
    return out


@pytest.mark.parametrize("capacity", [1 << 20, 60])
def test_random_workload_counts_every_packet_once(hash_fn: str, capacity: int) -> None:
    run_workload(seed=7, capacity=capacity)


def test_colliding_hashes_give_the_same_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    want = run_workload(seed=11, capacity=120)
    for fn in (constant_hash, coarse_hash, pair_hash):
        monkeypatch.setattr(collector_mod, "key_hash", fn)
        assert run_workload(seed=11, capacity=120) == want


# -- the real kernel map ----------------------------------------------------------------------


def udp_frame(port: int, payload: int) -> bytes:
    return ether(ETH_P_IP, ipv4(IPPROTO_UDP, "198.51.100.7", "203.0.113.9", udp(port, 5201, b"x" * payload)))


def by_port(iv: Interval, which: str = "all") -> dict[int, tuple[int, int, int, int]]:
    keys, delta, totals = (iv.keys, iv.delta, iv.totals) if which == "active" else \
        (iv.all_keys, iv.all_delta, iv.all_totals)
    return {int(k["src_port"]): (int(d[PK]), int(d[BY]), int(t[PK]), int(t[BY]))
            for k, d, t in zip(keys, delta, totals)}


@pytest.fixture
def xdp_datapath() -> Iterator[Datapath]:
    """The XDP program and a 512-flow map. Not the `datapath` fixture: evicted flows and flows
    written by batch update put the map out of step with the stats that its reconcile checks."""
    with Datapath(DatapathConfig(programs=frozenset({PROG_XDP}), max_flows=512)) as dp:
        yield dp


@pytest.mark.kernel
@pytest.mark.parametrize("eviction", ["atomic", "pre-5.14 fallback"])
@pytest.mark.parametrize("hash_name", ["real", "coarse", "constant"])
def test_real_map_exact(xdp_datapath: Datapath, monkeypatch: pytest.MonkeyPatch, hash_name: str,
                        eviction: str, caplog: pytest.LogCaptureFixture) -> None:
    """Exact intervals through eviction and a returning flow. The fallback case makes the
    kernel's atomic lookup-and-delete answer EINVAL, as kernels before 5.14 do for hash maps:
    eviction then reads and deletes in two calls, and idle flows still count exactly."""
    monkeypatch.setattr(collector_mod, "key_hash", HASHES[hash_name])
    refused: list[bytes] = []
    if eviction != "atomic":
        def old_kernel(self: object, fd: int, key: bytes, value_len: int, flags: int = 0) -> bytes | None:
            refused.append(key)
            raise MapError("bpf_map_lookup_and_delete_elem failed: EINVAL", errno.EINVAL)

        monkeypatch.setattr(libbpf.Libbpf, "map_lookup_and_delete", old_kernel)
    dp = xdp_datapath
    lib, fd = libbpf.get(), dp.prog_fd(PROG_XDP)
    frames = {port: udp_frame(port, port % 50) for port in range(20000, 20120)}
    sent: dict[int, list[int]] = {p: [0, 0] for p in frames}

    def send(port: int, times: int) -> None:
        lib.prog_test_run(fd, frames[port], repeat=times)
        sent[port][0] += times
        sent[port][1] += times * len(frames[port])

    for port in frames:
        send(port, 1 + port % 3)
    clock = Clock()
    col = Collector(dp, idle_timeout=5.0, clock=clock)  # type: ignore[arg-type]
    assert col.source is dp  # read through dp.read_flows(): the map's counter reader
    iv = col.collect()
    assert by_port(iv) == {p: (pk, by, pk, by) for p, (pk, by) in sent.items()}
    assert (iv.flows_tracked, len(iv.keys), iv.evicted) == (120, 120, 0)
    assert iv.stats_delta["counted"] == sum(pk for pk, _ in sent.values())

    for step in range(2):
        clock.now += 3.0
        for port in range(20000, 20120, 7):
            send(port, 2)
        iv = col.collect()
        want = {p: (2, 2 * len(frames[p]), *sent[p]) for p in range(20000, 20120, 7)}
        assert by_port(iv, "active") == want
        assert iv.evicted == (0 if step == 0 else 120 - len(want))
    # The flows last hit at the first collect were idle 6 s: gone from the kernel map, their
    # totals kept; one of them comes back and continues.
    assert col.flows_tracked == len(want) == len(dp.read_flows()[0])
    clock.now += 1.0
    send(20001, 5)
    iv = col.collect()
    assert by_port(iv, "active") == {20001: (5, 5 * len(frames[20001]), *sent[20001])}
    assert col.evicted_total == 120 - len(want)
    if eviction == "atomic":
        assert dp.flows.take_supported is True
    else:
        # Asked once, then the fallback for every eviction; said once.
        assert len(refused) == 1 and dp.flows.take_supported is False
        assert sum("lacks atomic lookup-and-delete" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.kernel
@pytest.mark.parametrize("how", ["batch", "tiny batches", "per key", "iterator"])
def test_counter_reader_sums_every_cpu(xdp_datapath: Datapath, how: str) -> None:
    """The map filled by batch update (every possible CPU with its own counts, for a per-CPU map):
    the reader gives each flow's sum over CPUs, as read_flows() does, whatever the batch size or
    read path (the map iterator where the kernel loads it, which is the agent's)."""
    m = xdp_datapath.flows
    if how == "iterator" and m.iter_link_fd is None:
        pytest.skip("this kernel refuses tracing programs (the flow-map iterator; EPERM under an LSM policy, "
                    "or Linux < 5.9)")
    n = 400
    keys = np.frombuffer(b"".join(key(i) for i in range(n)), dtype="V48")
    vals = np.zeros((n, m.ncpus, m.slot // 8), dtype=np.uint64)
    for cpu in range(m.ncpus):
        vals[:, cpu, :NV] = np.arange(n, dtype=np.uint64)[:, None] * np.uint64(1000) + np.arange(NV) + cpu * 7
    assert m.update_batch(keys.tobytes(), vals.tobytes(), n) == n
    want = dict(zip(keys.tolist(), vals[:, :, :NV].sum(axis=1).tolist()))
    reader = m.counter_reader(NV)
    assert m.counter_reader(NV) is reader
    assert isinstance(reader, IterReader) == (m.iter_link_fd is not None)
    if how != "iterator":
        reader = CounterReader(m, NV)
    if how == "tiny batches":
        reader.count = 1  # 400 flows in 512 buckets: many share one, ENOSPC, the batch grows
    elif how == "per key":
        m.batch_supported = False
    for _ in range(2):
        got_keys, got_sums = reader.read()
        assert len(got_keys) == n and dict(zip(got_keys.tolist(), got_sums.tolist())) == want
    if how == "tiny batches":
        assert 1 < reader.count < 64
    rk, rv = xdp_datapath.read_flows()
    assert dict(zip(np.ascontiguousarray(rk).view("V48").reshape(-1).tolist(),
                    rv.view("<u8").reshape(-1, NV).tolist())) == want
    m.delete_keys(keys)


class RepeatingMap(FakeMap):
    """A source whose read yields some flows twice, as a map iterator does when it resumes in a
    bucket where a flow was just inserted: the first copy read earlier (smaller counters)."""

    def __init__(self, repeat: set[bytes]) -> None:
        super().__init__()
        self.repeat = repeat

    def read_flows(self) -> tuple[np.ndarray, np.ndarray]:
        keys, vals = super().read_flows()
        extra = [(k.tobytes(), v) for k, v in zip(keys, vals) if k.tobytes() in self.repeat]
        if not extra:
            return keys, vals
        earlier = np.array([np.frombuffer(v.tobytes(), dtype=np.uint64) // 2 for _, v in extra], dtype=np.uint64)
        keys = np.concatenate([np.frombuffer(b"".join(k for k, _ in extra), dtype=FLOW_KEY), keys])
        vals = np.concatenate([earlier.view(FLOW_VALUE).reshape(-1), vals])
        return keys, vals


def test_a_flow_read_twice_counts_once() -> None:
    """Repeats in one read are merged (the later copy kept): no flow counted twice, none lost."""
    m = RepeatingMap({key(3), key(7)})
    col = Collector(m)  # type: ignore[arg-type]
    for i in range(10):
        m.hit(key(i), 4, 400)
    iv = col.collect()
    assert len(iv.keys) == 10 and iv.packets == 40
    for i in (3, 7, 8):
        m.hit(key(i), 2, 200)
    iv = col.collect()
    got = flows_of(iv, "active")
    assert iv.packets == 6 and len(iv.keys) == 3
    assert {k: (d[0], t[0]) for k, (d, t) in got.items()} == {key(3): (2, 6), key(7): (2, 6), key(8): (2, 6)}
    assert len(flows_of(iv)) == 10
