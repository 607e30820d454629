//! The demo's mesh story, on the shipped manifests (conf/quickstart) with their ports moved to
//! free ones: a user request to /api on the edge reaches checkout, which charges payments through
//! the mesh; one of two payments replicas fails a third of its requests and the user sees none of
//! it.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use weir::demo::mesh::{GatewayPorts, MeshStory};
use weir::demo::{gateway_for, MESH_HOST};
use weir::source::dir::DirLoader;

/// Every ERROR event, from weir's tracing and from Pingora's `log` records alike, as
/// `target: message`.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Errors {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Message(String);
        impl Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        if *event.metadata().level() == tracing::Level::ERROR {
            let mut m = Message(String::new());
            event.record(&mut m);
            let target = event.metadata().target();
            self.0.lock().unwrap().push(format!("{target}: {}", m.0));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_story_hides_a_failing_replica_and_shows_who_called_whom() {
    // a healthy run logs no ERROR: people grep Pods' logs for them
    let errors = Errors::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(errors.clone())).unwrap();
    tracing_log::LogTracer::init().unwrap();
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
    let errors = errors.0.lock().unwrap().clone();
    assert!(errors.is_empty(), "a healthy run logged {} ERRORs:\n{}", errors.len(), errors.join("\n"));
}
