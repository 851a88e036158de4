//go:build tools

// Package kubelet only records that we build k8s.io/kubernetes/cmd/kubelet.
package kubelet

import _ "k8s.io/kubernetes/cmd/kubelet"
