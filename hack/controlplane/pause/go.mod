// The local node's pause image binary: no dependencies, built static.
module enumwatch.io/hack/controlplane/pause

go 1.24.0
