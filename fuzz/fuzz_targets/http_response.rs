//! HTTP responses as PID 1 reads them from metadata servers, NoCloud URLs and update servers.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = planet_host::http::parse_response(data);
});
