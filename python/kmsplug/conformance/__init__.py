"""`kmsplug conformance`: does a KMS plugin behave as kube-apiserver needs, rule by rule?

Works against any plugin socket. rules.py lists every rule with its source; the checks are
written from those rules, not from how kmsplug answers.
"""
