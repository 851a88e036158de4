"""`kmsplug bench`: `engine` drives a KMS plugin socket as kube-apiserver does and measures,
`workloads` names what it can drive (cheap to import, for the CLI's choices), `plots`
draws the results (the bench extra)."""
