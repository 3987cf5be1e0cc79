//! JPEG marker segments: the one walker over a JPEG stream's header that both the tile decoder
//! dispatch ([`super::decode`]) and Tessera's own baseline decoder ([`super::baseline`]) use.
//!
//! In: a JPEG stream's bytes. Out: its marker segments, in order, each with its payload and
//! where it ends. No pixels, no coordinates.

/// A JPEG stream's marker segments after SOI, in order, up to and including the first SOS:
/// (marker, payload cut at the end of the data, offset just past the segment). Fill bytes are
/// skipped. Ends at the end of the data or at a length field under 2 (a segment length counts
/// its own two bytes; less is malformed, and the decoder will say so); `Err(())` at a byte
/// where a marker should be.
pub(crate) fn segments(stream: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8], usize), ()>> + '_ {
    let mut i = 2;
    let mut done = false;
    std::iter::from_fn(move || loop {
        if done || i + 4 > stream.len() {
            return None;
        }
        if stream[i] != 0xFF {
            done = true;
            return Some(Err(()));
        }
        let marker = stream[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        let len = u16::from_be_bytes([stream[i + 2], stream[i + 3]]) as usize;
        if len < 2 {
            return None;
        }
        let end = i + 2 + len;
        let payload = &stream[i + 4..end.min(stream.len())];
        i = end;
        done = marker == 0xDA;
        return Some(Ok((marker, payload, end)));
    })
}
