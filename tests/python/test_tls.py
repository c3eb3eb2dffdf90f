"""TLS (issue #13, part 2): `serve` with a certificate made by the test's own
CA, checked by requests, curl and `pull --ca`; a wrong CA and the system
roots refuse it; a renewed certificate applies without a restart."""

import datetime
import socket
import ssl
import subprocess

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import binary
from test_pull_contract import named_model, pull


def ca(tmp_path, name):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    path = tmp_path / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def leaf(tmp_path, ca_key, ca_cert, serial):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp_path / "cert.pem.new").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem.new").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "key.pem.new").rename(tmp_path / "key.pem")
    (tmp_path / "cert.pem.new").rename(tmp_path / "cert.pem")


@pytest.fixture
def tls_hub(serve, tmp_path):
    ca_key, ca_cert, ca_path = ca(tmp_path, "test-ca")
    leaf(tmp_path, ca_key, ca_cert, 1001)
    named_model(tmp_path / "m.onnx", ["w1", "w2"], n=4096)
    cfg = tmp_path / "tls.toml"
    cfg.write_text('[tls]\ncert = "cert.pem"\nkey = "key.pem"\n[[models]]\npath = "m.onnx"\n')
    s = serve("--runtime", "none", "--config", cfg)
    port = int(s.url.rsplit(":", 1)[1])
    return s, f"https://localhost:{port}", ca_path, (ca_key, ca_cert)


def served_serial(url, ca_path):
    host, port = url.removeprefix("https://").split(":")
    ctx = ssl.create_default_context(cafile=str(ca_path))
    with socket.create_connection((host, int(port))) as raw, ctx.wrap_socket(raw, server_hostname=host) as s:
        return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def test_tls_serve_and_pull_with_the_tests_ca(tls_hub, tmp_path):
    s, url, ca_path, _ = tls_hub
    r = requests.get(f"{url}/v1/models/m?format=json", verify=str(ca_path), timeout=10)
    assert r.status_code == 200 and r.json()["model"] == "m"
    out = subprocess.run(["curl", "-sS", "--cacert", str(ca_path), f"{url}/healthz"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{url}/healthz", timeout=10)  # not trusted by the system roots
    rc, got, err = pull(f"{url}/v1/models/m", tmp_path / "device", "--ca", str(ca_path))
    assert rc == 0 and got["status"] == "updated", (got, err)
    # Plain HTTP to the TLS port gets no HTTP answer.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url.replace("https", "http") + "/healthz", timeout=5)


def test_pull_refuses_a_hub_its_ca_did_not_sign(tls_hub, tmp_path):
    s, url, ca_path, _ = tls_hub
    _, _, other = ca(tmp_path, "other-ca")
    rc, got, err = pull(f"{url}/v1/models/m", tmp_path / "device", "--ca", str(other))
    assert rc == 1 and "TLS with localhost" in got["error"], (got, err)
    rc, got, err = pull(f"{url}/v1/models/m", tmp_path / "device2")  # system roots only
    assert rc == 1 and "TLS" in got["error"], (got, err)
    assert not (tmp_path / "device" / "current").exists()
    r = subprocess.run([str(binary()), "pull", url.replace("https", "http") + "/v1/models/m", "--dest",
                        str(tmp_path / "d3"), "--once", "--ca", str(ca_path)], capture_output=True, text=True)
    assert r.returncode == 1 and "--ca is for https://" in r.stderr


def test_a_renewed_certificate_applies_without_a_restart(tls_hub, tmp_path):
    import time
    s, url, ca_path, (ca_key, ca_cert) = tls_hub
    assert served_serial(url, ca_path) == 1001
    leaf(tmp_path, ca_key, ca_cert, 2002)
    time.sleep(1.3)
    assert served_serial(url, ca_path) == 2002
    assert requests.get(f"{url}/healthz", verify=str(ca_path), timeout=10).status_code == 200


def leaf_valid_until(tmp_path, ca_key, ca_cert, days):
    """A leaf certificate whose validity ends `days` from now (negative: expired)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))


@pytest.mark.parametrize("days, said", [(-2, "expired on"), (3, "expires on"), (200, None)])
def test_a_certificate_that_expired_or_expires_within_14_days_is_told_at_start(serve, tmp_path, days, said):
    """The hub used to serve an expired certificate without a word; clients
    refuse it. It starts anyway (the file may be renewed while it runs), and
    says so; a certificate with months left is not mentioned."""
    ca_key, ca_cert, _ = ca(tmp_path, "test-ca")
    leaf_valid_until(tmp_path, ca_key, ca_cert, days)
    named_model(tmp_path / "m.onnx", ["w1", "w2"], n=4096)
    cfg = tmp_path / "tls.toml"
    cfg.write_text('[tls]\ncert = "cert.pem"\nkey = "key.pem"\n[[models]]\npath = "m.onnx"\n')
    s = serve("--runtime", "none", "--config", cfg)
    logs = s.logs()
    if said is None:
        assert "TLS certificate" not in logs, logs
    else:
        assert said in logs and "TLS certificate" in logs and "renew" in logs, logs
