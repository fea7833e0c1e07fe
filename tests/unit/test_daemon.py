"""The daemon's loop without a kernel: signals, dying threads, what a rejected reload tells
systemd, and what a refresh makes of the kernel's maps (no root, no bcc needed).

The data path is a fake with DataPath's API over a table and sketch slots held in numpy arrays,
read the way DataPath reads its mapped maps (table.live_entries, the sketch slots as they are).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from test_systemd import NotifySocket  # tests/unit is on sys.path

from xdp_ip_counter import capabilities, cli
from xdp_ip_counter.bpf import KernelRefused
from xdp_ip_counter.config import ConfigError, PortFilter, Settings, parse_sources
from xdp_ip_counter.daemon import EXIT_FAILURE, EXIT_OK, Daemon, RejectedReload
from xdp_ip_counter.layout import (
    EVENTS,
    HLL_P,
    KEY_DTYPE,
    OUTCOMES,
    RING,
    SET_WORDS,
    SKETCH_SLOT_DTYPE,
    TICK_SHIFT,
    VALUE_DTYPE,
    WAYS,
)
from xdp_ip_counter.metrics import Exposition
from xdp_ip_counter.sketch import (
    SketchPlan,
    address_hash,
    ipv4_words,
    registers,
    relative_standard_error,
)
from xdp_ip_counter.table import live_entries, place, sets_for

S = 1_000_000_000
TICK = 1 << TICK_SHIFT
T = 1000
NOW = T * TICK + TICK // 2  # kernel monotonic ns: the middle of tick T
LO = socket.if_nametoindex("lo")


# -- a data path without a kernel ------------------------------------------------------------


@dataclass(frozen=True)
class FakeLink:
    ifindex: int


class TableDataPath:
    """DataPath's API over numpy arrays: `words` is the sources table (sets of SET_WORDS words,
    written with table.place as the kernel would), `slots` the sketch map's slots; `now_ns` the
    kernel clock; `stats` and `events` the per-CPU counters summed. configure() (its
    new_source_budget apart, in `budgets`, and its protocols, ICMP types and source lists, in
    `filters`) and attach() are recorded."""

    def __init__(self, max_entries: int = 1024, plan: SketchPlan | None = None) -> None:
        self.plan = plan if plan is not None else SketchPlan()
        self.sets = sets_for(max_entries)
        self.slots = self.sets * WAYS
        self.capacity = max_entries
        self.words = np.zeros((self.sets, SET_WORDS), "<u8")
        self.slots = np.zeros(self.plan.sketches * RING, SKETCH_SLOT_DTYPE)
        self.now_ns = NOW
        self.stats = dict.fromkeys(OUTCOMES, 0)
        self.events = dict.fromkeys(EVENTS, 0)
        self.configured: list[tuple[PortFilter, int, SketchPlan]] = []
        self.budgets: list[int] = []
        self.filters: list[dict[str, object]] = []
        self.attached: list[tuple[str, str]] = []
        self.window: int | None = None
        self.refuse = False  # configure() raises KernelRefused, as a failed trie insert does

    def configure(
        self,
        ports: PortFilter,
        window: int,
        plan: SketchPlan | None = None,
        *,
        new_source_budget: int = 0,
        **filters: object,  # protocols, icmp_types, exclude_sources, include_sources
    ) -> None:
        if self.refuse:
            raise KernelRefused("exclude_sources: the kernel refused prefix 10.0.0.0/8: ENOMEM")
        if plan is not None:
            if plan.sketches != self.plan.sketches:
                raise ValueError("internal error: a sketch plan of another size")
            self.plan = plan
        self.window = window
        self.configured.append((ports, window, self.plan))
        self.budgets.append(new_source_budget)
        self.filters.append(filters)

    def attach(self, ifname: str, mode: str) -> FakeLink:
        self.attached.append((ifname, mode))
        return FakeLink(socket.if_nametoindex(ifname))

    def detach(self, ifname: str) -> None:
        pass

    def read_stats(self) -> dict[str, int]:
        return dict(self.stats)

    def read_events(self) -> dict[str, int]:
        return dict(self.events)

    def read_sources(self, window: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        keys, values = live_entries(self.words, self.now_ns, window or self.window or 0)
        return keys, values, self.now_ns

    def read_sketches(self) -> np.ndarray:
        return self.slots  # the map itself, as DataPath gives it

    def close(self) -> None:
        pass

    # -- what the kernel would do ------------------------------------------------------------

    def record(self, sources: list[int], port: int, proto: int, seconds_ago: float) -> None:
        """IPv4 sources (host-order integers) seen on lo, into the table."""
        keys = np.zeros(len(sources), KEY_DTYPE)
        keys["addr"] = [bytes(10) + b"\xff\xff" + int(a).to_bytes(4, "big") for a in sources]
        keys["ifindex"], keys["port"], keys["proto"], keys["family"] = LO, port, proto, 4
        values = np.zeros(len(sources), VALUE_DTYPE)
        values["last_seen"] = self.now_ns - int(seconds_ago * S)
        values["first_seen"] = values["last_seen"] - np.uint64(S)
        values["packets"], values["bytes"] = 2, 120
        assert place(self.words, keys, values) == len(sources)

    def sketch_tick(self, sketch: int, tick: int, sources: np.ndarray, lost: int = 0) -> None:
        """The ring slot of `tick` for `sketch`: the sketch of IPv4 `sources`, `lost` given up."""
        index = sketch * RING + tick % RING
        self.slots["tick"][index] = tick
        self.slots["lost"][index] = lost
        self.slots["reg"][index] = registers(address_hash(*ipv4_words(sources)))


class FakeServer:
    """What the daemon asks of its HTTP server."""

    def __init__(self) -> None:
        self.started = False

    def set_web_config(self, web: object) -> None:
        pass

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        pass


@pytest.fixture
def keep_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    """start() drops the capabilities of the calling thread: not pytest's."""
    monkeypatch.setattr(capabilities, "keep_only", lambda *_: -1)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, keep_capabilities: None) -> None:
    """start() without systemd (no NOTIFY_SOCKET) and without dropping capabilities."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)


def sources(first: int, count: int) -> np.ndarray:
    """IPv4 addresses 10.20.0.0 + first ..., as host-order integers."""
    return np.arange(first, first + count, dtype=np.uint32) + np.uint32((10 << 24) | (20 << 16))


def within(value: float, truth: int) -> bool:
    return abs(value - truth) <= max(1.0, 4 * relative_standard_error(HLL_P) * truth)


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    saved_hook = threading.excepthook
    settings = Settings(interfaces=("lo",), window=60, refresh_interval=60)
    d = Daemon(settings, lambda: settings)
    try:
        yield d
    finally:
        threading.excepthook = saved_hook
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_a_dead_background_thread_takes_the_process_down(daemon: Daemon) -> None:
    daemon.install_handlers()  # here, not in the fixture: pytest sets its own excepthook per test

    def crash() -> None:
        raise RuntimeError("the HTTP thread died")

    thread = threading.Thread(target=crash)
    thread.start()
    thread.join()
    assert daemon.loop() == EXIT_FAILURE


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_end_the_loop_cleanly(daemon: Daemon, sig: int) -> None:
    daemon.install_handlers()
    threading.Timer(0.2, os.kill, (os.getpid(), sig)).start()
    assert daemon.loop() == EXIT_OK


# -- refreshes ---------------------------------------------------------------------------------

LISTED = PortFilter.of({22, 53})


def started(settings: Settings, datapath: TableDataPath) -> Daemon:
    daemon = Daemon(settings, lambda: settings, datapath=datapath, server=FakeServer())  # type: ignore[arg-type]
    daemon.start()
    return daemon


@pytest.mark.usefixtures("offline")
def test_start_configures_the_kernel_and_the_first_refresh_reads_the_table() -> None:
    settings = Settings(interfaces=("lo",), ports=LISTED, max_entries=100)
    datapath = TableDataPath(max_entries=100, plan=SketchPlan.initial(LISTED.ports, ()))
    datapath.record(sources(0, 2), port=22, proto=6, seconds_ago=2)
    datapath.record(sources(2, 1), port=22, proto=6, seconds_ago=59)
    datapath.record(sources(3, 3), port=22, proto=6, seconds_ago=120)  # gone from the table
    datapath.record(sources(6, 1), port=53, proto=17, seconds_ago=30)
    datapath.events["evicted"] = 4
    datapath.stats["recorded_new"] = 7

    daemon = started(settings, datapath)

    assert datapath.configured == [(LISTED, 60, SketchPlan((22, 53), 6))]
    assert datapath.attached == [("lo", "skb")]
    view = daemon.current_view()
    assert view is not None
    assert view.active.count_map() == {(4, 6, 22): 3, (4, 17, 53): 1}
    assert view.entries_in_map == 4
    assert view.capacity == 100  # the datapath's: what its table holds exactly (max_entries)
    assert view.evictions == 4  # the kernel's count
    assert view.stats["recorded_new"] == 7
    assert view.sketches is not None
    assert all(view.sketches.exact.values())
    assert all(view.sketches.other_exact.values())


@pytest.mark.usefixtures("offline")
def test_a_port_whose_sources_the_table_gave_up_shows_its_sketchs_estimate() -> None:
    settings = Settings(interfaces=("lo",), ports=LISTED, max_entries=100)
    plan = SketchPlan.initial(LISTED.ports, ())
    datapath = TableDataPath(max_entries=100, plan=plan)
    datapath.record(sources(0, 2), port=22, proto=6, seconds_ago=2)
    datapath.sketch_tick(plan.sketch_id(4, 6, 22), T - 1, sources(0, 300), lost=298)
    datapath.sketch_tick(plan.sketch_id(4, 6, 22), T, sources(0, 500))

    daemon = started(settings, datapath)

    view = daemon.current_view()
    assert view is not None and view.sketches is not None
    assert view.sketches.exact[(4, 6, 22)] is False
    assert within(view.sketches.estimates[(4, 6, 22)], 500)
    body, _ = Exposition(process_metrics=False).render(view, None)
    lines = body.decode().splitlines()
    users = next(line for line in lines if line.startswith('active_users{ip="v4",port="22",'))
    assert within(float(users.split()[-1]), 500)
    assert 'active_users_exact{ip="v4",port="22",proto="tcp"} 0.0' in lines
    assert 'active_users_exact{ip="v4",port="53",proto="udp"} 1.0' in lines


@pytest.mark.usefixtures("offline")
def test_refreshes_keep_sketch_ticks_the_kernel_has_overwritten() -> None:
    """A 120 s window spans 14 ticks, the kernel's ring 8: the daemon keeps what it read."""
    settings = Settings(interfaces=("lo",), ports=LISTED, window=120)
    plan = SketchPlan.initial(LISTED.ports, ())
    datapath = TableDataPath(plan=plan)
    udp53 = plan.sketch_id(4, 17, 53)
    datapath.sketch_tick(udp53, T - 6, sources(0, 1000), lost=1)
    daemon = started(settings, datapath)

    datapath.now_ns += 8 * TICK
    datapath.sketch_tick(udp53, T + 2, sources(5000, 1000))  # the same ring slot as T - 6
    daemon.refresh()
    view = daemon.current_view()
    assert view is not None and view.sketches is not None
    assert within(view.sketches.estimates[(4, 17, 53)], 2000)
    assert view.sketches.exact[(4, 17, 53)] is False

    datapath.now_ns += TICK  # T - 6 leaves the window
    daemon.refresh()
    view = daemon.current_view()
    assert view is not None and view.sketches is not None
    assert within(view.sketches.estimates[(4, 17, 53)], 1000)
    assert view.sketches.exact[(4, 17, 53)] is True


def test_a_daemon_handed_a_data_path_refreshes_without_start() -> None:
    settings = Settings(interfaces=("lo",), ports=LISTED)
    datapath = TableDataPath(plan=SketchPlan.initial(LISTED.ports, ()))
    datapath.configure(LISTED, 60)
    datapath.record(sources(0, 3), port=22, proto=6, seconds_ago=1)
    daemon = Daemon(settings, lambda: settings, datapath=datapath)  # type: ignore[arg-type]
    daemon.refresh()
    view = daemon.current_view()
    assert view is not None
    assert view.active.count_map() == {(4, 6, 22): 3}


@pytest.mark.usefixtures("offline")
def test_a_refresh_counts_prefixes_and_scanners_by_the_settings_in_force() -> None:
    """10.20.0.0 and 10.20.0.1 (one /24) and 10.20.1.44 on tcp/22; 10.20.0.5 tries three
    ports, 10.20.0.6 two: with scan_ports 3 one scanner. A reload that turns both off leaves
    neither in the next refresh's metrics."""
    first = Settings(
        interfaces=("lo",), ports=PortFilter.all(), prefix_lengths=((4, 24), (4, 32)), scan_ports=3
    )
    datapath = TableDataPath()
    datapath.record(sources(0, 2), port=22, proto=6, seconds_ago=2)
    datapath.record(sources(300, 1), port=22, proto=6, seconds_ago=3)
    for port in (22, 23, 24):
        datapath.record(sources(5, 1), port=port, proto=6, seconds_ago=4)
    for port in (22, 25):
        datapath.record(sources(6, 1), port=port, proto=6, seconds_ago=5)
    daemon, then = reloading(first, datapath)

    view = daemon.current_view()
    assert view is not None
    assert view.active.count_map()[(4, 6, 22)] == 5
    assert {k: n for k, n in view.active.prefix_map().items() if k[2] == 22} == {
        (4, 6, 22, 24): 2,  # 10.20.0.0/24 and 10.20.1.0/24
        (4, 6, 22, 32): 5,
    }
    lines = Exposition(process_metrics=False).render(view, None)[0].decode().splitlines()
    assert 'active_prefixes{ip="v4",len="24",port="22",proto="tcp"} 2.0' in lines
    assert 'scanning_sources{ip="v4"} 1.0' in lines
    assert 'scanning_sources{ip="v6"} 0.0' in lines

    then.append(replace(first, prefix_lengths=(), scan_ports=0))
    daemon.reload()
    assert daemon.reload_successful
    daemon.refresh()
    view = daemon.current_view()
    assert view is not None
    body = Exposition(process_metrics=False).render(view, None)[0]
    assert b"active_prefixes" not in body
    assert b"scanning_sources" not in body


# -- reloads and the data path ---------------------------------------------------------------


def reloading(first: Settings, datapath: TableDataPath) -> tuple[Daemon, list[Settings]]:
    """A started daemon whose reloads take the last of the returned list."""
    then = [first]
    daemon = Daemon(
        first,
        lambda: then[-1],
        datapath=datapath,  # type: ignore[arg-type]
        server=FakeServer(),  # type: ignore[arg-type]
    )
    daemon.start()
    return daemon, then


@pytest.mark.usefixtures("offline")
def test_a_reload_gives_new_ports_sketches_of_their_own() -> None:
    first = Settings(interfaces=("lo",), ports=PortFilter.of({22}))
    datapath = TableDataPath(plan=SketchPlan.initial({22}, ()))  # room for 1 + 4 ports
    daemon, then = reloading(first, datapath)
    then.append(Settings(interfaces=("lo",), ports=PortFilter.of({22, 53, 80}), fleet_ports=(80,)))
    daemon.reload()
    assert daemon.reload_successful
    ports, window, plan = datapath.configured[-1]
    assert (ports, window) == (PortFilter.of({22, 53, 80}), 60)
    assert plan.ports == (22, 80, 53)  # 22 keeps its ids; fleet ports first among the new
    daemon.refresh()
    view = daemon.current_view()
    assert view is not None and view.sketches is not None
    assert {port for _, _, port in view.sketches.exact} == {22, 53, 80}


@pytest.mark.usefixtures("offline")
def test_ports_left_without_a_sketch_of_their_own_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = Settings(interfaces=("lo",), ports=PortFilter.of({22}))
    datapath = TableDataPath(plan=SketchPlan((22,), capacity=2))
    daemon, then = reloading(first, datapath)
    then.append(Settings(interfaces=("lo",), ports=PortFilter.of({22, 53, 80, 443})))
    with caplog.at_level(logging.WARNING, logger="xdp_ip_counter"):
        daemon.reload()
    assert daemon.reload_successful
    assert datapath.configured[-1][2] == SketchPlan((22, 53), capacity=2)
    assert (
        "2 ports have no sketch of their own (room for 2; restart to make more): 80,443"
        in caplog.text
    )


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize(
    ("change", "configures"),
    [
        ({"window": 120}, True),  # the kernel's lazy expiry follows the window
        ({"fleet_ports": (22,)}, True),
        ({"ports": PortFilter.of({22, 53, 80})}, True),
        ({"new_source_budget": 5000}, True),
        ({"protocols": (6, 17, 1)}, True),
        ({"icmp_types": ((1, 3),)}, True),
        ({"exclude_sources": parse_sources("10.0.0.0/8", "test")}, True),
        ({"include_sources": parse_sources("2001:db8::/32", "test")}, True),
        ({"prefix_lengths": ((4, 16),)}, False),  # userspace only
        ({"scan_ports": 20}, False),
        ({"serve_ip_list": True}, False),
    ],
)
def test_a_reload_configures_the_kernel_when_a_setting_it_holds_changes(
    change: dict[str, object], configures: bool
) -> None:
    first = Settings(interfaces=("lo",), ports=LISTED)
    datapath = TableDataPath(plan=SketchPlan.initial(LISTED.ports, ()))
    daemon, then = reloading(first, datapath)
    then.append(Settings(**{"interfaces": ("lo",), "ports": LISTED, **change}))  # type: ignore[arg-type]
    daemon.reload()
    assert daemon.reload_successful
    assert len(datapath.configured) == (2 if configures else 1)
    ports, window, _ = datapath.configured[-1]
    assert (ports, window) == (then[-1].ports, then[-1].window)


@pytest.mark.usefixtures("offline")
def test_a_reload_writes_a_changed_new_source_budget_live(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = Settings(interfaces=("lo",), ports=LISTED, new_source_budget=2000)
    datapath = TableDataPath(plan=SketchPlan.initial(LISTED.ports, ()))
    daemon, then = reloading(first, datapath)
    assert datapath.budgets == [2000]  # start-up writes it
    then.append(replace(first, new_source_budget=50_000))
    with caplog.at_level(logging.INFO, logger="xdp_ip_counter"):
        daemon.reload()
    assert daemon.reload_successful
    assert datapath.budgets == [2000, 50_000]
    assert datapath.configured[-1][:2] == (LISTED, 60)  # the rest as it was
    assert daemon.settings.new_source_budget == 50_000
    assert "reloaded: new_source_budget: 2000 -> 50000" in caplog.text
    assert "restart" not in caplog.text
    then.append(replace(first, new_source_budget=0))
    daemon.reload()
    assert datapath.budgets == [2000, 50_000, 0]  # 0: no budget, every new source kept


@pytest.mark.usefixtures("offline")
def test_a_reload_the_kernel_refuses_is_rejected_and_the_old_settings_stay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = Settings(interfaces=("lo",), ports=LISTED)
    datapath = TableDataPath(plan=SketchPlan.initial(LISTED.ports, ()))
    daemon, then = reloading(first, datapath)
    then.append(replace(first, exclude_sources=parse_sources("10.0.0.0/8", "test")))
    datapath.refuse = True
    with caplog.at_level(logging.ERROR, logger="xdp_ip_counter"):
        daemon.reload()
    assert not daemon.reload_successful
    assert daemon.settings == first
    assert "reload rejected, keeping the previous configuration: exclude_sources: " in caplog.text
    datapath.refuse = False
    daemon.reload()
    assert daemon.reload_successful
    assert daemon.settings.exclude_sources == then[-1].exclude_sources


@pytest.mark.usefixtures("offline")
def test_a_reload_that_unwatches_a_fleet_port_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('interfaces = ["lo"]\nports = [22, 53]\nfleet_ports = [53]\n')
    arguments = ["-c", str(path)]
    datapath = TableDataPath(plan=SketchPlan.initial(LISTED.ports, (53,)))
    daemon = Daemon(
        cli.reload_settings(arguments),
        lambda: cli.reload_settings(arguments),
        datapath=datapath,  # type: ignore[arg-type]
        server=FakeServer(),  # type: ignore[arg-type]
    )
    daemon.start()
    path.write_text('interfaces = ["lo"]\nports = [22]\nfleet_ports = [53]\n')
    daemon.reload()
    assert not daemon.reload_successful
    assert daemon.settings.fleet_ports == (53,)
    assert daemon.settings.ports == LISTED
    assert len(datapath.configured) == 1
    with pytest.raises(
        ConfigError, match=r"key 'fleet_ports': port 53 is not watched \(ports: 22\)"
    ):
        cli.reload_settings(arguments)


# -- a rejected reload in STATUS= ----------------------------------------------------------------

# 2023-11-14 22:13:20 UTC
WALL_TIME = 1_700_000_000.0
GOOD_CONFIG = 'interfaces = ["lo"]\nwindow = 60\nrefresh_interval = 60\n'
BAD_CONFIG = 'interfaces = ["lo"]\nwindow = 15\nrefresh_interval = 60\n'
WATCHING = "watching lo ports all: 0 sources in the last 60s"


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """A bound notify socket exported as NOTIFY_SOCKET; no watchdog asked for."""
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    # A short directory of our own: tmp_path can exceed the 107 bytes a socket path may have.
    with tempfile.TemporaryDirectory(prefix="xic-notify-", dir="/tmp") as directory:
        try:
            address = os.path.join(directory, "notify")
            sock.bind(address)
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            yield NotifySocket(sock, address)
        finally:
            sock.close()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(GOOD_CONFIG)
    return path


@pytest.fixture
def reloadable(
    config_file: Path, notify_socket: NotifySocket, keep_capabilities: None
) -> Iterator[Daemon]:
    """A Daemon started from config_file over an empty fake data path and a fake server, that
    reloads from it as the service does, and dates reloads at WALL_TIME. Its READY=1 is read."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    arguments = ["-c", str(config_file)]
    d = Daemon(
        cli.reload_settings(arguments),
        lambda: cli.reload_settings(arguments),
        datapath=TableDataPath(),  # type: ignore[arg-type]
        server=FakeServer(),  # type: ignore[arg-type]
        wall_time=lambda: WALL_TIME,
    )
    d.start()
    assert notify_socket.receive() == f"READY=1\nSTATUS={WATCHING}"
    try:
        yield d
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def window_error(config_file: Path) -> str:
    return f"{config_file}: key 'window': must be a positive multiple of 10 (seconds), got 15"


def rejected(reason: str) -> str:
    return (
        f"reload rejected at 2023-11-14 22:13:20 UTC: {reason}; serving the previous "
        f"configuration: {WATCHING}"
    )


def receive_reload(notify_socket: NotifySocket) -> str:
    """The notifications of one reload: RELOADING=1 (checked), then READY=1 with STATUS=."""
    assert notify_socket.receive().startswith("RELOADING=1\nMONOTONIC_USEC=")
    return notify_socket.receive()


def test_a_rejected_reload_is_in_status_until_a_good_one(
    reloadable: Daemon, config_file: Path, notify_socket: NotifySocket
) -> None:
    config_file.write_text(BAD_CONFIG)
    reloadable.reload()
    assert receive_reload(notify_socket) == (
        "READY=1\nSTATUS=" + rejected(window_error(config_file))
    )
    # the configuration in use is the previous one
    assert reloadable.settings.window == 60
    assert not reloadable.reload_successful

    # another rejected reload: its own reason replaces the first one's
    config_file.write_text('interfaces = ["nosuch0"]\nwindow = 60\nrefresh_interval = 60\n')
    reloadable.reload()
    assert receive_reload(notify_socket) == (
        "READY=1\nSTATUS="
        + rejected(f"{config_file}: key 'interfaces': interface 'nosuch0' does not exist")
    )

    config_file.write_text(GOOD_CONFIG)
    reloadable.reload()
    assert receive_reload(notify_socket) == f"READY=1\nSTATUS={WATCHING}"
    assert notify_socket.nothing_queued()
    assert reloadable.reload_successful


def test_every_status_update_names_the_rejected_reload(
    reloadable: Daemon, config_file: Path, notify_socket: NotifySocket
) -> None:
    """Through the loop, as the service runs: SIGHUP, then the refresh and its STATUS=."""
    reloadable.install_handlers()
    received: list[str] = []
    failure: list[BaseException] = []

    def operator() -> None:
        try:
            config_file.write_text(BAD_CONFIG)
            os.kill(os.getpid(), signal.SIGHUP)
            received.extend(notify_socket.receive() for _ in range(3))
            config_file.write_text(GOOD_CONFIG)
            os.kill(os.getpid(), signal.SIGHUP)
            received.extend(notify_socket.receive() for _ in range(3))
        except BaseException as error:  # pytest.fail included: reported below
            failure.append(error)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=operator)
    thread.start()
    assert reloadable.loop() == EXIT_OK
    thread.join()
    assert not failure, failure
    status_rejected = "STATUS=" + rejected(window_error(config_file))
    assert received[0].startswith("RELOADING=1\n"), received
    assert received[1:3] == [f"READY=1\n{status_rejected}", status_rejected]
    assert received[3].startswith("RELOADING=1\n"), received
    assert received[4:] == [f"READY=1\nSTATUS={WATCHING}", f"STATUS={WATCHING}"]


def test_a_long_reason_is_cut_to_keep_status_short() -> None:
    text = RejectedReload(WALL_TIME, "x" * 300 + "\nsecond line").describe()
    assert text == (
        "reload rejected at 2023-11-14 22:13:20 UTC: "
        + "x" * (RejectedReload.REASON_LIMIT - 1)
        + "\u2026; serving the previous configuration"
    )
    two_lines = RejectedReload(WALL_TIME, "first\nsecond").describe()
    assert "first second;" in two_lines
