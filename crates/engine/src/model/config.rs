//! A model's `config.json`: WSInfer's model configuration (spec 1.0), validated, plus optional
//! Tessera fields under `"tessera"`.
//!
//! In: the JSON text and the file's path (for errors). Out: [`ModelConfig`], or
//! [`Error::ModelConfig`] naming the file and what is wrong.
//!
//! The transforms mean what torchvision means by them, as WSInfer applies them to a PIL image:
//! `Resize` (an int resizes the shorter side, keeping the aspect ratio; patches are square, so
//! it gives a square), `CenterCrop`, `ToTensor`, `Normalize`. `Resize` resamples with
//! `tessera.resize` ([`ResizeMethod`]; torchvision's bilinear with antialiasing unless the
//! config says otherwise). Two deliberate differences from WSInfer, both documented in
//! docs/models.md: the patch is read at the coarsest pyramid level at or finer than the
//! model's µm/px (WSInfer reads level 0; the same pixels when the slide has no level in
//! between), and a config whose first geometric step is not a `Resize` gets the patch resized
//! to `patch_size_pixels` first (WSInfer would give the model the slide's pixels unresized).

use std::path::Path;

pub use crate::imaging::preprocess::Layout;
use crate::imaging::preprocess::Preprocess;
pub use crate::imaging::resize::ResizeMethod;
use crate::imaging::resize::{Geometry, Step};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One preprocessing step, as torchvision names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", content = "arguments", deny_unknown_fields)]
pub enum Transform {
    /// Resize to `size` (an int: square; or `[height, width]`).
    Resize {
        /// Target size.
        size: ResizeSize,
    },
    /// Crop the centre to `size` (an int: square; or `[height, width]`).
    CenterCrop {
        /// Crop size.
        size: ResizeSize,
    },
    /// Scale 0–255 to 0–1 and move channels first.
    ToTensor,
    /// Subtract `mean` and divide by `std`, per channel.
    Normalize {
        /// Per-channel mean (3 values).
        mean: Vec<f64>,
        /// Per-channel standard deviation (3 values, non-zero).
        std: Vec<f64>,
    },
}

/// A Resize size: one side for a square, or `[height, width]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResizeSize {
    /// Square.
    Square(u32),
    /// `[height, width]`.
    Pair([u32; 2]),
}

/// A coded concept of the DICOM outputs (Code Value, Coding Scheme Designator, Code Meaning),
/// e.g. `{"value": "108369006", "scheme": "SCT", "meaning": "Neoplasm"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Code {
    /// Code Value (1–16 characters).
    pub value: String,
    /// Coding Scheme Designator, e.g. `SCT` (1–16 characters).
    pub scheme: String,
    /// Code Meaning (1–64 characters).
    pub meaning: String,
}

/// A class's codes: its property category and property type (DICOM's Segmented Property
/// Category/Type and Annotation Property Category/Type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassCodes {
    /// The category, e.g. SCT 49755003 "Morphologically Abnormal Structure".
    pub category: Code,
    /// The type, e.g. SCT 108369006 "Neoplasm".
    #[serde(rename = "type")]
    pub property_type: Code,
}

/// Tessera's optional fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TesseraFields {
    /// One `[r, g, b]` colour per class, for overlays and QuPath classifications.
    #[serde(default)]
    pub class_colors: Option<Vec<[u8; 3]>>,
    /// The class whose probability heatmaps and slide scores show.
    #[serde(default)]
    pub positive_class: Option<String>,
    /// One pair of codes per class for the DICOM outputs: what the class is (the
    /// Segmentation's segment and the annotation group of its regions). Absent: every class is
    /// coded as SCT 91723000 "Anatomical Structure" / SCT 85756007 "Tissue".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_codes: Option<Vec<ClassCodes>>,
    /// Input layout (default NCHW).
    #[serde(default)]
    pub layout: Layout,
    /// What the model is (and is not).
    #[serde(default)]
    pub description: Option<String>,
    /// Licence of the weights.
    #[serde(default)]
    pub license: Option<String>,
    /// Model version.
    #[serde(default)]
    pub version: Option<String>,
    /// The graph's output is already probabilities (default: logits, as WSInfer's models).
    #[serde(default)]
    pub outputs_probabilities: bool,
    /// How `Resize` resamples (default: torchvision's bilinear with antialiasing, as the
    /// model's trainer saw it through torchvision and PIL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<ResizeMethod>,
    /// A dense (per-pixel) model: the graph's output is `[N, classes, h, w]` and tiles overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense: Option<DenseSpec>,
    /// Model card: what the model is meant for (and the slides it suits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intended_use: Option<String>,
    /// Model card: what it was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_data: Option<String>,
    /// Model card: how to cite it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub citation: Option<String>,
    /// Model card: how far (in µm/px) a slide's resolution may be from `spacing_um_px` before
    /// the result carries a QC warning. Absent: no check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spacing_tolerance_um_px: Option<f64>,
    /// A slide-QC model (`--qc-model`): the artefact kind each class stands for, by class
    /// name: `pen`, `blur`, `fold`, `faint`, `edge`, or `none` (tissue, background). Classes
    /// left out are named by their own names (see `qc::learned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qc_classes: Option<std::collections::BTreeMap<String, String>>,
}

/// How a dense model's per-pixel output is read and stitched.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseSpec {
    /// What turns the output into probabilities, per pixel: `softmax` over the classes,
    /// `sigmoid` per class, or `none` (already probabilities).
    pub activation: Activation,
    /// Overlap of neighbouring tiles in model pixels (the tile is `patch_size_pixels`; the
    /// stride is the tile less the overlap). Less than half the tile.
    #[serde(default)]
    pub overlap_pixels: u32,
    /// Side of a class-map cell in model pixels (default 16: 8 µm at 0.5 µm/px), 1–64. The
    /// class maps, their PNGs, regions and areas are at this resolution.
    #[serde(default = "default_map_cell")]
    pub map_cell_pixels: u32,
}

fn default_map_cell() -> u32 {
    16
}

/// A dense model's per-pixel activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Softmax over the classes.
    Softmax,
    /// Sigmoid of each class's value.
    Sigmoid,
    /// The values are probabilities already.
    None,
}

/// A validated model configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// "1.0".
    pub spec_version: String,
    /// Architecture name (timm's names).
    pub architecture: String,
    /// Number of output classes.
    pub num_classes: usize,
    /// One unique name per class.
    pub class_names: Vec<String>,
    /// Patch side in pixels at `spacing_um_px`.
    pub patch_size_pixels: u32,
    /// Resolution the model was trained at, µm per pixel.
    pub spacing_um_px: f64,
    /// Preprocessing.
    pub transform: Vec<Transform>,
    /// Tessera's optional fields.
    #[serde(default)]
    pub tessera: TesseraFields,
}

impl ModelConfig {
    /// Parses and validates `text`, read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<ModelConfig> {
        let bad = |reason: String| Error::ModelConfig {
            path: path.into(),
            reason,
        };
        let c: ModelConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if c.spec_version != "1.0" {
            return Err(bad(format!(
                "spec_version {:?} is not \"1.0\"",
                c.spec_version
            )));
        }
        if c.num_classes < 1 || c.class_names.len() != c.num_classes {
            return Err(bad(format!(
                "num_classes is {} but class_names has {} names",
                c.num_classes,
                c.class_names.len()
            )));
        }
        let mut names = c.class_names.clone();
        names.sort();
        names.dedup();
        if names.len() != c.class_names.len() {
            return Err(bad("class_names are not unique".into()));
        }
        if c.patch_size_pixels < 1 {
            return Err(bad("patch_size_pixels must be at least 1".into()));
        }
        if !(c.spacing_um_px.is_finite() && c.spacing_um_px > 0.0) {
            return Err(bad(format!(
                "spacing_um_px {} must be positive",
                c.spacing_um_px
            )));
        }
        for t in &c.transform {
            match t {
                Transform::Normalize { mean, std } => {
                    if mean.len() != 3 || std.len() != 3 || std.contains(&0.0) {
                        return Err(bad("Normalize needs 3 means and 3 non-zero stds".into()));
                    }
                }
                Transform::Resize { size } | Transform::CenterCrop { size } => {
                    let ok = match size {
                        ResizeSize::Square(s) => *s > 0,
                        ResizeSize::Pair([h, w]) => *h > 0 && *w > 0,
                    };
                    if !ok {
                        return Err(bad("Resize and CenterCrop sizes must be positive".into()));
                    }
                }
                Transform::ToTensor => {}
            }
        }
        // A crop larger than the image would be padded with black by torchvision.
        let mut at = (c.patch_size_pixels, c.patch_size_pixels);
        for t in &c.transform {
            match t {
                Transform::Resize { size } => at = resized(at, size),
                Transform::CenterCrop { size } => {
                    let (h, w) = pair(size);
                    if h > at.0 || w > at.1 {
                        return Err(bad(format!(
                            "CenterCrop to {h}×{w} is larger than the {}×{} image it crops \
                             (torchvision would pad it with black)",
                            at.0, at.1
                        )));
                    }
                    at = (h, w);
                }
                _ => {}
            }
        }
        if let Some(t) = c.tessera.spacing_tolerance_um_px {
            if !(t.is_finite() && t >= 0.0) {
                return Err(bad(format!(
                    "spacing_tolerance_um_px {t} must be zero or positive"
                )));
            }
        }
        if let Some(colors) = &c.tessera.class_colors {
            if colors.len() != c.num_classes {
                return Err(bad(format!(
                    "{} class_colors for {} classes",
                    colors.len(),
                    c.num_classes
                )));
            }
        }
        if let Some(codes) = &c.tessera.class_codes {
            if codes.len() != c.num_classes {
                return Err(bad(format!(
                    "{} class_codes for {} classes",
                    codes.len(),
                    c.num_classes
                )));
            }
            // DICOM's SH (value, scheme) and LO (meaning); no backslash (a value separator)
            // and no control characters.
            let ok = |s: &str, max: usize| {
                !s.trim().is_empty()
                    && s.chars().count() <= max
                    && !s.chars().any(|ch| ch == '\\' || ch.is_control())
            };
            for (k, cc) in codes.iter().enumerate() {
                for (what, code) in [("category", &cc.category), ("type", &cc.property_type)] {
                    if !(ok(&code.value, 16) && ok(&code.scheme, 16) && ok(&code.meaning, 64)) {
                        return Err(bad(format!(
                            "class_codes[{k}].{what}: value and scheme need 1–16 characters, \
                             meaning 1–64, no backslash or control character"
                        )));
                    }
                }
            }
        }
        if let Some(p) = &c.tessera.positive_class {
            if !c.class_names.contains(p) {
                return Err(bad(format!("positive_class {p:?} is not a class name")));
            }
        }
        for name in c.tessera.qc_classes.iter().flat_map(|m| m.keys()) {
            if !c.class_names.contains(name) {
                return Err(bad(format!("qc_classes names {name:?}, not a class name")));
            }
        }
        if let Some(d) = &c.tessera.dense {
            if d.overlap_pixels * 2 >= c.patch_size_pixels {
                return Err(bad(format!(
                    "dense.overlap_pixels {} must be less than half the {}-pixel tile",
                    d.overlap_pixels, c.patch_size_pixels
                )));
            }
            if !(1..=64).contains(&d.map_cell_pixels) {
                return Err(bad(format!(
                    "dense.map_cell_pixels {} must be 1 to 64",
                    d.map_cell_pixels
                )));
            }
            if c.geometry().steps != [Step::Resize(c.patch_size_pixels, c.patch_size_pixels)] {
                return Err(bad(
                    "a dense model's transforms may not resize or crop the tile (its output \
                     maps back onto the slide pixel for pixel): drop Resize and CenterCrop"
                        .into(),
                ));
            }
        }
        Ok(c)
    }

    /// Reads and validates the `config.json` at `path`.
    pub fn load(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::from_io(path, e))?;
        ModelConfig::parse(path, &text)
    }

    /// The model's input (height, width) after the geometric transforms.
    pub fn input_size(&self) -> (u32, u32) {
        self.geometry()
            .output()
            .unwrap_or((self.patch_size_pixels, self.patch_size_pixels))
    }

    /// How the patch becomes the model's input: the resize method and the `Resize` and
    /// `CenterCrop` steps in order, led by a resize to `patch_size_pixels` when the config's
    /// first geometric step is not a `Resize`.
    pub fn geometry(&self) -> Geometry {
        let p = self.patch_size_pixels;
        let mut steps = Vec::new();
        let mut at = (p, p);
        for t in &self.transform {
            match t {
                Transform::Resize { size } => {
                    at = resized(at, size);
                    steps.push(Step::Resize(at.0, at.1));
                }
                Transform::CenterCrop { size } => {
                    if steps.is_empty() {
                        steps.push(Step::Resize(p, p));
                    }
                    at = pair(size);
                    steps.push(Step::CenterCrop(at.0, at.1));
                }
                _ => {}
            }
        }
        if steps.is_empty() {
            steps.push(Step::Resize(p, p));
        }
        Geometry {
            method: self.resize_method(),
            steps,
        }
    }

    /// The resize method in force: the config's, else torchvision's bilinear.
    pub fn resize_method(&self) -> ResizeMethod {
        self.tessera.resize.unwrap_or_default()
    }

    /// Index of the class heatmaps and scores show: `positive_class`, else the last class.
    pub fn positive_class(&self) -> usize {
        self.tessera
            .positive_class
            .as_ref()
            .and_then(|p| self.class_names.iter().position(|c| c == p))
            .unwrap_or(self.num_classes - 1)
    }

    /// The preprocessing this configuration asks for (`Resize` is the grid's business: the
    /// input size is taken from it).
    pub fn preprocess(&self) -> Preprocess {
        let c = self;
        let mut p = Preprocess {
            input: c.input_size(),
            mean: [0.0; 3],
            std: [1.0; 3],
            to_unit: false,
            layout: c.tessera.layout,
            deferred: None,
            on_gpu: false,
            stain: None,
            geometry: c.geometry(),
        };
        for t in &c.transform {
            match t {
                Transform::ToTensor => p.to_unit = true,
                Transform::Normalize { mean, std } => {
                    for i in 0..3 {
                        p.mean[i] = mean[i] as f32;
                        p.std[i] = std[i] as f32;
                    }
                }
                Transform::Resize { .. } | Transform::CenterCrop { .. } => {}
            }
        }
        p
    }
}

/// A size as (height, width).
fn pair(size: &ResizeSize) -> (u32, u32) {
    match *size {
        ResizeSize::Square(s) => (s, s),
        ResizeSize::Pair([h, w]) => (h, w),
    }
}

/// torchvision's output size for `Resize(size)` of an image `at` = (height, width): a pair is
/// taken as is; an int becomes the shorter side and the longer keeps the aspect ratio,
/// truncated (`int(size * long / short)`).
fn resized(at: (u32, u32), size: &ResizeSize) -> (u32, u32) {
    match *size {
        ResizeSize::Pair([h, w]) => (h, w),
        ResizeSize::Square(s) => {
            let (h, w) = at;
            let long = |l: u32, short: u32| ((s as u64 * l as u64) / short as u64) as u32;
            if h <= w {
                (s, long(w, h))
            } else {
                (long(h, w), s)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WSINFER: &str = r#"{"spec_version": "1.0", "architecture": "resnet34", "num_classes": 2,
 "class_names": ["Other", "Tumor"], "patch_size_pixels": 350, "spacing_um_px": 0.25,
 "transform": [{"name": "Resize", "arguments": {"size": 224}}, {"name": "ToTensor"},
   {"name": "Normalize", "arguments": {"mean": [0.7238, 0.5716, 0.6779], "std": [0.112, 0.1459, 0.1089]}}]}"#;

    fn parse(s: &str) -> Result<ModelConfig> {
        ModelConfig::parse(Path::new("m/config.json"), s)
    }

    #[test]
    fn reads_wsinfers_own_example() {
        let c = parse(WSINFER).unwrap();
        assert_eq!(c.class_names, ["Other", "Tumor"]);
        assert_eq!(c.input_size(), (224, 224));
        assert_eq!(c.positive_class(), 1);
        assert_eq!(c.tessera.layout, Layout::Nchw);
        assert!(matches!(&c.transform[2], Transform::Normalize { mean, .. } if mean[0] == 0.7238));
    }

    #[test]
    fn geometry_follows_torchvision() {
        let c = parse(WSINFER).unwrap();
        let g = c.geometry();
        assert_eq!(g.method, ResizeMethod::Torchvision);
        assert_eq!(g.steps, [Step::Resize(224, 224)]);
        // Resize then CenterCrop, and a config without Resize resized to the patch size.
        let crop = WSINFER.replace(
            r#"{"name": "ToTensor"}"#,
            r#"{"name": "CenterCrop", "arguments": {"size": [200, 180]}}, {"name": "ToTensor"}"#,
        );
        let c = parse(&crop).unwrap();
        assert_eq!(
            c.geometry().steps,
            [Step::Resize(224, 224), Step::CenterCrop(200, 180)]
        );
        assert_eq!(c.input_size(), (200, 180));
        let none = WSINFER.replace(r#"{"name": "Resize", "arguments": {"size": 224}}, "#, "");
        let c = parse(&none).unwrap();
        assert_eq!(c.geometry().steps, [Step::Resize(350, 350)]);
        // torchvision's int size on a non-square image: the shorter side, the longer truncated.
        assert_eq!(resized((300, 200), &ResizeSize::Square(224)), (336, 224));
        assert_eq!(resized((199, 301), &ResizeSize::Square(100)), (100, 151));
        let area = WSINFER.replacen(
            "\"transform\"",
            r#""tessera": {"resize": "area"}, "transform""#,
            1,
        );
        assert_eq!(parse(&area).unwrap().geometry().method, ResizeMethod::Area);
        assert!(parse(&area).unwrap().geometry().is_single_area_resize());
    }

    #[test]
    fn model_card_fields_are_read_and_checked() {
        let card = WSINFER.replacen(
            "\"transform\"",
            r#""tessera": {"intended_use": "Tumour in lymph nodes", "training_data": "TCGA",
               "citation": "Doe 2024", "license": "CC-BY-4.0",
               "spacing_tolerance_um_px": 0.05}, "transform""#,
            1,
        );
        let c = parse(&card).unwrap();
        assert_eq!(
            c.tessera.intended_use.as_deref(),
            Some("Tumour in lymph nodes")
        );
        assert_eq!(c.tessera.spacing_tolerance_um_px, Some(0.05));
        let bad = card.replace("0.05", "-1");
        assert!(parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("spacing_tolerance"));
        let typo = card.replace("training_data", "trainig_data");
        assert!(parse(&typo)
            .unwrap_err()
            .to_string()
            .contains("trainig_data"));
    }

    #[test]
    fn dense_specs_are_checked() {
        let dense = |spec: &str, transforms: &str| {
            parse(&format!(
                r#"{{"spec_version": "1.0", "architecture": "unet", "num_classes": 2,
                "class_names": ["a", "b"], "patch_size_pixels": 256, "spacing_um_px": 1,
                "transform": [{transforms}{{"name": "ToTensor"}}],
                "tessera": {{"dense": {spec}}}}}"#
            ))
        };
        let c = dense(r#"{"activation": "sigmoid", "overlap_pixels": 64}"#, "").unwrap();
        let d = c.tessera.dense.unwrap();
        assert_eq!(
            (d.activation, d.overlap_pixels, d.map_cell_pixels),
            (Activation::Sigmoid, 64, 16)
        );
        for (spec, transforms, why) in [
            (
                r#"{"activation": "softmax", "overlap_pixels": 128}"#,
                "",
                "half",
            ),
            (
                r#"{"activation": "softmax", "map_cell_pixels": 65}"#,
                "",
                "1 to 64",
            ),
            (r#"{"activation": "relu"}"#, "", "unknown variant"),
            (
                r#"{"activation": "none"}"#,
                r#"{"name": "Resize", "arguments": {"size": 224}}, "#,
                "may not resize",
            ),
        ] {
            let e = dense(spec, transforms).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
        // A Resize to the tile's own size changes nothing and is allowed.
        assert!(dense(
            r#"{"activation": "none"}"#,
            r#"{"name": "Resize", "arguments": {"size": 256}}, "#
        )
        .is_ok());
    }

    #[test]
    fn tessera_fields_are_checked() {
        let with = WSINFER.replacen(
            "\"transform\"",
            r#""tessera": {"positive_class": "Other", "class_colors": [[0,0,255],[255,0,0]], "layout": "NHWC"}, "transform""#,
            1,
        );
        let c = parse(&with).unwrap();
        assert_eq!(c.positive_class(), 0);
        assert_eq!(c.tessera.layout, Layout::Nhwc);
        let bad = WSINFER.replacen(
            "\"transform\"",
            r#""tessera": {"positive_class": "Cat"}, "transform""#,
            1,
        );
        assert!(parse(&bad).unwrap_err().to_string().contains("Cat"));
    }

    #[test]
    fn class_codes_are_one_pair_per_class_within_dicoms_lengths() {
        let with = |codes: &str| {
            WSINFER.replacen(
                "\"transform\"",
                &format!(r#""tessera": {{"class_codes": {codes}}}, "transform""#),
                1,
            )
        };
        let pair = |v: &str, m: &str| {
            format!(
                r#"{{"category": {{"value": "49755003", "scheme": "SCT", "meaning": "Morphologically Abnormal Structure"}},
                    "type": {{"value": "{v}", "scheme": "SCT", "meaning": "{m}"}}}}"#
            )
        };
        let good = format!(
            "[{}, {}]",
            pair("85756007", "Tissue"),
            pair("108369006", "Neoplasm")
        );
        let c = parse(&with(&good)).unwrap();
        let codes = c.tessera.class_codes.unwrap();
        assert_eq!(codes[1].property_type.meaning, "Neoplasm");
        assert_eq!(codes[0].category.value, "49755003");
        for (bad, why) in [
            (
                format!("[{}]", pair("1", "x")),
                "1 class_codes for 2 classes",
            ),
            (
                format!("[{}, {}]", pair("1", "x"), pair("12345678901234567", "x")),
                "class_codes[1].type",
            ),
            (
                format!("[{}, {}]", pair("1", "x"), pair("1", "a\\\\b")),
                "class_codes[1].type",
            ),
            (
                format!("[{}, {}]", pair("1", ""), pair("1", "x")),
                "class_codes[0].type",
            ),
        ] {
            let e = parse(&with(&bad)).unwrap_err().to_string();
            assert!(e.contains(why), "{e} (wanted {why})");
        }
    }

    #[test]
    fn malformed_configs_name_the_file_and_the_problem() {
        for (text, why) in [
            ("{", "EOF"),
            (&WSINFER.replace("\"1.0\"", "\"2.0\""), "spec_version"),
            (
                &WSINFER.replace("\"num_classes\": 2", "\"num_classes\": 3"),
                "class_names has 2",
            ),
            (&WSINFER.replace("\"Tumor\"", "\"Other\""), "unique"),
            (&WSINFER.replace("0.25,", "-1,"), "spacing_um_px"),
            (
                &WSINFER.replace("\"ToTensor\"", "\"Blur\""),
                "unknown variant",
            ),
            (
                &WSINFER.replace("[0.112, 0.1459, 0.1089]", "[0.1, 0]"),
                "Normalize",
            ),
            (
                &WSINFER.replace("\"patch_size_pixels\": 350,", ""),
                "patch_size_pixels",
            ),
            (
                &WSINFER.replace(
                    r#"{"name": "ToTensor"}"#,
                    r#"{"name": "CenterCrop", "arguments": {"size": 256}}, {"name": "ToTensor"}"#,
                ),
                "larger than the 224×224",
            ),
            (
                &WSINFER.replacen(
                    "\"transform\"",
                    r#""tessera": {"resize": "lanczos"}, "transform""#,
                    1,
                ),
                "unknown variant",
            ),
        ] {
            let e = parse(text).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("m/config.json") && msg.contains(why),
                "{why}: {msg}"
            );
        }
    }
}
