"""A real HTTP cache for tests and benchmarks: nginx with `proxy_cache` in
front of `upstream`, in folder `d` (its config, cache and access.log; each
line ends with the cache status, the upstream's status, the bytes received
from it and sent to it, and the request's time)."""

import os
import socket
import subprocess
import time

import requests


def start(upstream, d, port=None, prefix=(), ready=None, blobs_only=False):
    """Starts nginx; returns (process, its URL). Stop it with SIGQUIT.
    `prefix` wraps the command (`ip netns exec NS`: then give `port`, free
    in that namespace, and `ready(url)`, which raises ConnectionError until
    nginx answers there). `blobs_only`: only `/v1/blobs/` goes through the
    cache, the rest is passed as asked (with `proxy_cache` on, nginx drops a
    request's If-None-Match, so every poll of an uncacheable manifest gets
    the whole manifest from the hub, not a 304)."""
    if port is None:
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
  log_format cache '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                   'cache=$upstream_cache_status upstream=$upstream_status upstream_bytes=$upstream_bytes_received '
                   'upstream_sent=$upstream_bytes_sent t=$request_time';
  access_log {d}/access.log cache;
  proxy_cache_path {d}/cache keys_zone=tensors:1m max_size=10g;
  proxy_temp_path {d}/tmp;
  client_body_temp_path {d}/body;
  server {{
    listen 127.0.0.1:{port};
    location {"/v1/blobs/" if blobs_only else "/"} {{
      proxy_pass {upstream};
      proxy_http_version 1.1;
      proxy_cache tensors;
      proxy_cache_lock on;
      add_header X-Cache $upstream_cache_status;
    }}
    {f"location / {{ proxy_pass {upstream}; proxy_http_version 1.1; }}" if blobs_only else ""}
  }}
}}""")
    p = subprocess.Popen([*prefix, "nginx", "-c", str(d / "nginx.conf")], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            (ready or (lambda u: requests.get(u + "/healthz", timeout=1)))(url)
            return p, url
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"nginx did not start: {p.stderr.read().decode() if p.poll() is not None else ''}")
