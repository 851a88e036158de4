"""KEK providers: where the key that wraps kmsplug's local KEKs lives.

`base` is the interface, `local` the key file, `registry` every provider by name (and the
one place a remote one is assembled, behind `resilient`), `shared` what several use.
"""
