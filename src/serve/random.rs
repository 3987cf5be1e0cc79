//! Randomness for the viewer: bytes from the kernel (`/dev/urandom`), for session ids, CSRF
//! tokens, password salts, access tokens and course-case ids.
//!
//! In: nothing. Out: `N` random bytes, or the error naming `/dev/urandom`. No coordinates.

use std::path::Path;

use crate::error::{Error, Result};

/// `N` random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    let path = Path::new("/dev/urandom");
    use std::io::Read;
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Error::from_io(path, e))?;
    Ok(b)
}

/// Bytes as lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
