"""The web stack, knowing nothing of xdp-ip-counter (what exporter-toolkit is to Go exporters):

- server.py: a hardened HTTP/1.0 server for a WSGI application (limits, deadlines, connection
  cap, request checks, TLS, an authentication hook);
- config.py: the exporter-toolkit web configuration file -> WebConfig (TLS, users, headers);
- auth.py: basic authentication at request time, with its cache of successes.

The application's routes are xdp_ip_counter/routes.py.
"""
