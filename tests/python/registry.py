"""A real OCI registry for tests: Debian's `docker-registry` (CNCF
distribution 2.8) on loopback with a config the test writes — open, behind
htpasswd (bcrypt), or behind the token flow with a token service written
here (JWTs signed with an ES256 key whose certificate the registry trusts,
as distribution's `auth.token` expects)."""

import base64
import hashlib
import json
import shutil
import socket
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import bcrypt
import requests

USER, PASSWORD = "fleet", "correct horse battery"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class TokenService:
    """`GET /token?service=…&scope=…` with Basic credentials → a JWT granting
    the asked actions on the asked repository (anonymous: nothing)."""

    def __init__(self, tmp_path, service):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weightcast test token issuer")])
        now = datetime.now(timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.bundle = tmp_path / "token-issuer.pem"
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.service = service
        self.requests = []  # (scope, user or None)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # as token services answer (async-h1 refuses HTTP/1.0)

            def log_message(self, *a):
                pass

            def do_GET(self):
                q = parse_qs(urlparse(self.path).query)
                user = None
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
                    if (u, p) != (USER, PASSWORD):
                        self.send_response(401)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    user = u
                scope = q.get("scope", [""])[0]
                outer.requests.append((scope, user))
                body = json.dumps({"token": outer.token(scope, user), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.http.server_address[1]}/token"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def token(self, scope, user):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        access = []
        if user and scope.startswith("repository:"):
            _, repo, actions = scope.split(":", 2)
            access = [{"type": "repository", "name": repo, "actions": actions.split(",")}]
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": "weightcast-test", "sub": user or "", "aud": self.service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": hashlib.sha256(str(time.time_ns()).encode()).hexdigest(),
                  "access": access}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def stop(self):
        self.http.shutdown()


class Registry:
    """`docker-registry serve` on a free loopback port; `auth` is None,
    "htpasswd" or "token"; `tls` = (cert.pem, key.pem) serves HTTPS (as
    `localhost`)."""

    def __init__(self, tmp_path, auth=None, tls=None):
        if not shutil.which("docker-registry"):
            raise RuntimeError("docker-registry is needed (the suite's set-up installs the Debian package)")
        self.dir = tmp_path / f"registry-{time.monotonic_ns()}"
        self.dir.mkdir()
        self.port = free_port()
        self.host = f"{'localhost' if tls else '127.0.0.1'}:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self.token_service = None
        auth_conf = ""
        if auth == "htpasswd":
            hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
            (self.dir / "htpasswd").write_text(f"{USER}:{hashed}\n")
            auth_conf = f"auth:\n  htpasswd:\n    realm: weightcast-test\n    path: {self.dir / 'htpasswd'}\n"
        elif auth == "token":
            self.token_service = TokenService(self.dir, "weightcast-registry")
            auth_conf = (f"auth:\n  token:\n    realm: {self.token_service.realm}\n    service: weightcast-registry\n"
                         f"    issuer: weightcast-test\n    rootcertbundle: {self.token_service.bundle}\n")
        config = self.dir / "config.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\n"
                          f"storage:\n  filesystem:\n    rootdirectory: {self.dir / 'data'}\n"
                          f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{self.port}\n"
                          + (f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else "") + auth_conf)
        self.log = open(self.dir / "registry.log", "w")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=self.log, stderr=self.log)
        if tls:  # the readiness probe only: the tests verify with their CA
            import urllib3
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        for _ in range(200):
            try:
                if requests.get(f"{self.url}/v2/", timeout=1, verify=False).status_code in (200, 401):
                    return
            except requests.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not start: {(self.dir / 'registry.log').read_text()}")

    def blob_file(self, digest):
        hexd = digest.split(":", 1)[1]
        return self.dir / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"

    def logs(self):
        self.log.flush()
        return (self.dir / "registry.log").read_text()

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.log.close()
        if self.token_service:
            self.token_service.stop()
