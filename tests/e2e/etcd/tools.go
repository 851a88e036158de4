//go:build tools

// Package etcd only records that we build go.etcd.io/etcd/server/v3 (the etcd binary).
package etcd

import _ "go.etcd.io/etcd/server/v3"
