"""Alibaba Cloud KMS: `settings` (from the environment), `credentials` (the credential
chain and the SDK client), `kek` (the provider, and `build`)."""
