//! What a listener holds its clients to, on raw sockets: the request head's size and deadline,
//! the keep-alive idle time, pipelined requests answered in order, and the per-listener
//! connection limit.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir::app::EdgeOptions;

/// weir serving `app.example.com` from Service `app`, its limits set by `configure`.
async fn edge(configure: impl FnOnce(&mut EdgeOptions)) -> (Backends, TestWeir) {
    let b = backends("default", &["app"]).await;
    let ingress = ingress("app", "app.example.com", "app");
    let weir = TestWeir::start_with(&[("backends.yaml", &b.yaml), ("ingress.yaml", &ingress)], configure).await;
    (b, weir)
}

/// Everything weir sends on `stream` until it closes it (or `WAIT` passes: `None`).
async fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut got = vec![];
    let read = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.ok().map(|_| String::from_utf8_lossy(&got).into_owned())
}

/// The status of each response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ").filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_the_limit_is_answered_431_and_one_under_it_is_served() {
    let (b, weir) = edge(|_| {}).await;
    let head = |padding: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: app.example.com\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(padding)
        )
    };
    for (padding, status) in [(60 * 1024, 200), (70 * 1024, 431), (900 * 1024, 431)] {
        let mut stream = TcpStream::connect(weir.http).await.unwrap();
        // weir may answer and close before it has read everything
        let _ = stream.write_all(head(padding).as_bytes()).await;
        let text = read_until_closed(&mut stream).await.expect("weir answers and closes");
        assert_eq!(statuses(&text).first(), Some(&status), "a {padding}-byte header: {}", &text[..text.len().min(200)]);
    }
    assert_eq!(b.echo("app").requests(), 1, "only the head under the limit reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_trickled_in_is_cut_at_its_deadline() {
    let (_b, weir) = edge(|o| o.limits.request_head_timeout = Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(weir.http).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n").await.unwrap();
    let started = std::time::Instant::now();
    // one byte every 50 ms: each read comes well within any per-read timeout
    let trickle = async {
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if stream.write_all(b"X").await.is_err() {
                return true; // closed by weir
            }
        }
        false
    };
    assert!(trickle.await, "weir kept a trickling head for 10 s");
    assert!(started.elapsed() < Duration::from_secs(5), "closed after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (b, weir) = edge(|_| {}).await;
    let mut stream = TcpStream::connect(weir.http).await.unwrap();
    let one = |path: &str, last: bool| {
        let close = if last { "Connection: close\r\n" } else { "" };
        format!("GET {path} HTTP/1.1\r\nHost: app.example.com\r\n{close}\r\n")
    };
    let all = [one("/first", false), one("/second", false), one("/third", true)].concat();
    stream.write_all(all.as_bytes()).await.unwrap();
    let text = read_until_closed(&mut stream).await.expect("three responses, then the close");
    assert_eq!(statuses(&text), [200, 200, 200], "{text}");
    let order: Vec<usize> =
        ["/first", "/second", "/third"].iter().map(|p| text.find(p).unwrap_or(usize::MAX)).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "responses out of order: {text}");
    assert_eq!(b.echo("app").requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout() {
    let (_b, weir) = edge(|o| o.limits.keepalive_timeout = Duration::from_secs(1)).await;
    let mut stream = TcpStream::connect(weir.http).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let text = read_until_closed(&mut stream).await.expect("weir closes the idle connection");
    assert_eq!(statuses(&text), [200], "{text}");
    assert!(started.elapsed() < Duration::from_secs(5), "closed after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_listeners_limit_are_closed_and_counted() {
    let (_b, weir) = edge(|o| o.limits.max_connections = 2).await;
    let addr: SocketAddr = weir.http;
    // two connections held open (a request served on each, kept alive)
    let mut held = vec![];
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let mut third = TcpStream::connect(addr).await.unwrap();
    let _ = third.write_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\n\r\n").await;
    assert_eq!(read_until_closed(&mut third).await.as_deref(), Some(""), "the third is closed, unanswered");
    let refused = [("port", addr.port().to_string())];
    let refused: Vec<(&str, &str)> = refused.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(metric(&weir.metrics().await, "weir_listener_connections_refused_total", &refused), 1.0);

    // one closes: a new connection is served
    drop(held.pop());
    wait_until("a connection is taken again", WAIT, || async {
        let Ok(mut s) = TcpStream::connect(addr).await else { return false };
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n").await;
        read_until_closed(&mut s).await.is_some_and(|t| t.starts_with("HTTP/1.1 200"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_head_over_the_limit_is_refused() {
    let (b, weir) = edge(|_| {}).await;
    let under = request(weir.http).h2c().host("app.example.com").header("x-pad", &"a".repeat(60 * 1024)).send().await;
    under.assert_served_by("app");
    let over =
        request(weir.http).h2c().host("app.example.com").header("x-pad", &"a".repeat(70 * 1024)).try_send().await;
    match over {
        Ok(resp) => assert_eq!(resp.status, 431, "{resp}"),
        Err(e) => panic!("{e:#}"),
    }
    assert_eq!(b.echo("app").requests(), 1);
}

/// A client that stops reading its response does not hold the connection: a write that waits
/// longer than the write timeout ends it. (The client's not reading for a while is the scenario
/// itself, so this test lets time pass.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_response_is_cut_at_the_write_timeout() {
    let (_b, weir) = edge(|o| o.limits.write_timeout = Duration::from_millis(300)).await;
    // the echo sends a gRPC-typed body back whole: 16 MiB, far more than the sockets hold
    const SIZE: usize = 16 * 1024 * 1024;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(weir.http).await.unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Type: application/grpc\r\nContent-Length: {SIZE}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![0u8; SIZE]).await.unwrap();
    // not reading for 3 s: the response stalls on the full socket and the write timeout ends it
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "weir kept the connection of a client that did not read ({got} bytes read)");
    assert!(got < SIZE, "the whole response came ({got} bytes): the write did not stall");
}
