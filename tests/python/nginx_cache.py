"""A real HTTP cache for tests and benchmarks: nginx with `proxy_cache` in
front of `upstream`, in folder `d` (its config, cache and access.log)."""

import os
import socket
import subprocess
import time

import requests


def start(upstream, d):
    """Starts nginx; returns (process, its URL). Stop it with SIGQUIT."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (d / "cache").mkdir(parents=True)
    for p in (d.parent, d, d / "cache"):
        os.chmod(p, 0o777)
    # Workers run as `nobody` unless told otherwise: as root (CI), they
    # must run as root to reach the caller's private temporary folder.
    user = "user root;" if os.geteuid() == 0 else ""
    (d / "nginx.conf").write_text(f"""
{user}
pid {d}/nginx.pid;
error_log {d}/error.log;
daemon off;
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
  access_log {d}/access.log;
  proxy_cache_path {d}/cache keys_zone=tensors:1m max_size=10g;
  proxy_temp_path {d}/tmp;
  client_body_temp_path {d}/body;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass {upstream};
      proxy_http_version 1.1;
      proxy_cache tensors;
      proxy_cache_lock on;
      add_header X-Cache $upstream_cache_status;
    }}
  }}
}}""")
    p = subprocess.Popen(["nginx", "-c", str(d / "nginx.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            requests.get(url + "/healthz", timeout=1)
            return p, url
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"nginx did not start: {p.stderr.read().decode() if p.poll() is not None else ''}")
