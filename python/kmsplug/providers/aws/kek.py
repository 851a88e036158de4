"""AWS KMS: a symmetric customer managed key (SYMMETRIC_DEFAULT) as the KEK.

Calls go through boto3's synchronous client (thread-safe, one connection pool sized to the
worker-thread limit) in worker threads. botocore's own retries are off: the resilience
layer adds the deadline, retries with jitter, quota and audit; this module only speaks KMS.

Credentials come from boto3's default chain, in this order: explicit AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) in the environment, web identity (IRSA:
AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE), the shared config and credentials files
(AWS_PROFILE, SSO, assume-role, credential_process), then the container (ECS / EKS Pod
Identity) and EC2 instance metadata endpoints. boto3 refreshes expiring credentials.

Wrapped blobs are b'1' + the raw CiphertextBlob, which is aws-encryption-provider's
format. kmsplug's direct mode frames that blob in kmsplug's format (mode 2, key_id
checked like every kmsplug ciphertext) and binds the key_id into the encryption context
(BOUND_KEY_ID), so a frame whose key_id was altered fails at KMS. `--compat aws` writes
the bare blob under aws-encryption-provider's key_id (its --key verbatim) instead, so a
rollback to it reads everything (with the same encryption context).

key_id is `aws:<key ARN>`, the ARN resolved by DescribeKey at preflight: AWS rotation is
transparent (the ciphertext names the backing key), so it never changes for a key.
Ciphertexts written by aws-encryption-provider (byte `1` + the raw CiphertextBlob, whose
v2 key_id is its --key string verbatim), and the same bare blobs older kmsplug releases
wrote in direct mode, are recognised and decrypted through KMS under any key_id.
"""

from __future__ import annotations

import importlib
import logging
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
from kmsplug.providers.aws.settings import AwsSettings
from kmsplug.providers.base import KekProvider, Secret
from kmsplug.providers.shared import WorkerThreads, env_value, note_call

log = logging.getLogger(__name__)

#: aws-encryption-provider's ciphertext: this version byte, then the raw CiphertextBlob.
LEGACY_PREFIX = b"1"
#: The encryption-context entry that binds a direct-mode frame's key_id to the blob.
BOUND_KEY_ID = "kmsplug-key-id"
_THROTTLED = {"ThrottlingException", "LimitExceededException", "RequestLimitExceeded"}
_STATE = {"DisabledException", "KMSInvalidStateException"}
_BAD_CIPHERTEXT = {"InvalidCiphertextException", "IncorrectKeyException"}
_TRANSIENT = {
    "KMSInternalException",
    "DependencyTimeoutException",
    "InternalFailureException",
    "ServiceUnavailableException",
    "ExpiredTokenException",  # boto3 refreshes the credential on the next attempt
}
_BAD_CREDENTIALS = {
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignature",
    "InvalidClientTokenId",
    "MissingAuthenticationToken",
}


def classify_error(exc: BaseException, settings: AwsSettings, operation: str) -> KmsplugError:
    """Turn a botocore failure into an error an operator can act on (no secrets in it).

    `operation` is the KMS action ("Encrypt", "Decrypt", "DescribeKey").
    """
    response = getattr(exc, "response", None)
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    meta = response.get("ResponseMetadata", {}) if isinstance(response, dict) else {}
    code = str(error.get("Code", "") or "")
    status = int(meta.get("HTTPStatusCode", 0) or 0)
    request_id = str(meta.get("RequestId", "") or "")
    note_call(request_id=request_id)
    where = f"(key {settings.key}, region {settings.region or '-'}, request {request_id or '-'})"
    decrypting = operation == "Decrypt"
    if not code:  # no answer from KMS: endpoint, connection, timeout, credentials lookup
        names = {cls.__name__ for cls in type(exc).__mro__}
        if names & {"NoCredentialsError", "PartialCredentialsError"}:
            return ProviderRefused(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE, IRSA (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE) or use an "
                f"instance/pod role {where}"
            )
        if "NoRegionError" in names:
            return ProviderRefused(f"no AWS region: set --aws-region (AWS_REGION) {where}")
        return ProviderTransient(f"AWS KMS {operation} failed: {type(exc).__name__} {where}")
    if code in _THROTTLED or status == 429:
        return ProviderThrottled(f"AWS KMS quota exceeded on {operation} {where}")
    if code == "AccessDeniedException":
        return ProviderRefused(
            f"AWS KMS denied {operation}: grant kms:Encrypt, kms:Decrypt and kms:DescribeKey "
            f"on the key to this identity (key policy or IAM policy) {where}"
        )
    if code in _BAD_CREDENTIALS:
        return ProviderRefused(f"AWS rejected the credentials ({code}): check them {where}")
    if code in _BAD_CIPHERTEXT or (decrypting and code == "ValidationException"):
        return InvalidCiphertext()
    if code in _TRANSIENT or code == "KeyUnavailableException" or status >= 500:
        return ProviderTransient(f"AWS KMS {operation} failed: {code} {where}")
    if code in _STATE:
        return KeyRevoked(f"key is disabled or pending deletion: enable it ({code}) {where}")
    if code == "NotFoundException":
        return ProviderRefused(f"key not found: check the key and the region {where}")
    if code == "InvalidKeyUsageException":
        return ProviderRefused(f"key usage must be ENCRYPT_DECRYPT {where}")
    return ProviderRefused(f"AWS KMS refused {operation}: {code} {where}")


def looks_like_legacy(ciphertext: bytes) -> bool:
    """aws-encryption-provider's ciphertext: b'1' + CiphertextBlob (kmsplug's starts 0xC9)."""
    return len(ciphertext) > 16 and ciphertext[:1] == LEGACY_PREFIX


class AwsKek(KekProvider):
    kind = "aws"

    def __init__(
        self,
        settings: AwsSettings,
        client: Any,
        *,
        thread_limit: int = 16,
        rebuild: Callable[[], Any] | None = None,
    ) -> None:
        if not settings.key:
            raise ConfigError(
                "aws: the key (KMSPLUG_AWS_KEY: key id, ARN or alias/...) is required"
            )
        self.settings = settings
        self._client = client
        self._rebuild = rebuild
        self._threads = WorkerThreads(thread_limit)
        self._context = dict(settings.encryption_context)
        self.key_arn = settings.key if settings.key.startswith("arn:") else ""

    # -- identity ----------------------------------------------------------------------

    @property
    def key_id(self) -> str:
        if self.settings.compat_aws:  # aws-encryption-provider's: its --key verbatim
            return self.settings.key
        return f"aws:{self.key_arn or self.settings.key}"

    def owns(self, key_id: str) -> bool:
        return key_id == self.key_id or key_id in (
            self.settings.key,
            *self.settings.legacy_key_ids,
        )

    def claims_legacy(self, ciphertext: bytes) -> bool:
        return looks_like_legacy(ciphertext)

    def legacy_ignores_key_id(self) -> bool:
        # aws-encryption-provider reports --key verbatim and ignores key_id on Decrypt.
        return True

    def binds_key_id(self) -> bool:
        return True

    def writes_peer_format(self) -> bool:
        return self.settings.compat_aws

    # -- KMS calls -----------------------------------------------------------------------

    async def _run(self, operation: str, call: Callable[[], Any]) -> dict[str, Any]:
        response = await self._threads.run(
            call, lambda exc: classify_error(exc, self.settings, operation)
        )
        if not isinstance(response, dict):
            raise ProviderTransient(f"AWS KMS {operation} returned no answer")
        meta = response.get("ResponseMetadata", {})
        note_call(request_id=str(meta.get("RequestId", "")))
        return response

    async def describe(self) -> dict[str, Any]:
        response = await self._run(
            "DescribeKey", lambda: self._client.describe_key(KeyId=self.settings.key)
        )
        meta = response.get("KeyMetadata")
        if not isinstance(meta, dict):
            raise ProviderTransient("AWS KMS DescribeKey returned no key metadata")
        return meta

    async def refresh(self) -> None:
        """Re-resolve the key (an alias may point elsewhere now: a new key, a new key_id)."""
        meta = await self.describe()
        self.key_arn = str(meta.get("Arn") or self.key_arn)

    def _target(self) -> str:
        return self.key_arn or self.settings.key

    async def wrap(self, plaintext: Secret) -> bytes:
        return await self._encrypt(plaintext, self._context)

    async def wrap_bound(self, plaintext: Secret, key_id: str) -> bytes:
        return await self._encrypt(plaintext, {**self._context, BOUND_KEY_ID: key_id})

    async def _encrypt(self, plaintext: Secret, context: Mapping[str, str]) -> bytes:
        # botocore takes the bytearray itself (no bytes copy of a local KEK here).
        args: dict[str, Any] = {"KeyId": self._target(), "Plaintext": plaintext}
        if context:
            args["EncryptionContext"] = dict(context)
        response = await self._run("Encrypt", lambda: self._client.encrypt(**args))
        blob = response.get("CiphertextBlob")
        if not isinstance(blob, bytes) or not blob:
            raise ProviderTransient("AWS KMS Encrypt returned no ciphertext")
        return LEGACY_PREFIX + blob

    async def _decrypt(
        self, blob: bytes, *, key: str | None, context: Mapping[str, str] | None = None
    ) -> bytes:
        if not blob:
            raise InvalidCiphertext
        args: dict[str, Any] = {"CiphertextBlob": blob}
        if key:
            args["KeyId"] = key
        context = self._context if context is None else context
        if context:
            args["EncryptionContext"] = dict(context)
        response = await self._run("Decrypt", lambda: self._client.decrypt(**args))
        plaintext = response.get("Plaintext")
        if not isinstance(plaintext, bytes):
            raise ProviderTransient("AWS KMS Decrypt returned no plaintext")
        return plaintext

    async def unwrap(self, wrapped: bytes) -> bytes:
        # KeyId pins the key: a blob of another key is InvalidCiphertext, not a success.
        if not looks_like_legacy(wrapped):
            raise InvalidCiphertext
        return await self._decrypt(wrapped[len(LEGACY_PREFIX) :], key=self._target())

    async def unwrap_bound(self, wrapped: bytes, key_id: str) -> bytes:
        if not looks_like_legacy(wrapped):
            raise InvalidCiphertext
        context = {**self._context, BOUND_KEY_ID: key_id}
        return await self._decrypt(
            wrapped[len(LEGACY_PREFIX) :], key=self._target(), context=context
        )

    async def unwrap_legacy(self, ciphertext: bytes) -> bytes:
        """Decrypt what aws-encryption-provider stored: b'1' + CiphertextBlob, same context.

        No KeyId: its blobs may come from an earlier --key; the blob names its key.
        """
        if not looks_like_legacy(ciphertext):
            raise InvalidCiphertext
        return await self._decrypt(ciphertext[len(LEGACY_PREFIX) :], key=None)

    async def reload_credentials(self) -> None:
        """A new client: the credential chain (files, web identity, metadata) runs again."""
        if self._rebuild is not None:
            self._client = await self._threads.run(self._rebuild)

    async def preflight(self) -> list[str]:
        """Check the key before serving; raise ProviderRefused with what to fix."""
        meta = await self.describe()
        state = meta.get("KeyState", "Enabled" if meta.get("Enabled") else "Disabled")
        usage = meta.get("KeyUsage", "")
        spec = meta.get("KeySpec") or meta.get("CustomerMasterKeySpec") or ""
        problems = []
        if state != "Enabled" or meta.get("Enabled") is False:
            problems.append(f"key state is {state}, must be Enabled")
        if usage != "ENCRYPT_DECRYPT":
            problems.append(f"key usage is {usage}, must be ENCRYPT_DECRYPT")
        if spec != "SYMMETRIC_DEFAULT":
            problems.append(f"key spec is {spec}, must be SYMMETRIC_DEFAULT")
        if problems:
            raise ProviderRefused(f"aws key {self.settings.key}: " + "; ".join(problems))
        self.key_arn = str(meta.get("Arn") or self.key_arn)
        await self.health()
        return [f"key {self.key_arn} ({spec}, {meta.get('KeyManager', '?')}) is usable"]

    async def aclose(self) -> None:
        close = getattr(self._client, "close", None)
        if close is not None:
            await self._threads.run(close)


def make_client(settings: AwsSettings, env: Mapping[str, str], *, pool_size: int = 16) -> Any:
    """A boto3 KMS client: default credential chain, no botocore retries, pool = threads."""
    boto3 = importlib.import_module("boto3")
    botocore_config = importlib.import_module("botocore.config")
    # Keys given in `env` win; otherwise boto3's chain (which also reads os.environ).
    session = boto3.session.Session(
        aws_access_key_id=env_value(env, "AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env_value(env, "AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=env_value(env, "AWS_SESSION_TOKEN") or None,
        profile_name=env_value(env, "AWS_PROFILE") or None,
    )
    config = botocore_config.Config(
        region_name=settings.region or None,
        connect_timeout=settings.timeout,
        read_timeout=settings.timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=pool_size,
        user_agent_extra="kmsplug",
    )
    try:
        return session.client("kms", endpoint_url=settings.endpoint_url or None, config=config)
    except Exception as exc:
        if type(exc).__name__ == "NoRegionError":
            raise ConfigError("aws: set --aws-region (AWS_REGION)") from None
        if type(exc).__name__ == "ProfileNotFound":
            raise ConfigError("aws: the AWS_PROFILE named is not in the AWS config") from None
        raise ConfigError(f"aws: cannot create the KMS client: {type(exc).__name__}") from None


def build(settings: AwsSettings, env: Mapping[str, str]) -> AwsKek:
    """The AWS KMS provider.

    Static keys in `env` (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN)
    or AWS_PROFILE are used if set; otherwise boto3's default credential chain.
    """
    threads = 16
    client = make_client(settings, env, pool_size=threads)
    kek = AwsKek(
        settings,
        client,
        thread_limit=threads,
        rebuild=lambda: make_client(settings, env, pool_size=threads),
    )
    where = settings.endpoint_url or f"region {client.meta.region_name}"
    log.info("aws kms: key %s on %s", settings.key, where)
    return kek
