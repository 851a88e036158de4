"""Coverage-guided fuzzing (atheris) of the Python decrypt path, Rust core included.

Every input goes through Envelope.open, as v1 (no key_id) and as v2 (with the real key_id).
Allowed outcomes: the exact plaintext of a ciphertext this root key sealed, or
InvalidCiphertext / UnknownKeyId. Anything else (another exception, a crash, a plaintext
this key never sealed) is a finding. The root key is fixed so the checked-in corpus
stays meaningful.

  python tests/fuzz/fuzz_decrypt.py tests/fuzz/corpus -runs=20000     # bounded (make test)
  python tests/fuzz/fuzz_decrypt.py tests/fuzz/corpus -max_total_time=600   # make fuzz
  python tests/fuzz/fuzz_decrypt.py --write-seeds tests/fuzz/corpus   # refresh seeds
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from kmsplug.errors import InvalidCiphertext, UnknownKeyId
    from kmsplug.providers.local import KeyFileKek
    from kmsplug.sealer import Sealer

# A fixed test key (never used outside this fuzzer) so corpus ciphertexts stay openable.
ROOT_KEY = hashlib.sha256(b"kmsplug fuzz root key, test only").digest()
PLAINTEXTS = [b"ping", b"\x00" * 32, bytes(range(32)), b"x" * 512]


def _sealer(hierarchy: bool) -> tuple[Sealer, asyncio.AbstractEventLoop]:
    directory = Path(tempfile.mkdtemp(prefix="kmsplug-fuzz-"))
    key_file = directory / "root.key"
    key_file.write_bytes(ROOT_KEY)
    key_file.chmod(0o600)
    sealer = Sealer(KeyFileKek.open(key_file), hierarchy=hierarchy)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(sealer.start())
    return sealer, loop


SEALER, LOOP = _sealer(hierarchy=True)
KEY_ID = SEALER.key_id
SEALED = {LOOP.run_until_complete(SEALER.seal(p))[0]: p for p in PLAINTEXTS}
SEALED.update({LOOP.run_until_complete(SEALER.writer.wrap(p)): p for p in PLAINTEXTS})


def test_one_input(data: bytes) -> None:
    for key_id in (None, KEY_ID):
        try:
            opened = LOOP.run_until_complete(SEALER.open(data, key_id))
        except (InvalidCiphertext, UnknownKeyId):
            continue
        # This root key only ever sealed PLAINTEXTS (here or in the run that wrote the
        # corpus): anything else opened is a forgery, and a known ciphertext must give back
        # exactly what it sealed.
        if opened not in PLAINTEXTS:
            raise AssertionError("opened a plaintext this key never sealed")
        if data in SEALED and opened != SEALED[data]:
            raise AssertionError("wrong plaintext")


def write_seeds(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    seeds = [
        *SEALED,
        base64.b64encode(os.urandom(96)),  # ack-kms-plugin shape
        b"vault:v1:" + base64.b64encode(os.urandom(60)),  # vault-kubernetes-kms shape
        b"1" + os.urandom(150),  # aws-encryption-provider shape
        b"\xc9\x6b\x01\x01",
        b"",
    ]
    for seed in seeds:
        (directory / hashlib.sha256(seed).hexdigest()[:16]).write_bytes(seed)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write-seeds"]:
        write_seeds(Path(sys.argv[2]))
    else:
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
