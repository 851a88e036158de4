"""A real SoftHSM2 token for the PKCS#11 provider's tests (install-deps.sh installs it)."""
