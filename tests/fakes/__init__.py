"""Local, test-only fakes of remote services (never used in production code)."""
