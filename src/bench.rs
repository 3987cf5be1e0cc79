//! `tessera bench read`: the native reader against OpenSlide on the same regions, in one run;
//! `tessera bench inference`: the model alone on pre-decoded batches (the ceiling `analyze`
//! is measured against).
//!
//! In: a slide, a region count, size and seed. Out: regions per second for each backend at one
//! thread and at all threads (median of several cold-cache runs) and the native/OpenSlide
//! ratio. Regions are level-0 squares at seeded random locations inside the slide (snapped to
//! the side with `Aligned`, or a patch grid in `analyze`'s read order with `Walk`); both
//! backends read exactly the same list, and a checksum of the pixels proves the work was done.
//! Timings are measurements, never test assertions.

use std::path::Path;
use std::time::Instant;

use crate::config::{BackendChoice, SlideConfig};
use crate::geom::{Level0Px, Size};
use crate::slide::Slide;
use tessera_engine::{Error, Result};

/// What to measure.
#[derive(Debug, Clone)]
pub struct ReadBench {
    /// Regions per run.
    pub regions: usize,
    /// Region side in level-0 pixels.
    pub side: u64,
    /// Seed for the region locations.
    pub seed: u64,
    /// Thread counts to measure (e.g. `[1, 2]`).
    pub threads: Vec<usize>,
    /// Runs per configuration; the median is reported.
    pub repeats: usize,
    /// The native reader's tile cache for the runs (OpenSlide's default is 32 MiB).
    pub cache_bytes: u64,
    /// Where the regions are.
    pub pattern: ReadPattern,
}

/// Where `bench read` puts its regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPattern {
    /// Seeded random level-0 locations: each 256² region spans about four tiles, and tiles
    /// are rarely reused (random access, as in patch sampling).
    Random,
    /// Seeded random locations snapped to multiples of the side (whole-tile reads when the
    /// side equals the tile size).
    Aligned,
    /// A patch grid at stride = side read in `analyze`'s order (vertical strips of about
    /// 2048 px that end on tile boundaries, each top to bottom, batches of 32 patches read in
    /// parallel), starting at a seeded strip: neighbouring patches share tiles, which the
    /// caches serve, as in an analysis.
    Walk,
}

/// One measured configuration.
#[derive(Debug, Clone)]
pub struct ReadBenchRow {
    /// "native" or "openslide".
    pub backend: &'static str,
    /// Threads reading.
    pub threads: usize,
    /// Median regions per second.
    pub regions_per_s: f64,
    /// Every run's regions per second.
    pub runs: Vec<f64>,
    /// Sum of every 61st pixel byte read in one run.
    pub checksum: u64,
}

fn locations(slide: &Slide, spec: &ReadBench) -> Vec<Level0Px> {
    let d = slide.dimensions();
    let mut state = spec.seed ^ 0x5DEE_CE66_D1CE_4E5B;
    let mut next = |n: u64| {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    };
    let side = spec.side.max(1);
    if spec.pattern == ReadPattern::Walk {
        let (cols, rows) = ((d.width / side) as u32, (d.height / side) as u32);
        if cols == 0 || rows == 0 {
            return Vec::new();
        }
        let tile = slide.levels()[0].tile_size.map(|t| t.width);
        let per_strip = crate::pipeline::strip_patches(side as f64, tile);
        let first = next(u64::from(cols)) as u32 / per_strip;
        let strips = cols.div_ceil(per_strip);
        // From the top of a seeded strip, strip after strip (wrapping round), each top to
        // bottom, left to right within a row: the order `analyze` reads its patches in.
        return (0..strips)
            .map(|s| (first + s) % strips)
            .flat_map(|s| {
                let c0 = s * per_strip;
                let c1 = (c0 + per_strip).min(cols);
                (0..rows).flat_map(move |r| (c0..c1).map(move |c| (c, r)))
            })
            .cycle()
            .take(spec.regions)
            .map(|(c, r)| Level0Px::new((u64::from(c) * side) as i64, (u64::from(r) * side) as i64))
            .collect();
    }
    let snap = |v: u64| {
        if spec.pattern == ReadPattern::Aligned {
            v / side * side
        } else {
            v
        }
    };
    (0..spec.regions)
        .map(|_| {
            Level0Px::new(
                snap(next(d.width.saturating_sub(side) + 1)) as i64,
                snap(next(d.height.saturating_sub(side) + 1)) as i64,
            )
        })
        .collect()
}

/// Patches per parallel step of a walk: `analyze`'s default batch size.
const WALK_BATCH: usize = 32;

fn run_once(
    slide: &Slide,
    at: &[Level0Px],
    side: u64,
    threads: usize,
    pattern: ReadPattern,
) -> Result<(f64, u64)> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::InvalidInput {
            path: slide.path().into(),
            reason: format!("cannot start {threads} threads: {e}"),
        })?;
    let read = |p: &Level0Px| -> Result<u64> {
        let img = slide.read_region(*p, 0, Size::new(side, side))?;
        // A sparse checksum keeps the reads observable without adding a full pass over
        // every pixel to both readers' times.
        Ok(img
            .as_raw()
            .iter()
            .step_by(61)
            .map(|&b| b as u64)
            .sum::<u64>())
    };
    let start = Instant::now();
    // The regions are shared out over the pool's threads; the native reader's own parallel
    // tile decoding runs on the same pool, so `threads` bounds all the work. A walk reads as
    // `analyze` does: batch after batch, the patches of one batch in parallel.
    let total: Result<u64> = pool.install(|| {
        use rayon::prelude::*;
        if pattern == ReadPattern::Walk {
            at.chunks(WALK_BATCH)
                .map(|batch| batch.par_iter().map(read).sum::<Result<u64>>())
                .sum()
        } else {
            at.par_iter().map(read).sum()
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let total = total?;
    Ok((at.len() as f64 / secs, total))
}

/// Runs the benchmark on `path`. `config` supplies the OpenSlide location and limits, and its
/// backend: `Auto` measures both readers, `Native` or `OpenSlide` only that one.
pub fn bench_read(
    path: &Path,
    spec: &ReadBench,
    config: &SlideConfig,
) -> Result<Vec<ReadBenchRow>> {
    let mut rows = Vec::new();
    for &threads in &spec.threads {
        // `--backend auto` (the default) measures both readers; naming one measures only it.
        let both = [
            (BackendChoice::Native, "native"),
            (BackendChoice::OpenSlide, "openslide"),
        ];
        for (backend, name) in both
            .into_iter()
            .filter(|(b, _)| config.backend == BackendChoice::Auto || config.backend == *b)
        {
            let config = SlideConfig {
                backend,
                cache_bytes: spec.cache_bytes,
                ..config.clone()
            };
            let mut runs = Vec::new();
            let mut checksum = 0;
            for _ in 0..spec.repeats.max(1) {
                // A fresh handle per run: cold caches for both readers.
                let slide = Slide::open_with(path, &config)?;
                let at = locations(&slide, spec);
                let (rate, sum) = run_once(&slide, &at, spec.side, threads, spec.pattern)?;
                runs.push(rate);
                checksum = sum;
            }
            let mut sorted = runs.clone();
            sorted.sort_by(f64::total_cmp);
            rows.push(ReadBenchRow {
                backend: name,
                threads,
                regions_per_s: sorted[sorted.len() / 2],
                runs,
                checksum,
            });
        }
    }
    Ok(rows)
}

/// What `bench inference` measures: the model alone, on batches decoded beforehand.
#[derive(Debug, Clone)]
pub struct InferenceBench {
    /// Model folder (`None`: the default model).
    pub model: Option<std::path::PathBuf>,
    /// Inference runtime.
    pub inference: crate::model::InferenceChoice,
    /// Where it runs.
    pub device: crate::model::DeviceOptions,
    /// Patches per batch.
    pub batch_size: usize,
    /// Threads of the inference session.
    pub threads: usize,
    /// Batches decoded and held in memory (tissue patches spread over the slide).
    pub batches: usize,
    /// Passes over the batches; the median is reported.
    pub repeats: usize,
    /// µm/px of level 0 when the file lacks it.
    pub mpp: Option<f64>,
}

/// The model's own throughput.
#[derive(Debug, Clone)]
pub struct InferenceBenchResult {
    /// The runtime's line (name, version, library).
    pub backend: String,
    /// Patches per pass.
    pub patches: usize,
    /// Patches per second of each pass.
    pub runs: Vec<f64>,
    /// Median of `runs`.
    pub patches_per_s: f64,
}

/// Pure inference throughput on pre-decoded batches of real tissue patches of `slide`, with
/// the same model, batch size and session threads as `analyze` would use. Dividing `analyze`'s
/// patches/s by this gives the engine's overhead (1.0: the model is the only cost).
pub fn bench_inference(
    slide_path: &Path,
    spec: &InferenceBench,
    config: &SlideConfig,
) -> Result<InferenceBenchResult> {
    use crate::batch::make_batch;
    use crate::pipeline::{load_model, plan_slide, AnalyzeConfig};

    let slide = Slide::open_with(slide_path, config)?;
    let mpp = match (spec.mpp, slide.mpp()) {
        (Some(v), _) => v,
        (None, Some(m)) => (m.x + m.y) / 2.0,
        (None, None) => {
            return Err(Error::MissingMpp {
                path: slide_path.into(),
            })
        }
    };
    // The analysis's own stages and model loading, with its defaults.
    let cfg = AnalyzeConfig {
        model: spec.model.clone(),
        inference: spec.inference,
        device: spec.device.clone(),
        inference_threads: spec.threads.max(1),
        slide: config.clone(),
        ..AnalyzeConfig::default()
    };
    let lm = load_model(&cfg)?;
    let c = &lm.folder.config;
    let (grid, plan) = plan_slide(&slide, &cfg, c, mpp)?;
    let wanted = spec.batches.max(1) * spec.batch_size.max(1);
    if grid.patches.is_empty() {
        return Err(Error::Inference {
            path: slide_path.into(),
            backend: "bench".into(),
            message: "no tissue patch to benchmark with".into(),
        });
    }
    // Patches spread evenly over the grid (repeating when the slide has fewer).
    let step = (grid.patches.len() as f64 / wanted as f64).max(f64::MIN_POSITIVE);
    let picked: Vec<_> = (0..wanted)
        .map(|i| grid.patches[((i as f64 * step) as usize) % grid.patches.len()].clone())
        .collect();
    let pre = c.preprocess();
    let batches: Vec<_> = picked
        .chunks(spec.batch_size.max(1))
        .map(|chunk| make_batch(&slide, chunk, plan, &pre))
        .collect::<Result<_>>()?;
    let mut session = lm.model.session()?;
    session.run(batches[0].tensor().0)?; // warm-up
    let mut runs = Vec::new();
    for _ in 0..spec.repeats.max(1) {
        let mut running = std::time::Duration::ZERO;
        for b in &batches {
            // Packed into the model's tensor off the clock: the model alone (host→device
            // copies included), which `analyze`'s workers overlap with packing.
            let input = b.tensor().0;
            let t = Instant::now();
            std::hint::black_box(session.run(input)?);
            running += t.elapsed();
        }
        runs.push(wanted as f64 / running.as_secs_f64());
    }
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(InferenceBenchResult {
        backend: lm.chosen.note,
        patches: wanted,
        patches_per_s: sorted[sorted.len() / 2],
        runs,
    })
}
