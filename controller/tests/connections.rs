//! Connections that never finish their headers (slowloris) are dropped
//! after the header timeout and capped per address, so they cannot starve
//! the clients and agents whose connections carry requests.

mod support;

use std::time::{Duration, Instant};

use bakery_protocol::api::BuildState;
use bakery_protocol::Arch;
use support::{succeeding_agent, unpushed_request, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Opens a connection from `from` and sends half a request's headers.
async fn half_request(addr: std::net::SocketAddr, from: &str) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(format!("{from}:0").parse().unwrap()).ok()?;
    let mut stream = socket.connect(addr).await.ok()?;
    stream
        .write_all(b"GET /v1/info HTTP/1.1\r\nHost: bakery\r\nX-Slow: ")
        .await
        .ok()?;
    Some(stream)
}

/// Whether the server still holds `stream` open (no EOF, no reset).
async fn held(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf))
        .await
        .is_err()
}

#[tokio::test]
async fn a_slowloris_neither_exhausts_the_controller_nor_stalls_a_build() {
    // Half of 400 may wait for headers, 64 from one address.
    let h = Harness::new(&succeeding_agent("0"), &[("MAX_CONNECTIONS", "400")]).await;
    let addr = h.running.as_ref().unwrap().addr;
    let mut slow = Vec::new();
    for _ in 0..1_100 {
        if let Some(s) = half_request(addr, "127.0.0.2").await {
            slow.push(s);
        }
    }
    // And from ten more addresses, 40 each: more than the pool holds.
    for n in 3..13 {
        for _ in 0..40 {
            if let Some(s) = half_request(addr, &format!("127.0.0.{n}")).await {
                slow.push(s);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut still = 0;
    for s in &mut slow {
        if held(s).await {
            still += 1;
        }
    }
    // The fault is there: the pool of waiting connections is full (the
    // oldest were closed to make room for the newer ones).
    assert_eq!(still, 200, "half-open connections held");
    // Meanwhile clients and an agent get through, and a build runs.
    let started = Instant::now();
    let health = h.http.get(h.url("/healthz")).send().await.unwrap();
    assert!(health.status().is_success());
    let key = h.upload(b"slowloris context").await;
    let id = h.create(&unpushed_request(&key, &[Arch::Amd64])).await;
    let status = h.wait_end(&id, Duration::from_secs(30)).await;
    assert_eq!(status.state, BuildState::Succeeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // Past the header timeout every half request is closed.
    tokio::time::sleep(
        bakery_controller::serve::HEADER_TIMEOUT.saturating_sub(started.elapsed())
            + Duration::from_secs(2),
    )
    .await;
    for s in &mut slow {
        assert!(!held(s).await, "a half request outlived the header timeout");
    }
}

/// A kept-alive connection that goes quiet is closed after the timeout
/// too, and a full request on it before then is answered.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let h = Harness::new("sleep 30", &[]).await;
    let addr = h.running.as_ref().unwrap().addr;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: bakery\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let quiet = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
        .await
        .expect("closed within 20 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed, not answered");
    let idle = quiet.elapsed();
    assert!(
        idle + Duration::from_secs(1) >= bakery_controller::serve::HEADER_TIMEOUT,
        "{idle:?}"
    );
}
