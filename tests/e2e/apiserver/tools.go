//go:build tools

// Package apiserver only records that we build k8s.io/kubernetes/cmd/kube-apiserver.
package apiserver

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
