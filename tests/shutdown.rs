//! Stopping weir (SIGTERM in a pod, Ctrl-C by hand): it stops accepting at once and lets the
//! requests already in flight finish.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_new_connections_and_finishes_requests_in_flight() {
    let (a, backends) = backend("default", "a").await;
    let weir = TestWeir::start(&[("backends.yaml", &backends), ("web.yaml", &ingress("web", "a.test", "a"))]).await;
    let http = weir.http;
    weir.get("a.test", "/").await.assert_served_by("a");
    // an idle keep-alive connection must not hold the drain up
    let mut idle = H1::connect(http).await.expect("keep-alive connection");
    idle.get("a.test", "/").await.expect("first request").assert_served_by("a");
    a.set_delay(Duration::from_millis(800));

    let in_flight = tokio::spawn(async move { get(http, "a.test", "/slow").await });
    wait_until("the slow request reaches the backend", WAIT, || {
        let served = a.requests();
        async move { served == 3 }
    })
    .await;

    let started = Instant::now();
    let drain = tokio::spawn(weir.drain(Duration::from_secs(20)));
    wait_until("the listener refuses new connections", WAIT, || async move {
        tokio::net::TcpStream::connect(http).await.is_err()
    })
    .await;

    let resp = in_flight.await.expect("client task");
    resp.assert_served_by("a");
    assert_eq!(resp.upstream_path(), "/slow");
    let left = drain.await.expect("drain task");
    assert_eq!(left, 0, "every request finished");
    assert!(started.elapsed() < Duration::from_secs(20), "drained before the grace period ran out");
}
