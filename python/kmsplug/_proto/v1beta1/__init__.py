"""Generated from proto/v1beta1 (see kmsplug._proto)."""
