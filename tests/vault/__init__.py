"""Helpers for testing the Vault provider against a real OpenBao dev server."""
