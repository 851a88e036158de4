//go:build tools

// Package crictl only records that we build sigs.k8s.io/cri-tools/cmd/crictl.
package crictl

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
