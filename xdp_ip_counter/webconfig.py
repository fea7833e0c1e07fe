"""Moved to xdp_ip_counter.web.config; this name stays only while cli.py imports it from here."""

from xdp_ip_counter.web.config import load_web_config

__all__ = ["load_web_config"]
