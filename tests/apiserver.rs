//! The test API server is a real one: optimistic concurrency, watches and
//! RBAC behave as in a cluster.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use vipd_testkit::apiserver::env;

fn lease(name: &str, holder: &str) -> Lease {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": { "holderIdentity": holder, "leaseDurationSeconds": 5 }
    }))
    .unwrap()
}

#[test]
fn stale_resource_version_gets_409_conflict() {
    let env = env();
    env.run(async move {
        let ns = env.namespace("conflict").await;
        let leases: Api<Lease> = Api::namespaced(env.admin().await, &ns);
        let created = leases
            .create(&PostParams::default(), &lease("l", "a"))
            .await
            .unwrap();

        // A first writer updates with the current resourceVersion: accepted.
        let mut first = created.clone();
        first.spec.as_mut().unwrap().holder_identity = Some("b".into());
        let updated = leases
            .replace("l", &PostParams::default(), &first)
            .await
            .unwrap();
        assert_ne!(
            updated.metadata.resource_version,
            created.metadata.resource_version
        );

        // A second writer still holds the old resourceVersion: 409 Conflict.
        let mut stale = created.clone();
        stale.spec.as_mut().unwrap().holder_identity = Some("c".into());
        let err = leases
            .replace("l", &PostParams::default(), &stale)
            .await
            .unwrap_err();
        match err {
            kube::Error::Api(status) => {
                assert_eq!(status.code, 409, "{status:?}");
                assert_eq!(status.reason, "Conflict");
            }
            other => panic!("expected 409, got {other:?}"),
        }
        let now = leases.get("l").await.unwrap();
        assert_eq!(now.spec.unwrap().holder_identity.as_deref(), Some("b"));
    });
}

#[test]
fn watch_on_services_sees_a_create() {
    let env = env();
    env.run(async move {
        let ns = env.namespace("watch").await;
        let svcs: Api<Service> = Api::namespaced(env.admin().await, &ns);
        let list = svcs.list(&Default::default()).await.unwrap();
        let rv = list.metadata.resource_version.unwrap();
        let mut stream = svcs
            .watch(&WatchParams::default(), &rv)
            .await
            .unwrap()
            .boxed();

        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "web" },
            "spec": { "type": "LoadBalancer", "ports": [{ "port": 80, "protocol": "TCP" }] }
        }))
        .unwrap();
        svcs.create(&PostParams::default(), &svc).await.unwrap();

        let event = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("a watch event within 10 s")
            .unwrap()
            .expect("stream open");
        match event {
            WatchEvent::Added(s) => {
                assert_eq!(s.metadata.name.as_deref(), Some("web"));
                // The real server allocated a ClusterIP and NodePort.
                let spec = s.spec.unwrap();
                assert!(spec.cluster_ip.is_some_and(|ip| ip.starts_with("10.43.")));
                assert!(spec.ports.unwrap()[0].node_port.is_some());
            }
            other => panic!("expected Added, got {other:?}"),
        }
    });
}

#[test]
fn service_account_without_rbac_gets_403_on_leases() {
    let env = env();
    env.run(async move {
        let ns = env.namespace("rbac").await;
        let client = env.service_account(&ns, "nobody").await.unwrap();
        let leases: Api<Lease> = Api::namespaced(client, &ns);
        match leases.list(&Default::default()).await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
            other => panic!("expected 403 Forbidden, got {other:?}"),
        }
        let err = leases
            .create(&PostParams::default(), &lease("x", "nobody"))
            .await
            .unwrap_err();
        assert!(matches!(err, kube::Error::Api(s) if s.code == 403));
    });
}

#[test]
fn anonymous_and_bad_tokens_are_rejected() {
    let env = env();
    env.run(async move {
        let path = vipd_testkit::run_dir().join("bad-token.kubeconfig");
        vipd_testkit::apiserver::write_token_kubeconfig(
            env.admin_kubeconfig(),
            &path,
            "not-a-token",
        )
        .unwrap();
        let client = vipd_testkit::apiserver::client_from_kubeconfig(&path)
            .await
            .unwrap();
        let leases: Api<Lease> = Api::namespaced(client, "default");
        match leases.list(&Default::default()).await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 401, "{status:?}"),
            other => panic!("expected 401 Unauthorized, got {other:?}"),
        }
    });
}
