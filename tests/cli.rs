//! What an operator reads when vipd or vipctl cannot start: the real
//! binaries, their output piped as a container runtime captures it. No API
//! server is needed (nothing here gets that far).

use std::path::Path;
use std::process::{Command, Output};

use vipd_testkit::netns::Netns;

fn vipd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vipd"))
}

fn vipctl() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vipctl"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn no_escapes(o: &Output) {
    assert!(
        !o.stderr.contains(&0x1b) && !o.stdout.contains(&0x1b),
        "ANSI escapes in piped output:\n{}",
        stderr(o)
    );
}

/// A home with no kubeconfig, and nothing else from this shell.
fn bare(cmd: &mut Command, home: &Path) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home);
}

fn empty_home(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vipd-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn every_invalid_setting_is_reported_at_once() {
    let home = empty_home("settings");
    let mut cmd = Command::new(vipd());
    bare(&mut cmd, &home);
    let o = cmd
        .arg("manager")
        .envs([
            ("vip_arp", "true"),
            ("cp_enable", "true"),
            ("address", "not-an-ip!"),
            ("vip_leaderelection", "true"),
            ("vip_leaseduration", "abc"),
            ("vip_logformat", "xml"),
        ])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "one line per invalid setting:\n{err}");
    for (line, setting) in lines
        .iter()
        .zip(["address=", "vip_leaseduration=", "vip_logformat="])
    {
        assert!(
            line.starts_with("vipd: invalid configuration: ") && line.contains(setting),
            "{line:?} should name {setting}"
        );
    }
    no_escapes(&o);
}

#[test]
fn a_missing_kubeconfig_is_named_once_with_each_cause_once() {
    let home = empty_home("kubeconfig");
    let o = {
        let mut cmd = Command::new(vipctl());
        bare(&mut cmd, &home);
        cmd.args(["status", "--kubeconfig", "/nonexistent/kc"])
            .output()
            .unwrap()
    };
    let not_found = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    assert_eq!(
        stderr(&o),
        format!(
            "vipctl: cannot read kubeconfig /nonexistent/kc (from --kubeconfig): {not_found}\n"
        )
    );
    assert_eq!(o.status.code(), Some(2));

    // vipd the same, from a namespace of its own (it opens netlink and
    // takes its one-per-node lock before it reads credentials).
    let ns = Netns::create(&format!("{}cli", vipd_testkit::run_prefix())).unwrap();
    let mut cmd = ns.command(vipd().to_str().unwrap());
    bare(&mut cmd, &home);
    let o = cmd
        .arg("manager")
        .envs([
            ("vip_arp", "true"),
            ("cp_enable", "true"),
            ("address", "192.0.2.100"),
            ("vip_leaderelection", "true"),
            ("vip_interface", "lo"),
            ("prometheus_server", ""),
            ("k8s_config_file", "/nonexistent/kc"),
            ("vip_routingtable", "true"),
            ("egress_podcidr", "10.0.0.0/8"),
        ])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(
        err.lines().last(),
        Some(
            format!(
                "vipd: cannot read kubeconfig /nonexistent/kc (from k8s_config_file): {not_found}"
            )
            .as_str()
        ),
        "{err}"
    );
    assert_eq!(err.matches(&not_found).count(), 1, "{err}");
    assert!(!err.contains("'\""), "the path quoted twice: {err}");
    // Its log lines came before, without colour; kube-vip settings vipd
    // does not implement are named in one warning.
    assert!(err.contains(" INFO "), "{err}");
    let warning = err
        .lines()
        .find(|l| l.contains("that vipd does not implement"))
        .unwrap_or_else(|| panic!("no warning about unsupported settings:\n{err}"));
    assert!(
        warning.contains(" WARN ")
            && warning.contains("egress_podcidr (egress)")
            && warning.contains("vip_routingtable (routing-table mode)"),
        "{warning}"
    );
    no_escapes(&o);
}

#[test]
fn vipctl_without_credentials_names_only_what_works() {
    if Path::new(vipd::kubeclient::ADMIN_CONF).exists() {
        // vipctl would rightly use it (vipd's order); nothing to check here.
        eprintln!("skipped: this machine has {}", vipd::kubeclient::ADMIN_CONF);
        return;
    }
    let home = empty_home("nocreds");
    let mut cmd = Command::new(vipctl());
    bare(&mut cmd, &home);
    let o = cmd.arg("status").output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("vipctl: no Kubernetes credentials"),
        "{err}"
    );
    assert!(err.contains("--kubeconfig"), "{err}");
    // It reads k8s_config_file now, so naming it is right; the old advice
    // "set k8s_config_file" alone (which vipctl ignored) is gone, and so is
    // the chain of a file that was never there.
    assert!(!err.contains("set k8s_config_file"), "{err}");
    assert!(!err.contains("os error"), "{err}");

    // And k8s_config_file is read, as vipd reads it.
    let mut cmd = Command::new(vipctl());
    bare(&mut cmd, &home);
    let o = cmd
        .arg("status")
        .env("k8s_config_file", "/nonexistent/from-env")
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("cannot read kubeconfig /nonexistent/from-env (from k8s_config_file)"),
        "{}",
        stderr(&o)
    );
}
