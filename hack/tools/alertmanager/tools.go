//go:build tools

// Package tools pins alertmanager so `go mod tidy` keeps its dependencies.
package tools

import _ "github.com/prometheus/alertmanager/cmd/alertmanager"
