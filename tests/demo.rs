//! The demo's mesh story, on the shipped manifests (conf/quickstart) with their ports moved to
//! free ones: a user request to /api on the edge reaches checkout, which charges payments through
//! the mesh; one of two payments replicas fails a third of its requests and the user sees none of
//! it.

mod common;

use common::*;
use weir::demo::mesh::{GatewayPorts, MeshStory};
use weir::demo::{gateway_for, MESH_HOST};
use weir::source::dir::DirLoader;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_story_hides_a_failing_replica_and_shows_who_called_whom() {
    let [gateway, checkout, payments, inbound, outbound, admin] = free_ports(6)[..] else { unreachable!() };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/quickstart");
    let mut files = vec![];
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("port: 8081", &format!("port: {gateway}"))
            .replace("9200", &checkout.to_string())
            .replace("9300", &payments.to_string());
        files.push((path.file_name().unwrap().to_string_lossy().into_owned(), text));
    }
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let weir = TestWeir::start_with(&files, |o| o.gateway_address = "127.0.0.1".parse().unwrap()).await;
    let store = DirLoader::default().load(weir.dir()).unwrap();
    let story = MeshStory::start(&store, weir.dir(), GatewayPorts { inbound, outbound, admin }).await.unwrap();
    let snap = weir.snapshot();
    let edge = gateway_for(&snap, MESH_HOST).expect("the Gateway listener serving shop.example.com");

    let report = story.burst(edge, MESH_HOST, 300).await;
    assert!(report.succeeded as f64 / 300.0 >= 0.999, "{report:?}");
    let [(_, ok_a, failed_a), (_, ok_b, failed_b)] = report.replicas[..] else { panic!("{report:?}") };
    assert_eq!(failed_a, 0, "{report:?}");
    assert!(
        failed_b >= 40 && failed_b == (ok_b + failed_b) / 3,
        "the second replica fails a third of its requests: {report:?}"
    );
    assert_eq!(report.retries, failed_b, "each failure was retried on the other replica: {report:?}");
    assert_eq!(ok_a + ok_b, 300, "{report:?}");
    assert_eq!(report.checkout_identity, "spiffe://cluster.local/ns/shop/sa/checkout");
    assert_eq!(report.payments_identity, "spiffe://cluster.local/ns/shop/sa/payments");
    assert_eq!(
        report.caller_seen_by_payments,
        "By=spiffe://cluster.local/ns/shop/sa/payments;URI=spiffe://cluster.local/ns/shop/sa/checkout"
    );
    story.shutdown();
}
