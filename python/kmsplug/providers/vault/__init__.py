"""Vault / OpenBao Transit: `settings` (from the environment), `connection` (HTTP and
Vault's errors), `auth` (the token's life), `transit` (the provider, and `build`)."""
