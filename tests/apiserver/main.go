// Command kube-harness runs a real Kubernetes API server for vipd's tests,
// demo and benchmarks: kube-apiserver (from k8s.io/kubernetes, as a library)
// and an embedded etcd member in one process, the way controller-runtime's
// envtest runs them, with real TLS, RBAC and ServiceAccount tokens.
//
//	kube-harness start --dir D --listen IP:PORT --kubeconfig K [flags]
//	    runs `serve` in the background, waits until /readyz is OK and writes
//	    an admin kubeconfig to K. Prints the server URL.
//	kube-harness serve --dir D --listen IP:PORT [flags]
//	    runs etcd and kube-apiserver in the foreground until SIGTERM.
//	kube-harness stop --dir D
//	    stops the server started with --dir D and removes its data.
//	kube-harness pki --pki P [--tls-san ...]
//	    creates the shared credentials (CA, service-account key, admin token)
//	    so several servers can form one cluster.
//
// A cluster of N servers is N `start` calls sharing one --pki directory, each
// with --etcd-name, --etcd-peer-url and the same --etcd-initial-cluster.
package main

import (
	"flag"
	"fmt"
	"os"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: kube-harness start|serve|stop|pki [flags] (see -h of each)")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "start":
		err = runStart(args)
	case "serve":
		err = runServe(args)
	case "stop":
		err = runStop(args)
	case "pki":
		err = runPKI(args)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kube-harness %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

// serverFlags are the flags shared by `start` and `serve`.
type serverFlags struct {
	dir           string
	pki           string
	listen        string
	advertise     string
	tlsSANs       string
	etcdName      string
	etcdPeerURL   string
	etcdCluster   string
	etcdState     string
	etcdPort      int
	serviceCIDR   string
	kubeconfig    string
	readyTimeout  int
	extraAPIFlags string
	saAdmission   bool
}

func (f *serverFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.dir, "dir", "", "data directory of this server (etcd data, certificates, log, pid); required")
	fs.StringVar(&f.pki, "pki", "", "shared credentials directory (CA, service-account key, admin token); default <dir>/pki")
	fs.StringVar(&f.listen, "listen", "127.0.0.1:6443", "IP:PORT the API server listens on")
	fs.StringVar(&f.advertise, "advertise", "", "address advertised to the cluster; default the listen IP")
	fs.StringVar(&f.tlsSANs, "tls-san", "", "extra comma-separated IPs or names in the serving certificate (a VIP, as K3s --tls-san)")
	fs.StringVar(&f.etcdName, "etcd-name", "default", "name of this etcd member")
	fs.StringVar(&f.etcdPeerURL, "etcd-peer-url", "", "peer URL of this etcd member, e.g. http://192.0.2.11:2380; default a free port on 127.0.0.1")
	fs.StringVar(&f.etcdCluster, "etcd-initial-cluster", "", "name=peerURL,... of every member; default this member alone")
	fs.StringVar(&f.etcdState, "etcd-cluster-state", "new", "new or existing")
	fs.IntVar(&f.etcdPort, "etcd-client-port", 0, "port of etcd's client listener on 127.0.0.1; 0 picks a free one")
	fs.StringVar(&f.serviceCIDR, "service-cidr", "10.43.0.0/16,2001:db8:43::/112", "Service ClusterIP ranges: K3s' IPv4 default and an IPv6 documentation range (dual-stack)")
	fs.IntVar(&f.readyTimeout, "ready-timeout", 180, "seconds `start` waits for /readyz")
	fs.StringVar(&f.extraAPIFlags, "apiserver-flags", "", "extra space-separated kube-apiserver flags")
	fs.BoolVar(&f.saAdmission, "service-account-admission", false, "admit pods with the ServiceAccount plugin (projected tokens); needs a kube-controller-manager beside it")
}

func (f *serverFlags) validate() error {
	if f.dir == "" {
		return fmt.Errorf("--dir is required")
	}
	if f.pki == "" {
		f.pki = f.dir + "/pki"
	}
	return nil
}
