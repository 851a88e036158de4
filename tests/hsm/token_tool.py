"""Operator actions on a SoftHSM2 token, run as a separate process.

PKCS#11 login state is per process: a test that logged in here, in the process of the
provider under test, would share (and on close, end) the provider's login. So the tests
act on the token the way an operator does, from another process.

    python token_tool.py keygen TOKEN PIN LABEL [ID_HEX] [--no-encrypt]
    python token_tool.py mock-encrypt TOKEN PIN LABEL PLAINTEXT_HEX
        what the kubernetes/kms reference mock plugin stores: AES-GCM under the key
        labelled LABEL, random 12-byte nonce prepended, AAD = LABEL (its key_id)
"""

from __future__ import annotations

import os
import sys

import pkcs11
from pkcs11 import Attribute, GCMParams, KeyType, Mechanism, ObjectClass


def main(argv: list[str]) -> int:
    library = os.environ.get("KMSPLUG_PKCS11_LIBRARY", "/usr/lib/softhsm/libsofthsm2.so")
    command, token_label, pin, label, *rest = argv
    token = pkcs11.lib(library).get_token(token_label=token_label)
    with token.open(rw=True, user_pin=pin) as session:
        if command == "keygen":
            key_id = bytes.fromhex(rest[0]) if rest and rest[0] != "-" else None
            template = {}
            if "--no-encrypt" in rest:
                template = {Attribute.ENCRYPT: False, Attribute.DECRYPT: False}
            session.generate_key(
                KeyType.AES, 256, id=key_id, label=label, store=True, template=template
            )
        elif command == "mock-encrypt":
            key = session.get_key(ObjectClass.SECRET_KEY, KeyType.AES, label=label)
            nonce = session.generate_random(96)
            sealed = key.encrypt(
                bytes.fromhex(rest[0]),
                mechanism=Mechanism.AES_GCM,
                mechanism_param=GCMParams(nonce, label.encode()),
            )
            print((nonce + sealed).hex())
        else:
            print(f"unknown command {command}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
