"""Who wrote a DHT record: peers' keys, and records only their owner can write.

Every corolla peer that announces anything has a libp2p identity (a private key; its peer id is
the multihash of the public key). A record is stored with the writer's peer id as its subkey and
a signature by that peer's key over the key, subkey, value and expiration time; every node checks
it (:class:`SignedRecordValidator`) when asked to store a record and when a record comes back from
a lookup, so no peer can forge, overwrite or delete another peer's records (overwriting a subkey
takes a newer record, which takes the owner's key), nor keep one alive past
:data:`MAX_RECORD_TTL_S`. Unsigned records are refused: a corolla DHT holds nothing else.

The public key travels with the signature (Ed25519: 36 bytes; the peer id, an identity multihash,
holds it too; RSA identities made by ``hivemind``'s ``P2P.generate_identity`` work as well), and
the validator checks that it hashes to the peer id in the subkey.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
from pathlib import Path

import base58
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from hivemind.dht.protocol import DHTProtocol
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.proto import crypto_pb2
from hivemind.utils import get_dht_time
from hivemind.utils.serializer import MSGPackSerializer

MAX_RECORD_TTL_S = 600.0  # a record may not claim to live longer than this from now (servers re-announce every few s)
CLOCK_SLACK_S = 30.0  # peers' clocks may disagree this much
_ENVELOPE = re.compile(rb"\[corolla-sig:([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)\]\Z")
_MAX_IDENTITY_MULTIHASH = 42  # libp2p: public keys up to this size are inlined in the peer id


class Identity:
    """A peer's private key (Ed25519 or RSA, as libp2p stores it) and its peer id."""

    def __init__(self, key_type: int, private_key):
        self.key_type, self._key = key_type, private_key
        if key_type == crypto_pb2.KeyType.Ed25519:
            raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            raw = private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public_key = crypto_pb2.PublicKey(key_type=key_type, data=raw).SerializeToString()
        self.peer_id = peer_id_of(self.public_key)

    @classmethod
    def generate(cls) -> Identity:
        return cls(crypto_pb2.KeyType.Ed25519, ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | Path) -> Identity:
        """A libp2p private key file (what p2pd's ``-id`` reads)."""
        proto = crypto_pb2.PrivateKey.FromString(Path(path).read_bytes())
        try:
            return cls.from_private_bytes(proto.key_type, proto.data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def save(self, path: str | Path) -> None:
        """Write the key as libp2p does (readable by p2pd), owner-only."""
        data = self._private_bytes()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(crypto_pb2.PrivateKey(key_type=self.key_type, data=data).SerializeToString())

    def sign(self, data: bytes) -> bytes:
        if self.key_type == crypto_pb2.KeyType.Ed25519:
            return self._key.sign(data)
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def _private_bytes(self) -> bytes:
        if self.key_type == crypto_pb2.KeyType.Ed25519:
            seed = self._key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                           serialization.NoEncryption())
            return seed + crypto_pb2.PublicKey.FromString(self.public_key).data
        return self._key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption())

    @classmethod
    def from_private_bytes(cls, key_type: int, data: bytes) -> Identity:
        if key_type == crypto_pb2.KeyType.Ed25519:
            return cls(key_type, ed25519.Ed25519PrivateKey.from_private_bytes(data[:32]))
        if key_type == crypto_pb2.KeyType.RSA:
            return cls(key_type, serialization.load_der_private_key(data, password=None))
        raise ValueError(f"unsupported key type {key_type} (Ed25519 and RSA are)")

    def __reduce__(self):  # only ever between this machine's processes (hivemind's DHT child)
        return Identity.from_private_bytes, (self.key_type, self._private_bytes())


def load_or_create_identity(path: str | None) -> tuple[Identity, str, bool]:
    """The identity in ``path`` (created there if the file does not exist), or a new one in a
    private temporary file; returns it, its file (for p2pd) and whether that file is temporary."""
    if path is not None:
        if not os.path.exists(path):
            Identity.generate().save(path)
        return Identity.load(path), path, False
    folder = tempfile.mkdtemp(prefix="corolla-identity-")
    file = os.path.join(folder, "identity.key")
    identity = Identity.generate()
    identity.save(file)
    return identity, file, True


def peer_id_of(public_key: bytes) -> str:
    """The libp2p peer id (base58) of a protobuf-encoded public key."""
    if len(public_key) <= _MAX_IDENTITY_MULTIHASH:
        multihash = bytes([0x00, len(public_key)]) + public_key
    else:
        multihash = bytes([0x12, 32]) + hashlib.sha256(public_key).digest()
    return base58.b58encode(multihash).decode()


def verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s (protobuf-encoded, Ed25519 or RSA) over ``data``."""
    try:
        proto = crypto_pb2.PublicKey.FromString(public_key)
        if proto.key_type == crypto_pb2.KeyType.Ed25519:
            ed25519.Ed25519PublicKey.from_public_bytes(proto.data).verify(signature, data)
            return True
        if proto.key_type == crypto_pb2.KeyType.RSA:
            key = serialization.load_der_public_key(proto.data)
            if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
                return False
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            return True
    except Exception:  # InvalidSignature, a malformed key or protobuf: not valid
        return False
    return False


def signed_payload(record: DHTRecord, value: bytes) -> bytes:
    """What a record's signature covers: key, subkey, value (unsigned) and expiration time, so a
    signature cannot be moved to another key or owner, nor make a record live longer."""
    return MSGPackSerializer.dumps((b"corolla-record-v1", record.key, record.subkey, value, record.expiration_time))


class SignedRecordValidator(RecordValidatorBase):
    """Only a record signed by the peer named in its subkey is valid (see the module's doc);
    with an ``identity``, this node signs the records it stores under its own peer id."""

    def __init__(self, identity: Identity | None = None, max_ttl_s: float = MAX_RECORD_TTL_S):
        super().__init__()
        self._identity, self.max_ttl_s = identity, max_ttl_s
        self._own_subkey = MSGPackSerializer.dumps(identity.peer_id) if identity is not None else None

    def validate(self, record: DHTRecord) -> bool:
        if record.subkey in DHTProtocol.RESERVED_SUBKEYS:
            return False  # every record names its owner
        if record.expiration_time > get_dht_time() + self.max_ttl_s + CLOCK_SLACK_S:
            return False
        match = _ENVELOPE.search(record.value)
        if match is None:
            return False
        try:
            owner = MSGPackSerializer.loads(record.subkey)
            public_key, signature = base64.b64decode(match[1]), base64.b64decode(match[2])
        except Exception:
            return False
        if not isinstance(owner, str) or peer_id_of(public_key) != owner:
            return False
        return verify(public_key, signed_payload(record, record.value[: match.start()]), signature)

    def sign_value(self, record: DHTRecord) -> bytes:
        if self._identity is None or record.subkey != self._own_subkey:
            return record.value  # not ours to sign: every node will refuse it
        signature = self._identity.sign(signed_payload(record, record.value))
        return record.value + b"[corolla-sig:%s:%s]" % (base64.b64encode(self._identity.public_key),
                                                       base64.b64encode(signature))

    def strip_value(self, record: DHTRecord) -> bytes:
        match = _ENVELOPE.search(record.value)
        return record.value[: match.start()] if match else record.value

    @property
    def priority(self) -> int:
        return 10  # checked (and stripped) before the validators that parse the value
