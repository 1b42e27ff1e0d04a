package main

// start and stop: run `serve` in the background with a pid file, wait for
// /readyz, write an admin kubeconfig; stop it and remove its data.

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const pidFile = "harness.pid"
const logFile = "harness.log"

func runStart(args []string) error {
	var f serverFlags
	fs := flag.NewFlagSet("start", flag.ExitOnError)
	f.register(fs)
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "where to write the admin kubeconfig; required")
	_ = fs.Parse(args)
	if err := f.validate(); err != nil {
		return err
	}
	if f.kubeconfig == "" {
		return errors.New("--kubeconfig is required")
	}
	if pid, err := readPid(f.dir); err == nil && alive(pid) {
		return fmt.Errorf("a server already runs with --dir %s (pid %d); stop it first", f.dir, pid)
	}
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return err
	}
	// Credentials first, so a cluster's servers can start in parallel from one --pki.
	if err := ensurePKI(f.pki); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}

	self, err := os.Executable()
	if err != nil {
		return err
	}
	serveArgs := []string{"serve",
		"--dir", f.dir, "--pki", f.pki, "--listen", f.listen, "--advertise", f.advertise,
		"--tls-san", f.tlsSANs, "--etcd-name", f.etcdName, "--etcd-peer-url", f.etcdPeerURL,
		"--etcd-initial-cluster", f.etcdCluster, "--etcd-cluster-state", f.etcdState,
		"--etcd-client-port", strconv.Itoa(f.etcdPort), "--service-cidr", f.serviceCIDR,
		"--apiserver-flags", f.extraAPIFlags,
		fmt.Sprintf("--service-account-admission=%t", f.saAdmission),
	}
	logPath := filepath.Join(f.dir, logFile)
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(self, serveArgs...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	if err := os.WriteFile(filepath.Join(f.dir, pidFile), []byte(strconv.Itoa(pid)), 0o600); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	host, port, _ := net.SplitHostPort(f.listen)
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = f.advertise
	}
	server := "https://" + net.JoinHostPort(host, port)
	caPEM, err := os.ReadFile(filepath.Join(f.pki, caCertFile))
	if err != nil {
		return err
	}
	token, err := os.ReadFile(filepath.Join(f.pki, adminToken))
	if err != nil {
		return err
	}
	if err := waitReady(server, caPEM, string(token), time.Duration(f.readyTimeout)*time.Second, exited); err != nil {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		return fmt.Errorf("%w\n--- last lines of %s ---\n%s", err, logPath, tail(logPath, 40))
	}
	if err := writeKubeconfig(f.kubeconfig, server, caPEM, string(token)); err != nil {
		return err
	}
	fmt.Println(server)
	return nil
}

func waitReady(server string, caPEM []byte, token string, timeout time.Duration, exited <-chan error) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("server exited before it was ready: %v", err)
		default:
		}
		req, _ := http.NewRequest("GET", server+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s/readyz not OK after %s (last: %s)", server, timeout, last)
}

func writeKubeconfig(path, server string, caPEM []byte, token string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	ca := strings.TrimSpace(string(caPEM))
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Config\nclusters:\n- name: harness\n  cluster:\n")
	fmt.Fprintf(&b, "    server: %s\n    certificate-authority-data: %s\n", server, b64(ca))
	b.WriteString("users:\n- name: admin\n  user:\n")
	fmt.Fprintf(&b, "    token: %s\n", token)
	b.WriteString("contexts:\n- name: harness\n  context:\n    cluster: harness\n    user: admin\ncurrent-context: harness\n")
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

func runStop(args []string) error {
	fs := flag.NewFlagSet("stop", flag.ExitOnError)
	dir := fs.String("dir", "", "data directory given to start; required")
	keep := fs.Bool("keep-data", false, "stop the server but keep its data (to restart it as a cluster member)")
	_ = fs.Parse(args)
	if *dir == "" {
		return errors.New("--dir is required")
	}
	if pid, err := readPid(*dir); err == nil {
		stopPid(pid)
	}
	if *keep {
		return os.Remove(filepath.Join(*dir, pidFile))
	}
	return os.RemoveAll(*dir)
}

func stopPid(pid int) {
	if !alive(pid) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 100 && alive(pid); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if alive(pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		for i := 0; i < 50 && alive(pid); i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func readPid(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// alive reports whether pid runs and is not a zombie.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
