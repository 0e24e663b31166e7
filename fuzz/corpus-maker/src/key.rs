/// The key the bundle fuzz target verifies against and the seed bundles are signed with, so the
/// fuzzer starts from bundles that pass the signature and reaches the header and section checks.
/// A throwaway key for fuzzing only: it signs nothing any machine trusts.
pub fn fuzz_key() -> planet_bundle::SecretKey {
    planet_bundle::SecretKey::from_seed([7; 32], *b"fuzzkey!")
}
