//! The test harness's Ethernet hub (tests/common/hub.rs), with plain TCP clients speaking
//! QEMU's `-netdev socket` stream framing: what one client sends reaches every other client,
//! not the sender, and a client that goes away does not stop the rest.

mod common;

use common::hub::{Hub, MAX_FRAME};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn client(hub: &Hub) -> TcpStream {
    let c = TcpStream::connect(("127.0.0.1", hub.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
}

/// Waits until the hub has accepted `n` connections (accepting is asynchronous).
fn wait_connections(hub: &Hub, n: usize) {
    let start = Instant::now();
    while hub.connections() != n {
        assert!(start.elapsed() < Duration::from_secs(5), "{} connections, not {n}", hub.connections());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn send(c: &mut TcpStream, frame: &[u8]) {
    let mut msg = (frame.len() as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(frame);
    c.write_all(&msg).unwrap();
}

fn recv(c: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    c.read_exact(&mut len).unwrap();
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    c.read_exact(&mut frame).unwrap();
    frame
}

/// Nothing arrives within a short while.
fn assert_silent(c: &mut TcpStream) {
    c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut b = [0u8; 1];
    match c.read(&mut b) {
        Err(e) => assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e}"),
        Ok(n) => panic!("{n} unexpected bytes"),
    }
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
}

#[test]
fn frames_reach_every_other_client_and_not_the_sender() {
    let hub = Hub::start();
    let (mut a, mut b, mut c) = (client(&hub), client(&hub), client(&hub));
    wait_connections(&hub, 3);

    send(&mut a, b"frame from a");
    assert_eq!(recv(&mut b), b"frame from a");
    assert_eq!(recv(&mut c), b"frame from a");
    assert_silent(&mut a);

    // Frames keep their order and boundaries, the largest one QEMU sends included.
    let big: Vec<u8> = (0..MAX_FRAME).map(|i| (i % 251) as u8).collect();
    send(&mut b, b"one");
    send(&mut b, &big);
    send(&mut b, b"");
    assert_eq!(recv(&mut a), b"one");
    assert_eq!(recv(&mut a), big);
    assert_eq!(recv(&mut a), b"");
    assert_eq!(recv(&mut c), b"one");
    assert_eq!(recv(&mut c), big);
    assert_eq!(recv(&mut c), b"");
    assert_silent(&mut b);
}

#[test]
fn a_closed_client_does_not_stop_the_rest() {
    let hub = Hub::start();
    let (mut a, b, mut c) = (client(&hub), client(&hub), client(&hub));
    wait_connections(&hub, 3);
    drop(b);
    wait_connections(&hub, 2);
    send(&mut a, b"after b left");
    assert_eq!(recv(&mut c), b"after b left");
    send(&mut c, b"reply");
    assert_eq!(recv(&mut a), b"reply");

    // A late joiner is part of the segment too.
    let mut d = client(&hub);
    wait_connections(&hub, 3);
    send(&mut d, b"from d");
    assert_eq!(recv(&mut a), b"from d");
    assert_eq!(recv(&mut c), b"from d");
}

#[test]
fn a_client_sending_an_impossible_length_is_dropped_alone() {
    let hub = Hub::start();
    let (mut a, mut bad, mut c) = (client(&hub), client(&hub), client(&hub));
    wait_connections(&hub, 3);
    bad.write_all(&u32::MAX.to_be_bytes()).unwrap();
    wait_connections(&hub, 2);
    // The hub closed the bad client's connection.
    let mut rest = Vec::new();
    assert_eq!(bad.read_to_end(&mut rest).unwrap_or(0), 0);
    send(&mut a, b"still here");
    assert_eq!(recv(&mut c), b"still here");
}

#[test]
fn dropping_the_hub_closes_every_connection() {
    let hub = Hub::start();
    let (mut a, mut b) = (client(&hub), client(&hub));
    wait_connections(&hub, 2);
    let port = hub.port;
    drop(hub);
    let mut rest = Vec::new();
    assert_eq!(a.read_to_end(&mut rest).unwrap_or(0), 0);
    assert_eq!(b.read_to_end(&mut rest).unwrap_or(0), 0);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "the hub still listens");
}
