//! The test harness's Ethernet hub (tests/common/hub.rs), with plain TCP clients speaking
//! QEMU's `-netdev socket` stream framing: what one client sends reaches every other client,
//! not the sender, and a client that goes away does not stop the rest; and real QEMUs linked
//! with `-netdev socket,connect=` (their NIC's boot ROM broadcasting) are heard through it.

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

/// A QEMU started by this test, killed when dropped.
struct Qemu(std::process::Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A diskless QEMU whose virtio NIC's boot ROM (iPXE) broadcasts DHCP requests into the hub:
/// real `-netdev socket,connect=` framing, the way `planet-image run --link connect:PORT` links
/// a guest.
fn pxe_guest(hub: &Hub, mac: &str) -> Qemu {
    let child = std::process::Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-display", "none", "-nodefaults", "-m", "128", "-boot", "n"])
        .arg("-netdev")
        .arg(format!("socket,id=link0,connect=127.0.0.1:{}", hub.port))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=link0,mac={mac}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("starting qemu-system-x86_64");
    Qemu(child)
}

fn mac_bytes(mac: &str) -> Vec<u8> {
    mac.split(':').map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

#[test]
fn qemu_guests_frames_cross_the_hub() {
    let hub = Hub::start();
    let mut observer = client(&hub);
    wait_connections(&hub, 1);
    let macs = ["52:54:00:50:01:01", "52:54:00:50:01:02"];
    let _guests: Vec<Qemu> = macs.iter().map(|m| pxe_guest(&hub, m)).collect();
    wait_connections(&hub, 3);

    // Broadcasts and multicasts (DHCP, IPv6 router solicitations) from both guests' MACs reach
    // the third party: QEMU's framing is read right, and each frame is a whole Ethernet frame.
    let mut seen = [false; 2];
    let start = Instant::now();
    observer.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    while seen != [true, true] {
        assert!(start.elapsed() < Duration::from_secs(120), "frames seen from {seen:?} of {macs:?}");
        let frame = recv(&mut observer);
        assert!(frame.len() >= 14 && frame.len() <= MAX_FRAME, "a frame of {} bytes", frame.len());
        for (i, m) in macs.iter().enumerate() {
            if frame[6..12] == mac_bytes(m)[..] {
                // DHCP broadcasts and IPv6 router solicitations: group addresses.
                assert_eq!(frame[0] & 1, 1, "not to a group address: {frame:02x?}");
                seen[i] = true;
            }
        }
    }
}

/// Three machines of the demo image (master, two nodes) on one segment through the hub, with
/// static addresses from their seeds: each node registers its address in the master's etcd
/// over the link, so TCP between guests crosses the hub both ways.
#[test]
fn three_machines_reach_each_other_through_the_hub() {
    use common::*;
    let s = Scratch::new("hub-three");
    let image = s.path("demo.qcow2");
    build("qcow2", &fixture("demo.tar"), &image, &[]);
    let hub = Hub::start();
    let etcd = free_port();
    let token = "hubtst.0123456789hubtst";
    let mut guests = Vec::new();
    for (name, role, host) in [("master-1", "master", 10u8), ("node-1", "node", 11), ("node-2", "node", 12)] {
        let mac = format!("52:54:00:50:02:{host:02x}");
        let address = format!("192.168.50.{host}/24");
        let seed = nocloud_seed(
            &s,
            &format!("{name}.img"),
            &[
                "--role",
                role,
                "--master-ip",
                "192.168.50.10",
                "--hostname",
                name,
                "--address",
                &address,
                "--interface",
                &mac,
            ],
            Some(token),
        );
        let (seed, link) = (seed.display().to_string(), format!("connect:{}", hub.port));
        let forward = format!("{etcd}:2379");
        let mut args = vec!["--snapshot", "--seed", &seed, "--link", &link, "--link-mac", &mac];
        if role == "master" {
            args.extend(["--forward", &forward]);
        }
        guests.push(Guest::start(&image, &s, &args));
    }
    // planet-image run probes the accelerator before QEMU starts: give it time on a loaded machine.
    assert!(poll(Duration::from_secs(120), || (hub.connections() == 3).then_some(())).is_some(), "guests not linked");
    for g in &mut guests {
        g.wait_for("planet-init: launcher started", Duration::from_secs(400));
    }
    let want = [("node-1", "192.168.50.11"), ("node-2", "192.168.50.12")];
    let got = poll(Duration::from_secs(300), || {
        let r = etcd_range(etcd, "/nodes/").unwrap_or_default();
        want.iter().all(|(n, ip)| r.contains(&b64(&format!("/nodes/{n}"))) && r.contains(&b64(ip))).then_some(r)
    });
    assert!(
        got.is_some(),
        "the nodes did not register in the master's etcd through the hub; frames forwarded: {}\n{}",
        hub.forwarded.load(std::sync::atomic::Ordering::Relaxed),
        guests.iter().map(|g| tail(&g.console())).collect::<Vec<_>>().join("\n----\n")
    );
}
