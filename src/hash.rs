//! The one hash of the daemon: ids, content fingerprints, ETags.

/// 64-bit FNV-1a: a small, stable, dependency-free hash for ids and fingerprints.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
