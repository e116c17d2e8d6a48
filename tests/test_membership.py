"""Membership, liveness, link fitting and the ban list (pure)."""

from __future__ import annotations

import pytest

from edgeci_p2p.core.membership import DEAD_AFTER, BanList, DuplicateNodeError, Membership


def test_alive_only_through_heartbeats_and_duplicates_refused() -> None:
    m = Membership("me")
    m.sighted("a", "10.0.0.2", 7420, "mdns")
    assert m.alive(0.0) == []  # mDNS says who exists, not who is alive
    m.handshake("a", "10.0.0.2", 7420, "a", {"resnet34": "fp"}, now=1.0, source="static")
    assert [x.node_id for x in m.serving("resnet34", "fp", 1.0)] == ["a"]
    assert m.serving("resnet34", "other", 1.0) == []
    assert m.alive(1.0 + DEAD_AFTER + 0.1) == []
    m.heartbeat("a", 5.0, rtt=0.002)
    assert m.alive(5.0) and m.members["a"].rtt == pytest.approx(0.002)
    m.lost("a")
    assert m.alive(5.0) == []
    with pytest.raises(DuplicateNodeError, match="own node id"):
        m.handshake("me", "10.0.0.3", 7420, "x", {}, now=6.0, source="inbound")


def test_link_fit_recovers_bandwidth_and_per_tile_overhead() -> None:
    m = Membership("me")
    peer = m.sighted("a", "h", 1, "static")
    assert peer is not None
    for nbytes in (100_000, 400_000, 1_600_000, 100_000, 400_000, 1_600_000):
        peer.observe_transfer(nbytes, nbytes / 50e6 + 0.004)
    assert peer.bandwidth == pytest.approx(50e6, rel=1e-6)
    assert peer.overhead == pytest.approx(0.004, rel=1e-6)


def test_ban_list_backs_off_exponentially_and_clears_on_success() -> None:
    bans = BanList(base=1.0, cap=8.0)
    assert bans.ban("a", 0.0) == 1.0 and bans.banned("a", 0.5) and not bans.banned("a", 1.5)
    assert bans.ban("a", 2.0) == 2.0
    assert bans.ban("a", 5.0) == 4.0
    assert bans.ban("a", 10.0) == 8.0 and bans.ban("a", 20.0) == 8.0
    bans.clear("a")
    assert not bans.banned("a", 20.5) and bans.ban("a", 21.0) == 1.0


def test_rtt_is_the_least_recent_sample_so_queued_pongs_do_not_count() -> None:
    from edgeci_p2p.core.membership import RTT_WINDOW

    m = Membership("me")
    m.handshake("a", "10.0.0.2", 7420, "a", {}, 0.0, "static")
    for k, rtt in enumerate([0.0002, 0.15, 0.21, 0.08]):
        m.heartbeat("a", float(k), rtt=rtt)
    assert m.members["a"].rtt == pytest.approx(0.0002)
    for k in range(RTT_WINDOW):  # the path itself got slower: the old minimum ages out
        m.heartbeat("a", 10.0 + k, rtt=0.004)
    assert m.members["a"].rtt == pytest.approx(0.004)


def test_link_probes_give_the_links_rate_and_leave_the_rtt_alone() -> None:
    from edgeci_p2p.core.membership import PROBE_EVERY, PROBE_SPACING, PROBE_WINDOW

    m = Membership("me")
    m.handshake("a", "10.0.0.2", 7420, "a", {}, 0.0, "static")
    a = m.members["a"]
    assert not a.probe_due(0.2)  # the bare round trip first
    m.heartbeat("a", 0.5, rtt=0.002)
    assert a.probed_bandwidth is None and a.probe_due(1.0)
    # 128 KiB on a 10 MB/s link: 13.1 ms beyond the 2 ms round trip. A pong that
    # waited behind a busy peer's loop (its start-up: 0.5 s) makes a sample slower;
    # the probes are spread out, and the best is the link's.
    t = 1.0
    for extra in [0.5, 0.030, 0.0]:
        assert a.probe_due(t)
        m.probed("a", t, 131072, 0.002 + 131072 / 10e6 + extra)
        assert not a.probe_due(t + PROBE_SPACING / 2)
        t += PROBE_SPACING
    assert a.probed_bandwidth == pytest.approx(10e6)
    assert a.rtt == pytest.approx(0.002)  # probes are not heartbeat RTT samples
    assert a.alive(t)
    while len(a.probe_samples) < PROBE_WINDOW:
        m.probed("a", t, 131072, 0.002 + 131072 / 10e6 + 0.01)
        t += PROBE_SPACING
    # The window full, probes come once a minute.
    assert not a.probe_due(t + PROBE_SPACING) and a.probe_due(t + PROBE_EVERY)
    for k in range(PROBE_WINDOW):  # the link got slower: the old best ages out
        m.probed("a", 100.0 + k, 131072, 0.002 + 131072 / 2e6)
    assert a.probed_bandwidth == pytest.approx(2e6)
    assert a.to_dict(110.0)["probed_mb_s"] == pytest.approx(2.0)


def test_a_probe_is_measured_again_as_the_bare_round_trip_comes_down() -> None:
    """A capped peer's first heartbeats waited on its quota (13.6 ms): a probe measured
    against them would be 87 MB/s on a 10 MB/s link; worked out again against the
    2 ms round trip seen later, it is the link's rate."""
    m = Membership("me")
    m.handshake("a", "10.0.0.2", 7420, "a", {}, 0.0, "static")
    a = m.members["a"]
    m.heartbeat("a", 0.5, rtt=0.0136)
    m.probed("a", 1.0, 131072, 0.002 + 131072 / 10e6)
    assert a.probed_bandwidth is not None and a.probed_bandwidth > 80e6
    m.heartbeat("a", 2.0, rtt=0.002)
    assert a.probed_bandwidth == pytest.approx(10e6)
    # A probe no slower than the bare round trip says nothing about the rate.
    m.probed("a", 3.0, 131072, 0.001)
    assert a.probed_bandwidth == pytest.approx(10e6)
