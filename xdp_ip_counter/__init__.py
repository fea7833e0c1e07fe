"""xdp-ip-counter: who is hitting what on this host, counted in XDP."""

__version__ = "0.1.0"
