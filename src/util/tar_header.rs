//! The fields of a tar header block, shared by the two tar writers: the rootfs stage's canonical
//! pax stream (`rootfs/tar_writer.rs`) and the GCE image archive's GNU sparse member
//! (`convert.rs`). Offsets are POSIX ustar's, which GNU's format shares up to the magic.

/// A tar block: headers, data padding and the end-of-archive marker are made of them.
pub const BLOCK: usize = 512;

/// Whether `value` fits a NUL-terminated octal field `width` bytes wide.
pub fn fits_octal(value: u64, width: usize) -> bool {
    value < 1u64 << (3 * (width as u32 - 1))
}

/// `value` in octal, zero-padded, NUL-terminated. The caller checks [`fits_octal`] first (the
/// canonical stream puts larger values in a pax record and writes 0 here).
pub fn put_octal(field: &mut [u8], value: u64) {
    debug_assert!(fits_octal(value, field.len()), "{value} does not fit {} bytes", field.len());
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    field[..width].copy_from_slice(&s.as_bytes()[s.len() - width..]);
    field[width] = 0;
}

/// `value` in octal when it fits, otherwise in GNU's base-256 form (high bit set, big-endian).
pub fn put_number(field: &mut [u8], value: u64) {
    if fits_octal(value, field.len()) {
        put_octal(field, value);
    } else {
        field.fill(0);
        field[0] = 0x80;
        let n = field.len();
        field[n - 8..].copy_from_slice(&value.to_be_bytes());
    }
}

/// As much of `s` as fits; the rootfs stream writes truncated names only beside a pax record
/// carrying the whole one.
pub fn put_bytes(field: &mut [u8], s: &[u8]) {
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s[..n]);
}

/// Fills in the header's checksum: the byte sum with the field itself taken as spaces, written
/// as six octal digits, a NUL and a space.
pub fn seal(h: &mut [u8; BLOCK]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    put_octal(&mut h[148..155], u64::from(sum));
    h[155] = b' ';
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn numbers_are_octal_until_they_overflow_then_base_256() {
        let mut f = [0xffu8; 12];
        put_number(&mut f, 0o777);
        assert_eq!(&f, b"00000000777\0");
        assert!(fits_octal(0o77_777_777_777, 12) && !fits_octal(1 << 33, 12));
        put_number(&mut f, 1 << 33);
        assert_eq!(f, [0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]);
    }

    #[test]
    fn a_sealed_header_is_one_the_tar_crate_reads() {
        let mut h = [0u8; BLOCK];
        put_bytes(&mut h[0..100], b"disk.raw");
        put_octal(&mut h[100..108], 0o644);
        put_octal(&mut h[124..136], 5);
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        seal(&mut h);
        let mut archive = h.to_vec();
        archive.extend_from_slice(b"hello");
        archive.resize(4 * BLOCK, 0);
        let mut ar = tar::Archive::new(&archive[..]);
        let mut entry = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("disk.raw"));
        let mut body = String::new();
        entry.read_to_string(&mut body).unwrap();
        assert_eq!(body, "hello");
        // One flipped byte and the checksum no longer matches.
        archive[0] = b'D';
        assert!(tar::Archive::new(&archive[..]).entries().unwrap().next().unwrap().is_err());
    }
}
