"""Entry point (`xdp-ip-counter`, `python3 -m xdp_ip_counter`): settings, then the daemon.

Every configuration error ends here as one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import os
import sys

# numpy's OpenBLAS starts a thread at import: the daemon does no linear algebra, and a thread
# started before the daemon drops its capabilities would keep them (capset is per thread).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from collections.abc import Sequence

from xdp_ip_counter import cli
from xdp_ip_counter.config import ConfigError, validate_interfaces

EXIT_CONFIG_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run with `argv` (default: this process's arguments); returns the exit code."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        namespace = cli.parse_args(arguments)
        settings = cli.settings_from_namespace(namespace)
        validate_interfaces(settings)
    except ConfigError as error:
        print(f"{cli.PROG}: error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if namespace.check_config:
        print(f"configuration OK: {settings.describe()}")
        return 0

    # Imported here: the daemon needs bcc, which --check-config and --help must not.
    from xdp_ip_counter import daemon  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # SIGHUP: the same command line again, over the file as it is then.
    return daemon.run(settings, reload_settings=lambda: cli.reload_settings(arguments))


if __name__ == "__main__":
    sys.exit(main())
