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
use tessera_slide::{Level0Px, Limits, Size, Slide};

fuzz_target!(init: {
    // The reader catches dicom-rs's panics on malformed data and reports a corrupt file, so
    // unwinding must reach it: libfuzzer-sys's hook would abort first. A panic the reader does
    // not catch still ends the run as a crash (libfuzzer-sys aborts when the target panics).
    // The default hook: caught panics print their message too, and an uncaught one says
    // where it happened before libfuzzer-sys aborts.
    let _ = std::panic::take_hook();
}, |data: &[u8]| {
    let limits = Limits {
        max_region_pixels: 1 << 20,
        max_level0_width: 1 << 20,
        max_level0_height: 1 << 20,
        max_associated_pixels: 1 << 22,
        max_icc_bytes: 1 << 20,
    };
    let name = Path::new("fuzz.dcm");
    let Ok(reader) = NativeReader::dicom_from_bytes(name, data.to_vec(), &limits, 8 << 20) else {
        return;
    };
    let Ok(slide) = Slide::from_reader(name, Box::new(reader), &limits) else {
        return;
    };
    let _ = slide.icc_profile();
    for (i, level) in slide.levels().iter().enumerate() {
        let ds = level.downsample;
        let s = level.size;
        // A tile-aligned read, an unaligned one, one across the far edge, one at negative
        // coordinates, and one at a fractional level position.
        for (x, y, w, h) in [
            (0, 0, s.width.min(256), s.height.min(256)),
            (3, 5, s.width.min(300), s.height.min(200)),
            ((s.width.saturating_sub(7)) as i64, (s.height.saturating_sub(9)) as i64, 64, 64),
            (-11, -13, 40, 40),
        ] {
            let at = Level0Px::new((x as f64 * ds) as i64 + i as i64, (y as f64 * ds) as i64);
            let _ = slide.read_region(at, i, Size::new(w.max(1), h.max(1)));
        }
    }
    for a in slide.associated_images().to_vec() {
        let _ = slide.read_associated_image(&a.name);
    }
});
