"""The real peer plugins (built from shared/peers): builds, runners and their tests."""
