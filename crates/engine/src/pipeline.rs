//! `tessera analyze`: the one place the stages are chained.
//!
//! ```text
//! Slide ─► tissue::detect ─► TissueMask ─► PatchGrid::plan ─► PatchGrid
//!       ─► batch::make_batch (rayon, bounded queue) ─► PatchBatch ─► Session::run (workers)
//!       ─► Predictions (keyed by GridIndex) ─► stitch::Heatmap ─► outputs (atomic folder)
//! ```
//!
//! In: a slide path and an [`AnalyzeConfig`]. Out: `OUT/<slide name>/` holding result.json,
//! patches.csv, annotations.geojson, heatmap-<class>.png, overlay-<class>.png, tissue-mask.png,
//! thumbnail.png, region-<n>.jpg (crops of the top-scoring regions), report.html (and
//! report.pdf, label.png and macro.png when asked). The folder is written under a temporary
//! name and renamed when complete, so it is either complete or absent. Memory is bounded by the queue depth: at most
//! `queue_depth` batches wait between decoding and inference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::batch::make_batch_in;
use crate::config::SlideConfig;
use crate::error::{Error, Result};
use crate::grid::{read_plan, GridSpec, PatchGrid};
use crate::imaging::preprocess::Preprocess;
use crate::model::{self, InferenceChoice, ModelFolder};
use crate::output::{self, geojson};
use crate::slide::{Mpp, MppSource, Slide};
use crate::stitch::{top_patches, Heatmap, Predictions, ScoreMethod};
use crate::tissue::{self, TissueParams};

pub use crate::results::RESULT_SCHEMA_VERSION;
use crate::results::{
    ClassStats, CropBox, DicomWebRecord, Dimensions, Fingerprint, Identifiers, InferenceRecord,
    ModelRecord, Parameters, PatchRef, PatchRow, PatchTable, Percentiles, Point,
    PreprocessingRecord, ReaderRecord, SlideRecord, SlideResult, SlideScore, StainRecord,
    TissueRecord, TopRegion,
};

/// What a run reports while it works (for progress bars and logs).
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    /// A cohort run starts slide `index` (1-based) of `total`.
    SlideStarted {
        /// 1-based position in the run.
        index: usize,
        /// Slides in the run (this shard).
        total: usize,
        /// The slide's output name.
        name: String,
    },
    /// Inference on a slide starts: `total` patches to analyse.
    PatchesPlanned {
        /// Patches in the grid.
        total: usize,
    },
    /// `done` of the slide's patches have been analysed.
    PatchesDone {
        /// Patches analysed so far.
        done: usize,
    },
    /// The model was loaded: which runtime, on which device, and (for `--device auto`) why
    /// each faster device was not used.
    ModelLoaded {
        /// One line for the user.
        note: String,
    },
}

/// The callback type behind [`Progress`].
pub type ProgressFn = dyn Fn(&ProgressEvent) + Send + Sync;

/// A progress callback; called from worker threads, so it must be cheap.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<ProgressFn>>);

impl Progress {
    /// A callback receiving every event.
    pub fn new(f: impl Fn(&ProgressEvent) + Send + Sync + 'static) -> Self {
        Progress(Some(Arc::new(f)))
    }

    /// Sends `event` to the callback, if there is one.
    pub fn emit(&self, event: ProgressEvent) {
        if let Some(f) = &self.0 {
            f(&event);
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(callback)"
        } else {
            "Progress(none)"
        })
    }
}

/// Everything `analyze` needs besides the slide.
///
/// Its serialization is the settings part of the run key ([`run_key`]): every field is in the
/// key unless marked `#[serde(skip)]`, and a field is skipped only when it cannot change what
/// is written (where it runs, how fast, where to) — so a new setting invalidates finished
/// results by construction, until someone decides, with a reason beside the attribute, that it
/// does not.
#[derive(Debug, Clone, Serialize)]
pub struct AnalyzeConfig {
    /// Output root; each slide gets `OUT/<slide name>/`.
    // Not in the run key: Where results go, not what they are.
    #[serde(skip)]
    pub out: PathBuf,
    /// A DICOMweb root (`http(s)://…/dicom-web`) to store the DICOM outputs in with STOW-RS once
    /// a slide's folder is complete. Not in the run key: where results go.
    #[serde(skip)]
    pub dicomweb_store: Option<String>,
    /// Model folder (`None`: the bundled default, `models/he-cellularity`).
    // Not in the run key: The model is in the key by its SHA-256 and configuration, not its path.
    #[serde(skip)]
    pub model: Option<PathBuf>,
    /// Inference backend.
    // Not in the run key: ONNX Runtime and tract agree within 1e-4 (tested); result.json records which ran.
    #[serde(skip)]
    pub inference: InferenceChoice,
    /// Where inference runs (`--device`, default auto), FP16 and the TensorRT engine cache.
    pub device: crate::model::DeviceOptions,
    /// Where patches are resized and normalised (`--gpu-preprocess`, default auto).
    // Not in the run key: GPU and CPU preprocessing agree within rounding (tested); result.json records which ran.
    #[serde(skip)]
    pub gpu_preprocess: crate::gpu::GpuPreprocess,
    /// Reinhard stain normalisation of every patch towards this target (`--reinhard`; off by
    /// default).
    pub stain: Option<crate::imaging::stain::Reinhard>,
    /// Patches per batch (default 32).
    // Not in the run key: Speed only.
    #[serde(skip)]
    pub batch_size: usize,
    /// Batches waiting between decoding and inference (default 4).
    // Not in the run key: Speed only.
    #[serde(skip)]
    pub queue_depth: usize,
    /// Inference workers, each with its own session (default 1; a run opens at least one per
    /// device, two per GPU).
    // Not in the run key: Speed only; results are keyed by grid index.
    #[serde(skip)]
    pub workers: usize,
    /// Threads each inference session may use (default: all cores).
    // Not in the run key: Speed only.
    #[serde(skip)]
    pub inference_threads: usize,
    /// Threads reading and decoding patches (default: half the cores, at least 1). Decoding
    /// and inference overlap through the queue, so on 2 cores each side gets about one; on 16,
    /// 8 decode while inference uses its own pool.
    // Not in the run key: Speed only.
    #[serde(skip)]
    pub decode_threads: usize,
    /// Stride in model pixels (default: the patch size, no overlap).
    pub stride_pixels: Option<u32>,
    /// Minimum tissue fraction of a patch (default 0.5).
    pub min_tissue: f64,
    /// Probability threshold for regions and areas (default 0.5).
    pub threshold: f32,
    /// MPP to use instead of (or when missing from) the file.
    pub mpp_override: Option<f64>,
    /// Fingerprint the whole file instead of its size and first and last MiB.
    pub hash_full: bool,
    /// GeoJSON larger than this many bytes is written gzip-compressed as
    /// `annotations.geojson.gz` (default 32 MiB).
    pub geojson_gzip_bytes: usize,
    /// Tissue detector parameters.
    pub tissue: TissueParams,
    /// Slide quality control: what happens to artefact patches (`--qc`), every detector's
    /// thresholds and the verdict rules.
    pub qc: crate::qc::QcParams,
    /// An ONNX tissue segmentation model (a `.onnx` file, or a folder holding one) with the
    /// tissue U-Net's contract, used instead of the classical detector.
    // Not in the run key: In the key by its file's SHA-256 (see `run_key_for`), not its path.
    #[serde(skip)]
    pub tissue_model: Option<PathBuf>,
    /// A lab's dense QC model folder (`--qc-model`), whose classes are artefact kinds
    /// ([`crate::qc::learned`]); unused with `--qc off`.
    // Not in the run key: In the key by its model's SHA-256 and configuration (see `run_key_for`), not its path.
    #[serde(skip)]
    pub qc_model: Option<PathBuf>,
    /// Slide reading.
    pub slide: SlideConfig,
    /// How the slide-level score of the positive class is made (default: mean of the top 10).
    #[serde(serialize_with = "as_display")]
    pub slide_score: ScoreMethod,
    /// Top-scoring regions cropped for the report (default 6).
    pub top_regions: usize,
    /// Side of each region crop in model pixels, i.e. at the model's µm/px (default 512).
    pub region_pixels: u32,
    /// Write the slide's label and macro images (patient identifiers) and show them in the
    /// report. Off by default.
    pub include_label: bool,
    /// Also print the report to report.pdf with headless Chromium.
    pub pdf: bool,
    /// Progress callback (none by default).
    // Not in the run key: Reporting only.
    #[serde(skip)]
    pub progress: Progress,
}

impl Default for AnalyzeConfig {
    fn default() -> Self {
        // The process's CPUs: affinity, cgroup quota and SLURM_CPUS_PER_TASK.
        let cores = crate::sys::cpus();
        Self {
            out: PathBuf::from("tessera-out"),
            model: None,
            inference: InferenceChoice::Auto,
            device: crate::model::DeviceOptions::default(),
            gpu_preprocess: crate::gpu::GpuPreprocess::Auto,
            stain: None,
            batch_size: 32,
            queue_depth: 4,
            workers: 1,
            inference_threads: cores,
            decode_threads: cores.div_ceil(2),
            stride_pixels: None,
            min_tissue: 0.5,
            threshold: 0.5,
            mpp_override: None,
            hash_full: false,
            dicomweb_store: None,
            geojson_gzip_bytes: 32 << 20,
            tissue: TissueParams::default(),
            qc: crate::qc::QcParams::default(),
            tissue_model: None,
            qc_model: None,
            // Reads walk the slide in narrow strips (see `read_order`): a small tile cache
            // decodes each tile about once.
            slide: SlideConfig {
                cache_bytes: 32 << 20,
                ..SlideConfig::default()
            },
            slide_score: ScoreMethod::default(),
            top_regions: 6,
            region_pixels: 512,
            include_label: false,
            pdf: false,
            progress: Progress::default(),
        }
    }
}

/// Where a default model folder is looked for, in order: `$TESSERA_MODELS` when set (then
/// nowhere else), `models/` beside the executable, and `../share/tessera/models` beside it (an
/// install prefix: `bin/tessera` and `share/tessera/models/`). Without one the copy built into
/// the binary is used ([`crate::model::bundled`]).
pub fn default_model_roots() -> Vec<PathBuf> {
    if let Some(root) = std::env::var_os("TESSERA_MODELS") {
        return vec![PathBuf::from(root)];
    }
    let mut roots = Vec::new();
    if let Some(bin) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        roots.push(bin.join("models"));
        roots.push(bin.join("../share/tessera/models"));
    }
    roots
}

/// The default model folder: `he-cellularity` in the first of [`default_model_roots`] that
/// holds one, else the built-in copy, unpacked. With `$TESSERA_MODELS` set and no model in it,
/// an error naming the folder and how to point Tessera at a model.
pub fn default_model_dir() -> Result<PathBuf> {
    let name = crate::model::bundled::NAME;
    let roots = default_model_roots();
    if let Some(dir) = roots
        .iter()
        .map(|r| r.join(name))
        .find(|d| d.join("config.json").is_file())
    {
        return Ok(dir);
    }
    if let Some(root) = std::env::var_os("TESSERA_MODELS") {
        let dir = PathBuf::from(root).join(name);
        return Err(Error::InvalidInput {
            reason: format!(
                "the default model was not found in TESSERA_MODELS ({}); give --model DIR, \
                 point TESSERA_MODELS at a folder holding {name}/, or unset it to use the \
                 model built into tessera",
                dir.display()
            ),
            path: dir,
        });
    }
    crate::model::bundled::unpack()
}

/// The model folder `cfg` names, or the default one.
fn model_dir(cfg: &AnalyzeConfig) -> Result<PathBuf> {
    match &cfg.model {
        Some(m) => Ok(m.clone()),
        None => default_model_dir(),
    }
}

/// The `.onnx` file itself, or the only `.onnx` file in a folder.
fn find_onnx(p: &Path) -> Result<PathBuf> {
    if !p.is_dir() {
        return Ok(p.to_path_buf());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(p)
        .map_err(|e| Error::from_io(p, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.extension().is_some_and(|x| x == "onnx"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        n => Err(Error::Model {
            path: p.into(),
            backend: "tract".into(),
            message: format!("expected one .onnx file in the folder, found {n}"),
        }),
    }
}

/// What one run produced.
#[derive(Debug, Clone, Serialize)]
pub struct AnalyzeSummary {
    /// The slide's output folder.
    pub folder: PathBuf,
    /// Patches analysed.
    pub patches: usize,
    /// Tissue area in mm².
    pub tissue_mm2: f64,
    /// The backend line shown to the user.
    pub backend_note: String,
    /// The positive class (heatmaps, slide score).
    pub positive_class: String,
    /// Mean probability of the positive class over analysed patches.
    pub positive_mean: Option<f64>,
    /// The slide-level score of the positive class.
    pub slide_score: Option<f64>,
    /// Slide QC (absent with `--qc off`).
    pub qc: Option<crate::results::QcRecord>,
    /// Warnings.
    pub warnings: Vec<String>,
}

/// Every file a slide consists of, sorted: a folder (a DICOM series) is its files; a MIRAX
/// `.mrxs` is the file and the files of its same-named data folder; anything else is itself.
pub fn slide_files(path: &Path) -> Result<Vec<PathBuf>> {
    let list = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::from_io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        Ok(v)
    };
    if path.is_dir() {
        return list(path);
    }
    let mut files = vec![path.to_path_buf()];
    let data = path.with_extension("");
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("mrxs"))
        && data.is_dir()
    {
        files.extend(list(&data)?);
    }
    Ok(files)
}

/// SHA-256 of the file's size and its first and last MiB (or of the whole file).
pub fn fingerprint(path: &Path, full: bool) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let files = slide_files(path)?;
    let mut h = Sha256::new();
    for f in files {
        let mut file = std::fs::File::open(&f).map_err(|e| Error::from_io(&f, e))?;
        let len = file.metadata().map_err(|e| Error::from_io(&f, e))?.len();
        h.update(len.to_le_bytes());
        const MIB: u64 = 1 << 20;
        let io = |e| Error::from_io(&f, e);
        if full || len <= 2 * MIB {
            std::io::copy(&mut file, &mut h).map_err(io)?;
        } else {
            let mut buf = vec![0u8; MIB as usize];
            file.read_exact(&mut buf).map_err(io)?;
            h.update(&buf);
            file.seek(SeekFrom::Start(len - MIB)).map_err(io)?;
            file.read_exact(&mut buf).map_err(io)?;
            h.update(&buf);
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// What [`slide_fingerprint`] hashed for a DICOMweb series.
pub const DICOMWEB_FINGERPRINT: &str = "DICOMweb: UIDs, attributes, first and last level-0 frames";

/// The fingerprint of an open slide: [`fingerprint`] of its files, or for a series read over
/// DICOMweb the reader's own (its UIDs, attributes and level 0's first and last frames); with
/// what was hashed.
pub fn slide_fingerprint(slide: &Slide, path: &Path, full: bool) -> Result<Fingerprint> {
    Ok(match slide.remote() {
        Some(r) => Fingerprint {
            sha256: r.fingerprint.clone(),
            method: DICOMWEB_FINGERPRINT.into(),
        },
        None => Fingerprint {
            sha256: fingerprint(path, full)?,
            method: if full {
                "full file"
            } else {
                "size + first and last MiB"
            }
            .into(),
        },
    })
}

/// The output folder name of a slide: its file (or folder) name.
pub fn slide_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "slide".into())
}

/// A key for "same model and parameters": SHA-256 over the model's hash and configuration, the
/// tissue model's hash, Tessera's version and the serialized [`AnalyzeConfig`] (every setting
/// that can change results). Recorded in result.json; cohort runs skip slides whose finished
/// result carries the same key.
pub fn run_key(cfg: &AnalyzeConfig) -> Result<String> {
    let dir = model_dir(cfg)?;
    run_key_for(&ModelFolder::load(&dir)?, None, cfg)
}

/// [`run_key`] for a model folder already loaded, and the QC model's when it is (their
/// hashes are not computed again).
fn run_key_for(
    folder: &ModelFolder,
    qc_folder: Option<&ModelFolder>,
    cfg: &AnalyzeConfig,
) -> Result<String> {
    let tissue_model = match &cfg.tissue_model {
        Some(m) => {
            let onnx = find_onnx(m)?;
            let bytes = std::fs::read(&onnx).map_err(|e| Error::from_io(&onnx, e))?;
            Some(format!("{:x}", Sha256::digest(&bytes)))
        }
        None => None,
    };
    let settings = serde_json::to_value(cfg).map_err(|e| Error::InvalidInput {
        path: "the analysis settings".into(),
        reason: format!("cannot be serialized for the run key: {e}"),
    })?;
    let mut key = key_of(folder, tissue_model, &settings);
    if let (Some(dir), true) = (&cfg.qc_model, cfg.qc.mode != crate::qc::QcMode::Off) {
        // The QC model's own hash and configuration join the key (how its maps become
        // flags, qc.model, is among the settings already, with or without a model).
        let loaded;
        let qc = match qc_folder {
            Some(f) => f,
            None => {
                loaded = ModelFolder::load(dir)?;
                &loaded
            }
        };
        let with = json!({"key": key, "qc_model_sha256": qc.sha256, "qc_model_config": qc.config});
        key = format!("{:x}", Sha256::digest(with.to_string().as_bytes()));
    }
    Ok(key)
}

/// The run key of a model, a tissue model's hash and the serialized settings.
fn key_of(
    folder: &ModelFolder,
    tissue_model: Option<String>,
    settings: &serde_json::Value,
) -> String {
    let key = json!({
        "key_version": 2,
        "model_sha256": folder.sha256,
        "model_config": folder.config,
        "tissue_model_sha256": tissue_model,
        "settings": settings,
        "tessera": crate::VERSION,
    });
    format!("{:x}", Sha256::digest(key.to_string().as_bytes()))
}

/// Serializes a value as its `Display` text (the slide-score method: `mean-top-10`, `max`).
fn as_display<T: std::fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// How [`analyze`] runs one slide, besides its configuration. The default analyses it into
/// `OUT/<file name>/` with a model loaded for it alone.
#[derive(Default)]
pub struct AnalyzeOptions<'a> {
    /// The output folder's name under `cfg.out` (default: the slide's file or folder name).
    pub name: Option<&'a str>,
    /// Where a loaded model is kept between slides: used when it holds one, filled with the
    /// one this call loads otherwise (cohort runs and the watch service's workers load the
    /// model once). A slide that does not open fails before any loading.
    pub model: Option<&'a mut Option<LoadedModel>>,
}

/// Analyses one slide into `OUT/<name>/` (complete or absent, never half-written): tissue,
/// patch grid, inference, heatmaps, GeoJSON, CSV, result.json and the report. The one entry
/// point of the analysis; [`crate::cohort::run`] calls it for each slide of a cohort.
pub fn analyze(
    path: &Path,
    cfg: &AnalyzeConfig,
    opts: AnalyzeOptions<'_>,
) -> Result<AnalyzeSummary> {
    let started = Instant::now();
    let name = opts.name.map_or_else(|| slide_name(path), str::to_string);
    let slide = Slide::open_with(path, &cfg.slide)?;
    let mut own = None;
    let cache = opts.model.unwrap_or(&mut own);
    let lm = match cache {
        Some(lm) => lm,
        None => cache.insert(load_model(cfg)?),
    };
    analyze_opened(slide, started, path, &name, cfg, lm)
}

/// What `tessera qc` found on one slide.
#[derive(Debug, Clone)]
pub struct QcSummary {
    /// The slide's output folder.
    pub folder: PathBuf,
    /// Tissue area in mm².
    pub tissue_mm2: f64,
    /// The QC record (verdict, reasons, figures), as in qc.json.
    pub qc: crate::results::QcRecord,
    /// Warnings.
    pub warnings: Vec<String>,
}

/// `tessera qc`: slide quality control alone, no model, into `OUT/<name>/` (complete or
/// absent): the tissue stage, QC's thumbnail detectors, focus tiles read over the tissue
/// ([`crate::qc::focus::measure_slide`]), the verdict; `qc.json`, `qc-mask.png`,
/// `qc-overlay.png`, `thumbnail.png`, `tissue-mask.png` and `annotations.geojson` (the
/// artefacts, classified `Pen`, `Blur`, …). `cfg.qc.mode` is recorded but changes nothing
/// here: there are no patches.
pub fn qc_slide(
    path: &Path,
    name: &str,
    cfg: &AnalyzeConfig,
    qc_model: Option<&QcModel>,
) -> Result<QcSummary> {
    let started = Instant::now();
    let analysed_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let slide = Slide::open_with(path, &cfg.slide)?;
    let mut timings: BTreeMap<String, f64> = BTreeMap::new();
    let mut warnings = Vec::new();
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::from_io(&cfg.out, e))?;
    let mpp = slide_mpp(&slide, path, cfg, &mut warnings)?;
    let mpp_mean = (mpp.x + mpp.y) / 2.0;
    let t = Instant::now();
    let (tissue, mask, mask_thumb) = detect_tissue(&slide, cfg, &mpp, &mut warnings)?;
    timings.insert("tissue_s".into(), t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut map = crate::qc::detect(&mask_thumb, &mask, mask.downsample * mpp_mean, &cfg.qc);
    drop(mask_thumb);
    let model = qc_model
        .map(|qm| run_qc_model(&slide, qm, &mask, mpp_mean, cfg, &mut map))
        .transpose()?;
    let focus = crate::qc::focus::measure_slide(&slide, &mask, mpp_mean, &cfg.qc.focus)?;
    let outcome = crate::qc::finish(
        &mut map,
        focus
            .as_ref()
            .map(|(tiles, um)| (tiles.as_slice(), *um, "focus tiles"))
            .map_err(Clone::clone),
        (mpp.x, mpp.y),
        &cfg.qc,
    );
    timings.insert("qc_s".into(), t.elapsed().as_secs_f64());
    let mut record = crate::results::QcRecord {
        model,
        ..crate::results::QcRecord::new(&outcome, &map, &cfg.qc, [])
    };

    let tmp = cfg
        .out
        .join(format!(".{name}.tmp-tessera-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::from_io(&tmp, e))?;
    let written = (|| -> Result<()> {
        output::write_png(&tmp.join("thumbnail.png"), &tissue.thumb)?;
        output::write_gray_png(&tmp.join("tissue-mask.png"), &mask.to_image())?;
        output::qc::write_images(&tmp, &tissue.thumb, tissue.thumb_ds, &map)?;
        // Crops of the worst squares, `region_pixels` wide at 1 µm/px.
        let side_l0 = cfg.region_pixels as f64 / mpp_mean;
        let squares = qc_squares(&map, side_l0, &cfg.qc);
        let judged: Vec<(PatchRef, &crate::qc::PatchQc)> =
            squares.iter().map(|(r, q)| (*r, q)).collect();
        record.regions = write_qc_regions(&tmp, &slide, &judged, (side_l0, cfg.region_pixels))?;
        let regions = output::qc::regions(&map);
        let geo = geojson::feature_collection(&[], &Predictions::new(), &[], &regions);
        output::write_bytes(&tmp.join("annotations.geojson"), &geo)?;
        timings.insert("total_s".into(), started.elapsed().as_secs_f64());
        let fp = slide_fingerprint(&slide, path, cfg.hash_full)?;
        let doc = crate::results::QcDocument {
            schema_version: RESULT_SCHEMA_VERSION,
            tessera_version: crate::VERSION.into(),
            analysed_at,
            slide: slide_record(&slide, path, name, &mpp, fp)?,
            tissue_area_mm2: tissue.area_mm2,
            tissue_fraction: mask.fraction(),
            tissue: tissue_record(&tissue.method, (mask.downsample, mask.threshold), cfg),
            qc: record.clone(),
            warnings: warnings.clone(),
            timings_s: timings,
        };
        output::write_bytes(&tmp.join("qc.json"), doc.to_json()?.as_bytes())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let folder = replace_folder(&cfg.out, name, &tmp)?;
    Ok(QcSummary {
        folder,
        tissue_mm2: tissue.area_mm2,
        qc: record,
        warnings,
    })
}

/// A model read, hashed and loaded once, for analysing many slides (cohort runs, the watch
/// service's workers) without loading it again for each.
pub struct LoadedModel {
    /// The model folder (configuration and hash).
    pub folder: ModelFolder,
    /// The inference backend and why it was chosen.
    pub chosen: model::Chosen,
    /// The loaded model; each analysis opens its own sessions.
    pub model: Arc<dyn model::Model>,
    /// The lab's QC model (`--qc-model`), when one is given and QC is on.
    pub qc_model: Option<QcModel>,
}

/// A lab's dense QC model, loaded once ([`load_qc_model`]).
pub struct QcModel {
    /// The model folder (configuration and hash).
    pub folder: ModelFolder,
    /// The loaded model.
    pub model: Arc<dyn model::Model>,
    /// The artefact kind of each class ([`crate::qc::learned::class_kinds`]).
    pub kinds: Vec<Option<crate::qc::Kind>>,
    /// The backend and device it runs on, in words.
    pub note: String,
}

/// Loads `cfg.qc_model` (none without one, or with `--qc off`) on the backend `cfg` asks
/// for. A model that cannot be a QC model (not dense, a class of unknown kind) is refused here,
/// before any slide is read.
pub fn load_qc_model(cfg: &AnalyzeConfig) -> Result<Option<QcModel>> {
    let Some(dir) = cfg
        .qc_model
        .as_ref()
        .filter(|_| cfg.qc.mode != crate::qc::QcMode::Off)
    else {
        return Ok(None);
    };
    let folder = ModelFolder::load(dir)?;
    let kinds =
        crate::qc::learned::class_kinds(&folder.config).map_err(|reason| Error::ModelConfig {
            path: folder.dir.join("config.json"),
            reason: format!("not a QC model: {reason}"),
        })?;
    let (_, model, note) = load_on_backend(&folder, cfg)?;
    Ok(Some(QcModel {
        folder,
        model,
        kinds,
        note,
    }))
}

/// Runs a lab's QC model over every tile of the slide with tissue in it (the dense machinery:
/// overlapping tiles blended into class maps at the model's µm/px) and flags `map`'s tissue
/// pixels with its classes' kinds ([`crate::qc::learned::paint`]). Returns its record.
fn run_qc_model(
    slide: &Slide,
    qm: &QcModel,
    mask: &tissue::TissueMask,
    mpp_mean: f64,
    cfg: &AnalyzeConfig,
    map: &mut crate::qc::QcMap,
) -> Result<crate::results::QcModelRecord> {
    let c = &qm.folder.config;
    let bad = |reason: String| Error::ModelConfig {
        path: qm.folder.dir.join("config.json"),
        reason,
    };
    let spec = c
        .tessera
        .dense
        .ok_or_else(|| bad("a QC model must be dense".into()))?;
    let grid_spec = GridSpec {
        patch_pixels: c.patch_size_pixels,
        spacing_um_px: c.spacing_um_px,
        stride_pixels: (c.patch_size_pixels - spec.overlap_pixels).max(1),
        // Every tile with any tissue: an artefact at the tissue's edge is still an artefact.
        min_tissue: 0.0,
    };
    let grid = PatchGrid::plan(slide.dimensions(), mpp_mean, &grid_spec, mask);
    let side_l0 = grid
        .patches
        .first()
        .map_or(grid.side_l0.round() as u64, |p| p.side);
    let plan = read_plan(slide.levels(), mpp_mean, &grid_spec, side_l0);
    let mut dense = crate::dense::DenseMap::new(
        spec,
        c.num_classes,
        (c.patch_size_pixels, grid_spec.stride_pixels),
        (slide.dimensions().width, slide.dimensions().height),
        c.spacing_um_px / mpp_mean,
        crate::dense::MAX_CELLS,
    )
    .map_err(bad)?;
    dense.restrict_to(mask);
    // The main analysis's progress counts its own patches only.
    let quiet = AnalyzeConfig {
        progress: Progress::default(),
        ..cfg.clone()
    };
    run_inference(
        slide,
        &grid,
        (plan, None),
        &c.preprocess(),
        &quiet,
        qm.model.as_ref(),
        (c, Some(&dense)),
    )?;
    let maps = dense.heatmaps();
    let flagged = crate::qc::learned::paint(map, &maps, &qm.kinds, &cfg.qc.model);
    let tissue = map.tissue_pixels().max(1) as f64;
    let r = |v: f64| (v * 1e4).round() / 1e4;
    Ok(crate::results::QcModelRecord {
        name: qm.folder.name.clone(),
        sha256: qm.folder.sha256.clone(),
        description: c.tessera.description.clone(),
        version: c.tessera.version.clone(),
        spacing_um_px: c.spacing_um_px,
        tiles: grid.patches.len(),
        classes: c
            .class_names
            .iter()
            .zip(&qm.kinds)
            .map(|(class, k)| crate::results::QcModelClass {
                class: class.clone(),
                kind: k.map_or("none", |k| k.name()).into(),
            })
            .collect(),
        min_probability: decimal(cfg.qc.model.min_probability),
        tissue_pct: crate::qc::Kind::ALL
            .iter()
            .filter(|k| qm.kinds.contains(&Some(**k)))
            .map(|k| {
                (
                    k.name().to_string(),
                    r(flagged[*k as usize] as f64 / tissue * 100.0),
                )
            })
            .collect(),
        backend: qm.note.clone(),
    })
}

/// Loads `folder`'s model on the backend and devices `cfg` asks for; returns the choice, the
/// model and, in words, where it runs and every device not used and why.
fn load_on_backend(
    folder: &ModelFolder,
    cfg: &AnalyzeConfig,
) -> Result<(model::Chosen, Arc<dyn model::Model>, String)> {
    let chosen = model::choose(cfg.inference)?;
    let model = model::load_on_devices(
        chosen.backend.as_ref(),
        folder,
        cfg.inference_threads.max(1),
        &cfg.device,
    )?;
    let placement = model.placement();
    let mut note = format!("{} on {}", chosen.note, placement.device);
    // GPUs passed over because this ONNX Runtime is the CPU-only package are the expected
    // case on a CPU machine: one short line for them (every cohort task prints it); the full
    // reasons stay in result.json.
    let (cpu_only, other): (Vec<&String>, Vec<&String>) = placement
        .fallbacks
        .iter()
        .partition(|f| f.contains(model::CPU_ONLY_PACKAGE));
    if !cpu_only.is_empty() {
        let devices: Vec<&str> = cpu_only
            .iter()
            .map(|f| f.split(": ").next().unwrap_or(f))
            .collect();
        note.push_str(&format!(
            "\n  not used: {} (this ONNX Runtime is the CPU-only package; result.json has the \
             reasons)",
            devices.join(", ")
        ));
    }
    for f in other {
        note.push_str(&format!("\n  not used: {f}"));
    }
    Ok((chosen, model, note))
}

/// Loads the model `cfg` names (or the default one) on the backend `cfg` asks for.
pub fn load_model(cfg: &AnalyzeConfig) -> Result<LoadedModel> {
    let model_dir = model_dir(cfg)?;
    let folder = ModelFolder::load(&model_dir)?;
    let (chosen, model, note) = load_on_backend(&folder, cfg)?;
    cfg.progress.emit(ProgressEvent::ModelLoaded { note });
    Ok(LoadedModel {
        folder,
        chosen,
        model,
        qc_model: load_qc_model(cfg)?,
    })
}

/// The analysis of a slide already opened with a model already loaded (`cfg.model` and
/// `cfg.inference` are not looked at again); `started`: when opening began, for the timings.
fn analyze_opened(
    slide: Slide,
    started: Instant,
    path: &Path,
    name: &str,
    cfg: &AnalyzeConfig,
    lm: &LoadedModel,
) -> Result<AnalyzeSummary> {
    let analysed_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut timings: BTreeMap<&'static str, f64> = BTreeMap::new();
    let mut warnings = Vec::new();
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::from_io(&cfg.out, e))?;
    let mpp = slide_mpp(&slide, path, cfg, &mut warnings)?;
    let mpp_mean = (mpp.x + mpp.y) / 2.0;
    timings.insert("open_and_load_s", started.elapsed().as_secs_f64());

    let t = Instant::now();
    let (tissue, mask, mask_thumb) = detect_tissue(&slide, cfg, &mpp, &mut warnings)?;
    timings.insert("tissue_s", t.elapsed().as_secs_f64());
    // QC's thumbnail detectors, on the thumbnail the tissue stage read (then dropped).
    let t = Instant::now();
    let mut qc_map = qc_thumbnail(&mask_thumb, &mask, mpp_mean, &cfg.qc);
    drop(mask_thumb);
    timings.insert("qc_s", t.elapsed().as_secs_f64());
    crate::sys::release_free_memory();
    let qc_model = match (&mut qc_map, &lm.qc_model) {
        (Some(map), Some(qm)) => {
            let t = Instant::now();
            let r = run_qc_model(&slide, qm, &mask, mpp_mean, cfg, map)?;
            timings.insert("qc_model_s", t.elapsed().as_secs_f64());
            Some(r)
        }
        _ => None,
    };

    let c = &lm.folder.config;
    if let Some(w) = resolution_warning(c, &mpp) {
        warnings.push(w);
    }
    // A dense model's class maps, sized for the slide and limited to its tissue (the mask's
    // pixels are dropped when the grid is planned).
    let dense = match c.tessera.dense {
        Some(spec) => Some(
            crate::dense::DenseMap::new(
                spec,
                c.num_classes,
                (c.patch_size_pixels, stride_pixels(cfg, c)),
                (slide.dimensions().width, slide.dimensions().height),
                c.spacing_um_px / mpp_mean,
                crate::dense::MAX_CELLS,
            )
            .map(|mut d| {
                d.restrict_to(&mask);
                d
            })
            .map_err(|reason| Error::InvalidInput {
                path: path.into(),
                reason,
            })?,
        ),
        None => None,
    };
    let planned = plan_patches(&slide, cfg, c, mpp_mean, mask)?;
    crate::sys::release_free_memory();
    let mut prep = prepare(cfg, c, planned.plan)?;
    // Focus is measured on the patches as read: at the read level's µm/px, box-reduced
    // towards the focus resolution.
    let read_um_px = mpp_mean * slide.levels()[planned.plan.level].downsample;
    let focus_factor = qc_map
        .as_ref()
        .map(|_| crate::qc::focus::factor_for(read_um_px, &cfg.qc.focus));

    // Inference: a producer thread makes batches (decoding in parallel), a bounded queue
    // carries them to the workers, results are keyed by grid index.
    let t = Instant::now();
    let (predictions, failure, focus, times) = run_inference(
        &slide,
        &planned.grid,
        (planned.plan, focus_factor),
        &prep.pre,
        cfg,
        lm.model.as_ref(),
        (c, dense.as_ref()),
    )?;
    prep.failed_mid_run(failure);
    let dense_maps = dense.map(|d| d.heatmaps());
    timings.insert("inference_s", t.elapsed().as_secs_f64());
    for (key, seconds) in times.entries() {
        timings.insert(key, seconds);
    }
    let qc = qc_map.map(|map| {
        let um_px = read_um_px * focus_factor.unwrap_or(1) as f64;
        let mut done = qc_patches(map, &planned.grid, &focus, um_px, (mpp.x, mpp.y), &cfg.qc);
        done.model = qc_model;
        done
    });
    // A dense model's class maps leave the artefacts out as its patch figures do.
    let dense_maps = match (dense_maps, &qc) {
        (Some(mut maps), Some(q)) if cfg.qc.mode == crate::qc::QcMode::Exclude => {
            for m in &mut maps {
                q.map.mask_cells(m);
            }
            Some(maps)
        }
        (maps, _) => maps,
    };

    // Outputs, into a temporary folder renamed at the end: a failure leaves nothing.
    let tmp_dir = cfg
        .out
        .join(format!(".{name}.tmp-tessera-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp_dir);
    std::fs::create_dir_all(&tmp_dir).map_err(|e| Error::from_io(&tmp_dir, e))?;
    let finished = Finished {
        slide: &slide,
        path,
        name,
        cfg,
        lm,
        mpp,
        tissue,
        planned,
        predictions,
        qc,
        dense_maps,
        analysed_at,
        started,
        timings,
        warnings,
    };
    let doc = match write_folder(&tmp_dir, finished, &mut prep) {
        Ok(doc) => doc,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp_dir);
            return Err(e);
        }
    };
    let folder = replace_folder(&cfg.out, name, &tmp_dir)?;
    if let Some(root) = &cfg.dicomweb_store {
        store_dicom(&folder, root, &cfg.slide.dicomweb)?;
    }
    let positive = doc.positive_class();
    Ok(AnalyzeSummary {
        folder,
        patches: doc.patches_analysed,
        tissue_mm2: doc.tissue_area_mm2,
        backend_note: lm.chosen.note.clone(),
        positive_class: doc.slide_score.class.clone(),
        positive_mean: doc.classes.get(positive).and_then(|s| s.mean),
        slide_score: doc.slide_score.value,
        qc: doc.qc,
        warnings: doc.warnings,
    })
}

/// The µm/px to analyse at: the user's (`--mpp`), else the file's; warns when it is
/// overridden, given for a file without one, or comes from TIFF resolution tags.
fn slide_mpp(
    slide: &Slide,
    path: &Path,
    cfg: &AnalyzeConfig,
    warnings: &mut Vec<String>,
) -> Result<Mpp> {
    let mpp = match (cfg.mpp_override, slide.mpp()) {
        (Some(v), file) => {
            if let Some(m) = file {
                warnings.push(format!(
                    "MPP overridden: the file says {:.4} µm/px ({}), {v} was used",
                    m.x, m.source
                ));
            } else {
                warnings.push(format!(
                    "MPP missing from the file; {v} µm/px given by the user"
                ));
            }
            Mpp {
                x: v,
                y: v,
                source: MppSource::User,
            }
        }
        (None, Some(m)) => m.clone(),
        (None, None) => return Err(Error::MissingMpp { path: path.into() }),
    };
    if matches!(mpp.source, MppSource::TiffResolution { .. }) {
        warnings.push("MPP comes from TIFF resolution tags, which are often placeholders".into());
    }
    Ok(mpp)
}

/// The QC warning for a slide whose µm/px (either axis) is further from the model's
/// `spacing_um_px` than the model card's `spacing_tolerance_um_px` allows.
fn resolution_warning(c: &crate::model::config::ModelConfig, mpp: &Mpp) -> Option<String> {
    let tolerance = c.tessera.spacing_tolerance_um_px?;
    let off = (mpp.x - c.spacing_um_px)
        .abs()
        .max((mpp.y - c.spacing_um_px).abs());
    (off > tolerance + 1e-12).then(|| {
        format!(
            "QC: the slide's resolution ({:.4} × {:.4} µm/px) is outside the model's stated \
             range ({} ± {} µm/px); the model was not meant for slides like this one",
            mpp.x, mpp.y, c.spacing_um_px, tolerance
        )
    })
}

/// What the tissue stage leaves for the outputs besides the mask: how it was made, its area
/// and the display thumbnail.
struct Tissue {
    /// The method, in words (result.json, report).
    method: String,
    /// Tissue area in mm².
    area_mm2: f64,
    /// The display thumbnail (1024 pixels on its longest side, or the slide if smaller).
    thumb: image::RgbImage,
    /// Level-0 pixels per thumbnail pixel.
    thumb_ds: f64,
}

/// The tissue mask `cfg` asks for (the classical detector, or the tissue model checked
/// against it) at `mpp_mean` µm/px, its method in words, and the thumbnail it was made from
/// (on the mask's raster; slide QC reads it).
fn tissue_mask(
    slide: &Slide,
    cfg: &AnalyzeConfig,
    mpp_mean: f64,
    warnings: &mut Vec<String>,
) -> Result<(tissue::TissueMask, String, image::RgbImage)> {
    let (mask_ds, mask_size) =
        tissue::mask_geometry(slide.dimensions(), Some(mpp_mean), &cfg.tissue);
    // The mask-scale thumbnail is large on a large slide (117 MiB of RGB for 100,000² at
    // 8 µm/px): the caller drops it after QC, before inference starts.
    let mask_thumb = tissue::thumbnail(slide, mask_ds, mask_size)?;
    let classical = tissue::mask_from_thumbnail(&mask_thumb, mask_ds, Some(mpp_mean), &cfg.tissue);
    Ok(match &cfg.tissue_model {
        None => (
            classical,
            "HSV saturation, median, Otsu, closing, small objects and holes removed".to_string(),
            mask_thumb,
        ),
        Some(m) => {
            let onnx = find_onnx(m)?;
            let mask = tissue::mask_from_model(&onnx, &mask_thumb, mask_ds)?;
            let (a, b) = (mask.fraction(), classical.fraction());
            if (a - b).abs() > 0.15 {
                warnings.push(format!(
                    "tissue model and classical detector disagree: {:.0}% vs {:.0}% of the slide",
                    a * 100.0,
                    b * 100.0
                ));
            }
            (
                mask,
                format!("ONNX segmentation model {}", onnx.display()),
                mask_thumb,
            )
        }
    })
}

/// Finds the tissue ([`tissue_mask`]) and makes the display thumbnail; also returns the
/// mask-scale thumbnail for QC.
fn detect_tissue(
    slide: &Slide,
    cfg: &AnalyzeConfig,
    mpp: &Mpp,
    warnings: &mut Vec<String>,
) -> Result<(Tissue, tissue::TissueMask, image::RgbImage)> {
    let mpp_mean = (mpp.x + mpp.y) / 2.0;
    let (mask, method, mask_thumb) = tissue_mask(slide, cfg, mpp_mean, warnings)?;
    let dims = slide.dimensions();
    let thumb_ds = (dims.width.max(dims.height) as f64 / 1024.0).max(1.0);
    let disp_size = crate::geom::Size::new(
        ((dims.width as f64 / thumb_ds).ceil() as u64).max(1),
        ((dims.height as f64 / thumb_ds).ceil() as u64).max(1),
    );
    let thumb = tissue::thumbnail(slide, thumb_ds, disp_size)?;
    if mask.fraction() < 0.01 {
        warnings.push(format!(
            "little tissue found ({:.2}% of the slide)",
            mask.fraction() * 100.0
        ));
    }
    let found = Tissue {
        area_mm2: mask.area_mm2(mpp.x, mpp.y),
        method,
        thumb,
        thumb_ds,
    };
    Ok((found, mask, mask_thumb))
}

/// The QC stage's thumbnail detectors (pen, fold, faint, edge) on the mask-scale thumbnail,
/// unless `--qc off`.
fn qc_thumbnail(
    thumb: &image::RgbImage,
    mask: &tissue::TissueMask,
    mpp_mean: f64,
    params: &crate::qc::QcParams,
) -> Option<crate::qc::QcMap> {
    (params.mode != crate::qc::QcMode::Off)
        .then(|| crate::qc::detect(thumb, mask, mask.downsample * mpp_mean, params))
}

/// Slide QC after inference: the patches' focus judged against the slide's own, the verdict,
/// and each patch's artefact shares and fate.
struct QcDone {
    map: crate::qc::QcMap,
    outcome: crate::qc::Outcome,
    patches: BTreeMap<crate::geom::GridIndex, crate::qc::PatchQc>,
    /// The lab's QC model, when one ran.
    model: Option<crate::results::QcModelRecord>,
}

impl QcDone {
    /// The predictions that enter the slide's figures: all of them, less the excluded patches.
    fn scored(&self, predictions: &Predictions) -> Predictions {
        predictions
            .iter()
            .filter(|(idx, _)| !self.patches.get(idx).is_some_and(|q| q.excluded))
            .map(|(idx, p)| (*idx, p.clone()))
            .collect()
    }
}

/// Finishes QC with the patches' focus scores (measured at `um_px`) and judges every patch.
fn qc_patches(
    mut map: crate::qc::QcMap,
    grid: &PatchGrid,
    focus: &BTreeMap<crate::geom::GridIndex, Option<f32>>,
    um_px: f64,
    mpp: (f64, f64),
    params: &crate::qc::QcParams,
) -> QcDone {
    let tiles: Vec<crate::qc::focus::FocusTile> = grid
        .patches
        .iter()
        .filter_map(|p| {
            Some(crate::qc::focus::FocusTile {
                at: p.location,
                side: p.side,
                score: *focus.get(&p.index)?,
            })
        })
        .collect();
    let outcome = crate::qc::finish(&mut map, Ok((&tiles, um_px, "patches")), mpp, params);
    let patches = grid
        .patches
        .iter()
        .map(|p| {
            let f = focus.get(&p.index).copied().flatten();
            (
                p.index,
                crate::qc::PatchQc::judge(&map, p.location, p.side, f, params),
            )
        })
        .collect();
    QcDone {
        map,
        outcome,
        patches,
        model: None,
    }
}

/// The grid stage's output, and the mask's figures kept after its pixels are dropped.
struct Planned {
    spec: GridSpec,
    grid: PatchGrid,
    /// A patch's side in level-0 pixels.
    side_l0: u64,
    plan: crate::grid::ReadPlan,
    mask_png: Vec<u8>,
    mask_fraction: f64,
    mask_downsample: f64,
    mask_threshold: u8,
}

/// The grid's stride in model pixels: `--stride`, else a dense model's tile less its overlap,
/// else the patch (patches abut).
fn stride_pixels(cfg: &AnalyzeConfig, c: &crate::model::config::ModelConfig) -> u32 {
    cfg.stride_pixels
        .unwrap_or(c.patch_size_pixels - c.tessera.dense.map_or(0, |d| d.overlap_pixels))
        .max(1)
}

/// Plans the patch grid at the model's µm/px over the tissue, and the level to read it from.
/// Afterwards only the mask's PNG and figures are needed: its pixels (39 MiB on a 100,000²
/// slide) are dropped, so memory during inference does not grow with the slide.
fn plan_patches(
    slide: &Slide,
    cfg: &AnalyzeConfig,
    c: &crate::model::config::ModelConfig,
    mpp_mean: f64,
    mask: tissue::TissueMask,
) -> Result<Planned> {
    let spec = GridSpec {
        patch_pixels: c.patch_size_pixels,
        spacing_um_px: c.spacing_um_px,
        stride_pixels: stride_pixels(cfg, c),
        min_tissue: cfg.min_tissue,
    };
    let grid = PatchGrid::plan(slide.dimensions(), mpp_mean, &spec, &mask);
    let mask_png = output::encode_gray_png(&mask.to_image())?;
    let side_l0 = grid
        .patches
        .first()
        .map_or(grid.side_l0.round() as u64, |p| p.side);
    let plan = read_plan(slide.levels(), mpp_mean, &spec, side_l0);
    Ok(Planned {
        spec,
        grid,
        side_l0,
        plan,
        mask_png,
        mask_fraction: mask.fraction(),
        mask_downsample: mask.downsample,
        mask_threshold: mask.threshold,
    })
}

/// The patches an analysis with `cfg` would read from `slide` at `mpp_mean` µm/px for a model
/// configured as `model`: the same tissue and grid stages as [`analyze`], without the outputs.
/// Returns the grid (level-0 squares, grid indices) and the level each patch is read from.
pub fn plan_slide(
    slide: &Slide,
    cfg: &AnalyzeConfig,
    model: &crate::model::config::ModelConfig,
    mpp_mean: f64,
) -> Result<(PatchGrid, crate::grid::ReadPlan)> {
    let (mask, _, _) = tissue_mask(slide, cfg, mpp_mean, &mut Vec::new())?;
    let planned = plan_patches(slide, cfg, model, mpp_mean, mask)?;
    Ok((planned.grid, planned.plan))
}

/// Where and how patches become the model's input, and every time a GPU was not used where it
/// could have been, with the reason: recorded in result.json's `preprocessing` block, so the
/// record says what actually ran. Decided here and nowhere else.
struct Preprocessing {
    pre: Preprocess,
    gpu: Option<&'static crate::gpu::Gpu>,
    fallbacks: Vec<String>,
    /// The GPU failed on a batch during the run (the CPU twin computed that batch; the GPU is
    /// tried again for the next one).
    failed: bool,
}

impl Preprocessing {
    fn failed_mid_run(&mut self, why: Option<String>) {
        if let (Some(why), Some(g)) = (why, self.gpu) {
            self.failed = true;
            self.fallbacks.push(format!(
                "patch preprocessing on {} failed ({why}); the CPU computed each batch it \
                 failed on",
                g.adapter
            ));
        }
    }

    /// The adapter every batch ran on, or `None`.
    fn whole_run_on(&self) -> Option<String> {
        self.gpu.filter(|_| !self.failed).map(|g| g.adapter.clone())
    }

    fn record(&self, cfg: &AnalyzeConfig) -> PreprocessingRecord {
        PreprocessingRecord {
            requested: cfg.gpu_preprocess.label().into(),
            device: match self.gpu {
                Some(g) if !self.failed => g.adapter.clone(),
                Some(g) => format!("{} (the CPU for the batches it failed on)", g.adapter),
                None => "CPU".into(),
            },
            fallbacks: self.fallbacks.clone(),
        }
    }
}

/// Resolves `--gpu-preprocess` and the model's preprocessing. The GPU shader (and its CPU
/// twin, which stain normalisation also uses) computes one area resize from the read size;
/// a model whose geometry is anything else (torchvision's bilinear, a CenterCrop) is
/// preprocessed on the CPU with its own method, and the record says why the GPU was not used.
fn prepare(
    cfg: &AnalyzeConfig,
    c: &crate::model::config::ModelConfig,
    plan: crate::grid::ReadPlan,
) -> Result<Preprocessing> {
    let mut pre = c.preprocess();
    // What the shader computes (one area resize, which copies patches already read at the
    // model's size), or what this model asks for instead.
    let simple = pre.geometry.is_single_area_resize()
        || pre.geometry.keeps((plan.side as u32, plan.side as u32));
    if cfg.gpu_preprocess == crate::gpu::GpuPreprocess::On && !simple {
        return Err(Error::Device {
            device: "--gpu-preprocess on".into(),
            message: format!(
                "the preprocess shader resizes by area averaging only, and this model asks for \
                 {}; use --gpu-preprocess auto or off, or \"resize\": \"area\" in the model's \
                 config if it was trained that way",
                pre.geometry.describe()
            ),
        });
    }
    let resolved = cfg
        .gpu_preprocess
        .resolve()
        .map_err(|message| Error::Device {
            device: "--gpu-preprocess on".into(),
            message,
        })?;
    let mut fallbacks: Vec<String> = resolved.not_used.map(String::from).into_iter().collect();
    let mut gpu = resolved.gpu;
    pre.stain = cfg.stain;
    if let (Some(g), crate::gpu::GpuPreprocess::Auto) = (gpu, cfg.gpu_preprocess) {
        // Measured (BENCHMARKS.md, "GPU inference"): on an NVIDIA H200 the shader's batches
        // took three times a single CPU thread's, its output coming back through host memory
        // before the inference runtime copies it to the device again.
        fallbacks.push(format!(
            "{} not used: the preprocess shader's output returns through host memory to the \
             inference runtime, and on an NVIDIA H200 it was slower than the CPU; \
             --gpu-preprocess on uses it",
            g.adapter
        ));
        gpu = None;
    } else if let (Some(g), false) = (gpu, simple) {
        fallbacks.push(format!(
            "{} not used: the preprocess shader resizes by area averaging, and this model \
             asks for {}; the CPU preprocessed every patch",
            g.adapter,
            pre.geometry.describe()
        ));
        gpu = None;
    }
    if simple && (gpu.is_some() || pre.stain.is_some()) {
        pre.deferred = Some((plan.side as u32, plan.side as u32));
        pre.on_gpu = gpu.is_some();
    }
    Ok(Preprocessing {
        pre,
        gpu,
        fallbacks,
        failed: false,
    })
}

/// Everything an analysis has made before its folder is written.
struct Finished<'a> {
    slide: &'a Slide,
    path: &'a Path,
    name: &'a str,
    cfg: &'a AnalyzeConfig,
    lm: &'a LoadedModel,
    mpp: Mpp,
    tissue: Tissue,
    planned: Planned,
    predictions: Predictions,
    /// Slide QC, unless `--qc off`.
    qc: Option<QcDone>,
    /// A dense model's class maps, one per class.
    dense_maps: Option<Vec<Heatmap>>,
    analysed_at: String,
    started: Instant,
    timings: BTreeMap<&'static str, f64>,
    warnings: Vec<String>,
}

/// Writes every output of a finished analysis into `dir` (a temporary folder): the pictures,
/// patches.csv, the GeoJSON, the region crops, the identifier images when asked, result.json,
/// report.html and report.pdf when asked. Returns the result document.
fn write_folder(dir: &Path, mut f: Finished, prep: &mut Preprocessing) -> Result<SlideResult> {
    let t = Instant::now();
    let (cfg, folder) = (f.cfg, &f.lm.folder);
    let mpp_mean = (f.mpp.x + f.mpp.y) / 2.0;
    // The predictions that enter the slide's figures: without QC's excluded patches.
    let scored = match &f.qc {
        Some(q) => q.scored(&f.predictions),
        None => f.predictions.clone(),
    };
    if let Some(q) = &f.qc {
        output::qc::write_images(dir, &f.tissue.thumb, f.tissue.thumb_ds, &q.map)?;
    }
    let (class_stats, analysed) = write_outputs(
        dir,
        mpp_mean,
        (&f.tissue.thumb, f.tissue.thumb_ds),
        &f.planned.mask_png,
        &f.planned.grid,
        (
            &f.predictions,
            &scored,
            f.qc.as_ref(),
            f.dense_maps.as_deref(),
        ),
        folder,
        cfg,
        prep.gpu,
        &mut prep.fallbacks,
    )?;
    let top = write_top_regions(
        dir,
        f.slide,
        &f.planned.grid,
        &scored,
        mpp_mean,
        folder,
        cfg,
    )?;
    let qc_regions = match &f.qc {
        Some(q) => {
            let judged: Vec<(PatchRef, &crate::qc::PatchQc)> = f
                .planned
                .grid
                .patches
                .iter()
                .filter_map(|p| {
                    let q = q.patches.get(&p.index)?;
                    let r = PatchRef {
                        col: p.index.col,
                        row: p.index.row,
                        x: p.location.x,
                        y: p.location.y,
                        side: p.side,
                    };
                    Some((r, q))
                })
                .collect();
            let side_l0 = cfg.region_pixels as f64 * folder.config.spacing_um_px / mpp_mean;
            write_qc_regions(dir, f.slide, &judged, (side_l0, cfg.region_pixels))?
        }
        None => Vec::new(),
    };
    let identifiers = if cfg.include_label {
        output::write_identifier_images(dir, f.slide)?
    } else {
        Vec::new()
    };
    let fp = slide_fingerprint(f.slide, f.path, cfg.hash_full)?;
    f.timings.insert("outputs_s", t.elapsed().as_secs_f64());
    f.timings
        .insert("total_s", f.started.elapsed().as_secs_f64());
    let mut doc = result_doc(
        &f,
        prep,
        fp,
        class_stats,
        analysed,
        top,
        identifiers,
        &scored,
    )?;
    if let Some(q) = doc.qc.as_mut() {
        q.regions = qc_regions;
    }
    output::write_bytes(&dir.join("result.json"), doc.to_json()?.as_bytes())?;
    crate::report::write_slide_report(dir)?;
    if cfg.pdf {
        crate::report::pdf::print_to_pdf(&dir.join("report.html"), &dir.join("report.pdf"))?;
    }
    if let Some(source) = f.slide.dicom_source() {
        write_dicom(dir, &f, &scored, source, &doc)?;
    }
    Ok(doc)
}

/// `dicom/segmentation.dcm` (the class heatmaps as a DICOM Segmentation),
/// `dicom/annotations.dcm` (the patches and regions as Microscopy Bulk Simple Annotations) and,
/// with `--pdf`, `dicom/report.dcm` (report.pdf as an Encapsulated PDF), filed with the source
/// series ([`output::dicom`]).
fn write_dicom(
    dir: &Path,
    f: &Finished,
    scored: &Predictions,
    source: &crate::slide::DicomSource,
    doc: &SlideResult,
) -> Result<()> {
    let names = &f.lm.folder.config.class_names;
    let built: Vec<Heatmap>;
    let maps: &[Heatmap] = match &f.dense_maps {
        Some(m) => m,
        None => {
            built = (0..names.len())
                .map(|k| Heatmap::build(&f.planned.grid, scored, k))
                .collect();
            &built
        }
    };
    let path = dir.join("dicom").join("segmentation.dcm");
    if maps.first().is_none_or(|m| m.width == 0) {
        return Ok(());
    }
    // analysed_at is RFC 3339: 2026-12-04T10:06:57Z.
    let digits: String = doc
        .analysed_at
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let when = (
        digits.get(..8).unwrap_or("").to_string(),
        digits.get(8..14).unwrap_or("").to_string(),
    );
    let input = output::dicom::SegmentationInput {
        source,
        classes: names.iter().map(String::as_str).zip(maps.iter()).collect(),
        mpp: (f.mpp.x, f.mpp.y),
        run_key: &doc.run_key,
        model: (
            &doc.model.name,
            doc.model
                .version
                .as_deref()
                .unwrap_or(&doc.model.sha256[..12]),
        ),
        when,
        codes: f.lm.folder.config.tessera.class_codes.as_deref(),
    };
    let bytes = output::dicom::segmentation(&input).map_err(|reason| Error::DicomOutput {
        path: path.clone(),
        reason,
    })?;
    // The annotations: every analysed patch (as patches.csv), each class's regions.
    let patches: Vec<output::dicom::AnnotatedPatch> = f
        .planned
        .grid
        .patches
        .iter()
        .filter_map(|p| {
            let probs = f.predictions.get(&p.index)?;
            Some(output::dicom::AnnotatedPatch {
                x: p.location.x as f64,
                y: p.location.y as f64,
                side: p.side as f64,
                probs,
            })
        })
        .collect();
    let regions: Vec<(&str, output::dicom::Regions)> = names
        .iter()
        .zip(maps)
        .map(|(n, m)| (n.as_str(), m.regions(f.cfg.threshold)))
        .collect();
    let ann_path = dir.join("dicom").join("annotations.dcm");
    let ann = if patches.is_empty() {
        None
    } else {
        Some(
            output::dicom::annotations(&input, &patches, &regions).map_err(|reason| {
                Error::DicomOutput {
                    path: ann_path.clone(),
                    reason,
                }
            })?,
        )
    };
    // The report, when it was printed (--pdf).
    let pdf_path = dir.join("report.pdf");
    let report = match std::fs::read(&pdf_path) {
        Ok(pdf) => {
            let to = dir.join("dicom").join("report.dcm");
            let made = output::dicom::encapsulated_pdf(&input, &pdf).map_err(|reason| {
                Error::DicomOutput {
                    path: to.clone(),
                    reason,
                }
            })?;
            Some((to, made))
        }
        Err(_) => None,
    };
    let folder = dir.join("dicom");
    std::fs::create_dir_all(&folder).map_err(|e| Error::from_io(&folder, e))?;
    output::write_bytes(&path, &bytes)?;
    if let Some((to, made)) = report {
        output::write_bytes(&to, &made)?;
    }
    match ann {
        Some(ann) => output::write_bytes(&ann_path, &ann),
        None => Ok(()),
    }
}

/// Stores the complete folder's DICOM outputs (`dicom/*.dcm`) on the archive at `root` with
/// STOW-RS, in one request. A slide without DICOM outputs (not read from DICOM) has nothing to
/// store: that is an error, so that a run meant to fill the archive does not pass in silence.
fn store_dicom(folder: &Path, root: &str, cfg: &tessera_slide::DicomWebConfig) -> Result<()> {
    let dir = folder.join("dicom");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    files.retain(|f| f.extension().is_some_and(|x| x == "dcm"));
    files.sort();
    if files.is_empty() {
        return Err(Error::DicomOutput {
            path: dir,
            reason: "nothing to store with --dicomweb-store: DICOM outputs are made only for \
                     slides read from DICOM (files or DICOMweb) with a heatmap"
                .into(),
        });
    }
    let objects = files
        .iter()
        .map(|f| std::fs::read(f).map_err(|e| Error::from_io(f, e)))
        .collect::<Result<Vec<_>>>()?;
    tessera_slide::slide::native::dicomweb::store(root, cfg, &objects)?;
    Ok(())
}

/// Replaces `out/name` with the complete folder `tmp` (an older result goes only now).
fn replace_folder(out: &Path, name: &str, tmp: &Path) -> Result<PathBuf> {
    let final_dir = out.join(name);
    if final_dir.exists() {
        let old = out.join(format!(".{name}.old-tessera-{}", std::process::id()));
        std::fs::rename(&final_dir, &old).map_err(|e| Error::from_io(&final_dir, e))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    std::fs::rename(tmp, &final_dir).map_err(|e| Error::from_io(&final_dir, e))?;
    Ok(final_dir)
}

/// The slide's record (result.json's and qc.json's `slide`), with its fingerprint.
fn slide_record(
    slide: &Slide,
    path: &Path,
    name: &str,
    mpp: &Mpp,
    fingerprint: Fingerprint,
) -> Result<SlideRecord> {
    let dims = slide.dimensions();
    let reader = slide.backend();
    Ok(SlideRecord {
        path: path.into(),
        name: name.to_string(),
        format: slide.format().into(),
        vendor: slide.vendor().map(String::from),
        reader: ReaderRecord {
            name: reader.name.into(),
            library: reader.library,
            version: reader.version,
        },
        dicomweb: slide.remote().map(|r| DicomWebRecord {
            study_instance_uid: r.study.clone(),
            series_instance_uid: r.series.clone(),
            sop_instance_uids: r.instances.clone(),
        }),
        file_size_bytes: match slide.remote() {
            Some(_) => 0,
            None => crate::info::size_on_disk(path)?,
        },
        fingerprint,
        dimensions: Dimensions {
            width: dims.width,
            height: dims.height,
        },
        mpp: mpp.clone(),
        objective_power: slide.objective_power(),
    })
}

/// How the tissue was found (result.json's `parameters.tissue`, qc.json's `tissue`): `method`
/// in words, the mask's downsample and Otsu threshold, and `cfg`'s detector parameters.
fn tissue_record(
    method: &str,
    (downsample, threshold): (f64, u8),
    cfg: &AnalyzeConfig,
) -> TissueRecord {
    TissueRecord {
        method: method.to_string(),
        mask_um_px: cfg.tissue.mask_um_px,
        mask_downsample: downsample,
        otsu_threshold: threshold,
        median: cfg.tissue.median,
        closing: cfg.tissue.closing,
        min_object_mm2: cfg.tissue.min_object_mm2,
        max_hole_mm2: cfg.tissue.max_hole_mm2,
    }
}

/// result.json's document for a finished analysis.
#[allow(clippy::too_many_arguments)]
fn result_doc(
    f: &Finished,
    prep: &Preprocessing,
    fp: Fingerprint,
    class_stats: Vec<ClassStats>,
    analysed: usize,
    top_regions: Vec<TopRegion>,
    identifier_images: Vec<String>,
    scored: &Predictions,
) -> Result<SlideResult> {
    let (slide, path, cfg) = (f.slide, f.path, f.cfg);
    let (folder, chosen, loaded) = (&f.lm.folder, &f.lm.chosen, &f.lm.model);
    let c = &folder.config;
    let backend = &chosen.backend;
    let (spec, plan, grid) = (&f.planned.spec, f.planned.plan, &f.planned.grid);
    let positive = c.positive_class();
    Ok(SlideResult {
        schema_version: RESULT_SCHEMA_VERSION,
        run_key: run_key_for(folder, f.lm.qc_model.as_ref().map(|q| &q.folder), cfg)?,
        tessera_version: crate::VERSION.into(),
        disclaimer: crate::report::DISCLAIMER.into(),
        analysed_at: f.analysed_at.clone(),
        slide: slide_record(slide, path, f.name, &f.mpp, fp)?,
        model: ModelRecord {
            name: folder.name.clone(),
            version: c.tessera.version.clone(),
            sha256: folder.sha256.clone(),
            config: c.clone(),
        },
        inference: InferenceRecord {
            backend: backend.name().into(),
            version: backend.version(),
            device: loaded.placement().device,
            device_requested: std::iter::once(&cfg.device.device)
                .chain(&cfg.device.more)
                .map(|d| d.label())
                .collect::<Vec<_>>()
                .join(","),
            fallbacks: chosen
                .fallback
                .iter()
                .cloned()
                .chain(loaded.placement().fallbacks)
                .collect(),
            // `--fp16` tunes TensorRT only: true only where TensorRT ran.
            fp16: cfg.device.fp16 && loaded.placement().device.starts_with("TensorRT"),
            note: chosen.note.clone(),
        },
        preprocessing: Some(prep.record(cfg)),
        parameters: Parameters {
            gpu_preprocess: prep.whole_run_on(),
            stain_normalisation: cfg.stain.map(|t| StainRecord {
                method: "reinhard".into(),
                lab_mean: t.mean.map(decimal),
                lab_std: t.std.map(decimal),
                space: "CIE Lab (OpenCV RGB2Lab, sRGB, D65), L 0-100; per patch at the read size"
                    .into(),
            }),
            patch_size_pixels: c.patch_size_pixels,
            spacing_um_px: c.spacing_um_px,
            stride_pixels: spec.stride_pixels,
            patch_side_level0: f.planned.side_l0,
            read_level: plan.level,
            read_side: plan.side,
            resize_method: Some(c.resize_method()),
            class_map_cell_um: c
                .tessera
                .dense
                .map(|d| d.map_cell_pixels as f64 * c.spacing_um_px),
            min_tissue_fraction: cfg.min_tissue,
            threshold: decimal(cfg.threshold),
            batch_size: cfg.batch_size,
            slide_score: cfg.slide_score.to_string(),
            top_regions: cfg.top_regions,
            region_pixels: cfg.region_pixels,
            thumbnail_downsample: f.tissue.thumb_ds,
            tissue: tissue_record(
                &f.tissue.method,
                (f.planned.mask_downsample, f.planned.mask_threshold),
                cfg,
            ),
        },
        tissue_area_mm2: f.tissue.area_mm2,
        tissue_fraction: f.planned.mask_fraction,
        patches_analysed: analysed,
        patches_skipped: grid.skipped,
        classes: class_stats,
        slide_score: SlideScore {
            class: c.class_names[positive].clone(),
            method: cfg.slide_score.to_string(),
            description: cfg.slide_score.describe(),
            value: cfg.slide_score.score(scored, positive),
        },
        top_regions,
        qc: f.qc.as_ref().map(|q| crate::results::QcRecord {
            model: q.model.clone(),
            ..crate::results::QcRecord::new(&q.outcome, &q.map, &cfg.qc, q.patches.values())
        }),
        identifiers: Identifiers {
            label_included: cfg.include_label,
            images: identifier_images,
        },
        warnings: f.warnings.clone(),
        timings_s: f.timings.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    })
}

/// An f32 setting as the decimal it was given as (0.7, not 0.699999988079071).
fn decimal(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

/// Returns the predictions, why the GPU preprocessing failed mid-run (if it did), and each
/// patch's focus score when `focus_factor` asked for them.
#[allow(clippy::type_complexity)]
fn run_inference(
    slide: &Slide,
    grid: &PatchGrid,
    (plan, focus_factor): (crate::grid::ReadPlan, Option<u32>),
    pre: &Preprocess,
    cfg: &AnalyzeConfig,
    model: &dyn model::Model,
    // How raw outputs become probabilities: the config's activation, or a dense model's
    // class maps.
    (config, dense): (
        &crate::model::config::ModelConfig,
        Option<&crate::dense::DenseMap>,
    ),
) -> Result<(
    Predictions,
    Option<String>,
    BTreeMap<crate::geom::GridIndex, Option<f32>>,
    InferenceTimes,
)> {
    let batch_size = cfg.batch_size.max(1);
    let times = InferenceTimes::default();
    let (tx, rx) = mpsc::sync_channel::<crate::batch::PatchBatch>(cfg.queue_depth.max(1));
    let rx = Arc::new(Mutex::new(rx));
    // Consumed batch buffers go back to the producer: a run allocates about queue depth +
    // workers + 1 of them in all, not one per batch.
    // At least one worker per device (several GPUs share the slide's patches), two per GPU.
    let workers = cfg.workers.max(model.sessions_wanted()).max(1);
    let (recycle_tx, recycle_rx) =
        mpsc::sync_channel::<Vec<u8>>(cfg.queue_depth.max(1) + workers + 1);
    let predictions = Mutex::new(Predictions::new());
    let focus = Mutex::new(BTreeMap::new());
    // Why the GPU preprocessing failed mid-run, if it did (the CPU twin computed the batches it failed on).
    let gpu_fallback: Mutex<Option<String>> = Mutex::new(None);
    cfg.progress.emit(ProgressEvent::PatchesPlanned {
        total: grid.patches.len(),
    });
    let mut sessions = Vec::new();
    for _ in 0..workers {
        sessions.push(model.session()?);
    }
    let decode_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.decode_threads.max(1))
        .build()
        .map_err(|e| Error::Inference {
            path: slide.path().into(),
            backend: "reader".into(),
            message: format!("cannot start decoding threads: {e}"),
        })?;
    std::thread::scope(|s| -> Result<()> {
        let decode_pool = &decode_pool;
        let times = &times;
        let producer = s.spawn(move || -> Result<()> {
            for chunk in read_order(slide, grid, plan).chunks(batch_size) {
                let chunk: Vec<crate::grid::Patch> =
                    chunk.iter().map(|&i| grid.patches[i].clone()).collect();
                let chunk = chunk.as_slice();
                let buffer = recycle_rx.try_recv().unwrap_or_default();
                let t = Instant::now();
                let batch = decode_pool
                    .install(|| make_batch_in(slide, chunk, plan, pre, buffer, focus_factor))?;
                InferenceTimes::add(&times.read, t);
                let t = Instant::now();
                let sent = tx.send(batch);
                InferenceTimes::add(&times.reader_blocked, t);
                if sent.is_err() {
                    break; // workers stopped after an error
                }
            }
            Ok(())
        });
        let mut workers = Vec::new();
        for mut session in sessions {
            let rx = rx.clone();
            let recycle = recycle_tx.clone();
            let predictions = &predictions;
            let focus = &focus;
            let gpu_fallback = &gpu_fallback;
            workers.push(s.spawn(move || -> Result<()> {
                loop {
                    let t = Instant::now();
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    InferenceTimes::add(&times.starved, t);
                    let Ok(batch) = next else { return Ok(()) };
                    let t = Instant::now();
                    let (input, gpu_failure) = batch.tensor();
                    InferenceTimes::add(&times.pack, t);
                    if let Some(why) = gpu_failure {
                        let mut f = gpu_fallback.lock().unwrap_or_else(|e| e.into_inner());
                        f.get_or_insert(why);
                    }
                    let t = Instant::now();
                    let rows = session.run(input)?;
                    InferenceTimes::add(&times.model, t);
                    // A dense tile goes into the class maps and leaves its mean.
                    let probs: Vec<Vec<f32>> = match dense {
                        Some(d) => batch
                            .indices
                            .iter()
                            .zip(rows)
                            .map(|(idx, raw)| d.add(*idx, &raw))
                            .collect::<std::result::Result<_, String>>()
                            .map_err(|message| Error::Inference {
                                path: slide.path().into(),
                                backend: "dense class maps".into(),
                                message,
                            })?,
                        None => rows
                            .into_iter()
                            .map(|raw| model::to_probabilities(config, raw))
                            .collect(),
                    };
                    if !batch.focus.is_empty() {
                        let mut f = focus.lock().unwrap_or_else(|e| e.into_inner());
                        f.extend(
                            batch
                                .indices
                                .iter()
                                .copied()
                                .zip(batch.focus.iter().copied()),
                        );
                    }
                    {
                        let mut p = predictions.lock().unwrap_or_else(|e| e.into_inner());
                        for (idx, probs) in batch.indices.iter().zip(probs) {
                            p.insert(*idx, probs);
                        }
                        // Under the lock, so counts arrive in order.
                        cfg.progress
                            .emit(ProgressEvent::PatchesDone { done: p.len() });
                    }
                    // A full recycling queue just drops the buffer.
                    let _ = recycle.try_send(batch.pixels);
                }
            }));
        }
        let mut first_error = None;
        for w in workers {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(Error::Panicked {
                        path: slide.path().into(),
                        thread: "inference worker",
                    });
                }
            }
        }
        // Dropping the receiver (workers are gone) unblocks a producer stuck on a full queue.
        drop(rx);
        match producer.join() {
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(Error::Panicked {
                    path: slide.path().into(),
                    thread: "patch reader",
                });
            }
            Ok(Ok(())) => {}
        }
        first_error.map_or(Ok(()), Err)
    })?;
    Ok((
        predictions.into_inner().unwrap_or_else(|e| e.into_inner()),
        gpu_fallback.into_inner().unwrap_or_else(|e| e.into_inner()),
        focus.into_inner().unwrap_or_else(|e| e.into_inner()),
        times,
    ))
}

/// Where the inference stage's time went, in seconds summed over the threads that spent it:
/// the reader making batches (reading, decoding and resizing on the decode threads) and
/// waiting on a full queue, and the workers waiting for a batch, packing it into the model's
/// tensor (normalising on the CPU, or the GPU preprocessing shader) and running the model
/// (host→device copy, inference and the copy back). A reader that waits is the sign of a
/// model-bound run; workers that wait, of a reader-bound one.
#[derive(Debug, Default)]
struct InferenceTimes {
    read: std::sync::atomic::AtomicU64,
    reader_blocked: std::sync::atomic::AtomicU64,
    starved: std::sync::atomic::AtomicU64,
    pack: std::sync::atomic::AtomicU64,
    model: std::sync::atomic::AtomicU64,
}

impl InferenceTimes {
    fn add(counter: &std::sync::atomic::AtomicU64, since: Instant) {
        let ns = since.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        counter.fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
    }

    /// The `timings_s` entries, rounded to the millisecond.
    fn entries(&self) -> [(&'static str, f64); 5] {
        let s = |c: &std::sync::atomic::AtomicU64| {
            (c.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6).round() / 1e3
        };
        [
            ("inference_read_s", s(&self.read)),
            ("inference_reader_waiting_s", s(&self.reader_blocked)),
            ("inference_workers_waiting_s", s(&self.starved)),
            ("inference_pack_s", s(&self.pack)),
            ("inference_model_s", s(&self.model)),
        ]
    }
}

/// The patches in the order they are read: vertical strips about 2048 read-level pixels wide
/// (ending on tile boundaries where the stride allows: [`strip_patches`]), each top to bottom. Consecutive patches then share tiles, and the tiles a strip needs at any
/// moment (two tile rows of one strip) fit a small cache, so each tile is decoded about once
/// without holding whole rows of a wide slide. Results are keyed by grid index, so the order
/// changes no output.
fn read_order(slide: &Slide, grid: &PatchGrid, plan: crate::grid::ReadPlan) -> Vec<usize> {
    let level = &slide.levels()[plan.level];
    let per_strip = strip_patches(
        grid.stride_l0 / level.downsample,
        level.tile_size.map(|t| t.width),
    );
    let mut order: Vec<usize> = (0..grid.patches.len()).collect();
    order.sort_by_key(|&i| {
        let p = &grid.patches[i].index;
        (p.col / per_strip, p.row, p.col)
    });
    order
}

/// Patches per read strip, for patches `stride` read-level pixels apart on a level with
/// `tile_width`-pixel tiles: about 2048 pixels; and where some k patches span whole tiles
/// within 4096 pixels, a multiple of k, so that strips meet on tile boundaries and no tile
/// is decoded once for each of two strips (224-pixel patches on 256-pixel tiles: 8, not 9).
/// `bench read --walk` reads in the same order.
pub fn strip_patches(stride: f64, tile_width: Option<u64>) -> u32 {
    let stride = stride.max(1.0);
    let about = ((2048.0 / stride) as u32).max(1);
    let Some(tile) = tile_width.filter(|&t| t > 0).map(|t| t as f64) else {
        return about;
    };
    let most = ((4096.0 / stride) as u32).max(1);
    (1..=most)
        .find(|&k| {
            let tiles = k as f64 * stride / tile;
            tiles >= 1.0 && (tiles - tiles.round()).abs() < 1e-9
        })
        .map_or(about, |k| k * (about / k).max(1))
}

#[allow(clippy::too_many_arguments)]
fn write_outputs(
    dir: &Path,
    mpp: f64,
    (thumb, thumb_ds): (&image::RgbImage, f64),
    mask_png: &[u8],
    grid: &PatchGrid,
    // All predictions (patches.csv, the GeoJSON's tiles), those that enter the slide's
    // figures, the patches' QC, and a dense model's class maps.
    (predictions, scored, qc, dense): (
        &Predictions,
        &Predictions,
        Option<&QcDone>,
        Option<&[Heatmap]>,
    ),
    folder: &ModelFolder,
    cfg: &AnalyzeConfig,
    gpu: Option<&crate::gpu::Gpu>,
    gpu_fallbacks: &mut Vec<String>,
) -> Result<(Vec<ClassStats>, usize)> {
    let c = &folder.config;
    output::write_bytes(&dir.join("tissue-mask.png"), mask_png)?;
    output::write_png(&dir.join("thumbnail.png"), thumb)?;

    // patches.csv: WSInfer's columns plus ours, in grid order.
    let table = PatchTable {
        class_names: c.class_names.clone(),
        rows: grid
            .patches
            .iter()
            .filter_map(|p| {
                let probs = predictions.get(&p.index)?;
                Some(PatchRow {
                    minx: p.location.x,
                    miny: p.location.y,
                    width: p.side,
                    height: p.side,
                    col: p.index.col,
                    row: p.index.row,
                    tissue_fraction: p.tissue_fraction,
                    probs: probs.clone(),
                    qc: qc.and_then(|q| q.patches.get(&p.index).cloned()),
                })
            })
            .collect(),
    };
    let analysed = table.rows.len();
    let csv = table.to_csv();
    output::write_bytes(&dir.join("patches.csv"), csv.as_bytes())?;

    // Heatmaps, regions and per-class figures.
    let colors = c.tessera.class_colors.clone().unwrap_or_else(|| {
        (0..c.num_classes)
            .map(|i| crate::imaging::colour::palette(i, c.num_classes))
            .collect()
    });
    let mut regions = Vec::new();
    let mut stats = Vec::new();
    for (k, name) in c.class_names.iter().enumerate() {
        // A dense model's blended class map, else the patches' probabilities on the grid.
        let built;
        let heat: &Heatmap = match dense {
            Some(maps) => &maps[k],
            None => {
                built = Heatmap::build(grid, scored, k);
                &built
            }
        };
        let area_cell_mm2 = (heat.cell_l0 * mpp / 1000.0).powi(2);
        let values = heat.to_u8();
        if heat.width > 0 {
            let img =
                image::GrayImage::from_raw(heat.width, heat.height, values).unwrap_or_default();
            output::write_gray_png(&dir.join(format!("heatmap-{name}.png")), &img)?;
            let (overlay, failure) =
                output::overlay::overlay(thumb, thumb_ds, heat, cfg.threshold, gpu);
            if let (Some(why), Some(g)) = (failure, gpu) {
                gpu_fallbacks.push(format!(
                    "overlay-{name}.png: blending on {} failed ({why}); blended on the CPU",
                    g.adapter
                ));
            }
            output::write_png(&dir.join(format!("overlay-{name}.png")), &overlay)?;
        }
        let polys = heat.regions(cfg.threshold);
        let mut probs: Vec<f32> = scored.values().filter_map(|p| p.get(k).copied()).collect();
        probs.sort_by(f32::total_cmp);
        let pct = |q: f64| -> Option<f64> {
            if probs.is_empty() {
                return None;
            }
            Some(probs[((probs.len() - 1) as f64 * q).round() as usize] as f64)
        };
        let cells_above = heat
            .values
            .iter()
            .filter(|v| v.is_some_and(|p| p >= cfg.threshold))
            .count();
        let mean = probs.iter().map(|&p| p as f64).sum::<f64>() / probs.len().max(1) as f64;
        stats.push(ClassStats {
            name: name.clone(),
            mean: if probs.is_empty() { None } else { Some(mean) },
            percentiles: Percentiles {
                p5: pct(0.05),
                p25: pct(0.25),
                p50: pct(0.5),
                p75: pct(0.75),
                p95: pct(0.95),
                max: pct(1.0),
            },
            area_above_threshold_mm2: cells_above as f64 * area_cell_mm2,
            regions: polys.len(),
        });
        regions.push(geojson::Region {
            class: name.clone(),
            color: colors[k],
            polygons: polys,
        });
    }
    // A patch classifier's regions are its positive class's; a dense model's are every
    // class's (compartments, artefacts), each classified in QuPath.
    let positive = c.positive_class();
    let mut regions: Vec<geojson::Region> = regions
        .into_iter()
        .enumerate()
        .filter(|(k, _)| dense.is_some() || *k == positive)
        .map(|(_, r)| r)
        .collect();
    // QC's artefacts, classified Pen, Blur, Fold, Faint, Edge.
    if let Some(q) = qc {
        regions.extend(output::qc::regions(&q.map));
    }
    let text = geojson::feature_collection(&grid.patches, predictions, &c.class_names, &regions);
    let (path, bytes) = if text.len() > cfg.geojson_gzip_bytes {
        (dir.join("annotations.geojson.gz"), geojson::gzip(&text))
    } else {
        (dir.join("annotations.geojson"), text)
    };
    output::write_bytes(&path, &bytes)?;
    Ok((stats, analysed))
}

/// Reads the square of side `side_l0` level-0 pixels centred on `(cx, cy)` as a
/// `pixels`-square JPEG at `path`; returns the square.
fn write_crop(
    slide: &Slide,
    path: &Path,
    (cx, cy): (f64, f64),
    side_l0: f64,
    pixels: u32,
) -> Result<CropBox> {
    let level = slide.best_level_for_downsample(side_l0 / pixels.max(1) as f64);
    let ds = slide.levels()[level].downsample;
    let read_side = ((side_l0 / ds).round() as u64).max(1);
    let at = crate::geom::Level0Px::new(
        (cx - side_l0 / 2.0).round() as i64,
        (cy - side_l0 / 2.0).round() as i64,
    );
    let img = slide.read_region(at, level, crate::geom::Size::new(read_side, read_side))?;
    let img = crate::imaging::resize::resize(&img, pixels, pixels);
    let mut bytes = Vec::new();
    jpeg_encoder::Encoder::new(&mut bytes, 90)
        .encode(
            img.as_raw(),
            img.width() as u16,
            img.height() as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .map_err(|e| Error::Encode {
            path: path.into(),
            message: e.to_string(),
        })?;
    output::write_bytes(path, &bytes)?;
    Ok(CropBox {
        x: at.x,
        y: at.y,
        side: side_l0.round() as u64,
    })
}

/// Crops the squares QC found the most artefact in (`judged`: analyze's patches, or `tessera
/// qc`'s squares over the tissue, each with its judgement): `qc-region-<n>.jpg`, at most 4,
/// `pixels` square over `side_l0` level-0 pixels, at least one crop apart; worst first
/// (largest share of a kind that excludes), ties in grid order.
fn write_qc_regions(
    dir: &Path,
    slide: &Slide,
    judged: &[(PatchRef, &crate::qc::PatchQc)],
    (side_l0, pixels): (f64, u32),
) -> Result<Vec<crate::results::QcRegion>> {
    let mut worst: Vec<(f64, &PatchRef, &crate::qc::PatchQc)> = judged
        .iter()
        .filter_map(|(p, q)| {
            let w = crate::qc::Kind::ALL
                .iter()
                .enumerate()
                .filter(|(_, k)| q.kinds & k.bit() != 0 && k.excludes())
                .map(|(i, _)| q.fractions[i])
                .fold(0.0, f64::max);
            (w > 0.0).then_some((w, p, *q))
        })
        .collect();
    worst.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then((a.1.col, a.1.row).cmp(&(b.1.col, b.1.row)))
    });
    let mut chosen: Vec<(f64, f64)> = Vec::new();
    let mut out = Vec::new();
    for (_, p, q) in worst {
        if out.len() == 4 {
            break;
        }
        let cx = p.x as f64 + p.side as f64 / 2.0;
        let cy = p.y as f64 + p.side as f64 / 2.0;
        if chosen
            .iter()
            .any(|&(x, y)| (x - cx).abs() < side_l0 && (y - cy).abs() < side_l0)
        {
            continue;
        }
        chosen.push((cx, cy));
        let file = format!("qc-region-{}.jpg", out.len() + 1);
        let crop = write_crop(slide, &dir.join(&file), (cx, cy), side_l0, pixels)?;
        out.push(crate::results::QcRegion {
            rank: out.len() + 1,
            file,
            reason: q.reason(),
            patch: *p,
            crop_level0: crop,
        });
    }
    Ok(out)
}

/// The least share of tissue in a square `tessera qc` may crop: pen on bare glass is no
/// artefact of the tissue. A constant, not a `QcParams` field, so that it stays out of
/// analyze's run keys (it changes no analysis result).
const QC_CROP_MIN_TISSUE: f64 = 0.25;

/// `tessera qc`'s candidates for crops: squares of `side_l0` level-0 pixels tiling the slide,
/// those at least [`QC_CROP_MIN_TISSUE`] tissue, each judged on `map` as a patch would be.
fn qc_squares(
    map: &crate::qc::QcMap,
    side_l0: f64,
    params: &crate::qc::QcParams,
) -> Vec<(PatchRef, crate::qc::PatchQc)> {
    let side = side_l0.round().max(1.0) as u64;
    let (w, h) = (
        (map.width as f64 * map.downsample).ceil() as u64,
        (map.height as f64 * map.downsample).ceil() as u64,
    );
    let mut out = Vec::new();
    for row in 0..h.div_ceil(side) {
        for col in 0..w.div_ceil(side) {
            let at = crate::geom::Level0Px::new((col * side) as i64, (row * side) as i64);
            if map.tissue_in(at, side) < QC_CROP_MIN_TISSUE {
                continue;
            }
            let q = crate::qc::PatchQc::judge(map, at, side, None, params);
            if q.kinds != 0 {
                out.push((
                    PatchRef {
                        col: col as u32,
                        row: row as u32,
                        x: at.x,
                        y: at.y,
                        side,
                    },
                    q,
                ));
            }
        }
    }
    out
}

/// Crops the top-scoring regions of the positive class for the report: `region-<n>.jpg`,
/// `region_pixels` square at the model's µm/px, centred on each chosen patch. Returns their
/// descriptions for result.json (rank, score, level-0 box, grid index, file).
fn write_top_regions(
    dir: &Path,
    slide: &Slide,
    grid: &PatchGrid,
    predictions: &Predictions,
    mpp: f64,
    folder: &ModelFolder,
    cfg: &AnalyzeConfig,
) -> Result<Vec<TopRegion>> {
    let c = &folder.config;
    let side_l0 = cfg.region_pixels as f64 * c.spacing_um_px / mpp;
    let chosen = top_patches(
        grid,
        predictions,
        c.positive_class(),
        cfg.top_regions,
        side_l0,
    );
    let mut out = Vec::new();
    for (rank, (patch, score)) in chosen.into_iter().enumerate() {
        let cx = patch.location.x as f64 + patch.side as f64 / 2.0;
        let cy = patch.location.y as f64 + patch.side as f64 / 2.0;
        let file = format!("region-{}.jpg", rank + 1);
        let crop = write_crop(
            slide,
            &dir.join(&file),
            (cx, cy),
            side_l0,
            cfg.region_pixels,
        )?;
        out.push(TopRegion {
            rank: rank + 1,
            score: f64::from(score),
            file,
            patch: PatchRef {
                col: patch.index.col,
                row: patch.index.row,
                x: patch.location.x,
                y: patch.location.y,
                side: patch.side,
            },
            crop_level0: crop,
            centre_level0: Point {
                x: cx.round() as i64,
                y: cy.round() as i64,
            },
            crop_pixels: cfg.region_pixels,
            crop_um_px: c.spacing_um_px,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cfg: &AnalyzeConfig) -> String {
        let folder =
            ModelFolder::load(&default_model_dir().unwrap()).expect("the bundled model loads");
        run_key_for(&folder, None, cfg).expect("a run key")
    }

    /// Every result-changing setting moves the run key, and nothing else does. A field added
    /// to [`AnalyzeConfig`] is in the key unless marked `#[serde(skip)]`; the destructuring
    /// below stops compiling until the new field is sorted into one of the two lists.
    #[test]
    fn every_result_changing_setting_changes_the_run_key_and_no_other_does() {
        let base = AnalyzeConfig::default();
        let AnalyzeConfig {
            out: _,
            model: _,
            inference: _,
            device: _,
            gpu_preprocess: _,
            stain: _,
            batch_size: _,
            queue_depth: _,
            workers: _,
            inference_threads: _,
            decode_threads: _,
            stride_pixels: _,
            min_tissue: _,
            threshold: _,
            mpp_override: _,
            hash_full: _,
            dicomweb_store: _,
            geojson_gzip_bytes: _,
            tissue: _,
            qc: _,
            tissue_model: _,
            qc_model: _,
            slide: _,
            slide_score: _,
            top_regions: _,
            region_pixels: _,
            include_label: _,
            pdf: _,
            progress: _,
        } = base.clone();
        type Change = fn(&mut AnalyzeConfig);
        let changing: Vec<(&str, Change)> = vec![
            ("stain", |c| {
                c.stain = Some(crate::imaging::stain::Reinhard {
                    mean: [70.0, 10.0, -10.0],
                    std: [10.0, 5.0, 5.0],
                })
            }),
            ("stride_pixels", |c| c.stride_pixels = Some(112)),
            ("min_tissue", |c| c.min_tissue = 0.25),
            ("threshold", |c| c.threshold = 0.7),
            ("mpp_override", |c| c.mpp_override = Some(0.5)),
            ("hash_full", |c| c.hash_full = true),
            ("geojson_gzip_bytes", |c| c.geojson_gzip_bytes = 1 << 20),
            ("tissue.mask_um_px", |c| c.tissue.mask_um_px = 4.0),
            ("tissue.fallback_downsample", |c| {
                c.tissue.fallback_downsample = 16.0
            }),
            ("tissue.median", |c| c.tissue.median = 5),
            ("tissue.min_saturation", |c| c.tissue.min_saturation = 20),
            ("tissue.closing", |c| c.tissue.closing = 3),
            ("tissue.min_object_mm2", |c| c.tissue.min_object_mm2 = 0.05),
            ("tissue.max_hole_mm2", |c| c.tissue.max_hole_mm2 = 0.02),
            ("tissue.max_side", |c| c.tissue.max_side = 2048),
            ("qc.mode", |c| c.qc.mode = crate::qc::QcMode::Flag),
            ("qc.patch_max_fraction", |c| c.qc.patch_max_fraction = 0.5),
            ("qc.pen.grow_um", |c| c.qc.pen.grow_um = 40.0),
            ("qc.focus.relative", |c| c.qc.focus.relative = 0.5),
            ("qc.stain.fold_min_od", |c| c.qc.stain.fold_min_od = 0.6),
            ("qc.edge.max_lines", |c| c.qc.edge.max_lines = 2),
            ("qc.rules.review_pen_pct", |c| {
                c.qc.rules.review_pen_pct = 5.0
            }),
            ("slide.apply_icc", |c| c.slide.apply_icc = true),
            ("slide_score", |c| c.slide_score = ScoreMethod::Max),
            ("top_regions", |c| c.top_regions = 3),
            ("region_pixels", |c| c.region_pixels = 256),
            ("include_label", |c| c.include_label = true),
            ("pdf", |c| c.pdf = true),
            ("device.fp16", |c| c.device.fp16 = true),
        ];
        let k0 = key(&base);
        let mut seen = std::collections::BTreeSet::from([k0.clone()]);
        for (name, change) in changing {
            let mut c = base.clone();
            change(&mut c);
            assert!(seen.insert(key(&c)), "{name} does not change the run key");
        }
        let neutral: Vec<(&str, Change)> = vec![
            ("out", |c| c.out = "/elsewhere".into()),
            ("model", |c| c.model = Some(default_model_dir().unwrap())),
            ("inference", |c| c.inference = InferenceChoice::Tract),
            ("device.device", |c| {
                c.device.device = crate::model::Device::Cpu
            }),
            ("gpu_preprocess", |c| {
                c.gpu_preprocess = crate::gpu::GpuPreprocess::Off
            }),
            ("batch_size", |c| c.batch_size = 7),
            ("queue_depth", |c| c.queue_depth = 9),
            ("workers", |c| c.workers = 3),
            ("inference_threads", |c| c.inference_threads = 5),
            ("decode_threads", |c| c.decode_threads = 5),
            ("slide.cache_bytes", |c| c.slide.cache_bytes = 1),
            ("slide.backend", |c| {
                c.slide.backend = crate::config::BackendChoice::Native
            }),
        ];
        for (name, change) in neutral {
            let mut c = base.clone();
            change(&mut c);
            assert_eq!(
                key(&c),
                k0,
                "{name} changes the run key but not the results"
            );
        }
    }

    /// The key covers whatever the configuration serializes, so a setting added without
    /// `#[serde(skip)]` is in it: every serialized leaf, changed, changes the key.
    #[test]
    fn the_run_key_covers_every_serialized_setting() {
        let folder =
            ModelFolder::load(&default_model_dir().unwrap()).expect("the bundled model loads");
        let settings = serde_json::to_value(AnalyzeConfig::default()).expect("serializable");
        let digest = |s: &serde_json::Value| key_of(&folder, None, s);
        assert_eq!(digest(&settings), key(&AnalyzeConfig::default()));
        fn leaves(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, x) in m {
                        leaves(x, format!("{at}/{k}"), out);
                    }
                }
                _ => out.push(at),
            }
        }
        let mut paths = Vec::new();
        leaves(&settings, String::new(), &mut paths);
        assert!(paths.len() >= 20, "{paths:?}");
        for at in paths {
            let mut changed = settings.clone();
            *changed.pointer_mut(&at).expect("a leaf") = json!("changed");
            assert_ne!(digest(&changed), digest(&settings), "{at}");
        }
    }

    #[test]
    fn read_strips_end_on_tile_boundaries_where_the_stride_allows() {
        // 8 × 224 = 1792 = 7 × 256: strips of 8, not the 9 that 2048 px alone would give.
        assert_eq!(strip_patches(224.0, Some(256)), 8);
        assert_eq!(strip_patches(256.0, Some(256)), 8);
        // Aperio's 240-pixel tiles: 15 × 224 = 3360 = 14 × 240.
        assert_eq!(strip_patches(224.0, Some(240)), 15);
        assert_eq!(strip_patches(128.0, Some(512)), 16);
        // No tile size, or no whole-tile span within 4096 px: about 2048 px.
        assert_eq!(strip_patches(224.0, None), 9);
        assert_eq!(strip_patches(512.0, Some(240)), 4);
        assert_eq!(strip_patches(223.5, Some(256)), 9);
        // Patches wider than the strip target still make strips of one.
        assert_eq!(strip_patches(5000.0, Some(256)), 1);
    }
}
