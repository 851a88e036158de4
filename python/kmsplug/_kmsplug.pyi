"""The Rust core of kmsplug (crate ``kmsplug-py`` over ``kmsplug-core``).

AES-256-GCM, the ciphertext format v1 (``rust/kmsplug-core/FORMAT.md``), the local root
key file and the local-KEK keyring. Key material never comes back to Python: there are no
getters for it, reprs never show it, and the classes that hold it cannot be pickled.

Byte inputs accept ``bytes`` or ``bytearray``. Errors are the classes of
``kmsplug.errors``: ``InvalidCiphertext`` (anything malformed, tampered or foreign,
deliberately detail-free), ``UnknownKeyId``, ``KekNotCached``, ``PlaintextTooLarge``,
``NeedsRotation`` (``SealBudgetSpent`` for the root key), ``KeyFileError``; an argument
out of range raises ``ValueError``.
"""

from os import PathLike
from typing import Final, final

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_CACHE_TTL_SECONDS",
    "DEFAULT_MAX_AGE_SECONDS",
    "DEFAULT_MAX_SEALS",
    "DEFAULT_ROTATE_AFTER_SEALS",
    "FORMAT_VERSION",
    "MAX_ANNOTATIONS_BYTES",
    "MAX_KEY_ID",
    "MAX_PLAINTEXT",
    "MAX_SEALS_LIMIT",
    "MODE_DIRECT",
    "MODE_HIERARCHY",
    "V1_MAX_CIPHERTEXT",
    "V2_MAX_CIPHERTEXT",
    "Keyring",
    "RootKey",
    "__version__",
    "build_profile",
    "frame_direct",
    "is_fqdn",
    "peek",
    "random_key",
]

__version__: Final[str]
"""The version of the Rust crates (Cargo ``version``)."""

build_profile: Final[str]
"""``"release"`` or ``"debug"``: how the extension was compiled."""

V2_MAX_CIPHERTEXT: Final[int]
"""KMS v2: the largest ``EncryptResponse.ciphertext`` the apiserver accepts (1024)."""

V1_MAX_CIPHERTEXT: Final[int]
"""KMS v1: the largest ciphertext the apiserver accepts (65535)."""

MAX_KEY_ID: Final[int]
"""KMS v2: the largest ``key_id`` in bytes the apiserver accepts (1024)."""

MAX_ANNOTATIONS_BYTES: Final[int]
"""KMS v2: the largest sum of ``len(key) + len(value)`` over all annotations (32768)."""

MAX_PLAINTEXT: Final[int]
"""The largest plaintext (DEK or seed) kmsplug seals (512); larger is PlaintextTooLarge."""

FORMAT_VERSION: Final[int]
"""The ciphertext format version written and read (1)."""

MODE_HIERARCHY: Final[int]
"""``peek``'s mode of an envelope whose DEK a local KEK sealed (1)."""

MODE_DIRECT: Final[int]
"""``peek``'s mode of an envelope whose DEK the provider wrapped itself (2)."""

DEFAULT_ROTATE_AFTER_SEALS: Final[int]
"""The rotation policy's default soft seal budget of a local KEK."""

DEFAULT_MAX_SEALS: Final[int]
"""The rotation policy's default hard seal budget of a local KEK."""

DEFAULT_MAX_AGE_SECONDS: Final[float]
"""The rotation policy's default soft age limit of a local KEK (sealing stops at twice)."""

DEFAULT_CACHE_SIZE: Final[int]
"""The default number of non-current local KEKs kept unwrapped."""

DEFAULT_CACHE_TTL_SECONDS: Final[float]
"""The default life of a cached local KEK."""

MAX_SEALS_LIMIT: Final[int]
"""The largest ``max_seals`` allowed: random 96-bit nonces, at most 2**32 seals per key."""

def peek(ciphertext: bytes | bytearray) -> tuple[int, str, bytes]:
    """Parse a ciphertext's header, for routing: ``(mode, key_id, wrapped)``.

    ``mode`` is ``MODE_HIERARCHY`` (``wrapped`` is the wrapped local KEK) or
    ``MODE_DIRECT`` (``wrapped`` is the provider's wrapped DEK). The whole structure is
    validated, so a successful peek means a well-formed envelope; nothing is decrypted.

    Raises:
        InvalidCiphertext: the bytes are not a kmsplug format-v1 envelope.
    """

def frame_direct(key_id: str, wrapped: bytes | bytearray) -> bytes:
    """A mode-2 envelope around a remote provider's wrapped DEK (kmsplug's direct mode):
    the provider's blob, framed with ``key_id`` so the key_id is read and checked as in
    every kmsplug ciphertext.

    Raises:
        ValueError: ``key_id`` is not 1..255 bytes or ``wrapped`` not 1..1024 bytes.
    """

def random_key() -> bytearray:
    """32 random bytes from the OS CSPRNG, as the only Python copy (a ``bytearray`` the
    caller wipes); no immutable ``bytes`` of them is made."""

def is_fqdn(name: str) -> bool:
    """Whether ``name`` passes Kubernetes' ``IsFullyQualifiedDomainName``.

    That is the check on KMS v2 annotation keys: lowercase RFC 1123 labels joined by
    ``.``, at least two labels, each at most 63 characters, at most 253 in all; one
    trailing ``.`` is allowed and ignored.
    """

@final
class RootKey:
    """The local root key: 32 random bytes in a key file, used only inside Rust.

    It wraps local KEKs (hierarchy mode, through ``Keyring.rotate_local`` and
    ``Keyring.unwrap_local``) and seals DEKs itself (direct mode).
    """

    @staticmethod
    def from_file(path: str | PathLike[str]) -> RootKey:
        """Read a key file.

        Raises:
            KeyFileError: the file is missing or unreadable, is a symbolic link or not a
                regular file (a FIFO or device is refused at once, never waited on), is
                owned by a user other than the one kmsplug runs as or root, does not hold
                exactly 32 raw bytes, or is accessible to group or others
                (mode & 0o077 != 0). The message names the path, never the content.
        """

    @staticmethod
    def create_file(path: str | PathLike[str]) -> RootKey:
        """Create a key file of 32 random bytes with mode 0600, fsync it, and return it.

        Raises:
            KeyFileError: the path exists (it is never overwritten) or cannot be written.
        """

    @property
    def key_id(self) -> str:
        """``"local-"`` + 32 hex digits derived from the key: public, new for every key."""

    @property
    def seals(self) -> int:
        """Seals made under this key by this process: direct-mode DEKs (health probes
        included) and local KEKs (hierarchy mode)."""

    @property
    def max_seals(self) -> int:
        """The seal budget (default ``DEFAULT_MAX_SEALS``); past it sealing fails."""

    def set_max_seals(self, max_seals: int) -> None:
        """Set the seal budget. Raises ValueError unless 1 <= max_seals <= 2**32."""

    def seal_direct(self, plaintext: bytes | bytearray) -> bytes:
        """Seal a DEK under the root key itself: a mode-2 envelope, self-describing.

        Raises:
            SealBudgetSpent: ``max_seals`` seals were made (opening goes on).
            PlaintextTooLarge: more than ``MAX_PLAINTEXT`` bytes.
            ValueError: the plaintext is empty.
        """

    def open_direct(self, ciphertext: bytes | bytearray) -> bytes:
        """Open what ``seal_direct`` made.

        Raises:
            InvalidCiphertext: malformed, tampered, or not a mode-2 envelope.
            UnknownKeyId: the envelope names another key.
        """

@final
class Keyring:
    """The local-KEK hierarchy: one current local KEK seals DEKs; retired KEKs and KEKs
    loaded from a provider wait in a bounded cache (least recently used evicted first,
    entries expire ``cache_ttl_seconds`` after they were cached) to open what they sealed.

    Thread-safe: every call takes one short lock. Sealing needs a current KEK: call
    ``rotate_local`` or ``install_current`` first.

    Rotation policy: past ``rotate_after_seals`` seals or ``max_age_seconds``,
    ``needs_rotation()`` is true and the KEK still seals; at ``max_seals`` seals, or at
    twice ``max_age_seconds``, sealing raises ``NeedsRotation``.
    """

    def __new__(
        cls,
        *,
        rotate_after_seals: int = ...,
        max_seals: int = ...,
        max_age_seconds: float = ...,
        cache_size: int = ...,
        cache_ttl_seconds: float = ...,
    ) -> Keyring:
        """Make an empty keyring; a policy argument left out takes its ``DEFAULT_*`` value.

        Raises:
            ValueError: ``rotate_after_seals`` < 1, ``max_seals`` < ``rotate_after_seals``
                or > 2**32, ``cache_size`` < 1, or a duration that is not > 0.
        """

    @property
    def current_key_id(self) -> str | None:
        """The key_id stamped on what ``seal`` returns now, or None before the first KEK."""

    def set_policy(
        self,
        *,
        rotate_after_seals: int,
        max_seals: int,
        max_age_seconds: float,
        cache_size: int,
        cache_ttl_seconds: float,
    ) -> None:
        """Replace the rotation policy and cache limits (a reload, e.g. on SIGHUP).

        Budgets and ages apply from the next seal; a smaller cache evicts, and so wipes,
        its least recently used KEKs at once. Raises ValueError for an invalid policy.
        """
    def rotate_local(self, root: RootKey) -> None:
        """Make a fresh random local KEK, wrapped by ``root``, current (all in Rust).

        The wrap is one of ``root``'s seals: SealBudgetSpent once its budget is spent.

        The previous current KEK moves into the cache, so what it sealed keeps opening.
        """

    def install_current(self, key_id: str, wrapped: bytes | bytearray, kek: bytearray) -> None:
        """Make a local KEK that a remote provider wrapped current.

        ``key_id`` names the provider key (1..255 bytes), ``wrapped`` is the provider's
        output (1..1024 bytes), ``kek`` the 32 plaintext bytes. ``kek`` is zeroed in place
        after it is copied, whether or not the call succeeds.

        Raises:
            ValueError: an argument is out of range.
            TypeError: ``kek`` is not a ``bytearray``.
        """

    def cache_kek(self, key_id: str, wrapped: bytes | bytearray, kek: bytearray) -> None:
        """Cache a local KEK that a remote provider unwrapped (after ``KekNotCached``).

        Same arguments and zeroing of ``kek`` as ``install_current``.
        """

    def seal(self, plaintext: bytes | bytearray) -> bytes:
        """Seal a DEK under the current local KEK (a mode-1 envelope).

        Raises:
            NeedsRotation: no current KEK, or its hard seal budget or age is spent.
            PlaintextTooLarge: more than ``MAX_PLAINTEXT`` bytes.
            ValueError: the plaintext is empty.
        """

    def open(self, ciphertext: bytes | bytearray, expected_key_id: str | None = None) -> bytes:
        """Open a mode-1 envelope with the current or a cached KEK.

        Raises:
            InvalidCiphertext: malformed, tampered, foreign, or a mode-2 envelope.
            UnknownKeyId: ``expected_key_id`` is given and differs from the envelope's.
            KekNotCached: the KEK is not loaded; load it (``unwrap_local`` or
                ``cache_kek``) and retry.
        """

    def unwrap_local(self, root: RootKey, ciphertext: bytes | bytearray) -> None:
        """Unwrap with ``root`` the local KEK that ``ciphertext`` names, and cache it.

        Raises:
            UnknownKeyId: another key wrapped that KEK.
            InvalidCiphertext: malformed, a mode-2 envelope, or the KEK does not unwrap.
        """

    def needs_rotation(self) -> bool:
        """True when there is no current KEK or its soft seal budget or age is reached."""

    def stats(self) -> dict[str, int]:
        """Counters for metrics.

        Keys: ``seals`` (on the current KEK), ``cache_len`` (non-current KEKs cached),
        ``cache_hits`` (opens that found their KEK), ``cache_misses`` (``KekNotCached``
        answers), ``rotations`` (KEKs made current), ``current_age_seconds``.
        """

    def seal_batch(self, plaintexts: list[bytes]) -> list[bytes]:
        """Seal many DEKs under one lock and one budget check: all are sealed or none.

        Raises the errors of ``seal``; the GIL is released for batches of more than 64.
        """

    def open_batch(
        self,
        ciphertexts: list[bytes],
        expected_key_ids: list[str | None] | None = None,
    ) -> list[bytes | Exception]:
        """Open many ciphertexts under one lock.

        Each item is its plaintext or the exception ``open`` would have raised (returned,
        not raised). The GIL is released for batches of more than 64.

        Raises:
            ValueError: ``expected_key_ids`` is not as long as ``ciphertexts``.
        """
