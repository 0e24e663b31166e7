//! The small parsers: the kernel command line, boot entry file names, trusted key files, bundle
//! expiry dates, release ordering (whose total-order properties the update agent's downgrade
//! check rests on), and what a node reads from the network before it trusts anything: the
//! master's join document and join tokens.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::cmp::Ordering;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = planet_config::CmdlineConfig::parse(text);
    let _ = planet_config::bootentry::EntryName::parse(text);
    let _ = planet_bundle::KeyRing::parse(text);
    if let Ok(token) = text.parse::<planet_node::join::JoinToken>() {
        assert_eq!(token.bearer(), text, "a token must read back as itself");
    }
    let token: planet_node::join::JoinToken = "abcdef.0123456789abcdef".parse().unwrap();
    if let Ok(ca) = planet_node::join::verify(text, &token, "master") {
        // Only a document MACed with the token verifies: the fuzzer must not forge one.
        assert_eq!(planet_node::join::document(&ca, &token), text, "a document verified that we did not make");
    }
    if let Ok(at) = planet_bundle::parse_expiry(text, 1_700_000_000) {
        assert!(at > 1_700_000_000, "{text:?} gives an expiry {at} not after now");
        let _ = planet_bundle::format_utc(at);
    }
    let mut parts = text.splitn(3, '\n');
    let (a, b, c) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let cmp = planet_bundle::compare_releases;
    assert_eq!(cmp(a, a), Ordering::Equal, "{a:?} is not equal to itself");
    assert_eq!(cmp(a, b), cmp(b, a).reverse(), "{a:?} and {b:?} order differently each way");
    if cmp(a, b) == Ordering::Less && cmp(b, c) == Ordering::Less {
        assert_eq!(cmp(a, c), Ordering::Less, "{a:?} < {b:?} < {c:?} but not {a:?} < {c:?}");
    }
});
