//! Update bundles as the update agent reads them: the prelude, the header, the whole streamed
//! verification, and chunk indexes. Properties: a bundle verifies only if the fuzz key signed
//! exactly it; an index that parses writes back as the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = planet_fuzz::fuzz_key().public();
    if let Ok(prelude) = planet_bundle::read_prelude_unverified(data) {
        let after = data.get(planet_bundle::PRELUDE_LEN as usize..).unwrap_or(&[]);
        let _ = planet_bundle::parse_header(after, &prelude);
    }
    let _ = planet_bundle::read_prelude(data, &key);
    let _ = planet_bundle::verify_reader(&mut &data[..], data.len() as u64, &key);
    if let Ok(list) = planet_bundle::chunks::ChunkList::from_index(data, None) {
        assert_eq!(list.to_index(), data, "an index that parses must write back as itself");
    }
});
