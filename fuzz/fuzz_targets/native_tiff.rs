//! Fuzzes the native reader: TIFF/IFD parsing, level and associated-image layout, tile decoding
//! (JPEG, JPEG 2000, LZW, Deflate, raw) and region assembly, from bytes in memory.
//! Any panic, hang or allocation past the limits is a finding.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tessera_slide::slide::native::NativeReader;

mod exercise;

fuzz_target!(|data: &[u8]| {
    let limits = exercise::limits();
    let name = Path::new("fuzz.tiff");
    let Ok(reader) = NativeReader::from_bytes(name, data.to_vec(), &limits, 8 << 20) else {
        return;
    };
    exercise::exercise(name, reader, &limits);
});
