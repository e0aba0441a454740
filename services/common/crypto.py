"""Personal data at rest: field encryption behind a small provider interface, and keyed blind indexes.

DESIGN §5 asks for SM4-GCM with an SM3 blind index. ``Sm4GcmCipher`` is that provider: a keyring of
16-byte SM4 keys named by key ids (the id is written in front of every blob, so old blobs stay
readable after the current key changes and ``rotate`` re-seals them), and an HMAC-SM3 blind index
for equality lookups. ``AesGcmCipher`` (AES-256-GCM + HMAC-SHA256) is the fallback for an OpenSSL
built without SM4/SM3.

Keys come from ``LIANXIN_DATA_KEYS`` (``k1:<base64>,k2:<base64>``) with ``LIANXIN_DATA_KEY_ID``
naming the current one, or from a secret file (``LIANXIN_DATA_KEYS_FILE``, same format, one key a
line). Never a constant: without configured keys an embedded node generates its own keyring into
its data directory on first start (``<data_dir>/<node>/data-keys``, mode 0600), a library caller
without a data directory gets a random key for the life of the process, and the production
commands (``lianxin serve``/``worker``) refuse to start (``require_configured_keys``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from services.common.settings import KeySettings, Settings

KEY_FILE = "data-keys"
_CONFIGURED = ("LIANXIN_DATA_KEYS", "LIANXIN_DATA_KEYS_FILE", "LIANXIN_DATA_KEY")
_NONCE = 12
_TAG = 16
# Written after the key id so an SM4 blob is never mistaken for an older AES blob of the same key id.
_SM4_MARK = b"s4"


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

    def rotate(self, blob: bytes, *, context: str) -> bytes:
        return self.encrypt(self.decrypt(blob, context=context), context=context)


def sm3_hmac(key: bytes, data: bytes) -> bytes:
    """HMAC-SM3 (GB/T 32905) through ``cryptography``."""
    mac = crypto_hmac.HMAC(key, hashes.SM3())
    mac.update(data)
    return mac.finalize()


def sm3(data: bytes) -> bytes:
    """Plain SM3 digest (used by the audit chain)."""
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return digest.finalize()


def sm4_available() -> bool:
    """True when the linked OpenSSL offers SM4-GCM and SM3 (some FIPS builds do not)."""
    try:
        encryptor = Cipher(algorithms.SM4(b"\0" * 16), modes.GCM(b"\0" * _NONCE)).encryptor()
        encryptor.update(b"x")
        encryptor.finalize()
        sm3(b"x")
    except (UnsupportedAlgorithm, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Sm4GcmCipher:
    """SM4-GCM field encryption with a keyring, and an HMAC-SM3 blind index.

    Blob layout: ``<key id>:s4<12-byte nonce><ciphertext><16-byte tag>``. ``context`` (table.column)
    is the associated data, so a blob copied into another column does not open.
    The blind index key is fixed per deployment (``index_key``): rotating data keys must not change
    index values, or lookups of old rows would miss.
    """

    key_id: str
    keys: Mapping[str, bytes]
    index_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if self.key_id not in self.keys:
            raise ValueError(f"current data key {self.key_id!r} is not in the keyring {sorted(self.keys)}")
        for kid, key in self.keys.items():
            if ":" in kid or not kid:
                raise ValueError(f"bad key id {kid!r}")
            if len(key) != 16:
                raise ValueError(f"SM4 key {kid!r} must be 16 bytes, got {len(key)}")

    def encrypt(self, plaintext: str, *, context: str) -> bytes:
        nonce = os.urandom(_NONCE)
        encryptor = Cipher(algorithms.SM4(self.keys[self.key_id]), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(context.encode())
        sealed = encryptor.update(plaintext.encode("utf-8")) + encryptor.finalize()
        return self.key_id.encode() + b":" + _SM4_MARK + nonce + sealed + encryptor.tag

    def key_id_of(self, blob: bytes) -> str:
        return blob.partition(b":")[0].decode()

    def decrypt(self, blob: bytes, *, context: str) -> str:
        kid, _, rest = blob.partition(b":")
        key = self.keys.get(kid.decode())
        if key is None:
            raise ValueError(f"blob was sealed with key {kid.decode()!r}, which is not in the keyring")
        if not rest.startswith(_SM4_MARK) or len(rest) < len(_SM4_MARK) + _NONCE + _TAG:
            raise ValueError("not an SM4-GCM blob")
        body = rest[len(_SM4_MARK) :]
        nonce, sealed, tag = body[:_NONCE], body[_NONCE:-_TAG], body[-_TAG:]
        decryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
        decryptor.authenticate_additional_data(context.encode())
        return (decryptor.update(sealed) + decryptor.finalize()).decode("utf-8")

    def rotate(self, blob: bytes, *, context: str) -> bytes:
        """The same plaintext sealed with the current key (unchanged if it already is)."""
        if self.key_id_of(blob) == self.key_id:
            return blob
        return self.encrypt(self.decrypt(blob, context=context), context=context)

    def blind_index(self, kind: str, value: str) -> str:
        digest = sm3_hmac(self.index_key, f"{kind}:{value}".encode())
        return base64.b32encode(digest[:20]).decode().rstrip("=").lower()


def parse_keyring(text: str) -> dict[str, bytes]:
    """``k1:<base64>,k2:<base64>`` (commas or newlines; ``#`` comments) → {key id: key bytes}."""
    keys: dict[str, bytes] = {}
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        kid, sep, raw = item.partition(":")
        if not sep:
            raise ValueError("data keys are written key_id:base64")
        keys[kid.strip()] = base64.b64decode(raw.strip())
    return keys


def _derive(master: bytes, label: bytes, size: int) -> bytes:
    return hmac.new(master, label, hashlib.sha256).digest()[:size]


def keys_configured(environ: Mapping[str, str]) -> bool:
    """True when ``environ`` (a process's environment) names data keys (the production way)."""
    return any(environ.get(name) for name in _CONFIGURED)


def require_configured_keys(command: str, keys: KeySettings) -> None:
    """Refuse ``command`` (a production process) without configured data keys: one clear line."""
    if not keys.configured:
        from services.common.errors import InvalidArgument

        raise InvalidArgument(
            "LIANXIN_DATA_KEYS",
            f"{command} needs the node's data keys: set LIANXIN_DATA_KEYS=k1:<base64 16 bytes> or "
            "LIANXIN_DATA_KEYS_FILE (a new key: lianxin keys new)",
        )


def create_once(path: Path, content: str) -> str:
    """``path``'s content, writing ``content`` first (mode 0600) when the file does not exist yet."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another service of the node made it first: use that one
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content)
    return path.read_text("utf-8")


def node_keyring(key_dir: Path) -> str:
    """The node's own keyring text from ``key_dir/data-keys``, generated on first use (mode 0600)."""
    return create_once(key_dir / KEY_FILE, f"n{os.urandom(3).hex()}:{new_data_key()}\n")


def node_secret(key_dir: Path, name: str) -> bytes:
    """A 32-byte secret of the node (e.g. its audit key) in ``key_dir/name``, generated on first use."""
    return base64.b64decode(create_once(key_dir / name, base64.b64encode(os.urandom(32)).decode() + "\n"))


_PROCESS_KEYRING: list[str] = []


def _process_keyring() -> str:
    # Random per process, never a constant: for callers that have no data directory (tests, tools).
    if not _PROCESS_KEYRING:
        _PROCESS_KEYRING.append(f"p{os.urandom(3).hex()}:{new_data_key()}")
    return _PROCESS_KEYRING[0]


def node_cipher(settings: Settings) -> Sm4GcmCipher | AesGcmCipher:
    """The node's field cipher from its settings' keys, else its own keyring in ``data_dir/<node>``."""
    return cipher_from_env(settings.keys.environ(), key_dir=Path(settings.data_dir) / settings.node)


def cipher_from_env(
    environ: Mapping[str, str] | None = None, *, key_dir: Path | None = None
) -> Sm4GcmCipher | AesGcmCipher:
    """The field cipher from ``environ``'s ``LIANXIN_DATA_*`` variables, else the node's own keyring in ``key_dir``.

    ``LIANXIN_DATA_KEYS`` (or the file named by ``LIANXIN_DATA_KEYS_FILE``) holds the keyring and
    ``LIANXIN_DATA_KEY_ID`` the current key (default: the last listed). ``LIANXIN_INDEX_KEY``
    (base64) is the blind-index key; without it one is derived from the first key of the ring so
    that it stays stable across rotations. Nothing set: the keyring generated into ``key_dir``
    (an embedded node's data directory), or a random key for this process when there is none.
    """
    env = environ or {}
    text = env.get("LIANXIN_DATA_KEYS", "")
    if not text and env.get("LIANXIN_DATA_KEYS_FILE"):
        text = Path(env["LIANXIN_DATA_KEYS_FILE"]).read_text("utf-8")
    legacy = env.get("LIANXIN_DATA_KEY")
    if legacy and not text:
        text = f"k1:{base64.b64encode(_derive(base64.b64decode(legacy), b'sm4-data', 16)).decode()}"
    if not text:
        text = node_keyring(key_dir) if key_dir is not None else _process_keyring()
    ring = parse_keyring(text)
    if not ring:
        raise ValueError("LIANXIN_DATA_KEYS is empty")
    key_id = env.get("LIANXIN_DATA_KEY_ID", list(ring)[-1])
    first = next(iter(ring.values()))
    if not sm4_available():
        master = base64.b64decode(legacy) if legacy else first
        return AesGcmCipher(
            key_id=key_id, data_key=_derive(master, b"data", 32), index_key=_derive(master, b"index", 32)
        )
    raw_index = env.get("LIANXIN_INDEX_KEY")
    index_key = base64.b64decode(raw_index) if raw_index else _derive(first, b"sm3-index", 32)
    return Sm4GcmCipher(key_id=key_id, keys=ring, index_key=index_key)


def new_data_key() -> str:
    """A fresh base64 SM4 key for ``LIANXIN_DATA_KEYS``."""
    return base64.b64encode(os.urandom(16)).decode()
