//! Partition tables as planet-init reads them from whatever disk is attached, at 512- and
//! 4096-byte sectors, and the first-boot growth of a table that parsed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let Some((which, rest)) = planet_fuzz::select(data, 2) else { return };
    let sector_size: u64 = if which == 0 { 512 } else { 4096 };
    let total = rest.len() as u64 / sector_size;
    if let Ok(gpt) = planet_gpt::Gpt::read_from(&mut Cursor::new(rest), sector_size, total) {
        let _ = gpt.validate();
        let _ = gpt.entry_array();
        let _ = gpt.find("planet-state");
    }
});
