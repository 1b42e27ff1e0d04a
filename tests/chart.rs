//! vipd's Helm chart (`charts/vipd`) with a real Helm (built from the Go
//! module proxy by scripts/helm.sh): it lints; its default render is what
//! `manifests/` holds (the generated RBAC and the K3s Services
//! DaemonSet), its `both` mode kube-vip's K3s DaemonSet; and what it
//! renders is accepted by the real API server (server-side dry run).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use vipd_testkit::apiserver::env;
use vipd_testkit::workspace_root;

fn helm() -> PathBuf {
    let out = Command::new(workspace_root().join("scripts/helm.sh"))
        .arg("build")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/helm.sh build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn chart() -> PathBuf {
    workspace_root().join("charts/vipd")
}

/// `helm template vipd charts/vipd -n vipd-system ARGS`.
fn render(args: &[&str]) -> String {
    let out = Command::new(helm())
        .args(["template", "vipd"])
        .arg(chart())
        .args(["--namespace", "vipd-system"])
        .args(args)
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm template {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The documents of a YAML stream as JSON, env lists sorted by name (the
/// generator sorts settings, the chart groups them), empty ones left out.
fn docs(yaml: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for d in serde_yaml::Deserializer::from_str(yaml) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(d).unwrap();
        if v.is_null() {
            continue;
        }
        let mut j: Value = serde_json::to_value(v).unwrap();
        sort_env(&mut j);
        out.push(j);
    }
    out
}

fn sort_env(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(env)) = m.get_mut("env") {
                env.sort_by_key(|e| e["name"].as_str().unwrap_or("").to_string());
            }
            m.values_mut().for_each(sort_env);
        }
        Value::Array(a) => a.iter_mut().for_each(sort_env),
        _ => {}
    }
}

fn manifest(path: &str) -> Vec<Value> {
    docs(&std::fs::read_to_string(workspace_root().join(path)).unwrap())
}

fn by_kind_and_name(mut d: Vec<Value>) -> Vec<Value> {
    d.sort_by_key(|v| {
        format!(
            "{}/{}/{}",
            v["kind"].as_str().unwrap_or(""),
            v["metadata"]["namespace"].as_str().unwrap_or(""),
            v["metadata"]["name"].as_str().unwrap_or("")
        )
    });
    d
}

#[test]
fn the_chart_lints() {
    let out = Command::new(helm())
        .args(["lint", "--strict"])
        .arg(chart())
        .env("HOME", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_default_render_is_the_generated_manifests() {
    let rendered = by_kind_and_name(docs(&render(&[])));
    // The Namespace is Helm's (`--create-namespace`), not the chart's.
    let mut want: Vec<Value> = manifest("manifests/rbac.yaml")
        .into_iter()
        .filter(|d| d["kind"] != "Namespace")
        .collect();
    want.extend(manifest("manifests/k3s/vipd-services-daemonset.yaml"));
    let want = by_kind_and_name(want);
    assert_eq!(rendered.len(), want.len(), "{rendered:#?}");
    for (r, w) in rendered.iter().zip(&want) {
        assert_eq!(r, w, "the chart differs from manifests/ for {}", w["kind"]);
    }
}

#[test]
fn both_mode_is_kube_vips_k3s_daemonset() {
    let rendered = docs(&render(&[
        "--set",
        "mode=both",
        "--set",
        "controlPlane.address=192.0.2.100",
    ]));
    let ds: Vec<&Value> = rendered
        .iter()
        .filter(|d| d["kind"] == "DaemonSet")
        .collect();
    let want = manifest("manifests/k3s/vipd-daemonset.yaml");
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0], &want[0]);
}

#[test]
fn the_chart_version_is_vipds() {
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(chart["version"].as_str(), Some(env!("CARGO_PKG_VERSION")));
}

/// Everything the chart can render, pools and a PodMonitor included, is
/// accepted by the real API server. The PodMonitor's kind comes from the
/// Prometheus Operator: the test registers a CRD of that group and kind
/// whose schema accepts any spec, so this checks the object's kind and
/// metadata, not the operator's schema.
#[test]
fn what_the_chart_renders_is_accepted_by_the_api_server() {
    let env = env();
    env.run(async move {
        let crd = workspace_root().join("target/test-podmonitor-crd.yaml");
        std::fs::write(
            &crd,
            r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: podmonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: { kind: PodMonitor, plural: podmonitors, singular: podmonitor, listKind: PodMonitorList }
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: { type: object, x-kubernetes-preserve-unknown-fields: true }
"#,
        )
        .unwrap();
        let _ = env.kubectl(&["apply", "-f", crd.to_str().unwrap()]);
        let _ = env.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/podmonitors.monitoring.coreos.com",
            "--timeout=30s",
        ]);
        let _ = env.kubectl(&["create", "namespace", "vipd-system"]);
        for (what, args) in [
            ("default", vec![]),
            (
                "both, BGP, pools, PodMonitor, extra settings",
                vec![
                    "--set",
                    "mode=both",
                    "--set",
                    "controlPlane.address=192.0.2.100",
                    "--set",
                    "announce=bgp",
                    "--set",
                    "env.bgp_peers=192.0.2.1:64512::false",
                    "--set",
                    "pools.cidr-global=192.0.2.160/28",
                    "--set",
                    "podMonitor.enabled=true",
                ],
            ),
            ("kubeadm", vec!["--set", "distro=kubeadm"]),
        ] {
            let file = workspace_root().join(format!("target/test-chart-{}.yaml", what.len()));
            std::fs::write(&file, render(&args)).unwrap();
            env.kubectl(&["apply", "--dry-run=server", "-f", file.to_str().unwrap()])
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        // And a mistake is one clear line, not a broken manifest.
        let out = Command::new(helm())
            .args(["template", "vipd"])
            .arg(chart())
            .args(["--set", "mode=both"])
            .env("HOME", std::env::temp_dir())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("needs controlPlane.address"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}
