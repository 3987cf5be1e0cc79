//! The results contract: the types of what Tessera writes and reads back.
//!
//! In: nothing (plain serde types). Out: the shapes of a slide's `result.json`
//! ([`SlideResult`], version [`RESULT_SCHEMA_VERSION`]) and of `OUT/summary.json` and
//! `summary.csv` rows ([`SlideStatus`], [`Status`]). The pipeline and the cohort runner write
//! them; the report, `tessera report`, `tessera summary`, the cohort runner's skip check, the
//! watch service and the viewer read them back through the same types ([`SlideResult::read`]),
//! so a field renamed here is renamed for every reader at once.
//!
//! result.json is written with its keys sorted at every level ([`SlideResult::to_json`]), as it
//! always was, so the order of fields here does not change the file. Coordinates in it are
//! level-0 pixels; sizes of crops and patches are in pixels of the model's µm/px unless named
//! `_level0`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::slide::Mpp;

/// Version of result.json's layout. 2 added the `preprocessing` block (where patches were
/// preprocessed, and every fallback from a GPU with its reason); 3 the `qc` block (slide
/// quality control: artefacts, focus, verdict). Readers accept 1 to 3.
pub const RESULT_SCHEMA_VERSION: u32 = 3;

/// What became of one slide in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Analysed now.
    Done,
    /// Up to date: a finished result with the same run key exists.
    Skipped,
    /// Another worker holds the slide's lock.
    Locked,
    /// The analysis failed; the reason says why.
    Failed,
}

impl Status {
    /// The word written in summaries: `done`, `skipped`, `locked` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Skipped => "skipped",
            Status::Locked => "locked",
            Status::Failed => "failed",
        }
    }

    /// How informative a status is when merging summaries of several runs: a finished result
    /// beats an up-to-date skip, which beats a failure, which beats a lock.
    pub fn rank(self) -> u8 {
        match self {
            Status::Done => 3,
            Status::Skipped => 2,
            Status::Failed => 1,
            Status::Locked => 0,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One slide's outcome in a cohort run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideStatus {
    /// The slide.
    pub path: PathBuf,
    /// Its output folder name.
    pub name: String,
    /// What became of it.
    pub status: Status,
    /// Why it failed or was skipped.
    pub reason: String,
    /// For a failure, the error's stable kind (e.g. `corrupt`, `missing_mpp`: [`crate::Error::kind`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// Patches analysed.
    pub patches: Option<usize>,
    /// Tissue area in mm².
    pub tissue_mm2: Option<f64>,
    /// Positive class and its mean probability.
    pub positive_class: Option<String>,
    /// Mean probability of the positive class.
    pub positive_mean: Option<f64>,
    /// The slide-level score of the positive class (see result.json's `slide_score`).
    #[serde(default)]
    pub slide_score: Option<f64>,
    /// Slide QC's verdict (`pass`, `review`, `rescan`), when QC ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qc_verdict: Option<crate::qc::Verdict>,
    /// Slide QC's reasons, joined with `; `.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qc_reasons: Option<String>,
    /// Patches QC left out of the slide's figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qc_excluded: Option<usize>,
    /// The slide's output folder.
    pub output: Option<PathBuf>,
}

impl SlideStatus {
    /// A slide not yet done: `failed` with no reason and no figures, to be filled in.
    pub fn failed(path: PathBuf, name: String) -> SlideStatus {
        SlideStatus {
            path,
            name,
            status: Status::Failed,
            reason: String::new(),
            error_kind: None,
            patches: None,
            tissue_mm2: None,
            positive_class: None,
            positive_mean: None,
            slide_score: None,
            qc_verdict: None,
            qc_reasons: None,
            qc_excluded: None,
            output: None,
        }
    }
}

/// A slide's `result.json`: what was analysed, with what, how, and what came out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideResult {
    /// [`RESULT_SCHEMA_VERSION`] when written; 1 to 3 when read.
    pub schema_version: u32,
    /// The run key ([`crate::pipeline::run_key`]): same key, same model and settings.
    pub run_key: String,
    /// The Tessera version that wrote it.
    pub tessera_version: String,
    /// "Decision support — findings require review by a pathologist."
    pub disclaimer: String,
    /// When the analysis finished its outputs (RFC 3339, UTC, seconds).
    pub analysed_at: String,
    /// The slide.
    pub slide: SlideRecord,
    /// The model.
    pub model: ModelRecord,
    /// What ran inference, on which device, and every fallback.
    pub inference: InferenceRecord,
    /// Where patches were preprocessed (absent in version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<PreprocessingRecord>,
    /// Every parameter of the analysis.
    pub parameters: Parameters,
    /// Tissue area in mm².
    pub tissue_area_mm2: f64,
    /// Tissue share of the slide, 0–1.
    pub tissue_fraction: f64,
    /// Patches analysed.
    pub patches_analysed: usize,
    /// Grid cells skipped for too little tissue.
    pub patches_skipped: usize,
    /// Per-class figures, in the model's class order.
    pub classes: Vec<ClassStats>,
    /// The slide-level score of the positive class.
    pub slide_score: SlideScore,
    /// The top-scoring regions cropped for the report.
    pub top_regions: Vec<TopRegion>,
    /// Slide quality control (absent before version 3 and with `--qc off`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qc: Option<QcRecord>,
    /// Whether label and macro images were written.
    pub identifiers: Identifiers,
    /// QC warnings (MPP missing or overridden, little tissue, …).
    pub warnings: Vec<String>,
    /// Seconds per phase: `open_and_load_s`, `tissue_s`, `inference_s`, `outputs_s`, `total_s`;
    /// and inside inference, in seconds summed over the threads that spent them:
    /// `inference_read_s` (reading, decoding, resizing), `inference_reader_waiting_s` (the
    /// queue full: model-bound), `inference_workers_waiting_s` (no batch ready: reader-bound),
    /// `inference_pack_s` (normalising into the tensor) and `inference_model_s` (the model's
    /// run, host↔device copies included).
    pub timings_s: BTreeMap<String, f64>,
}

impl SlideResult {
    /// Reads and checks `path` (a result.json): valid JSON of this shape, a known schema version.
    pub fn read(path: &Path) -> Result<SlideResult> {
        let bytes = std::fs::read(path).map_err(|e| Error::from_io(path, e))?;
        let bad = |message: String| Error::Report {
            path: path.into(),
            message,
        };
        let r: SlideResult = serde_json::from_slice(&bytes).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                bad(format!("not valid JSON: {e}"))
            } else {
                bad(format!("not a Tessera result.json: {e}"))
            }
        })?;
        if !(1..=RESULT_SCHEMA_VERSION).contains(&r.schema_version) {
            return Err(bad(format!(
                "unknown schema_version {} (expected 1 to {RESULT_SCHEMA_VERSION})",
                r.schema_version
            )));
        }
        if r.model.config.class_names.is_empty() {
            return Err(bad("model.config.class_names is empty".into()));
        }
        Ok(r)
    }

    /// The text of result.json: keys sorted at every level, two-space indented (the output
    /// layer writes it atomically).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_value(self)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .map_err(|e| Error::Encode {
                path: "result.json".into(),
                message: e.to_string(),
            })
    }

    /// The positive class's index: the slide score's class, else the model's, else the last.
    pub fn positive_class(&self) -> usize {
        let names = &self.model.config.class_names;
        let name = Some(self.slide_score.class.as_str())
            .filter(|n| !n.is_empty())
            .or(self.model.config.tessera.positive_class.as_deref());
        name.and_then(|n| names.iter().position(|c| c == n))
            .unwrap_or(names.len().saturating_sub(1))
    }

    /// The name of [`SlideResult::positive_class`].
    pub fn positive_class_name(&self) -> &str {
        &self.model.config.class_names[self.positive_class()]
    }
}

/// The slide analysed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideRecord {
    /// The path given (a file, a DICOM series folder, or a `dicomweb+http(s)://` URL).
    pub path: PathBuf,
    /// Its output folder name.
    pub name: String,
    /// For a series read over DICOMweb: the Study, Series and SOP Instance UIDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dicomweb: Option<DicomWebRecord>,
    /// The detected format, e.g. "Aperio SVS".
    pub format: String,
    /// The scanner's vendor, when known.
    pub vendor: Option<String>,
    /// The reader that opened it.
    pub reader: ReaderRecord,
    /// Bytes on disk (every file of a series; 0 for a DICOMweb series).
    pub file_size_bytes: u64,
    /// Content fingerprint.
    pub fingerprint: Fingerprint,
    /// Level-0 size in pixels.
    pub dimensions: Dimensions,
    /// µm per pixel and where it came from.
    pub mpp: Mpp,
    /// The scanner's objective power, when stated.
    pub objective_power: Option<f64>,
}

/// The reader that opened a slide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReaderRecord {
    /// "native" or "openslide".
    pub name: String,
    /// The shared library used, when there is one.
    pub library: Option<PathBuf>,
    /// The reader's version.
    pub version: String,
}

/// Which series on a DICOMweb server a slide was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DicomWebRecord {
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// SOP Instance UIDs of the series' instances, sorted.
    pub sop_instance_uids: Vec<String>,
}

/// A slide's content fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// SHA-256, hexadecimal.
    pub sha256: String,
    /// What was hashed: "size + first and last MiB", "full file", or for a DICOMweb series
    /// "DICOMweb: UIDs, attributes, first and last level-0 frames".
    pub method: String,
}

/// A size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dimensions {
    /// Width in pixels.
    pub width: u64,
    /// Height in pixels.
    pub height: u64,
}

/// The model that ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The model folder's name.
    pub name: String,
    /// The model's own version (config.json's `tessera.version`), when stated.
    pub version: Option<String>,
    /// SHA-256 of model.onnx.
    pub sha256: String,
    /// config.json as read.
    pub config: ModelConfig,
}

/// What ran inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceRecord {
    /// "onnxruntime" or "tract".
    pub backend: String,
    /// The runtime's version.
    pub version: String,
    /// The device it ran on, e.g. "CPU", "CUDA:0".
    pub device: String,
    /// The `--device` asked for.
    pub device_requested: String,
    /// Everything tried before, each with why it was not used.
    pub fallbacks: Vec<String>,
    /// TensorRT ran in FP16 (`--fp16` on any other device changes nothing and records false).
    pub fp16: bool,
    /// The line shown to the user.
    pub note: String,
}

/// Where patches were preprocessed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessingRecord {
    /// `--gpu-preprocess`: "auto", "on" or "off".
    pub requested: String,
    /// The GPU adapter, or "CPU".
    pub device: String,
    /// Why a GPU was passed over, or failed, each with its reason.
    pub fallbacks: Vec<String>,
}

/// The analysis parameters, as they were used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parameters {
    /// The GPU adapter every batch was preprocessed on, or `None` (the CPU).
    pub gpu_preprocess: Option<String>,
    /// Reinhard stain normalisation, when asked for.
    pub stain_normalisation: Option<StainRecord>,
    /// The model's input side in pixels.
    pub patch_size_pixels: u32,
    /// The model's µm per pixel.
    pub spacing_um_px: f64,
    /// Grid stride in model pixels.
    pub stride_pixels: u32,
    /// A patch's side in level-0 pixels.
    pub patch_side_level0: u64,
    /// The slide level patches were read from.
    pub read_level: usize,
    /// A patch's side in pixels of that level.
    pub read_side: u64,
    /// How patches were resized to the model's input (`None` in results written before
    /// Tessera recorded it: those used area averaging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_method: Option<crate::imaging::resize::ResizeMethod>,
    /// A dense model's class-map cell side in µm (heatmaps, regions and areas are at this
    /// resolution); absent for patch classifiers, whose heatmap cells are the stride.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_map_cell_um: Option<f64>,
    /// Minimum tissue fraction of a patch.
    pub min_tissue_fraction: f64,
    /// Probability threshold for regions and areas.
    pub threshold: f64,
    /// Patches per batch.
    pub batch_size: usize,
    /// The slide-score method, e.g. "mean-top-10".
    pub slide_score: String,
    /// Top regions asked for.
    pub top_regions: usize,
    /// Side of each region crop in model pixels.
    pub region_pixels: u32,
    /// Level-0 pixels per thumbnail pixel.
    pub thumbnail_downsample: f64,
    /// The tissue detector.
    pub tissue: TissueRecord,
}

/// Reinhard stain normalisation's target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StainRecord {
    /// "reinhard".
    pub method: String,
    /// Target L*a*b* means.
    pub lab_mean: [f64; 3],
    /// Target L*a*b* standard deviations.
    pub lab_std: [f64; 3],
    /// The colour space, in words.
    pub space: String,
}

/// The tissue detector and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TissueRecord {
    /// The method, in words.
    pub method: String,
    /// Target mask resolution in µm per pixel.
    pub mask_um_px: f64,
    /// Level-0 pixels per mask pixel.
    pub mask_downsample: f64,
    /// The saturation threshold Otsu's method chose (0–255).
    pub otsu_threshold: u8,
    /// Median blur window in mask pixels.
    pub median: usize,
    /// Closing kernel side in mask pixels.
    pub closing: usize,
    /// Objects smaller than this many mm² were removed.
    pub min_object_mm2: f64,
    /// Holes smaller than this many mm² were filled.
    pub max_hole_mm2: f64,
}

/// One class's figures over the analysed patches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassStats {
    /// The class name.
    pub name: String,
    /// Mean probability (`None` without patches).
    pub mean: Option<f64>,
    /// Probability percentiles.
    pub percentiles: Percentiles,
    /// Area of grid cells at or above the threshold, mm².
    pub area_above_threshold_mm2: f64,
    /// Thresholded regions (polygons) of this class.
    pub regions: usize,
}

/// Percentiles of patch probabilities (nearest rank); `None` without patches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// 5th.
    pub p5: Option<f64>,
    /// 25th.
    pub p25: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 75th.
    pub p75: Option<f64>,
    /// 95th.
    pub p95: Option<f64>,
    /// Highest.
    pub max: Option<f64>,
}

/// The slide-level score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideScore {
    /// The positive class.
    pub class: String,
    /// "mean-top-10" or "max".
    pub method: String,
    /// The method in words.
    pub description: String,
    /// The score (`None` without patches).
    pub value: Option<f64>,
}

/// One top-scoring region of the positive class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopRegion {
    /// 1 for the highest score.
    pub rank: usize,
    /// The patch's probability of the positive class (an f32, widened: written as before).
    pub score: f64,
    /// The crop's file, e.g. "region-1.jpg".
    pub file: String,
    /// The patch it centres on.
    pub patch: PatchRef,
    /// The crop in level-0 pixels.
    pub crop_level0: CropBox,
    /// The crop's centre in level-0 pixels.
    pub centre_level0: Point,
    /// The crop's side in pixels of the file.
    pub crop_pixels: u32,
    /// The crop's µm per pixel.
    pub crop_um_px: f64,
}

/// A patch of the grid: its cell and its square in level-0 pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchRef {
    /// Grid column.
    pub col: u32,
    /// Grid row.
    pub row: u32,
    /// Left edge, level-0 pixels.
    pub x: i64,
    /// Top edge, level-0 pixels.
    pub y: i64,
    /// Side, level-0 pixels.
    pub side: u64,
}

/// A square in level-0 pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CropBox {
    /// Left edge.
    pub x: i64,
    /// Top edge.
    pub y: i64,
    /// Side.
    pub side: u64,
}

/// A point in level-0 pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    /// Horizontal.
    pub x: i64,
    /// Vertical.
    pub y: i64,
}

/// The label and macro images (patient identifiers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identifiers {
    /// Written and shown on request only.
    pub label_included: bool,
    /// Their files, when included.
    pub images: Vec<String>,
}

/// Slide quality control, in result.json's `qc` block and in `tessera qc`'s qc.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QcRecord {
    /// `exclude`, `flag` or `off` (`--qc`).
    pub mode: crate::qc::QcMode,
    /// `pass`, `review` or `rescan`.
    pub verdict: crate::qc::Verdict,
    /// Why, each reason starting with the verdict it raised (empty on a pass).
    pub reasons: Vec<String>,
    /// The artefact raster's scale (that of the tissue mask): µm per pixel.
    pub raster_um_px: f64,
    /// Per artefact kind: areas and share of the tissue.
    pub kinds: Vec<QcKindRecord>,
    /// How focus was measured and what came of it.
    pub focus: QcFocusRecord,
    /// Patches marked with an artefact (during `analyze`; 0 in `tessera qc`).
    pub patches_flagged: usize,
    /// Patches left out of the slide's figures (`--qc exclude`).
    pub patches_excluded: usize,
    /// The slide's median tissue optical density (folds are judged against it).
    pub median_tissue_od: f64,
    /// Every QC threshold used.
    pub params: serde_json::Value,
    /// Crops of the patches (analyze) or squares (`tessera qc`) with the most artefact.
    #[serde(default)]
    pub regions: Vec<QcRegion>,
    /// The lab's QC model (`--qc-model`), when one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<QcModelRecord>,
}

/// A lab's QC model as it ran on a slide: which model, what each class stood for, and what
/// it flagged (its flags join the built-in detectors' in the kinds' figures).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QcModelRecord {
    /// The model folder's name.
    pub name: String,
    /// SHA-256 of its model.onnx.
    pub sha256: String,
    /// Its configuration's description and version.
    pub description: Option<String>,
    /// See `description`.
    pub version: Option<String>,
    /// The µm/px it ran at.
    pub spacing_um_px: f64,
    /// Tiles it ran on (every tile of the slide with tissue in it).
    pub tiles: usize,
    /// Each class and the kind it stands for (`none`: not an artefact).
    pub classes: Vec<QcModelClass>,
    /// The probability a class needs at a pixel to flag it.
    pub min_probability: f64,
    /// Share of the tissue the model flagged, percent, per kind it has a class for.
    pub tissue_pct: BTreeMap<String, f64>,
    /// The backend and device it ran on, and every device not used and why.
    pub backend: String,
}

/// One class of a QC model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QcModelClass {
    /// The class's name in the model's configuration.
    pub class: String,
    /// `pen`, `blur`, `fold`, `faint`, `edge` or `none`.
    pub kind: String,
}

/// A crop of a patch with artefacts (`qc-region-<n>.jpg`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QcRegion {
    /// 1 for the worst.
    pub rank: usize,
    /// The crop's file.
    pub file: String,
    /// The patch's kinds and shares, e.g. `pen 62%`.
    pub reason: String,
    /// The patch.
    pub patch: PatchRef,
    /// The crop in level-0 pixels.
    pub crop_level0: CropBox,
}

impl QcRecord {
    /// The record of a finished QC: `outcome` on `map`, with `params`, and the patches'
    /// QC when a model's patches were judged.
    pub fn new<'a>(
        outcome: &crate::qc::Outcome,
        map: &crate::qc::QcMap,
        params: &crate::qc::QcParams,
        patches: impl IntoIterator<Item = &'a crate::qc::PatchQc>,
    ) -> QcRecord {
        let (mut flagged, mut excluded) = (0, 0);
        for p in patches {
            flagged += usize::from(p.kinds != 0);
            excluded += usize::from(p.excluded);
        }
        let f = |v: f32| (v as f64 * 1e4).round() / 1e4;
        QcRecord {
            mode: params.mode,
            verdict: outcome.verdict,
            reasons: outcome.reasons.clone(),
            raster_um_px: map.um_px,
            kinds: outcome
                .figures
                .iter()
                .map(|k| QcKindRecord {
                    kind: k.kind.name().into(),
                    area_mm2: k.area_mm2,
                    tissue_area_mm2: k.tissue_mm2,
                    tissue_pct: k.tissue_pct,
                })
                .collect(),
            focus: match &outcome.focus {
                Err(why) => QcFocusRecord {
                    not_measured: Some(why.clone()),
                    source: None,
                    um_px: None,
                    tiles: 0,
                    blurred_tiles: 0,
                    reference: None,
                    percentiles: None,
                },
                Ok(o) => QcFocusRecord {
                    not_measured: None,
                    source: Some(o.source.into()),
                    um_px: Some(o.um_px),
                    tiles: o.assessment.measured,
                    blurred_tiles: o.assessment.blurred.iter().filter(|b| **b).count(),
                    reference: o.assessment.reference.map(f),
                    percentiles: o.assessment.percentiles.map(|p| p.map(f)),
                },
            },
            patches_flagged: flagged,
            patches_excluded: excluded,
            median_tissue_od: f(map.median_tissue_od),
            params: serde_json::to_value(params).unwrap_or(serde_json::Value::Null),
            regions: Vec::new(),
            model: None,
        }
    }

    /// A kind's share of the tissue, percent (0 when absent).
    pub fn tissue_pct(&self, kind: &str) -> f64 {
        self.kinds
            .iter()
            .find(|k| k.kind == kind)
            .map_or(0.0, |k| k.tissue_pct)
    }
}

/// One artefact kind's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QcKindRecord {
    /// `pen`, `blur`, `fold`, `faint` or `edge`.
    pub kind: String,
    /// Area flagged anywhere on the slide, mm².
    pub area_mm2: f64,
    /// Area flagged on tissue, mm².
    pub tissue_area_mm2: f64,
    /// Share of the tissue flagged, percent.
    pub tissue_pct: f64,
}

/// Focus measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QcFocusRecord {
    /// Why focus was not measured (then the other fields are empty).
    pub not_measured: Option<String>,
    /// `patches` (analyze: the model's patches as read) or `focus tiles` (`tessera qc`).
    pub source: Option<String>,
    /// The µm/px it was measured at.
    pub um_px: Option<f64>,
    /// Tiles measured.
    pub tiles: usize,
    /// Tiles judged out of focus.
    pub blurred_tiles: usize,
    /// The slide's reference score (its sharpest tissue), when enough tiles were measured.
    pub reference: Option<f64>,
    /// The scores' 5th, 25th, 50th, 75th and 95th percentiles.
    pub percentiles: Option<[f64; 5]>,
}

/// `tessera qc`'s `qc.json`: a slide's quality control without a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QcDocument {
    /// [`RESULT_SCHEMA_VERSION`] when written.
    pub schema_version: u32,
    /// The Tessera version that wrote it.
    pub tessera_version: String,
    /// When QC finished (RFC 3339, UTC, seconds).
    pub analysed_at: String,
    /// The slide.
    pub slide: SlideRecord,
    /// Tissue area in mm².
    pub tissue_area_mm2: f64,
    /// Tissue share of the slide, 0–1.
    pub tissue_fraction: f64,
    /// Tissue detector parameters.
    pub tissue: TissueRecord,
    /// The QC.
    pub qc: QcRecord,
    /// Warnings (MPP missing or overridden, little tissue, …).
    pub warnings: Vec<String>,
    /// Seconds per phase.
    pub timings_s: BTreeMap<String, f64>,
}

impl QcDocument {
    /// Reads and checks `path` (a qc.json).
    pub fn read(path: &Path) -> Result<QcDocument> {
        let bytes = std::fs::read(path).map_err(|e| Error::from_io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Report {
            path: path.into(),
            message: format!("not a Tessera qc.json: {e}"),
        })
    }

    /// The text of qc.json: keys sorted, two-space indented.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_value(self)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .map_err(|e| Error::Encode {
                path: "qc.json".into(),
                message: e.to_string(),
            })
    }
}

/// One row of `patches.csv`: an analysed patch, its square in level-0 pixels (WSInfer's
/// `minx,miny,width,height`), its grid cell, its tissue fraction and one probability per class.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchRow {
    /// Left edge, level-0 pixels.
    pub minx: i64,
    /// Top edge, level-0 pixels.
    pub miny: i64,
    /// Width, level-0 pixels.
    pub width: u64,
    /// Height, level-0 pixels.
    pub height: u64,
    /// Grid column.
    pub col: u32,
    /// Grid row.
    pub row: u32,
    /// Share of the patch that is tissue, 0–1 (written with 4 decimals).
    pub tissue_fraction: f64,
    /// Probability of each class, in the table's class order (written with 6 decimals).
    pub probs: Vec<f32>,
    /// The patch's QC (its columns are written when any row has one).
    pub qc: Option<crate::qc::PatchQc>,
}

/// `patches.csv`: `minx,miny,width,height,col,row,tissue_fraction,prob_<class>…`, then, when
/// QC ran, `qc_pen,qc_blur,qc_fold,qc_faint,qc_edge` (each kind's share of the patch),
/// `focus` (its focus score, empty when not measured), `qc_status` (`ok`, `flagged` or
/// `excluded`) and `qc_reason` (e.g. `pen 62%; blur 100%`), one row per analysed patch in
/// grid order. [`PatchTable::to_csv`] writes it; [`PatchTable::read`] reads
/// it back (columns found by name, so a reader tolerates reordered columns).
#[derive(Debug, Clone, PartialEq)]
pub struct PatchTable {
    /// The classes, in the model's order (the `prob_<class>` columns).
    pub class_names: Vec<String>,
    /// The rows.
    pub rows: Vec<PatchRow>,
}

/// The fixed columns of patches.csv, before the probabilities.
const PATCH_COLUMNS: [&str; 7] = [
    "minx",
    "miny",
    "width",
    "height",
    "col",
    "row",
    "tissue_fraction",
];

impl PatchTable {
    /// The CSV text.
    pub fn to_csv(&self) -> String {
        let mut csv = PATCH_COLUMNS.join(",");
        for n in &self.class_names {
            csv.push_str(&format!(",prob_{n}"));
        }
        let with_qc = self.rows.iter().any(|r| r.qc.is_some());
        if with_qc {
            for k in crate::qc::Kind::ALL {
                csv.push_str(&format!(",qc_{}", k.name()));
            }
            csv.push_str(",focus,qc_status,qc_reason");
        }
        csv.push('\n');
        for p in &self.rows {
            csv.push_str(&format!(
                "{},{},{},{},{},{},{:.4}",
                p.minx, p.miny, p.width, p.height, p.col, p.row, p.tissue_fraction
            ));
            for v in &p.probs {
                csv.push_str(&format!(",{v:.6}"));
            }
            if with_qc {
                match &p.qc {
                    Some(q) => {
                        for f in q.fractions {
                            csv.push_str(&format!(",{f:.4}"));
                        }
                        csv.push_str(&match q.focus {
                            Some(v) => format!(",{v:.4}"),
                            None => ",".into(),
                        });
                        csv.push_str(&format!(",{},{}", q.status(), q.reason()));
                    }
                    None => csv.push_str(",,,,,,,,"),
                }
            }
            csv.push('\n');
        }
        csv
    }

    /// Reads and checks `path`: every fixed column present, at least one `prob_` column, every
    /// row complete. An error names the file and the row.
    pub fn read(path: &Path) -> Result<PatchTable> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::from_io(path, e))?;
        Self::parse(path, &text)
    }

    /// [`PatchTable::read`] on text already read (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<PatchTable> {
        let bad = |message: String| Error::Report {
            path: path.into(),
            message,
        };
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        let fixed: Vec<usize> = PATCH_COLUMNS
            .iter()
            .map(|c| {
                header
                    .iter()
                    .position(|h| h == c)
                    .ok_or_else(|| bad(format!("no column {c}")))
            })
            .collect::<Result<_>>()?;
        let probs: Vec<(usize, String)> = header
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.strip_prefix("prob_").map(|c| (i, c.to_string())))
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        type QcColumns = (Vec<usize>, usize, usize, usize);
        let qc_cols: Option<QcColumns> = crate::qc::Kind::ALL
            .iter()
            .map(|k| col(&format!("qc_{}", k.name())))
            .collect::<Option<Vec<_>>>()
            .and_then(|kinds| Some((kinds, col("focus")?, col("qc_status")?, col("qc_reason")?)));
        if probs.is_empty() {
            return Err(bad("no prob_<class> column".into()));
        }
        let mut rows = Vec::new();
        for (n, line) in lines.enumerate() {
            let f: Vec<&str> = line.split(',').collect();
            let row = || -> Option<PatchRow> {
                Some(PatchRow {
                    minx: f.get(fixed[0])?.parse().ok()?,
                    miny: f.get(fixed[1])?.parse().ok()?,
                    width: f.get(fixed[2])?.parse().ok()?,
                    height: f.get(fixed[3])?.parse().ok()?,
                    col: f.get(fixed[4])?.parse().ok()?,
                    row: f.get(fixed[5])?.parse().ok()?,
                    tissue_fraction: f.get(fixed[6])?.parse().ok()?,
                    probs: probs
                        .iter()
                        .map(|(i, _)| f.get(*i)?.parse().ok())
                        .collect::<Option<_>>()?,
                    qc: match &qc_cols {
                        None => None,
                        Some((kinds, focus, status, reason)) => {
                            let mut fractions = [0f64; 5];
                            let mut flags = 0u8;
                            for (k, &i) in kinds.iter().enumerate() {
                                fractions[k] = f.get(i)?.parse().ok()?;
                            }
                            let status = *f.get(*status)?;
                            // The kinds named in the reason are those over the limit.
                            let reason = f.get(*reason)?;
                            for kind in crate::qc::Kind::ALL {
                                if reason
                                    .split("; ")
                                    .any(|r| r.starts_with(&format!("{} ", kind.name())))
                                {
                                    flags |= kind.bit();
                                }
                            }
                            Some(crate::qc::PatchQc {
                                fractions,
                                focus: f.get(*focus).and_then(|v| v.parse().ok()),
                                kinds: flags,
                                excluded: status == "excluded",
                            })
                        }
                    },
                })
            };
            rows.push(row().ok_or_else(|| bad(format!("row {} is malformed", n + 2)))?);
        }
        Ok(PatchTable {
            class_names: probs.into_iter().map(|(_, c)| c).collect(),
            rows,
        })
    }

    /// The probabilities of `class` (by name), row by row.
    pub fn column(&self, class: &str) -> Option<Vec<f32>> {
        let k = self.class_names.iter().position(|c| c == class)?;
        Some(self.rows.iter().map(|r| r.probs[k]).collect())
    }
}
