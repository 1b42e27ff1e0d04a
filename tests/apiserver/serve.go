package main

// serve: an embedded etcd member and kube-apiserver in the foreground.

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func runServe(args []string) error {
	var f serverFlags
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	f.register(fs)
	_ = fs.Parse(args)
	if err := f.validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return err
	}
	if err := ensurePKI(f.pki); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	host, port, err := net.SplitHostPort(f.listen)
	if err != nil {
		return fmt.Errorf("--listen %q: %w", f.listen, err)
	}
	advertise := f.advertise
	if advertise == "" {
		advertise = host
	}
	if ip := net.ParseIP(advertise); ip == nil || ip.IsUnspecified() {
		return fmt.Errorf("--advertise must be a concrete IP (got %q)", advertise)
	}

	etcd, etcdURL, err := startEtcd(&f)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()

	sans := []string{host, advertise, "127.0.0.1", "::1", "localhost", "kubernetes",
		"kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	for _, cidr := range strings.Split(f.serviceCIDR, ",") {
		sans = append(sans, firstServiceIP(cidr))
	}
	sans = append(sans, strings.Split(f.tlsSANs, ",")...)
	certPath, keyPath, err := servingCert(f.pki, f.dir, sans)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}

	apiArgs := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + host,
		"--secure-port=" + port,
		"--advertise-address=" + advertise,
		"--cert-dir=" + filepath.Join(f.dir, "certs"),
		"--tls-cert-file=" + certPath,
		"--tls-private-key-file=" + keyPath,
		"--client-ca-file=" + filepath.Join(f.pki, caCertFile),
		"--token-auth-file=" + filepath.Join(f.pki, tokenFile),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + filepath.Join(f.pki, saPubFile),
		"--service-account-signing-key-file=" + filepath.Join(f.pki, saKeyFile),
		"--service-cluster-ip-range=" + f.serviceCIDR,
		// Logs and exec reach kubelets by the address they registered.
		"--kubelet-preferred-address-types=InternalIP",
		"--allow-privileged=true",
		"--profiling=false",
		"--v=0",
	}
	if !f.saAdmission {
		// Without a controller-manager nobody creates the ServiceAccounts
		// pods would need, so pods are admitted without them.
		apiArgs = append(apiArgs, "--disable-admission-plugins=ServiceAccount")
	}
	if f.extraAPIFlags != "" {
		apiArgs = append(apiArgs, strings.Fields(f.extraAPIFlags)...)
	}
	cmd := app.NewAPIServerCommand()
	cmd.SetArgs(apiArgs)
	fmt.Fprintf(os.Stderr, "kube-harness: etcd %s (member %s), kube-apiserver on https://%s\n", etcdURL, f.etcdName, f.listen)
	return cmd.Execute()
}

func startEtcd(f *serverFlags) (*embed.Etcd, string, error) {
	clientPort := f.etcdPort
	if clientPort == 0 {
		p, err := freePort()
		if err != nil {
			return nil, "", err
		}
		clientPort = p
	}
	peerURL := f.etcdPeerURL
	if peerURL == "" {
		p, err := freePort()
		if err != nil {
			return nil, "", err
		}
		peerURL = "http://127.0.0.1:" + strconv.Itoa(p)
	}
	peer, err := url.Parse(peerURL)
	if err != nil {
		return nil, "", fmt.Errorf("--etcd-peer-url: %w", err)
	}
	client, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(clientPort))

	cfg := embed.NewConfig()
	cfg.Name = f.etcdName
	cfg.Dir = filepath.Join(f.dir, "etcd")
	cfg.ListenClientUrls = []url.URL{*client}
	cfg.AdvertiseClientUrls = []url.URL{*client}
	cfg.ListenPeerUrls = []url.URL{*peer}
	cfg.AdvertisePeerUrls = []url.URL{*peer}
	cfg.InitialCluster = f.etcdCluster
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = f.etcdName + "=" + peerURL
	}
	cfg.ClusterState = f.etcdState
	cfg.InitialClusterToken = "vipd-harness"
	cfg.LogLevel = "error"
	cfg.Logger = "zap"
	cfg.LogOutputs = []string{"stderr"}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, "", err
	case <-time.After(120 * time.Second):
		e.Close()
		return nil, "", errors.New("etcd not ready after 120s (does the cluster have quorum?)")
	}
	return e, client.String(), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// firstServiceIP is the ClusterIP of the `kubernetes` Service (network + 1).
func firstServiceIP(cidr string) string {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return ""
	}
	ip := append(net.IP(nil), n.IP...)
	ip[len(ip)-1]++
	return ip.String()
}
