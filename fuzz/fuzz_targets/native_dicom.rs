//! Fuzzes the native DICOM reader on one instance from memory: dicom-rs parsing under
//! Tessera's length, size and depth checks, the frame table (encapsulated items, native pixel
//! data, TILED_FULL and TILED_SPARSE positions), level layout, frame decoding and region
//! assembly. One instance is one level (an instance holding only an associated image is
//! refused as having no levels), so associated images, multi-file levels, concatenations and
//! folder scanning are covered by the tests, not here. Any panic the reader does not catch,
//! hang or allocation past the limits is a finding.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tessera_slide::slide::native::NativeReader;

mod exercise;

fuzz_target!(init: {
    // The reader catches dicom-rs's panics on malformed data and reports a corrupt file, so
    // unwinding must reach it: libfuzzer-sys's hook would abort first. A panic the reader does
    // not catch still ends the run as a crash (libfuzzer-sys aborts when the target panics).
    // The default hook: caught panics print their message too, and an uncaught one says
    // where it happened before libfuzzer-sys aborts.
    let _ = std::panic::take_hook();
}, |data: &[u8]| {
    let limits = exercise::limits();
    let name = Path::new("fuzz.dcm");
    let Ok(reader) = NativeReader::dicom_from_bytes(name, data.to_vec(), &limits, 8 << 20) else {
        return;
    };
    exercise::exercise(name, reader, &limits);
});
