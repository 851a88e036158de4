"""PKCS#11 HSMs: `settings` (from the environment), `session` (the token's session pool
and its failures), `mechanisms` (how a key wraps a secret), `keys` (the keys of a
label and the write key), `provider` (the provider, and `build`)."""
