//! Criterion benches for the native reader: tile decode and region assembly, on the shared
//! slides (skipped with a message when ../shared/testdata is absent).
//!
//! `cargo bench --bench read`. The end-to-end comparison with OpenSlide is
//! `tessera bench read` (see BENCHMARKS.md).

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use tessera::{BackendChoice, Level0Px, Size, Slide, SlideConfig};

fn slide(rel: &str, cache_bytes: u64) -> Option<Slide> {
    let root = std::env::var_os("TESSERA_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata"));
    let config = SlideConfig {
        backend: BackendChoice::Native,
        cache_bytes,
        ..SlideConfig::default()
    };
    match Slide::open_with(root.join(rel), &config) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

fn tile_decode(c: &mut Criterion) {
    // An aligned whole-tile read decodes straight into the output, bypassing the cache, so
    // every iteration is one full decode.
    if let Some(s) = slide("slides/aperio/CMU-1-Small-Region.svs", 0) {
        c.bench_function("decode JPEG tile 240² (CMU-1, aligned read)", |b| {
            b.iter(|| black_box(s.read_region(Level0Px::new(960, 1200), 0, Size::new(240, 240))))
        });
    }
    if let Some(s) = slide("slides/aperio/TCGA-CR-7395-01A-01-TS1.svs", 0) {
        c.bench_function("decode JPEG 2000 tile 256² (TCGA, aligned read)", |b| {
            b.iter(|| black_box(s.read_region(Level0Px::new(1024, 1024), 0, Size::new(256, 256))))
        });
    }
}

fn region_assembly(c: &mut Criterion) {
    // With a warm cache these measure stitching alone.
    if let Some(s) = slide("slides/aperio/CMU-1-Small-Region.svs", 256 << 20) {
        let at = Level0Px::new(1000, 1100);
        let _ = s.read_region(at, 0, Size::new(512, 512));
        c.bench_function("assemble 512² across 9 cached tiles (whole-pixel)", |b| {
            b.iter(|| black_box(s.read_region(at, 0, Size::new(512, 512))))
        });
    }
    if let Some(s) = slide("slides/aperio/TCGA-CR-7395-01A-01-TS1.svs", 256 << 20) {
        let at = Level0Px::new(1001, 999);
        let _ = s.read_region(at, 1, Size::new(512, 512));
        c.bench_function(
            "assemble 512² at a fractional level-1 start (bilinear)",
            |b| b.iter(|| black_box(s.read_region(at, 1, Size::new(512, 512)))),
        );
    }
}

criterion_group!(benches, tile_decode, region_assembly);
criterion_main!(benches);
