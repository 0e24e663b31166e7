//! DHCP replies as planet-init's client decodes them, and the lease made from them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use planet_host::net::dhcp::{Lease, Packet};

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = Packet::decode(data) {
        let lease = Lease::from_ack(&packet);
        let _ = format!("{lease:?}");
    }
});
