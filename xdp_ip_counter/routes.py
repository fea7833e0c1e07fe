"""The application served over HTTP: ``/`` (a landing page), ``/metrics`` (Prometheus) and
``/list`` (JSON), as a WSGI application (Routes), and MetricsServer, the generic server of
web/server.py with these routes and a web configuration.

Every request reads the View the daemon swapped in last (one attribute read, no lock held while
rendering); no request ever touches the kernel. At most 2 /list answers are rendered at once (a
million rows is ~2 s of CPU); more get 503.
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from xdp_ip_counter import __version__
from xdp_ip_counter.config import valid_interface_name
from xdp_ip_counter.layout import FAMILIES, PROTOCOL_NUMBERS
from xdp_ip_counter.metrics import Exposition, View
from xdp_ip_counter.web.auth import VerifiedPasswords
from xdp_ip_counter.web.config import NO_WEB_CONFIG, WebConfig
from xdp_ip_counter.web.server import JSON, Limits, Server, error_body
from xdp_ip_counter.window import (
    ActiveSet,
    family_name,
    format_addresses,
    protocol_name,
    rfc3339_ms,
)

REALM = "xdp-ip-counter"  # of basic authentication
MAX_QUERY_FIELDS = 64
LIST_CHUNK_ROWS = 16384  # rows of /list rendered (and held as text) at a time
MAX_LIST_RENDERS = 2  # /list answers being rendered at once (each costs CPU and a row copy)

ALLOWED_METHODS = "GET, HEAD"
HTML = "text/html; charset=utf-8"

LIST_PARAMETERS = ("iface", "port", "proto", "scanners", "type")
_PORT = re.compile(r"[0-9]{1,5}")
_FAMILY_NUMBERS = {name: number for number, name in FAMILIES.items()}
# What scanners=1 combines with: a scanner is counted over every port, every protocol with ports
# and every interface, so only its family can narrow the list.
_SCANNER_PARAMETERS = ("type",)


class BadQuery(ValueError):
    """A /list query that cannot be answered; the message says which parameter and why."""


# -- /list ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListQuery:
    """A /list query: the rows matching ``filters`` (ActiveSet.select() arguments), or with
    ``scanners`` the scanning sources of the families in ``filters`` (all when absent)."""

    filters: Mapping[str, list[Any]] = field(default_factory=dict)
    scanners: bool = False


def parse_list_query(query: str) -> ListQuery:
    """Parse a /list query string.

    Parameters: ``port`` (0..65535), ``proto`` (a name of layout.PROTOCOLS), ``type`` (v4, v6),
    ``iface`` (an interface name), ``scanners`` (1: the scanning sources instead of the rows,
    with ``type`` only; 0: the rows). Each of the filters may be repeated or take a
    comma-separated list: values of one parameter are alternatives (OR), different parameters
    must all match (AND). Anything else is a BadQuery.
    """
    try:
        pairs = parse_qsl(
            query,
            keep_blank_values=True,
            strict_parsing=bool(query),
            max_num_fields=MAX_QUERY_FIELDS,
        )
    except ValueError as exc:
        raise BadQuery(f"malformed query string: {exc}") from None
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        if name not in LIST_PARAMETERS:
            raise BadQuery(
                f"unknown query parameter {name!r} (known: {', '.join(LIST_PARAMETERS)})"
            )
        for item in value.split(","):
            if not item:
                raise BadQuery(f"{name}: empty value")
            values.setdefault(name, []).append(item)
    filters: dict[str, list[Any]] = {}
    for item in values.get("port", []):
        if not _PORT.fullmatch(item) or int(item) > 65535:
            raise BadQuery(f"port: {item!r} is not a port number 0..65535")
        filters.setdefault("ports", []).append(int(item))
    for item in values.get("proto", []):
        if item.lower() not in PROTOCOL_NUMBERS:
            raise BadQuery(f"proto: {item!r} is not one of {', '.join(PROTOCOL_NUMBERS)}")
        filters.setdefault("protos", []).append(PROTOCOL_NUMBERS[item.lower()])
    for item in values.get("type", []):
        if item.lower() not in _FAMILY_NUMBERS:
            raise BadQuery(f"type: {item!r} is not {' or '.join(_FAMILY_NUMBERS)}")
        filters.setdefault("families", []).append(_FAMILY_NUMBERS[item.lower()])
    for item in values.get("iface", []):
        if not valid_interface_name(item):
            raise BadQuery(f"iface: {item!r} is not an interface name")
        filters.setdefault("interfaces", []).append(item)
    scanners = values.get("scanners", [])
    if len(scanners) > 1:
        raise BadQuery("scanners: one value, 0 or 1")
    if scanners and scanners[0] not in ("0", "1"):
        raise BadQuery(f"scanners: {scanners[0]!r} is not 0 or 1")
    if scanners == ["1"]:
        others = [name for name in values if name not in ("scanners", *_SCANNER_PARAMETERS)]
        if others:
            raise BadQuery(
                f"scanners: combines with {', '.join(_SCANNER_PARAMETERS)} only, not "
                f"{', '.join(sorted(others))} (a scanner's ports are counted over every "
                "protocol with ports and every interface)"
            )
        return ListQuery(filters, scanners=True)
    return ListQuery(filters)


_ROW = (
    '{"ip":"%s","type":"%s","port":%d,"proto":"%s","interfaces":%s,'
    '"first_seen":"%s","last_seen":"%s","packets":%d,"bytes":%d}'
)


def list_json_chunks(active: ActiveSet, chunk_rows: int = LIST_CHUNK_ROWS) -> Iterator[bytes]:
    """The /list body, a JSON array with one object per line, a slice of rows at a time.

    Joined, the chunks are ``[\\n{...},\\n{...}\\n]\\n`` (``[]\\n`` when empty).
    """
    if len(active) == 0:
        yield b"[]\n"
        return
    interface_json: dict[tuple[str, ...], str] = {}
    family_text = {f: family_name(f) for f in set(active.rows["family"].tolist())}
    proto_text = {p: protocol_name(p) for p in set(active.rows["proto"].tolist())}
    for start in range(0, len(active), chunk_rows):
        stop = min(start + chunk_rows, len(active))
        rows = active.rows[start:stop]
        interface_lists = active.interface_lists(start, stop)
        for names in set(interface_lists) - interface_json.keys():
            interface_json[names] = json.dumps(list(names), separators=(",", ":"))
        lines = [
            _ROW % fields
            for fields in zip(
                active.ip_texts(start, stop),
                [family_text[f] for f in rows["family"].tolist()],
                rows["port"].tolist(),
                [proto_text[p] for p in rows["proto"].tolist()],
                [interface_json[names] for names in interface_lists],
                rfc3339_ms(active.wall_ms(rows["first_seen"])),
                rfc3339_ms(active.wall_ms(rows["last_seen"])),
                rows["packets"].tolist(),
                rows["bytes"].tolist(),
                strict=True,
            )
        ]
        head = "[\n" if start == 0 else ",\n"
        tail = "\n]\n" if stop == len(active) else ""
        yield (head + ",\n".join(lines) + tail).encode()


_SCANNER_ROW = '{"ip":"%s","type":"%s","ports":%d}'


def scanner_json_chunks(scanners: np.ndarray, chunk_rows: int = LIST_CHUNK_ROWS) -> Iterator[bytes]:
    """The /list?scanners=1 body for window.SCANNER_DTYPE rows, in their order (ports
    descending, then v4 before v6, then address): a JSON array with one object per line, a
    slice at a time, as list_json_chunks."""
    if len(scanners) == 0:
        yield b"[]\n"
        return
    for start in range(0, len(scanners), chunk_rows):
        stop = min(start + chunk_rows, len(scanners))
        rows = scanners[start:stop]
        lines = [
            _SCANNER_ROW % fields
            for fields in zip(
                format_addresses(rows),
                [family_name(f) for f in rows["family"].tolist()],
                rows["ports"].tolist(),
                strict=True,
            )
        ]
        head = "[\n" if start == 0 else ",\n"
        tail = "\n]\n" if stop == len(scanners) else ""
        yield (head + ",\n".join(lines) + tail).encode()


# -- the landing page -------------------------------------------------------------------------


def landing_page(view: View) -> bytes:
    """The small HTML page at /: what is watched and where the data is."""
    s = view.settings
    e = html.escape
    if s.serve_ip_list:
        list_item = '<li><a href="list">/list</a>: the active sources as JSON</li>'
    else:
        list_item = "<li>/list is disabled (enable it with --serve-ip-list or serve_ip_list)</li>"
    refreshed = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(view.last_refresh_time))
    page = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>xdp-ip-counter</title></head>
<body>
<h1>xdp-ip-counter {e(view.version)}</h1>
<ul>
<li><a href="metrics">/metrics</a>: Prometheus metrics</li>
{list_item}
</ul>
<table>
<tr><th align="left">Interfaces</th><td>{e(", ".join(s.interfaces))}</td></tr>
<tr><th align="left">XDP mode</th><td>{e(s.xdp_mode)}</td></tr>
<tr><th align="left">Ports</th><td>{e(str(s.ports))}</td></tr>
<tr><th align="left">Window</th><td>{s.window} s</td></tr>
<tr><th align="left">Active sources</th><td>{len(view.active)}</td></tr>
<tr><th align="left">Map entries</th><td>{view.entries_in_map} of {view.capacity}</td></tr>
<tr><th align="left">Last refresh</th><td>{refreshed}</td></tr>
</table>
</body>
</html>
"""
    return page.encode()


# -- the routes -------------------------------------------------------------------------------

StartResponse = Callable[..., Any]


class _Rendering:
    """A /list body, rendered as it is iterated; close() (which a WSGI server always calls)
    frees its render slot."""

    def __init__(self, chunks: Iterator[bytes], slot: threading.BoundedSemaphore) -> None:
        self._chunks = chunks
        self._slot: threading.BoundedSemaphore | None = slot

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def close(self) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None


class Routes:
    """The WSGI application: the View that ``get_view()`` returns at each request, rendered."""

    def __init__(
        self,
        get_view: Callable[[], View | None],
        exposition: Exposition | None = None,
        max_list_renders: int = MAX_LIST_RENDERS,
    ) -> None:
        self.get_view = get_view
        self.exposition = exposition if exposition is not None else Exposition()
        self.list_renders = threading.BoundedSemaphore(max_list_renders)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        # The target as sent: /%6detrics is not /metrics.
        target = urlsplit(environ.get("REQUEST_URI", environ["PATH_INFO"]))
        route = {"/": self._index, "/metrics": self._metrics, "/list": self._list}.get(target.path)
        if route is None:
            return _error(start_response, HTTPStatus.NOT_FOUND, f"no such page: {target.path}")
        if method not in ("GET", "HEAD"):
            return _error(
                start_response,
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{method} is not allowed here; use GET",
                [("Allow", ALLOWED_METHODS)],
            )
        view = self.get_view()
        if view is None:
            return _unavailable(start_response, "no data yet: the first refresh runs")
        return route(view, environ, target.query, start_response)

    def _index(self, view: View, _environ: Any, _query: str, start: StartResponse) -> list[bytes]:
        return _answer(start, HTML, landing_page(view))

    def _metrics(self, view: View, environ: Any, _query: str, start: StartResponse) -> list[bytes]:
        body, content_type = self.exposition.render(view, environ.get("HTTP_ACCEPT"))
        return _answer(start, content_type, body)

    def _list(self, view: View, environ: Any, query: str, start: StartResponse) -> Iterable[bytes]:
        if not view.settings.serve_ip_list:
            return _error(
                start,
                HTTPStatus.NOT_FOUND,
                "the list is disabled: start with --serve-ip-list or set serve_ip_list = true",
            )
        try:
            parsed = parse_list_query(query)
        except BadQuery as exc:
            return _error(start, HTTPStatus.BAD_REQUEST, str(exc))
        if parsed.scanners and not view.settings.scan_ports:
            return _error(
                start,
                HTTPStatus.NOT_FOUND,
                "scanner detection is off: set scan_ports (--scan-ports) above 0",
            )
        # The length is not known before the last row is rendered: the body ends when the
        # connection closes (HTTP/1.0), and only one slice of rows is held as text at a time.
        if environ["REQUEST_METHOD"] == "HEAD":
            start(_status(HTTPStatus.OK), [("Content-Type", JSON)])
            return []
        if not self.list_renders.acquire(blocking=False):
            return _unavailable(start, "busy rendering /list: try again")
        try:
            if parsed.scanners:
                scanners = view.active.scanners
                if "families" in parsed.filters:
                    wanted = np.asarray(parsed.filters["families"], np.uint8)
                    scanners = scanners[np.isin(scanners["family"], wanted)]
                chunks = scanner_json_chunks(scanners)
            else:
                chunks = list_json_chunks(view.active.select(**parsed.filters))
            start(_status(HTTPStatus.OK), [("Content-Type", JSON)])
        except BaseException:
            self.list_renders.release()
            raise
        return _Rendering(chunks, self.list_renders)


def _status(status: HTTPStatus) -> str:
    return f"{status.value} {status.phrase}"


def _answer(
    start: StartResponse,
    content_type: str,
    body: bytes,
    status: HTTPStatus = HTTPStatus.OK,
    headers: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    start(
        _status(status),
        [("Content-Type", content_type), ("Content-Length", str(len(body))), *headers],
    )
    return [body]


def _error(
    start: StartResponse,
    status: HTTPStatus,
    message: str,
    headers: Iterable[tuple[str, str]] = (),
) -> list[bytes]:
    return _answer(start, JSON, error_body(message), status, headers)


def _unavailable(start: StartResponse, message: str) -> list[bytes]:
    return _error(start, HTTPStatus.SERVICE_UNAVAILABLE, message, [("Retry-After", "1")])


# -- the server -------------------------------------------------------------------------------


class MetricsServer(Server):
    """The routes over the View that ``get_view()`` returns at each request, with the TLS,
    authentication and headers of ``web_config`` (swapped by set_web_config)."""

    def __init__(
        self,
        address: str,
        port: int,
        get_view: Callable[[], View | None],
        exposition: Exposition | None = None,
        *,
        web_config: WebConfig = NO_WEB_CONFIG,
        limits: Limits = Limits(),  # noqa: B008 - frozen
    ) -> None:
        self.routes = Routes(get_view, exposition)
        self.verified_passwords = VerifiedPasswords()  # for every configuration, reloads too
        self.web_config = web_config
        super().__init__(
            address,
            port,
            self.routes,
            limits=limits,
            policy=web_config.policy(REALM, self.verified_passwords),
            software=f"xdp-ip-counter/{__version__}",
        )

    def set_web_config(self, web_config: WebConfig) -> None:
        """Use another web configuration (a reload) from the next connection on; connections
        in progress finish with the one they started with."""
        self.set_policy(web_config.policy(REALM, self.verified_passwords))
        self.web_config = web_config
