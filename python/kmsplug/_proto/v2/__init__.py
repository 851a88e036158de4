"""Generated from proto/v2 (see kmsplug._proto)."""
