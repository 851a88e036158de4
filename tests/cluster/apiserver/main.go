//go:build tools

// Package apiserver pins the kube-apiserver that tests/cluster runs. Nothing here is
// compiled into a program of ours: build-apiserver.sh builds the upstream command
// k8s.io/kubernetes/cmd/kube-apiserver at the version go.mod requires.
package apiserver

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
