//! A lab's own QC model (`--qc-model DIR`): a dense (per-pixel) model whose classes are
//! artefact kinds, feeding the same [`QcMap`] as the built-in detectors.
//!
//! In: the model's configuration (its class names, and `tessera.qc_classes` where it maps
//! them itself) and, after the dense machinery ([`crate::dense`]) has run the model over the
//! slide's tissue, one class map per class ([`Heatmap`]s in level-0 cells). Out: the kind of
//! each class ([`class_kinds`]) and the [`QcMap`]'s pixels flagged with the kind of every
//! class whose probability at the pixel's centre (level-0 coordinates) reaches
//! [`QcModelParams::min_probability`] ([`paint`]). The model adds to the built-in detectors;
//! it replaces none of them (a lab that wants only its model raises their thresholds in
//! `--qc-config`).
//!
//! Class names. Where `tessera.qc_classes` does not name a class, its own name decides, by
//! the words in it (case ignored, split on anything not a letter or digit): `pen`, `ink`,
//! `marker`, `marking`, `penmarking` → pen; `blur`, `blurred`, `blurry`, `oof`, `unfocused`,
//! `defocused`, and `focus` right after `out` or `out of` ("out of focus") → blur; `fold`,
//! `folds`, `folded` → fold; `faint`, `understained` → faint; `edge`, `edges`, `coverslip`,
//! `bubble`, `bubbles` → edge; `background`, `tissue`, `normal`, `clean`, `other`, `none`,
//! `focused`, `sharp`, and `focus` right after `in` ("in focus") → not an artefact. A name that
//! matches no kind, or two, or says it is an artefact (`artefact`, `artifact`, `debris`,
//! `dust`, `dirt`, `foreign`) without naming its kind ("Other artefact"), or says `focus`
//! without `in` or `out`, is refused with the advice to map it in
//! `tessera.qc_classes`: an artefact class silently ignored would let its artefact through. GrandQC's artefact classes, for instance, are matched by name
//! except its dark-spot and foreign-object class, which a lab maps (to `fold`, the dark and
//! over-stained kind, or `none`).

use std::collections::BTreeMap;

use super::{Kind, QcMap, TISSUE};
use crate::model::config::ModelConfig;
use crate::stitch::Heatmap;

/// How a QC model's class maps become flags.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QcModelParams {
    /// A pixel takes a class's kind when the class's probability there is at least this
    /// (default 0.5).
    pub min_probability: f32,
}

impl Default for QcModelParams {
    fn default() -> Self {
        Self {
            min_probability: 0.5,
        }
    }
}

/// A kind by its name in `tessera.qc_classes` (`none`: not an artefact).
fn by_name(name: &str) -> Option<Option<Kind>> {
    match name {
        "none" => Some(None),
        _ => Kind::ALL.into_iter().find(|k| k.name() == name).map(Some),
    }
}

/// The kind a class's own name stands for: `Ok(None)` for tissue or background, an error
/// when it names no kind or several.
fn by_words(class: &str) -> Result<Option<Kind>, String> {
    let lower = class.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_alphanumeric()).collect();
    // "Focus" is blur out of focus ("out of focus", "out-of-focus") and sharp tissue in focus
    // ("in focus"); alone ("Focus", "Focus issue") it says neither, and is refused below.
    let before_focus = |w: &str| {
        words
            .windows(3)
            .any(|t| t[0] == w && t[1] == "of" && t[2] == "focus")
            || words.windows(2).any(|t| t[0] == w && t[1] == "focus")
    };
    let (out_of_focus, in_focus) = (before_focus("out"), before_focus("in"));
    let mut unclear_focus = false;
    let mut found: Vec<Option<Kind>> = Vec::new();
    for &word in &words {
        let kind = match word {
            "pen" | "ink" | "marker" | "marking" | "penmarking" => Some(Kind::Pen),
            "blur" | "blurred" | "blurry" | "oof" | "unfocused" | "defocused" => Some(Kind::Blur),
            "focus" if out_of_focus => Some(Kind::Blur),
            "focus" if in_focus => None,
            "focus" => {
                unclear_focus = true;
                continue;
            }
            "focused" | "sharp" => None,
            "fold" | "folds" | "folded" => Some(Kind::Fold),
            "faint" | "understained" => Some(Kind::Faint),
            "edge" | "edges" | "coverslip" | "bubble" | "bubbles" => Some(Kind::Edge),
            "background" | "tissue" | "normal" | "clean" | "other" | "none" => None,
            _ => continue,
        };
        if !found.contains(&kind) {
            found.push(kind);
        }
    }
    // "Normal tissue" is one meaning; "fold" with "tissue" ("tissue fold") is the fold.
    let artefacts: Vec<Kind> = found.iter().flatten().copied().collect();
    // A class that says it is an artefact without saying which ("Other artefact", "Debris")
    // must be mapped: taken for tissue, its artefact would pass.
    let says_artefact = words.iter().any(|w| {
        matches!(
            *w,
            "artefact"
                | "artefacts"
                | "artifact"
                | "artifacts"
                | "debris"
                | "dust"
                | "dirt"
                | "foreign"
        )
    });
    if artefacts.is_empty() && (says_artefact || unclear_focus) {
        return Err(format!(
            "class {class:?} is an artefact of no kind Tessera knows"
        ));
    }
    match (artefacts.as_slice(), found.is_empty()) {
        ([k], _) => Ok(Some(*k)),
        ([], false) => Ok(None),
        ([], true) => Err(format!(
            "class {class:?} names no artefact kind Tessera knows"
        )),
        (_, _) => Err(format!(
            "class {class:?} names several artefact kinds ({})",
            artefacts
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The artefact kind of each of `config`'s classes, in class order (`None`: not an
/// artefact), or why the model cannot be a QC model: not dense, a class whose kind is unknown
/// or ambiguous, a mapping to an unknown kind, or no artefact class at all.
pub fn class_kinds(config: &ModelConfig) -> Result<Vec<Option<Kind>>, String> {
    if config.tessera.dense.is_none() {
        return Err(
            "a QC model must be dense (per-pixel, tessera.dense in config.json): its classes \
             are painted onto the slide"
                .into(),
        );
    }
    let empty = BTreeMap::new();
    let mapped = config.tessera.qc_classes.as_ref().unwrap_or(&empty);
    let mut kinds = Vec::with_capacity(config.class_names.len());
    for class in &config.class_names {
        let kind = match mapped.get(class) {
            Some(k) => by_name(k).ok_or_else(|| {
                format!(
                    "qc_classes maps {class:?} to {k:?}: use pen, blur, fold, faint, edge or none"
                )
            })?,
            None => by_words(class).map_err(|e| {
                format!(
                    "{e}: map it in config.json's tessera.qc_classes, e.g. \
                     {{\"{class}\": \"fold\"}} or {{\"{class}\": \"none\"}}"
                )
            })?,
        };
        kinds.push(kind);
    }
    if kinds.iter().all(Option::is_none) {
        return Err("none of its classes is an artefact kind".into());
    }
    Ok(kinds)
}

/// Flags `map`'s tissue pixels with the kind of every class of `classes` (one map per class,
/// kinds from [`class_kinds`]) whose probability at the pixel's centre is at least
/// `params.min_probability`. Returns the pixels the model flagged per kind, in [`Kind::ALL`]
/// order, each pixel counted once per kind however many of its classes map to that kind.
pub fn paint(
    map: &mut QcMap,
    classes: &[Heatmap],
    kinds: &[Option<Kind>],
    params: &QcModelParams,
) -> [usize; 5] {
    let mut flagged = [0usize; 5];
    let d = map.downsample;
    for y in 0..map.height {
        for x in 0..map.width {
            let f = &mut map.flags[y * map.width + x];
            if *f & TISSUE == 0 {
                continue;
            }
            let mut bits = 0;
            for (h, kind) in classes.iter().zip(kinds) {
                let Some(kind) = kind else { continue };
                if h.cell_l0 <= 0.0 {
                    continue;
                }
                let cx = ((x as f64 + 0.5) * d / h.cell_l0).floor();
                let cy = ((y as f64 + 0.5) * d / h.cell_l0).floor();
                if cx >= h.width as f64 || cy >= h.height as f64 {
                    continue;
                }
                if h.get(cx as u32, cy as u32)
                    .is_some_and(|p| p >= params.min_probability)
                {
                    bits |= kind.bit();
                }
            }
            *f |= bits;
            for kind in Kind::ALL {
                if bits & kind.bit() != 0 {
                    flagged[kind as usize] += 1;
                }
            }
        }
    }
    flagged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(names: &[&str], mapped: &[(&str, &str)], dense: bool) -> ModelConfig {
        let json = serde_json::json!({
            "spec_version": "1.0", "architecture": "test", "num_classes": names.len(),
            "class_names": names, "patch_size_pixels": 64, "spacing_um_px": 4.0,
            "transform": [{"name": "ToTensor"}],
            "tessera": {
                "dense": if dense { serde_json::json!({"activation": "softmax"}) }
                         else { serde_json::Value::Null },
                "qc_classes": mapped.iter().map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            }
        });
        ModelConfig::parse("config.json".as_ref(), &json.to_string()).unwrap()
    }

    #[test]
    fn class_names_and_mappings_give_kinds_or_a_reason() {
        // GrandQC's artefact classes: all but the dark-spot class by name.
        let grandqc = [
            "Normal tissue",
            "Fold",
            "Darkspot & Foreign Object",
            "PenMarking",
            "Edge & Air Bubble",
            "OOF",
            "Background",
        ];
        let e = class_kinds(&config(&grandqc, &[], true)).unwrap_err();
        assert!(e.contains("Darkspot") && e.contains("qc_classes"), "{e}");
        let kinds = class_kinds(&config(
            &grandqc,
            &[("Darkspot & Foreign Object", "fold")],
            true,
        ))
        .unwrap();
        use Kind::*;
        assert_eq!(
            kinds,
            [
                None,
                Some(Fold),
                Some(Fold),
                Some(Pen),
                Some(Edge),
                Some(Blur),
                None
            ]
        );
        assert_eq!(
            class_kinds(&config(&["tissue fold", "out of focus"], &[], true)).unwrap(),
            [Some(Fold), Some(Blur)]
        );
        let e = class_kinds(&config(&["pen or blur", "background"], &[], true)).unwrap_err();
        assert!(e.contains("several"), "{e}");
        // "In focus" is sharp tissue, not blur; "Out-of-focus" is blur.
        assert_eq!(
            class_kinds(&config(&["In focus", "Out-of-focus"], &[], true)).unwrap(),
            [None, Some(Blur)]
        );
        // An artefact class of no named kind is refused, not taken for tissue; so is "focus"
        // with neither "in" nor "out".
        for name in ["Other artefact", "Debris", "Foreign object", "Focus issue"] {
            let e = class_kinds(&config(&[name, "pen"], &[], true)).unwrap_err();
            assert!(
                e.contains("artefact of no kind") && e.contains("qc_classes"),
                "{e}"
            );
        }
        let e = class_kinds(&config(&["a", "b"], &[("a", "smudge")], true)).unwrap_err();
        assert!(e.contains("smudge"), "{e}");
        let e = class_kinds(&config(&["background", "tissue"], &[], true)).unwrap_err();
        assert!(e.contains("none of its classes"), "{e}");
        let e = class_kinds(&config(&["background", "pen"], &[], false)).unwrap_err();
        assert!(e.contains("dense"), "{e}");
        // A mapping naming no class is refused when the configuration is read.
        let json = serde_json::json!({
            "spec_version": "1.0", "architecture": "t", "num_classes": 1,
            "class_names": ["pen"], "patch_size_pixels": 8, "spacing_um_px": 1.0,
            "transform": [], "tessera": {"qc_classes": {"ink": "pen"}}
        });
        assert!(ModelConfig::parse("c.json".as_ref(), &json.to_string()).is_err());
    }

    #[test]
    fn class_maps_paint_tissue_pixels_at_their_centres() {
        // A 4 × 3 QC raster of 10 level-0 pixels a side, tissue but the last pixel.
        let mut flags = vec![TISSUE; 12];
        flags[11] = 0;
        let mut map = QcMap {
            flags,
            width: 4,
            height: 3,
            downsample: 10.0,
            um_px: 5.0,
            median_tissue_od: 0.3,
        };
        // Class maps of 20-pixel cells, 2 × 1: the raster's first two rows fall in the cells,
        // its third (centres at y = 25) beyond them.
        let cells = |v: [Option<f32>; 2]| Heatmap {
            width: 2,
            height: 1,
            cell_l0: 20.0,
            values: v.to_vec(),
        };
        let classes = [
            cells([Some(0.1), Some(0.6)]), // background
            cells([Some(0.9), Some(0.4)]), // pen
        ];
        let n = paint(
            &mut map,
            &classes,
            &[None, Some(Kind::Pen)],
            &QcModelParams::default(),
        );
        let pen: Vec<bool> = map.flags.iter().map(|f| f & Kind::Pen.bit() != 0).collect();
        let (t, f) = (true, false);
        assert_eq!(pen, [t, t, f, f, t, t, f, f, f, f, f, f]);
        assert_eq!(n, [4, 0, 0, 0, 0]);
        // Two classes of one kind (GrandQC's fold and dark spot, both mapped to fold) flag a
        // pixel once, and count it once.
        let mut map2 = QcMap {
            flags: vec![TISSUE; 12],
            ..map
        };
        let both = [cells([Some(0.9), Some(0.9)]), cells([Some(0.8), Some(0.1)])];
        let n = paint(
            &mut map2,
            &both,
            &[Some(Kind::Fold), Some(Kind::Fold)],
            &QcModelParams::default(),
        );
        assert_eq!(n[Kind::Fold as usize], 8);
    }
}
