//! What the fuzz targets share: splitting one input into a selector and a payload, and the
//! fixed key that the bundle target and its seed corpus agree on.

#[path = "../corpus-maker/src/key.rs"]
mod key;
pub use key::fuzz_key;

/// The first byte picks which parser of a target gets the rest (libFuzzer mutates it like any
/// other byte, so every parser is reached from one corpus).
pub fn select(data: &[u8], choices: u8) -> Option<(u8, &[u8])> {
    let (first, rest) = data.split_first()?;
    Some((first % choices, rest))
}
