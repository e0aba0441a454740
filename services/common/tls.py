"""Mutual TLS between nodes: a development CA, node certificates naming their region code, credentials.

A node certificate carries its region code in the subject CN and as the SAN URI
``spiffe://lianxin/node/<code>`` (plus DNS ``<code>.node.lianxin``, ``localhost`` and 127.0.0.1 so
the embedded federation can dial by address). ``peer_region`` reads the code back from a gRPC
peer's verified certificate; the security interceptor checks it against the region tree.

Files in a TLS directory: ``ca.pem`` (and ``ca.key`` for issuing), ``<code>.pem`` and ``<code>.key``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import Gauge

SPIFFE_PREFIX = "spiffe://lianxin/node/"
DNS_SUFFIX = ".node.lianxin"


@dataclass(frozen=True)
class Issued:
    """A PEM certificate with its PEM private key."""

    cert_pem: bytes
    key_pem: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(name: str = "Lianxin development CA", *, days: int = 3650) -> Issued:
    """A self-signed CA for development and tests (production uses the e-government PKI)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_node_cert(
    ca: Issued,
    code: str,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    days: int = 825,
) -> Issued:
    """A certificate for node ``code`` (server and client use), signed by ``ca``."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    start = not_before or now - dt.timedelta(minutes=5)
    end = not_after or now + dt.timedelta(days=days)
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(SPIFFE_PREFIX + code),
        x509.DNSName(code + DNS_SUFFIX),
    ]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lianxin"),
                    x509.NameAttribute(NameOID.COMMON_NAME, code),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


# The code in the national simulator's certificate (GB/T 2260's code for the whole country).
NATIONAL_CODE = "100000"


def write_dev_pki(out: Path, codes: Iterable[str], *, hosts: Sequence[str] = ("localhost", "127.0.0.1")) -> list[Path]:
    """``lianxin certs``: a CA in ``out`` (kept if present) and a certificate per node code."""
    out.mkdir(parents=True, exist_ok=True)
    ca_pem, ca_key = out / "ca.pem", out / "ca.key"
    if ca_pem.exists() and ca_key.exists():
        ca = Issued(ca_pem.read_bytes(), ca_key.read_bytes())
    else:
        ca = make_ca()
        ca_pem.write_bytes(ca.cert_pem)
        _write_secret(ca_key, ca.key_pem)
    written = [ca_pem]
    for code in codes:
        issued = issue_node_cert(ca, code, hosts=hosts)
        (out / f"{code}.pem").write_bytes(issued.cert_pem)
        _write_secret(out / f"{code}.key", issued.key_pem)
        written.append(out / f"{code}.pem")
    return written


def _write_secret(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


CERTIFICATE_EXPIRY = Gauge(
    "lianxin_tls_certificate_expiry_timestamp_seconds",
    "When the node's certificate (kind=node) or its CA (kind=ca) stops being valid, Unix time",
    ["region", "kind"],  # not "node": that is the scrape target's label (it would become exported_node)
)


@dataclass(frozen=True)
class NodeTls:
    """The PEM material a node presents and trusts."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def load(cls, directory: Path, code: str) -> NodeTls:
        tls = cls(
            ca_pem=(directory / "ca.pem").read_bytes(),
            cert_pem=(directory / f"{code}.pem").read_bytes(),
            key_pem=(directory / f"{code}.key").read_bytes(),
        )
        # Operators are warned before a certificate lapses (deploy/prometheus rules).
        for kind, pem in (("node", tls.cert_pem), ("ca", tls.ca_pem)):
            expiry = x509.load_pem_x509_certificate(pem).not_valid_after_utc
            CERTIFICATE_EXPIRY.labels(region=code, kind=kind).set(expiry.timestamp())
        return tls

    def server_credentials(self, *, require_client_auth: bool = True) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)], root_certificates=self.ca_pem, require_client_auth=require_client_auth
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem, private_key=self.key_pem, certificate_chain=self.cert_pem
        )


def region_from_names(auth_context: Mapping[str, Sequence[bytes]]) -> str | None:
    """The node region code a verified peer certificate names (SAN URI first, then the CN)."""
    for raw in auth_context.get("x509_subject_alternative_name", ()):
        value = raw.decode(errors="replace")
        if value.startswith(SPIFFE_PREFIX):
            code = value[len(SPIFFE_PREFIX) :]
            return code if len(code) == 6 and code.isdigit() else None
    for raw in auth_context.get("x509_common_name", ()):
        value = raw.decode(errors="replace")
        if len(value) == 6 and value.isdigit():
            return value
    return None


def peer_region(context: grpc.ServicerContext) -> str | None:
    """Region code of the TLS peer of this call, or None without a verified client certificate."""
    auth = context.auth_context()
    if not auth or auth.get("transport_security_type", [b""])[0] != b"ssl":
        return None
    return region_from_names(auth)


def cert_region(cert_pem: bytes) -> str:
    """The region code a PEM node certificate names (for ``lianxin certs --show``)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def client_credentials(tls_dir: Path | None, code: str) -> grpc.ChannelCredentials | None:
    """Credentials for node ``code``'s channels to its parent/peers: None (plaintext) without a TLS dir.

    Use as ``instrumented_channel(parent, credentials=client_credentials(settings.tls_dir, settings.node))``.
    """
    if tls_dir is None:
        return None
    return NodeTls.load(Path(tls_dir), code).channel_credentials()
