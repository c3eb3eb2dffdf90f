"""A TCP proxy for HTTP/1.1 tests: counts the response bytes per request path
and injects faults (cut the body, flip a byte, answer 503, stall, throttle,
answer one path with another's: `rewrite`)."""

import socket
import threading
import time


class Proxy:
    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.faults = []  # (path substring, kind, arg), each used once
        self.throttle = None  # (bytes per step, seconds per step)
        self.log = []  # (path, response bytes, request head)
        self.rewrite = {}  # path prefix -> the prefix asked upstream instead (logged under the path asked)
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def fault(self, path_part, kind, arg=None):
        with self.lock:
            self.faults.append((path_part, kind, arg))

    def bytes_for(self, path_part):
        with self.lock:
            return sum(n for p, n, _ in self.log if path_part in p)

    def paths(self):
        with self.lock:
            return [p for p, _, _ in self.log]

    def heads(self, path_part):
        with self.lock:
            return [h for p, _, h in self.log if path_part in p]

    def reset(self):
        with self.lock:
            self.log.clear()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client):
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            path = head.split(b" ", 2)[1].decode()
            for old, new in list(self.rewrite.items()):
                if path.startswith(old):
                    head = head.replace(f" {old}".encode(), f" {new}".encode(), 1)
                    break
            fault = None
            with self.lock:
                for i, (part, kind, arg) in enumerate(self.faults):
                    if part in path:
                        fault = (kind, arg)
                        del self.faults[i]
                        break
            if fault and fault[0] == "503":
                client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self._record(path, 0, head)
                return
            if fault and fault[0] == "stall":
                time.sleep(fault[1])
                return
            up = socket.create_connection(self.upstream)
            up.sendall(head)
            sent = 0
            response = b""
            while True:
                data = up.recv(65536)
                if not data:
                    break
                response += data
                if fault and fault[0] == "cut" and len(response) >= fault[1]:
                    client.sendall(response[sent:fault[1]])
                    sent = fault[1]
                    break
                if fault and fault[0] == "flip":
                    continue  # flip once the whole answer is here
                if self.throttle:
                    step, pause = self.throttle
                    while sent < len(response):
                        client.sendall(response[sent:sent + step])
                        sent = min(len(response), sent + step)
                        time.sleep(pause)
                else:
                    client.sendall(response[sent:])
                    sent = len(response)
            if fault and fault[0] == "flip":
                body_at = response.index(b"\r\n\r\n") + 4
                at = body_at + (len(response) - body_at) // 2
                response = response[:at] + bytes([response[at] ^ 0xFF]) + response[at + 1:]
                client.sendall(response)
                sent = len(response)
            up.close()
            self._record(path, sent, head)
        except OSError:
            pass
        finally:
            client.close()

    def _record(self, path, n, head=b""):
        with self.lock:
            self.log.append((path, n, head.decode(errors="replace")))
