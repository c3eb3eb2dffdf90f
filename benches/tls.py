#!/usr/bin/env python3
"""What TLS and signing cost (issue #13): the same model served by two
release-build servers in the same run — plain HTTP, and HTTPS with a signing
key (a certificate from a CA the script makes) — compared on full downloads
(curl, identity and zstd, median of 5) and on conditional GETs of the signed
manifest answered 304 (one keep-alive connection per client thread, fixed
duration; the Python client bounds the absolute rate, both servers get the
same client).

    .venv/bin/python benches/tls.py [--mb 100] [--seconds 5]
"""

import argparse
import datetime
import http.client
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import make_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_ca_and_leaf(d):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))


def start(binary, cfg):
    p = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--config", str(cfg)],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = p.stdout.readline().split()[-1]
    return p, url.replace("127.0.0.1", "localhost")


def curl_seconds(url, ca, headers, runs=5):
    times = []
    for _ in range(runs):
        args = ["curl", "-s", "-o", "/dev/null", "-w", "%{time_total}", url] + (["--cacert", str(ca)] if ca else [])
        for h in headers:
            args += ["-H", h]
        times.append(float(subprocess.run(args, capture_output=True, text=True, check=True).stdout))
    return sorted(times)[len(times) // 2]


def not_modified_rate(url, ca, seconds, threads=2):
    host, port = url.split("://")[1].split(":")
    tls = url.startswith("https")
    counts, stop = [0] * threads, time.monotonic() + seconds

    def run(k):
        ctx = ssl.create_default_context(cafile=str(ca)) if tls else None
        c = http.client.HTTPSConnection(host, int(port), context=ctx) if tls else http.client.HTTPConnection(host, int(port))
        c.request("GET", "/v1/models/big")
        r = c.getresponse()
        etag = r.getheader("ETag")
        r.read()
        while time.monotonic() < stop:
            c.request("GET", "/v1/models/big", headers={"If-None-Match": etag})
            r = c.getresponse()
            r.read()
            assert r.status == 304, r.status
            counts[k] += 1

    ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(counts) / seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "weightcast"))
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="weightcast-tls-"))
    try:
        make_model(d / "big.onnx", a.mb)
        make_ca_and_leaf(d)
        subprocess.run([a.bin, "keygen", str(d / "hub")], check=True, capture_output=True)
        models = f'[[models]]\nname = "big"\npath = "{d / "big.onnx"}"\n'
        (d / "plain.toml").write_text(f'cache_dir = "{d / "cache"}"\n' + models)
        (d / "tls.toml").write_text(f'cache_dir = "{d / "cache"}"\nsigning_key = "{d / "hub.key"}"\n'
                                    f'[tls]\ncert = "{d / "cert.pem"}"\nkey = "{d / "key.pem"}"\n' + models)
        plain, plain_url = start(a.bin, d / "plain.toml")
        tls, tls_url = start(a.bin, d / "tls.toml")
        time.sleep(3)  # zstd frames prepared
        print(f"{a.mb} MB model; plain HTTP vs HTTPS + signed manifests, same run, release build")
        for name, headers in [("identity", ["Accept-Encoding: identity"]), ("zstd", ["Accept-Encoding: zstd"])]:
            p = curl_seconds(plain_url + "/v1/models/big/weights", None, headers)
            t = curl_seconds(tls_url + "/v1/models/big/weights", d / "ca.pem", headers)
            print(f"  full download {name:8s}: plain {p:.3f} s, TLS {t:.3f} s: TLS at {p / t:.2f}x plain throughput")
        p = not_modified_rate(plain_url, None, a.seconds)
        t = not_modified_rate(tls_url, d / "ca.pem", a.seconds)
        print(f"  304s (keep-alive, 2 client threads): plain {p:,.0f}/s, TLS + signed {t:,.0f}/s: {t / p:.2f}x")
        plain.kill()
        tls.kill()
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
