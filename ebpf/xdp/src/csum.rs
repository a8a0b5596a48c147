//! Internet checksums (RFC 1071) over small fixed buffers.

/// Adds the big-endian 16-bit words of `b` to `sum`.
#[inline(always)]
pub fn add<const N: usize>(mut sum: u64, b: &[u8; N]) -> u64 {
    let mut i = 0;
    while i + 1 < N {
        sum += ((b[i] as u64) << 8) | b[i + 1] as u64;
        i += 2;
    }
    if N % 2 == 1 {
        sum += (b[N - 1] as u64) << 8;
    }
    sum
}

/// Folds a sum into the one's-complement checksum.
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
