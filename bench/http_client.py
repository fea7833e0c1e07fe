"""HTTP client for the userspace benchmark, run as its own process so that it does not share
the server's interpreter lock (a client thread in the same process would measure the GIL).

    python3 -m bench.http_client metrics URL SECONDS   latency of GET /metrics, back to back
                                                      (count, failures, p50, p99, max)
    python3 -m bench.http_client list URL              time to read all of GET /list

Prints one JSON object.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
from urllib.parse import urlsplit


def _get(url: str, timeout: float = 60.0) -> tuple[int, bytes]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request("GET", parts.path or "/", headers={"Accept": "text/plain"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def metrics(url: str, seconds: float) -> dict:
    latencies = []
    failures = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        status, body = _get(url, timeout=10)
        latencies.append(time.perf_counter() - started)
        if status != 200 or b"active_users" not in body:
            failures += 1
    latencies.sort()
    if not latencies:
        return {"requests": 0, "failures": failures}
    return {
        "requests": len(latencies),
        "failures": failures,
        "p50_s": latencies[len(latencies) // 2],
        "p99_s": latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)],
        "max_s": latencies[-1],
    }


def listing(url: str) -> dict:
    started = time.perf_counter()
    status, body = _get(url, timeout=300)
    took = time.perf_counter() - started
    rows = body.count(b'{"ip":') if status == 200 else 0
    return {"status": status, "seconds": took, "bytes": len(body), "rows": rows}


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "metrics":
        result = metrics(argv[1], float(argv[2]) if len(argv) > 2 else 5.0)
    elif len(argv) == 2 and argv[0] == "list":
        result = listing(argv[1])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
