"""Alibaba Cloud KMS: a customer master key (CMK, Aliyun_AES_256 by default) as the KEK.

Calls go through the official SDK's synchronous client, which keeps its HTTP connections
alive (its async path opens a session per request), in worker threads. The resilience
layer adds the deadline, retries, quota and audit; this module only speaks KMS.

key_id is `alibaba:<CMK KeyId>:<KeyVersionId>`: a CMK rotation gives a new primary key
version, so a new key_id, never a reused one. Ciphertexts written by ack-kms-plugin (the
bare base64 CiphertextBlob, v1 and v2), and the same bare blobs older kmsplug releases
wrote in direct mode, are recognised and decrypted through KMS as-is, under any key_id.
kmsplug's direct mode now frames the blob in kmsplug's format (mode 2) and binds the
frame's key_id into the EncryptionContext (BOUND_KEY_ID); only `--compat ack` writes the
bare blob.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from kmsplug.errors import (
    ConfigError,
    InvalidCiphertext,
    KeyRevoked,
    KmsplugError,
    ProviderRefused,
    ProviderThrottled,
    ProviderTransient,
)
from kmsplug.providers.alibaba.credentials import credential_source, kms_client
from kmsplug.providers.alibaba.settings import AlibabaSettings
from kmsplug.providers.base import KekProvider, Secret
from kmsplug.providers.shared import WorkerThreads, note_call

log = logging.getLogger(__name__)

_BASE64_TEXT = re.compile(rb"^[A-Za-z0-9+/]+={0,2}$")
_KEY_VERSION_ID = re.compile(r"[A-Za-z0-9-]{1,64}")  # a KeyVersionId (UUID) or "unknown"
#: The EncryptionContext entry that binds a direct-mode frame's key_id to the blob.
BOUND_KEY_ID = "kmsplug-key-id"


def _describe(exc: Exception) -> tuple[str, int, str]:
    """(code, HTTP status, request id) of an SDK exception, without its message text."""
    code = str(getattr(exc, "code", "") or "")
    status = int(getattr(exc, "status_code", 0) or 0)
    request_id = str(getattr(exc, "request_id", "") or "")
    return code, status, request_id


def _no_answer(exc: Exception) -> str:
    """How a call that got no KMS answer failed, told by exception types only: an SDK's
    message can carry the request URL, whose query string holds the plaintext."""
    names: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(names) < 8:  # the SDK wraps the transport's error
        names.append(type(cause).__name__)
        cause = getattr(cause, "inner_exception", None) or cause.__cause__ or cause.__context__
    timeouts = [name for name in names if "timeout" in name.lower()]
    if timeouts:
        return f"KMS did not answer in time ({timeouts[-1]})"
    unreachable = [name for name in names if "connect" in name.lower()]
    if unreachable:
        return f"KMS could not be reached ({unreachable[-1]})"
    return f"KMS call failed ({names[-1]})"


def classify_error(
    exc: Exception, settings: AlibabaSettings, *, decrypting: bool = False
) -> KmsplugError:
    """Turn an SDK failure into an error an operator can act on.

    When decrypting, a malformed-parameter answer means the blob is not a valid
    CiphertextBlob: the caller sent garbage, which is not the KMS's fault.
    """
    code, status, request_id = _describe(exc)
    note_call(request_id=request_id)
    where = f"(KMS {settings.host}, key {settings.key}, request {request_id or '-'})"
    if code.startswith("Rejected.Throttling") or status == 429:
        return ProviderThrottled(f"KMS quota exceeded {where}")
    if code.startswith(("Forbidden.RAM", "Forbidden.NoPermission")) or code == "Forbidden":
        return ProviderRefused(
            f"the RAM identity may not use this key: grant kms:Encrypt, kms:Decrypt and "
            f"kms:DescribeKey (e.g. AliyunKMSCryptoUserAccess) {where}"
        )
    if code.startswith(("Forbidden.KeyNotFound", "EntityNotExist")):
        return ProviderRefused(f"key not found: check --key-id and the region {where}")
    if "KeyState" in code or "Disabled" in code or "PendingDeletion" in code:
        return KeyRevoked(f"key is disabled or pending deletion: re-enable it {where}")
    if code.startswith(("InvalidAccessKeyId", "SignatureDoesNotMatch", "IncompleteSignature")):
        return ProviderRefused(f"credentials rejected: check the AccessKey {where}")
    if code.startswith("InvalidSecurityToken"):
        return ProviderTransient(f"STS token rejected; refreshing credentials {where}")
    if code.startswith(("InvalidCiphertext", "Rejected.ValueError")) or (
        code.startswith("InvalidParameter") and (decrypting or "Ciphertext" in code)
    ):
        return InvalidCiphertext()
    if not code and not status:
        return ProviderTransient(f"{_no_answer(exc)} {where}")
    if status >= 500 or not code:
        return ProviderTransient(f"KMS call failed: {code or status} {where}")
    return ProviderRefused(f"KMS refused the call: {code} {where}")


def looks_like_ack_ciphertext(ciphertext: bytes) -> bool:
    """ack-kms-plugin's ciphertext: the base64 text of an Alibaba CiphertextBlob."""
    return len(ciphertext) >= 24 and bool(_BASE64_TEXT.match(ciphertext))


class AlibabaKek(KekProvider):
    kind = "alibaba"

    def __init__(
        self,
        settings: AlibabaSettings,
        client: Any,
        *,
        thread_limit: int = 16,
        rebuild: Callable[[], Any] | None = None,
    ) -> None:
        if not settings.key:
            raise ConfigError("alibaba: --key-id (CMK id or alias) is required")
        if not settings.region and not settings.endpoint:
            raise ConfigError("alibaba: the region is required (--region or ACK_KMS_REGION_ID)")
        self.settings = settings
        self._client = client
        self._rebuild = rebuild
        self._threads = WorkerThreads(thread_limit)
        self.cmk_id = settings.key  # the real KeyId once DescribeKey answered
        self.key_version = ""
        # ack-kms-plugin sends no EncryptionContext; a rollback to it must decrypt our output.
        self._context = {} if settings.compat_ack else dict(settings.encryption_context)

    # -- identity ----------------------------------------------------------------------

    @property
    def key_id(self) -> str:
        if self.settings.compat_ack:
            return self.settings.key
        return f"alibaba:{self.cmk_id}:{self.key_version or 'unknown'}"

    def owns(self, key_id: str) -> bool:
        # A KeyVersionId (a UUID) or "unknown" after our prefix: a stray suffix is a
        # key_id we never issued.
        version = key_id.removeprefix(f"alibaba:{self.cmk_id}:")
        return (version != key_id and bool(_KEY_VERSION_ID.fullmatch(version))) or key_id in (
            self.settings.key,
            *self.settings.legacy_key_ids,
        )

    def claims_legacy(self, ciphertext: bytes) -> bool:
        return looks_like_ack_ciphertext(ciphertext)

    def legacy_ignores_key_id(self) -> bool:
        # ack reports --key-id verbatim as key_id and ignores it on Decrypt; a cluster whose
        # --key-id changed (a CMK id, later an alias) stores objects under each string.
        return True

    def binds_key_id(self) -> bool:
        return True

    def writes_peer_format(self) -> bool:
        return self.settings.compat_ack

    # -- KMS calls -----------------------------------------------------------------------

    async def _run(self, call: Callable[[], Any], *, decrypting: bool = False) -> Any:
        return await self._threads.run(
            call, lambda exc: classify_error(exc, self.settings, decrypting=decrypting)
        )

    def _runtime(self) -> Any:
        from darabonba.runtime import RuntimeOptions

        return RuntimeOptions(
            connect_timeout=self.settings.timeout_ms,
            read_timeout=self.settings.timeout_ms,
            autoretry=False,  # the resilience layer retries, with jitter and a deadline
        )

    async def describe(self) -> dict[str, Any]:
        from alibabacloud_kms20160120 import models

        request = models.DescribeKeyRequest(key_id=self.settings.key)
        response = await self._run(
            lambda: self._client.describe_key_with_options(request, self._runtime())
        )
        note_call(request_id=response.body.request_id)
        meta = response.body.key_metadata
        return {
            "KeyId": meta.key_id,
            "KeyState": meta.key_state,
            "KeyUsage": meta.key_usage,
            "KeySpec": meta.key_spec,
            "PrimaryKeyVersion": meta.primary_key_version,
        }

    async def reload_credentials(self) -> None:
        """A new SDK client with a new credential chain: files, URIs and metadata re-read."""
        if self._rebuild is not None:
            self._client = await self._threads.run(self._rebuild)

    async def refresh(self) -> None:
        """Read the CMK's primary version; a rotation in KMS changes our key_id."""
        meta = await self.describe()
        self.cmk_id = meta["KeyId"] or self.cmk_id
        self.key_version = meta["PrimaryKeyVersion"] or self.key_version

    async def wrap(self, plaintext: Secret) -> bytes:
        return await self._encrypt(plaintext, self._context)

    async def wrap_bound(self, plaintext: Secret, key_id: str) -> bytes:
        return await self._encrypt(plaintext, {**self._context, BOUND_KEY_ID: key_id})

    async def _encrypt(self, plaintext: Secret, context: dict[str, str]) -> bytes:
        from alibabacloud_kms20160120 import models

        request = models.EncryptRequest(
            key_id=self.settings.key,
            # The SDK takes text: this base64 str is a copy no one can wipe (security.md).
            plaintext=base64.b64encode(plaintext).decode(),
            encryption_context=context or None,
        )
        response = await self._run(
            lambda: self._client.encrypt_with_options(request, self._runtime())
        )
        body = response.body
        note_call(request_id=body.request_id, key_version=body.key_version_id)
        if not body.ciphertext_blob:
            raise ProviderTransient("KMS Encrypt returned no ciphertext")
        if body.key_version_id and body.key_version_id != self.key_version:
            # Encrypt always uses the primary version: it moved since we last looked.
            self.key_version = body.key_version_id
        return str(body.ciphertext_blob).encode()

    async def unwrap(self, wrapped: bytes) -> bytes:
        return await self._decrypt(wrapped, self._context)

    async def unwrap_bound(self, wrapped: bytes, key_id: str) -> bytes:
        return await self._decrypt(wrapped, {**self._context, BOUND_KEY_ID: key_id})

    async def _decrypt(self, wrapped: bytes, context: dict[str, str]) -> bytes:
        from alibabacloud_kms20160120 import models

        try:
            blob = wrapped.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidCiphertext from None
        request = models.DecryptRequest(ciphertext_blob=blob, encryption_context=context or None)
        response = await self._run(
            lambda: self._client.decrypt_with_options(request, self._runtime()), decrypting=True
        )
        body = response.body
        note_call(request_id=body.request_id, key_version=body.key_version_id)
        try:
            return base64.b64decode(body.plaintext, validate=True)
        except (binascii.Error, TypeError):
            raise ProviderTransient("KMS Decrypt returned malformed plaintext") from None

    async def unwrap_legacy(self, ciphertext: bytes) -> bytes:
        """Decrypt a bare CiphertextBlob: ack-kms-plugin's (no context), or an older
        kmsplug's from direct mode (our context): nothing in the blob tells the two apart."""
        if self._context:
            try:
                return await self.unwrap(ciphertext)
            except InvalidCiphertext:
                pass  # not ours: ack-kms-plugin's, without a context
        return await self._decrypt(ciphertext, {})

    async def preflight(self) -> list[str]:
        """Check the key before serving; raise ProviderRefused with what to fix."""
        meta = await self.describe()
        problems = []
        if meta["KeyState"] != "Enabled":
            problems.append(f"key state is {meta['KeyState']}, must be Enabled")
        if meta["KeyUsage"] != "ENCRYPT/DECRYPT":
            problems.append(f"key usage is {meta['KeyUsage']}, must be ENCRYPT/DECRYPT")
        if meta["KeySpec"] not in self.settings.allowed_specs:
            problems.append(
                f"key spec is {meta['KeySpec']}, allowed: {', '.join(self.settings.allowed_specs)}"
                " (--alibaba-allow-spec to accept it)"
            )
        if problems:
            raise ProviderRefused(f"alibaba key {self.settings.key}: " + "; ".join(problems))
        self.cmk_id = meta["KeyId"] or self.cmk_id
        self.key_version = meta["PrimaryKeyVersion"] or ""
        await self.health()
        return [f"key {self.cmk_id} version {self.key_version} ({meta['KeySpec']}) is usable"]


def build(settings: AlibabaSettings, env: Mapping[str, str]) -> AlibabaKek:
    """The Alibaba KMS provider, credentials from `env` (see the credentials module)."""
    source = credential_source(env)
    log.info("alibaba credentials: %s", source.describe())

    def client() -> Any:
        return kms_client(
            credential_source(env),
            host=settings.host,
            region=settings.region,
            protocol=settings.protocol,
            timeout_ms=settings.timeout_ms,
        )

    return AlibabaKek(settings, client(), rebuild=client)
