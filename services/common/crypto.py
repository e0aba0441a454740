"""Personal data at rest: field encryption behind a small provider interface, and keyed blind indexes.

DESIGN §5 asks for SM4-GCM with an SM3 blind index; this module fixes the interface services code
against. The provider here is AES-256-GCM with an HMAC-SHA256 index (the documented fallback);
the security work swaps in SM4/SM3 behind the same interface, with key ids for rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_DEV_SECRET = b"lianxin-development-only-key-material"


class FieldCipher(Protocol):
    key_id: str

    def encrypt(self, plaintext: str, *, context: str) -> bytes: ...

    def decrypt(self, blob: bytes, *, context: str) -> str: ...

    def blind_index(self, kind: str, value: str) -> str: ...


@dataclass(frozen=True)
class AesGcmCipher:
    """AES-256-GCM; ``context`` (table.column) is bound as associated data so blobs can't be swapped."""

    key_id: str
    data_key: bytes
    index_key: bytes

    def encrypt(self, plaintext: str, *, context: str) -> bytes:
        nonce = os.urandom(12)
        sealed = AESGCM(self.data_key).encrypt(nonce, plaintext.encode("utf-8"), context.encode())
        return self.key_id.encode() + b":" + nonce + sealed

    def decrypt(self, blob: bytes, *, context: str) -> str:
        key_id, _, rest = blob.partition(b":")
        if key_id.decode() != self.key_id:
            raise ValueError(f"blob was sealed with key {key_id.decode()!r}, this cipher holds {self.key_id!r}")
        nonce, sealed = rest[:12], rest[12:]
        return AESGCM(self.data_key).decrypt(nonce, sealed, context.encode()).decode("utf-8")

    def blind_index(self, kind: str, value: str) -> str:
        digest = hmac.new(self.index_key, f"{kind}:{value}".encode(), hashlib.sha256).digest()
        return base64.b32encode(digest[:20]).decode().rstrip("=").lower()


def cipher_from_env() -> AesGcmCipher:
    """Keys from ``LIANXIN_DATA_KEY`` (base64, 32 bytes); without it a fixed development key.

    The development key keeps ``lianxin up`` zero-configuration; production deployments set the
    variable from a Secret (deploy/k8s).
    """
    raw = os.environ.get("LIANXIN_DATA_KEY")
    master = base64.b64decode(raw) if raw else hashlib.sha256(_DEV_SECRET).digest()
    key_id = os.environ.get("LIANXIN_DATA_KEY_ID", "dev" if not raw else "k1")
    data_key = hmac.new(master, b"data", hashlib.sha256).digest()
    index_key = hmac.new(master, b"index", hashlib.sha256).digest()
    return AesGcmCipher(key_id=key_id, data_key=data_key, index_key=index_key)
