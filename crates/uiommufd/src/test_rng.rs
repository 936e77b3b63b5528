//! The pseudo-random numbers of the unit tests that check code against a
//! model on generated cases: one xorshift64 generator, seeded by each test
//! so that a failing case is the same on every run.

/// Marsaglia's xorshift64 (shifts 13, 7, 17) from `seed` (not zero): a
/// generator of the next number, for tests only.
pub(crate) fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    assert_ne!(seed, 0, "xorshift's state must not be zero");
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
