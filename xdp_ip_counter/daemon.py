"""Lifecycle: start, refresh loop, SIGHUP reload, SIGTERM stop.

One thread (the caller's) owns the data path and does every refresh; the HTTP server runs in a
second thread and only reads the View the refresh loop swaps in. The watchdog is fed from the
refresh loop, so a stuck loop stops the pings and systemd restarts the service.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from . import __version__, capabilities, memory
from .bpf import AttachError, CompileError, DataPath, KernelRefused
from .config import ConfigError, Settings, diff, needs_restart, validate_interfaces
from .metrics import View
from .pinning import PinError, restore_and_pin
from .routes import MetricsServer
from .sketch import SketchCounts, SketchPlan, SketchWindow
from .systemd import Notifier
from .web.config import NO_WEB_CONFIG, WebConfig, load_web_config
from .web.server import ListenError
from .window import DeferredActiveSet, Snapshot

log = logging.getLogger("xdp_ip_counter")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# The settings _configure writes into the kernel: a reload that changes one of them rewrites it.
KERNEL_SETTINGS = (
    "ports",
    "window",
    "fleet_ports",
    "new_source_budget",
    "protocols",
    "icmp_types",
    "exclude_sources",
    "include_sources",
)


class WallClock:
    """Kernel monotonic ns -> wall-clock seconds, with an offset that stays put between
    refreshes (so a source's first_seen reads the same each time) unless the wall clock is
    stepped by more than STEP_NS."""

    STEP_NS = 5_000_000

    def __init__(self) -> None:
        self.offset_ns = self._measure()

    @staticmethod
    def _measure() -> int:
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        return wall - (before + after) // 2

    def wall(self, monotonic_ns: int) -> float:
        measured = self._measure()
        if abs(measured - self.offset_ns) > self.STEP_NS:
            log.info("wall clock stepped by %.3f s", (measured - self.offset_ns) / 1e9)
            self.offset_ns = measured
        return (monotonic_ns + self.offset_ns) / 1e9


@dataclass(frozen=True)
class RejectedReload:
    """A reload that was refused: when (wall-clock seconds) and why (one line)."""

    at: float
    reason: str

    # STATUS= is one line in `systemctl status`: a longer reason is cut; the journal has it all.
    REASON_LIMIT = 200

    def describe(self) -> str:
        """One line: 'reload rejected at 2024-05-01 12:03:04 UTC: <reason>; serving the
        previous configuration'."""
        reason = " ".join(self.reason.split())
        if len(reason) > self.REASON_LIMIT:
            reason = reason[: self.REASON_LIMIT - 1] + "\u2026"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.at))
        return f"reload rejected at {stamp} UTC: {reason}; serving the previous configuration"


@dataclass
class _Signals:
    """What the signal handlers asked for; the loop acts on it."""

    reload: bool = False
    stop: bool = False
    fatal: BaseException | None = None


class Daemon:
    """The service. Its collaborators may be handed in made already (tests and the benchmark
    do), else start() makes them:

    - `datapath`: the loaded program (else start() compiles one);
    - `server`: the HTTP server, serving current_view() (else start() binds one to the listen
      address); start() gives it the web configuration and starts it, close() closes it;
    - `interface_names`: ifindex -> name for entries of interfaces not attached by this daemon
      (a map filled by a benchmark); start() and reloads add each interface they attach;
    - `wall_time`: the clock that dates reloads (time.time).
    """

    def __init__(
        self,
        settings: Settings,
        reload_settings: Callable[[], Settings],
        *,
        datapath: DataPath | None = None,
        server: MetricsServer | None = None,
        interface_names: Mapping[int, str] | None = None,
        wall_time: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._reload_settings = reload_settings
        self._notifier = Notifier()
        self._clock = WallClock()
        self._wall_time = wall_time
        self._wake = threading.Event()
        self._signals = _Signals()
        self._datapath = datapath
        self._server = server
        self._ifnames: dict[int, str] = dict(interface_names or {})
        self._view: View | None = None
        self._refresh_failures = 0
        self._sketch_window: SketchWindow | None = None
        self._reload_time = wall_time()
        # The last reload, if it was refused: STATUS= and the reload metric say so.
        self._rejected_reload: RejectedReload | None = None

    @property
    def reload_successful(self) -> bool:
        """False from a refused reload until a good one (the reload metric and STATUS= say so)."""
        return self._rejected_reload is None

    # -- start-up ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bind, compile, configure, attach, first refresh, serve, READY — in that order, so
        that a bad listen address fails before anything is attached."""
        s = self.settings
        validate_interfaces(s)
        web = self._web_config(s)
        if self._server is None:
            self._server = MetricsServer.bind(
                s.listen_address, s.server_port, self.current_view, web_config=web
            )
        else:
            self._server.set_web_config(web)
        if self._datapath is None:
            plan = SketchPlan.initial(s.ports.ports, s.fleet_ports)
            self._datapath = DataPath(s.max_entries, plan)
        if s.pin_path:
            carried = restore_and_pin(Path(s.pin_path), self._datapath, s.window)
            log.info("maps pinned in %s (%d entries carried over)", s.pin_path, carried)
        self._configure(s)
        for ifname in s.interfaces:
            self._attach(ifname)
        # Before any thread starts: capset changes only the calling thread, and threads
        # inherit from the one that creates them.
        capabilities.keep_only(capabilities.KEPT_AFTER_START)
        log.info(
            "watching %s (%s mode), ports %s, window %ss, refresh every %ss; serving on %s:%s",
            ",".join(s.interfaces),
            s.xdp_mode,
            s.ports,
            s.window,
            s.refresh_interval,
            s.listen_address,
            s.server_port,
        )
        self.refresh()
        self._server.start()
        self._notifier.ready(status=self._status())

    @staticmethod
    def _web_config(settings: Settings) -> WebConfig:
        """The web configuration file read (again: the file and the certificates it names may
        have changed since the settings were checked), logged with its notes. ConfigError if bad.
        """
        if not settings.web_config_file:
            return NO_WEB_CONFIG
        web = load_web_config(Path(settings.web_config_file), settings.origin("web_config_file"))
        log.info("web configuration %s", web.describe())
        for note in web.notes:
            log.warning("%s", note)
        return web

    def _configure(self, settings: Settings) -> None:
        """Ports, window, new-source budget, protocols, ICMP types, source lists and sketch ids
        into the kernel; ports left without a sketch of their own (no room in the map made at
        start-up) are named in the log."""
        assert self._datapath is not None
        plan = self._datapath.plan.updated(settings.ports.ports, settings.fleet_ports)
        left_out = plan.left_out(settings.ports.ports, settings.fleet_ports)
        if left_out:
            log.warning(
                "%d ports have no sketch of their own (room for %d; restart to make more): %s; "
                "past the table's capacity their counts are lower bounds, see "
                "active_users_other_ports",
                len(left_out),
                plan.capacity,
                ",".join(map(str, left_out[:20])) + (",..." if len(left_out) > 20 else ""),
            )
        self._datapath.configure(
            settings.ports,
            settings.window,
            plan,
            new_source_budget=settings.new_source_budget,
            protocols=settings.protocols,
            icmp_types=settings.icmp_types,
            exclude_sources=settings.exclude_sources,
            include_sources=settings.include_sources,
        )

    def _attach(self, ifname: str) -> None:
        assert self._datapath is not None
        link = self._datapath.attach(ifname, self.settings.xdp_mode)
        self._ifnames[link.ifindex] = ifname

    # -- the loop ---------------------------------------------------------------------------

    def current_view(self) -> View | None:
        return self._view

    def refresh(self) -> None:
        """Snapshot the kernel maps, compute the active set and the sketches' window."""
        assert self._datapath is not None
        if self._sketch_window is None:  # the first refresh (also of a daemon not started)
            self._sketch_window = SketchWindow(self._datapath.plan.sketches)
        started = time.monotonic()
        window = self.settings.window
        try:
            stats = self._datapath.read_stats()
            events = self._datapath.read_events()
            keys, values, taken_ns = self._datapath.read_sources()
            slots = self._datapath.read_sketches()  # a view: update() copies what it keeps
            wall = self._clock.wall(taken_ns)
        except OSError as exc:
            self._refresh_failures += 1
            log.error("refresh failed, serving the previous result: %s", exc)
            if self._view is not None:
                self._view = replace(self._view, refresh_failures=self._refresh_failures)
            return
        snapshot = Snapshot(
            keys=keys,
            values=values,
            taken_at_ns=taken_ns,
            taken_at_wall=wall,
            stats=stats,
            entries_in_map=len(keys),
            capacity=self._datapath.capacity,
        )
        active = DeferredActiveSet(
            snapshot,
            window,
            self._ifnames,
            prefix_lengths=self.settings.prefix_lengths,
            scan_ports=self.settings.scan_ports,
        )
        union = self._sketch_window.update(slots, taken_ns, window)
        sketches = SketchCounts.of(union, self._datapath.plan, self.settings.fleet_ports)
        self._view = View(
            active=active,
            snapshot=snapshot,
            sketches=sketches,
            settings=self.settings,
            version=__version__,
            last_refresh_time=wall,
            refresh_duration=time.monotonic() - started,
            refresh_failures=self._refresh_failures,
            reload_successful=self.reload_successful,
            reload_time=self._reload_time,
            evictions=events["evicted"],
        )

    def _status(self) -> str:
        """STATUS=: what is watched; first, until a reload succeeds, a rejected reload."""
        view = self._view
        tracked = len(view.active) if view is not None else 0
        status = (
            f"watching {','.join(self.settings.interfaces)} ports {self.settings.ports}: "
            f"{tracked} sources in the last {self.settings.window}s"
        )
        if self._rejected_reload is not None:
            return f"{self._rejected_reload.describe()}: {status}"
        return status

    def loop(self) -> int:
        interval = self.settings.refresh_interval
        watchdog = self._notifier.watchdog_interval()
        next_refresh = time.monotonic() + interval
        while True:
            now = time.monotonic()
            timeout = next_refresh - now
            if watchdog is not None:
                timeout = min(timeout, watchdog)
            self._wake.wait(max(timeout, 0))
            self._wake.clear()
            if self._signals.fatal is not None:
                log.critical("a background thread died: %r; exiting", self._signals.fatal)
                return EXIT_FAILURE
            if self._signals.stop:
                return EXIT_OK
            if self._signals.reload:
                self._signals.reload = False
                self.reload()
                next_refresh = time.monotonic()
            if time.monotonic() >= next_refresh:
                self.refresh()
                self._notifier.status(self._status())
                next_refresh += self.settings.refresh_interval
                if next_refresh < time.monotonic():  # a slow refresh: don't try to catch up
                    next_refresh = time.monotonic() + self.settings.refresh_interval
            if watchdog is not None:
                self._notifier.watchdog()

    # -- reload -----------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the configuration and apply what can be applied live; on any error keep the
        old configuration whole."""
        self._notifier.reloading()
        try:
            new = self._reload_settings()
            validate_interfaces(new)
            self._apply(new)
        except (ConfigError, AttachError, KernelRefused) as exc:
            self._rejected_reload = RejectedReload(self._wall_time(), str(exc))
            log.error("reload rejected, keeping the previous configuration: %s", exc)
        else:
            self._reload_time = self._wall_time()
            self._rejected_reload = None
        self._notifier.ready(status=self._status())

    def _apply(self, new: Settings) -> None:
        old = self.settings
        changes = diff(old, new)
        restart = needs_restart(old, new)
        for field in restart:
            log.warning("%s changed: takes effect after a restart", field)
        # Keep the running values of what needs a restart.
        new = replace(new, **{f: getattr(old, f) for f in restart})
        # Read before anything changes: a bad file rejects the whole reload. Read even when the
        # path is the same, so that renewed certificates and changed users are picked up.
        web = self._web_config(new)
        assert self._datapath is not None
        added = [i for i in new.interfaces if i not in old.interfaces]
        removed = [i for i in old.interfaces if i not in new.interfaces]
        attached: list[str] = []
        try:
            for ifname in added:
                self._attach(ifname)
                attached.append(ifname)
            if any(getattr(new, name) != getattr(old, name) for name in KERNEL_SETTINGS):
                self._configure(new)  # KernelRefused: it wrote nothing
        except (AttachError, KernelRefused):
            for ifname in attached:
                self._datapath.detach(ifname)
            raise
        for ifname in removed:
            self._datapath.detach(ifname)
        if self._server is not None:
            self._server.set_web_config(web)
        self.settings = new
        if new.web_config_file:  # its content may have changed whatever the settings say
            changes.append(f"web configuration {new.web_config_file} re-read")
        if changes:
            log.info("reloaded: %s", "; ".join(changes))
        else:
            log.info("reloaded: nothing changed")

    # -- shutdown ---------------------------------------------------------------------------

    def close(self) -> None:
        self._notifier.stopping()
        if self._server is not None:
            self._server.close()
        if self._datapath is not None:
            self._datapath.close()
            log.info("detached from %s", ",".join(self.settings.interfaces))

    # -- signals and threads ----------------------------------------------------------------

    def install_handlers(self) -> None:
        def on_hup(_signum: int, _frame: object) -> None:
            self._signals.reload = True
            self._wake.set()

        def on_term(_signum: int, _frame: object) -> None:
            self._signals.stop = True
            self._wake.set()

        def on_thread_death(args: threading.ExceptHookArgs) -> None:
            sys.__excepthook__(args.exc_type, args.exc_value, args.exc_traceback)
            self._signals.fatal = args.exc_value or RuntimeError("thread died")
            self._wake.set()

        signal.signal(signal.SIGHUP, on_hup)
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        threading.excepthook = on_thread_death


def run(
    settings: Settings,
    reload_settings: Callable[[], Settings] | None = None,
    *,
    datapath: DataPath | None = None,
) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit code. `datapath`: a data
    path made already (see Daemon), such as a test's stuck one."""
    memory.return_large_frees_to_the_kernel()
    daemon = Daemon(settings, reload_settings or (lambda: settings), datapath=datapath)
    daemon.install_handlers()
    try:
        daemon.start()
    except ConfigError as exc:
        print(f"xdp-ip-counter: error: {exc}", file=sys.stderr)
        daemon.close()
        return EXIT_USAGE
    except ListenError as exc:
        print(f"xdp-ip-counter: error: {exc}", file=sys.stderr)
        daemon.close()
        return EXIT_USAGE
    except (CompileError, AttachError, PinError, KernelRefused) as exc:
        print(f"xdp-ip-counter: error: {exc}", file=sys.stderr)
        daemon.close()
        return EXIT_FAILURE
    try:
        return daemon.loop()
    finally:
        daemon.close()
