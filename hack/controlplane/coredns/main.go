// Command coredns is the local cluster's DNS: CoreDNS with only the plugins a cluster.local zone
// needs (bind, errors, cache, kubernetes), pinned like kube-dns would be by kubeadm (see go.mod).
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
)

// The plugins, in CoreDNS's own execution order (plugin.cfg).
var directives = []string{"bind", "errors", "cache", "kubernetes"}

func init() {
	dnsserver.Directives = directives
}

func main() {
	coremain.Run()
}
