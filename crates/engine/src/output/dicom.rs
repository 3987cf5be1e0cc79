//! Results as DICOM, filed beside the slide they came from: a Segmentation of the class heatmaps
//! and Microscopy Bulk Simple Annotations of the patches and regions ([`annotations`]).
//!
//! In: the source series' own attributes ([`DicomSource`]: patient, study, frame of reference,
//! specimen, geometry, its level-0 instances), the class heatmaps (one cell per patch stride,
//! cell (0, 0) at level-0 pixel (0, 0)), the level-0 µm/px and the run key. Out: the bytes of a
//! DICOM Part 10 file (Explicit VR Little Endian): a fractional (probability, 0–255)
//! Segmentation with one segment per class, tiled in frames of at most [`FRAME`] × [`FRAME`]
//! cells (TILED_SPARSE, every frame's position given), in the source's slide coordinate system:
//! its Total Pixel Matrix Origin and Image Orientation (Slide), pixel spacing the stride. It
//! joins the source's study, frame of reference, patient and specimen, as filing requires (so it
//! carries the patient identifiers the source carries), in a new series.
//!
//! UIDs are derived from the run key and the source series (`2.25.` and 128 bits of SHA-256), so
//! a rerun of the same analysis makes the same objects and an archive replaces rather than
//! duplicates them. A source without Total Pixel Matrix Origin or Image Orientation (Slide) gets
//! the standard's defaults (origin 0, 0; orientation 0\-1\0\-1\0\0); one without a Frame of
//! Reference gets a derived one (then the result does not share it).

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;
use sha2::{Digest, Sha256};

use crate::slide::DicomSource;
use crate::stitch::Heatmap;

/// Largest frame side, in heatmap cells.
pub const FRAME: u32 = 256;

/// What the Segmentation is made from.
pub struct SegmentationInput<'a> {
    /// The source series.
    pub source: &'a DicomSource,
    /// Class names and their heatmaps (all the same size).
    pub classes: Vec<(&'a str, &'a Heatmap)>,
    /// Level-0 µm/px (x, y), as the analysis used it.
    pub mpp: (f64, f64),
    /// The analysis' run key (same key, same UIDs).
    pub run_key: &'a str,
    /// The model's name and version (the segmentation algorithm).
    pub model: (&'a str, &'a str),
    /// When the analysis ran: `YYYYMMDD`, `HHMMSS`.
    pub when: (String, String),
    /// Each class's codes (the model config's `class_codes`), in the classes' order; absent:
    /// anatomical structure / tissue for every class.
    pub codes: Option<&'a [crate::model::config::ClassCodes]>,
}

/// The codes of class `k`: the model's, else SCT "Anatomical Structure" / "Tissue".
fn class_codes(
    input: &SegmentationInput,
    k: Option<usize>,
) -> (InMemDicomObject, InMemDicomObject) {
    match k.and_then(|k| input.codes.and_then(|c| c.get(k))) {
        Some(c) => (
            code(&c.category.value, &c.category.scheme, &c.category.meaning),
            code(
                &c.property_type.value,
                &c.property_type.scheme,
                &c.property_type.meaning,
            ),
        ),
        None => (
            code("91723000", "SCT", "Anatomical Structure"),
            code("85756007", "SCT", "Tissue"),
        ),
    }
}

/// A UID derived from `parts`: `2.25.` and the first 128 bits of their SHA-256.
pub fn derived_uid(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let mut n = [0u8; 16];
    n.copy_from_slice(&d[..16]);
    format!("2.25.{}", u128::from_be_bytes(n))
}

/// The series UID of Tessera's DICOM outputs for a run over a source series.
pub fn output_series_uid(run_key: &str, source_series: &str) -> String {
    derived_uid(&["tessera-series", run_key, source_series])
}

fn el(tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, v.into())
}

fn strs(tag: Tag, vr: VR, v: &[&str]) -> DataElement<InMemDicomObject> {
    DataElement::new(
        tag,
        vr,
        PrimitiveValue::Strs(v.iter().map(|s| s.to_string()).collect()),
    )
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn empty(tag: Tag, vr: VR) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::Empty)
}

fn item(elements: Vec<DataElement<InMemDicomObject>>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

/// A code: value, scheme, meaning.
fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    item(vec![
        el(tags::CODE_VALUE, VR::SH, value),
        el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        el(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

/// The algorithm (Tessera's model) as a segmentation or annotation group names it.
fn algorithm(input: &SegmentationInput) -> InMemDicomObject {
    item(vec![
        seq(
            tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
            vec![code("123110", "DCM", "Artificial Intelligence")],
        ),
        el(tags::ALGORITHM_VERSION, VR::LO, input.model.1),
        el(tags::ALGORITHM_NAME, VR::LO, input.model.0),
    ])
}

/// The source's Series Instance UID (empty when it has none).
fn series_of(src: &InMemDicomObject) -> String {
    src.get(tags::SERIES_INSTANCE_UID)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_default()
}

/// A decimal string of at most 16 characters.
fn ds(v: f64) -> String {
    for precision in (0..=10).rev() {
        let s = format!("{v:.precision$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        if s.len() <= 16 {
            return if s == "-0" { "0".into() } else { s };
        }
    }
    format!("{v:.3e}")
}

fn floats(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.get(tag)?.to_multi_float64().ok()
}

/// The attributes every Tessera object shares: SOP Common, Patient and General Study (the
/// source's), the series, Frame of Reference (the Segmentation's; the annotations have none)
/// and the equipment, and the source's Specimen attributes. `ids`: the source series, the new
/// series and the SOP instance; `kind`: SOP class, modality, series number.
fn header(
    input: &SegmentationInput,
    (source_series, series_uid, sop_uid): (&str, &str, &str),
    (class, modality, series_number): (&str, &str, &str),
) -> InMemDicomObject {
    let frame_of_reference = modality == "SEG";
    let src = &input.source.attributes;
    let mut obj = InMemDicomObject::new_empty();
    let copy = |obj: &mut InMemDicomObject, tag: Tag, vr: VR| match src.get(tag) {
        Some(e) => {
            obj.put(e.clone());
        }
        None => {
            obj.put(empty(tag, vr));
        }
    };
    let copy_if = |obj: &mut InMemDicomObject, tag: Tag| {
        if let Some(e) = src.get(tag) {
            obj.put(e.clone());
        }
    };
    // SOP Common.
    obj.put(el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    obj.put(el(tags::SOP_CLASS_UID, VR::UI, class));
    obj.put(el(tags::SOP_INSTANCE_UID, VR::UI, sop_uid));
    obj.put(el(
        tags::INSTANCE_CREATION_DATE,
        VR::DA,
        input.when.0.as_str(),
    ));
    obj.put(el(
        tags::INSTANCE_CREATION_TIME,
        VR::TM,
        input.when.1.as_str(),
    ));
    // Patient, General Study: the source's (type 2 attributes empty where it has none).
    for (tag, vr) in [
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
    ] {
        copy(&mut obj, tag, vr);
    }
    for tag in [
        tags::ISSUER_OF_PATIENT_ID,
        tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE,
        tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE,
        tags::STUDY_DESCRIPTION,
        tags::STUDY_INSTANCE_UID,
    ] {
        copy_if(&mut obj, tag);
    }
    // The series (one per object kind, in the source's study).
    obj.put(el(tags::MODALITY, VR::CS, modality));
    obj.put(el(tags::SERIES_INSTANCE_UID, VR::UI, series_uid));
    obj.put(el(tags::SERIES_NUMBER, VR::IS, series_number));
    obj.put(el(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        format!("Tessera: {}", input.model.0),
    ));
    // Frame of Reference.
    match src
        .get(tags::FRAME_OF_REFERENCE_UID)
        .filter(|_| frame_of_reference)
    {
        Some(e) => {
            obj.put(e.clone());
            copy(&mut obj, tags::POSITION_REFERENCE_INDICATOR, VR::LO);
        }
        None if !frame_of_reference => {}
        None => {
            let uid = derived_uid(&["tessera-frame-of-reference", source_series]);
            obj.put(el(tags::FRAME_OF_REFERENCE_UID, VR::UI, uid.as_str()));
            obj.put(el(
                tags::POSITION_REFERENCE_INDICATOR,
                VR::LO,
                "SLIDE_CORNER",
            ));
        }
    }
    // General and Enhanced General Equipment.
    obj.put(el(tags::MANUFACTURER, VR::LO, "Tessera"));
    obj.put(el(tags::MANUFACTURER_MODEL_NAME, VR::LO, "tessera"));
    obj.put(el(tags::DEVICE_SERIAL_NUMBER, VR::LO, "0"));
    obj.put(el(tags::SOFTWARE_VERSIONS, VR::LO, crate::VERSION));
    // Specimen: the source's. Without it the annotations' subject may be a patient's paired
    // organ, for which Laterality (type 2C) is then present, empty.
    let mut specimen = false;
    for tag in [
        tags::CONTAINER_IDENTIFIER,
        tags::ISSUER_OF_THE_CONTAINER_IDENTIFIER_SEQUENCE,
        tags::CONTAINER_TYPE_CODE_SEQUENCE,
        tags::SPECIMEN_DESCRIPTION_SEQUENCE,
    ] {
        if let Some(e) = src.get(tag) {
            obj.put(e.clone());
            specimen = true;
        }
    }
    if !specimen && modality == "ANN" {
        obj.put(empty(tags::LATERALITY, VR::CS));
    }
    obj
}

/// A class's regions: polygons, each its rings (outer first), each ring its points in level-0
/// pixels, closed (as [`Heatmap::regions`] gives them).
pub type Regions = Vec<Vec<Vec<[f64; 2]>>>;

/// One patch for the annotations: top-left corner and side in level-0 pixels, and its class
/// probabilities.
pub struct AnnotatedPatch<'a> {
    /// Top-left corner, level-0 pixels.
    pub x: f64,
    /// Top-left corner, level-0 pixels.
    pub y: f64,
    /// Side, level-0 pixels.
    pub side: f64,
    /// Probability of each class, in the classes' order.
    pub probs: &'a [f32],
}

/// An annotation group: its label, graphic type and the graphics (points in level-0 pixels),
/// with measurements (name, one value per graphic).
struct Group {
    /// The class it shows (its codes), if one.
    class: Option<usize>,
    label: String,
    graphic: &'static str,
    graphics: Vec<Vec<[f64; 2]>>,
    measurements: Vec<(String, Vec<f32>)>,
}

/// The Microscopy Bulk Simple Annotations' Part 10 bytes: the patch grid (one RECTANGLE per
/// analysed patch, each class's probability a measurement) and each class's thresholded
/// regions (POLYGONs: the outer rings; holes are not represented), in 2D image coordinates of
/// the source's level 0 (pixel (0, 0)'s top-left corner at 0, 0).
pub fn annotations(
    input: &SegmentationInput,
    patches: &[AnnotatedPatch],
    regions: &[(&str, Regions)],
) -> Result<Vec<u8>, String> {
    let src = &input.source.attributes;
    let source_series = series_of(src);
    let series_uid = derived_uid(&["tessera-annotation-series", input.run_key, &source_series]);
    let sop_uid = derived_uid(&["tessera-annotations", input.run_key, &source_series]);
    let Some((ref_class, ref_sop)) = input.source.level0.first() else {
        return Err("the source has no level-0 instance to annotate".into());
    };
    let mut obj = header(
        input,
        (&source_series, &series_uid, &sop_uid),
        (
            uids::MICROSCOPY_BULK_SIMPLE_ANNOTATIONS_STORAGE,
            "ANN",
            "901",
        ),
    );
    obj.put(el(tags::INSTANCE_NUMBER, VR::IS, "1"));
    obj.put(el(tags::CONTENT_DATE, VR::DA, input.when.0.as_str()));
    obj.put(el(tags::CONTENT_TIME, VR::TM, input.when.1.as_str()));
    obj.put(el(tags::CONTENT_LABEL, VR::CS, "TESSERA"));
    obj.put(el(tags::CONTENT_DESCRIPTION, VR::LO, "Patches and regions"));
    obj.put(empty(tags::CONTENT_CREATOR_NAME, VR::PN));
    obj.put(el(tags::ANNOTATION_COORDINATE_TYPE, VR::CS, "2D"));
    obj.put(el(tags::PIXEL_ORIGIN_INTERPRETATION, VR::CS, "VOLUME"));
    let reference = item(vec![
        el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, ref_class.as_str()),
        el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, ref_sop.as_str()),
    ]);
    obj.put(seq(
        tags::REFERENCED_IMAGE_SEQUENCE,
        vec![reference.clone()],
    ));
    obj.put(seq(
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![item(vec![
            seq(tags::REFERENCED_INSTANCE_SEQUENCE, vec![reference]),
            el(tags::SERIES_INSTANCE_UID, VR::UI, source_series.as_str()),
        ])],
    ));

    let mut groups = Vec::new();
    if !patches.is_empty() {
        groups.push(Group {
            class: None,
            label: "patches".into(),
            graphic: "RECTANGLE",
            graphics: patches
                .iter()
                .map(|p| {
                    let (x1, y1) = (p.x + p.side, p.y + p.side);
                    vec![[p.x, p.y], [x1, p.y], [x1, y1], [p.x, y1]]
                })
                .collect(),
            measurements: input
                .classes
                .iter()
                .enumerate()
                .map(|(k, (name, _))| {
                    (
                        name.to_string(),
                        patches
                            .iter()
                            .map(|p| p.probs.get(k).copied().unwrap_or(f32::NAN))
                            .collect(),
                    )
                })
                .collect(),
        });
    }
    for (name, polygons) in regions {
        let rings: Vec<Vec<[f64; 2]>> = polygons
            .iter()
            .filter_map(|p| p.first())
            .map(|ring| {
                // DICOM closes polygons itself: the repeated first point goes.
                let mut r = ring.clone();
                if r.len() > 1 && r.first() == r.last() {
                    r.pop();
                }
                r
            })
            .filter(|r| r.len() >= 3)
            .collect();
        if !rings.is_empty() {
            groups.push(Group {
                class: input.classes.iter().position(|(n, _)| n == name),
                label: format!("{name} regions"),
                graphic: "POLYGON",
                graphics: rings,
                measurements: Vec::new(),
            });
        }
    }
    if groups.is_empty() {
        return Err("nothing to annotate".into());
    }
    let group_items = groups
        .iter()
        .enumerate()
        .map(|(g, group)| {
            let points: Vec<f64> = group
                .graphics
                .iter()
                .flat_map(|pts| pts.iter().flat_map(|p| [p[0], p[1]]))
                .collect();
            let mut elements = vec![
                el(tags::ANNOTATION_GROUP_NUMBER, VR::US, g as u16 + 1),
                DataElement::new(
                    tags::DOUBLE_POINT_COORDINATES_DATA,
                    VR::OD,
                    PrimitiveValue::F64(points.into_iter().collect()),
                ),
            ];
            if group.graphic == "POLYGON" {
                // 1-based index of each polygon's first value in the coordinates.
                let mut at = 1u32;
                let starts: Vec<u32> = group
                    .graphics
                    .iter()
                    .map(|pts| {
                        let s = at;
                        at += 2 * pts.len() as u32;
                        s
                    })
                    .collect();
                elements.push(DataElement::new(
                    tags::LONG_PRIMITIVE_POINT_INDEX_LIST,
                    VR::OL,
                    PrimitiveValue::U32(starts.into_iter().collect()),
                ));
            }
            if !group.measurements.is_empty() {
                elements.push(seq(
                    tags::MEASUREMENTS_SEQUENCE,
                    group
                        .measurements
                        .iter()
                        .map(|(name, values)| {
                            item(vec![
                                seq(
                                    tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
                                    vec![code("1", "UCUM", "no units")],
                                ),
                                seq(
                                    tags::CONCEPT_NAME_CODE_SEQUENCE,
                                    vec![code(
                                        &format!("prob-{name}"),
                                        "99TESSERA",
                                        &format!("Probability of {name}"),
                                    )],
                                ),
                                seq(
                                    tags::MEASUREMENT_VALUES_SEQUENCE,
                                    vec![item(vec![DataElement::new(
                                        tags::FLOATING_POINT_VALUES,
                                        VR::OF,
                                        PrimitiveValue::F32(values.iter().copied().collect()),
                                    )])],
                                ),
                            ])
                        })
                        .collect(),
                ));
            }
            elements.extend([
                el(
                    tags::ANNOTATION_GROUP_UID,
                    VR::UI,
                    derived_uid(&["tessera-annotation-group", &sop_uid, &group.label]).as_str(),
                ),
                el(tags::ANNOTATION_GROUP_LABEL, VR::LO, group.label.as_str()),
                el(tags::ANNOTATION_GROUP_GENERATION_TYPE, VR::CS, "AUTOMATIC"),
                seq(
                    tags::ANNOTATION_GROUP_ALGORITHM_IDENTIFICATION_SEQUENCE,
                    vec![algorithm(input)],
                ),
                seq(
                    tags::ANNOTATION_PROPERTY_CATEGORY_CODE_SEQUENCE,
                    vec![class_codes(input, group.class).0],
                ),
                seq(
                    tags::ANNOTATION_PROPERTY_TYPE_CODE_SEQUENCE,
                    vec![class_codes(input, group.class).1],
                ),
                el(
                    tags::NUMBER_OF_ANNOTATIONS,
                    VR::UL,
                    group.graphics.len() as u32,
                ),
                el(tags::ANNOTATION_APPLIES_TO_ALL_OPTICAL_PATHS, VR::CS, "YES"),
                el(tags::GRAPHIC_TYPE, VR::CS, group.graphic),
            ]);
            item(elements)
        })
        .collect();
    obj.put(seq(tags::ANNOTATION_GROUP_SEQUENCE, group_items));
    part10(
        obj,
        uids::MICROSCOPY_BULK_SIMPLE_ANNOTATIONS_STORAGE,
        &sop_uid,
    )
}

/// The report as an Encapsulated PDF, in its own series of the source's study.
pub fn encapsulated_pdf(input: &SegmentationInput, pdf: &[u8]) -> Result<Vec<u8>, String> {
    let src = &input.source.attributes;
    let source_series = series_of(src);
    let series_uid = derived_uid(&["tessera-report-series", input.run_key, &source_series]);
    let sop_uid = derived_uid(&["tessera-report", input.run_key, &source_series]);
    let mut obj = header(
        input,
        (&source_series, &series_uid, &sop_uid),
        (uids::ENCAPSULATED_PDF_STORAGE, "DOC", "902"),
    );
    // SC Equipment, Encapsulated Document.
    obj.put(el(tags::CONVERSION_TYPE, VR::CS, "SYN"));
    obj.put(el(tags::INSTANCE_NUMBER, VR::IS, "1"));
    obj.put(el(tags::CONTENT_DATE, VR::DA, input.when.0.as_str()));
    obj.put(el(tags::CONTENT_TIME, VR::TM, input.when.1.as_str()));
    obj.put(el(
        tags::ACQUISITION_DATE_TIME,
        VR::DT,
        format!("{}{}", input.when.0, input.when.1),
    ));
    obj.put(el(tags::BURNED_IN_ANNOTATION, VR::CS, "YES"));
    obj.put(el(tags::DOCUMENT_TITLE, VR::ST, "Tessera slide report"));
    obj.put(seq(tags::CONCEPT_NAME_CODE_SEQUENCE, Vec::new()));
    obj.put(el(
        tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT,
        VR::LO,
        "application/pdf",
    ));
    obj.put(el(
        tags::ENCAPSULATED_DOCUMENT_LENGTH,
        VR::UL,
        pdf.len() as u32,
    ));
    let mut bytes = pdf.to_vec();
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    obj.put(el(tags::ENCAPSULATED_DOCUMENT, VR::OB, bytes));
    part10(obj, uids::ENCAPSULATED_PDF_STORAGE, &sop_uid)
}

/// Part 10 bytes of `obj` (Explicit VR Little Endian).
fn part10(obj: InMemDicomObject, class: &str, sop_uid: &str) -> Result<Vec<u8>, String> {
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .media_storage_sop_class_uid(class)
                .media_storage_sop_instance_uid(sop_uid)
                .implementation_class_uid(derived_uid(&["tessera-implementation"]))
                .implementation_version_name(format!("TESSERA_{}", crate::VERSION)),
        )
        .map_err(|e| format!("DICOM: {e}"))?;
    let mut out = Vec::new();
    file.write_all(&mut out)
        .map_err(|e| format!("DICOM: {e}"))?;
    Ok(out)
}

/// The Segmentation's Part 10 bytes.
pub fn segmentation(input: &SegmentationInput) -> Result<Vec<u8>, String> {
    let src = &input.source.attributes;
    let (width, height) = match input.classes.first() {
        Some((_, h)) if h.width > 0 && h.height > 0 => (h.width, h.height),
        _ => return Err("no heatmap to write as a DICOM Segmentation".into()),
    };
    let source_series = series_of(src);
    let series_uid = output_series_uid(input.run_key, &source_series);
    let sop_uid = derived_uid(&["tessera-segmentation", input.run_key, &source_series]);
    let cell_l0 = input.classes[0].1.cell_l0;
    // PixelSpacing: between rows (y), then between columns (x), in mm.
    let spacing = (
        cell_l0 * input.mpp.1 / 1000.0,
        cell_l0 * input.mpp.0 / 1000.0,
    );
    let origin = src
        .get(tags::TOTAL_PIXEL_MATRIX_ORIGIN_SEQUENCE)
        .and_then(|e| e.items())
        .and_then(|i| i.first())
        .map(|o| {
            let f = |t| floats(o, t).and_then(|v| v.first().copied()).unwrap_or(0.0);
            (
                f(tags::X_OFFSET_IN_SLIDE_COORDINATE_SYSTEM),
                f(tags::Y_OFFSET_IN_SLIDE_COORDINATE_SYSTEM),
            )
        })
        .unwrap_or((0.0, 0.0));
    let orientation = floats(src, tags::IMAGE_ORIENTATION_SLIDE)
        .filter(|v| v.len() == 6)
        .unwrap_or_else(|| vec![0.0, -1.0, 0.0, -1.0, 0.0, 0.0]);
    // Slide coordinates (mm) of total-matrix pixel (col, row), 0-based.
    let position = |col: u32, row: u32| {
        let (c, r) = (f64::from(col), f64::from(row));
        (
            origin.0 + c * spacing.1 * orientation[0] + r * spacing.0 * orientation[3],
            origin.1 + c * spacing.1 * orientation[1] + r * spacing.0 * orientation[4],
        )
    };

    let mut obj = header(
        input,
        (&source_series, &series_uid, &sop_uid),
        (uids::SEGMENTATION_STORAGE, "SEG", "900"),
    );
    // General Image, Segmentation Image.
    obj.put(el(tags::INSTANCE_NUMBER, VR::IS, "1"));
    obj.put(empty(tags::PATIENT_ORIENTATION, VR::CS));
    obj.put(el(tags::CONTENT_DATE, VR::DA, input.when.0.as_str()));
    obj.put(el(tags::CONTENT_TIME, VR::TM, input.when.1.as_str()));
    obj.put(strs(tags::IMAGE_TYPE, VR::CS, &["DERIVED", "PRIMARY"]));
    obj.put(el(tags::CONTENT_LABEL, VR::CS, "TESSERA"));
    obj.put(el(
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        "Class probabilities per patch",
    ));
    obj.put(empty(tags::CONTENT_CREATOR_NAME, VR::PN));
    obj.put(el(tags::SAMPLES_PER_PIXEL, VR::US, 1_u16));
    obj.put(el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"));
    obj.put(el(tags::BITS_ALLOCATED, VR::US, 8_u16));
    obj.put(el(tags::BITS_STORED, VR::US, 8_u16));
    obj.put(el(tags::HIGH_BIT, VR::US, 7_u16));
    obj.put(el(tags::PIXEL_REPRESENTATION, VR::US, 0_u16));
    obj.put(el(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"));
    obj.put(el(tags::PRESENTATION_LUT_SHAPE, VR::CS, "IDENTITY"));
    obj.put(el(tags::SEGMENTATION_TYPE, VR::CS, "FRACTIONAL"));
    obj.put(el(
        tags::SEGMENTATION_FRACTIONAL_TYPE,
        VR::CS,
        "PROBABILITY",
    ));
    obj.put(el(tags::MAXIMUM_FRACTIONAL_VALUE, VR::US, 255_u16));
    obj.put(el(tags::SEGMENTS_OVERLAP, VR::CS, "NO"));
    let segments = input
        .classes
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            item(vec![
                seq(
                    tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                    vec![class_codes(input, Some(i)).0],
                ),
                el(tags::SEGMENT_NUMBER, VR::US, (i + 1) as u16),
                el(tags::SEGMENT_LABEL, VR::LO, *name),
                seq(
                    tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
                    vec![algorithm(input)],
                ),
                el(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
                el(tags::SEGMENT_ALGORITHM_NAME, VR::LO, input.model.0),
                seq(
                    tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
                    vec![class_codes(input, Some(i)).1],
                ),
            ])
        })
        .collect();
    obj.put(seq(tags::SEGMENT_SEQUENCE, segments));
    // Where it lies on the slide.
    obj.put(el(tags::TOTAL_PIXEL_MATRIX_COLUMNS, VR::UL, width));
    obj.put(el(tags::TOTAL_PIXEL_MATRIX_ROWS, VR::UL, height));
    obj.put(el(tags::TOTAL_PIXEL_MATRIX_FOCAL_PLANES, VR::UL, 1_u32));
    obj.put(seq(
        tags::TOTAL_PIXEL_MATRIX_ORIGIN_SEQUENCE,
        vec![item(vec![
            el(
                tags::X_OFFSET_IN_SLIDE_COORDINATE_SYSTEM,
                VR::DS,
                ds(origin.0),
            ),
            el(
                tags::Y_OFFSET_IN_SLIDE_COORDINATE_SYSTEM,
                VR::DS,
                ds(origin.1),
            ),
        ])],
    ));
    let orient: Vec<String> = orientation.iter().map(|&v| ds(v)).collect();
    obj.put(DataElement::new(
        tags::IMAGE_ORIENTATION_SLIDE,
        VR::DS,
        PrimitiveValue::Strs(orient.into_iter().collect()),
    ));
    // References to the source's level 0.
    let referenced: Vec<InMemDicomObject> = input
        .source
        .level0
        .iter()
        .map(|(class, sop)| {
            item(vec![
                el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, class.as_str()),
                el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, sop.as_str()),
            ])
        })
        .collect();
    obj.put(seq(tags::SOURCE_IMAGE_SEQUENCE, referenced.clone()));
    obj.put(seq(
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![item(vec![
            seq(tags::REFERENCED_INSTANCE_SEQUENCE, referenced),
            el(tags::SERIES_INSTANCE_UID, VR::UI, source_series.as_str()),
        ])],
    ));

    // Frames: each segment's map in tiles of at most FRAME × FRAME cells.
    let (fw, fh) = (width.min(FRAME), height.min(FRAME));
    let (across, down) = (width.div_ceil(fw), height.div_ceil(fh));
    let dimension_uid = derived_uid(&["tessera-dimensions", input.run_key, &source_series]);
    obj.put(seq(
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![item(vec![el(
            tags::DIMENSION_ORGANIZATION_UID,
            VR::UI,
            dimension_uid.as_str(),
        )])],
    ));
    let index = |pointer: Tag, group: Tag, label: &str| {
        item(vec![
            el(
                tags::DIMENSION_ORGANIZATION_UID,
                VR::UI,
                dimension_uid.as_str(),
            ),
            el(
                tags::DIMENSION_INDEX_POINTER,
                VR::AT,
                PrimitiveValue::from(pointer),
            ),
            el(
                tags::FUNCTIONAL_GROUP_POINTER,
                VR::AT,
                PrimitiveValue::from(group),
            ),
            el(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label),
        ])
    };
    obj.put(seq(
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            index(
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "Referenced Segment Number",
            ),
            index(
                tags::ROW_POSITION_IN_TOTAL_IMAGE_PIXEL_MATRIX,
                tags::PLANE_POSITION_SLIDE_SEQUENCE,
                "Row Position In Total Image Pixel Matrix",
            ),
            index(
                tags::COLUMN_POSITION_IN_TOTAL_IMAGE_PIXEL_MATRIX,
                tags::PLANE_POSITION_SLIDE_SEQUENCE,
                "Column Position In Total Image Pixel Matrix",
            ),
        ],
    ));
    obj.put(el(
        tags::DIMENSION_ORGANIZATION_TYPE,
        VR::CS,
        "TILED_SPARSE",
    ));
    obj.put(el(tags::ROWS, VR::US, fh as u16));
    obj.put(el(tags::COLUMNS, VR::US, fw as u16));
    obj.put(seq(
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![item(vec![seq(
            tags::PIXEL_MEASURES_SEQUENCE,
            vec![item(vec![
                el(tags::SLICE_THICKNESS, VR::DS, "0.001"),
                DataElement::new(
                    tags::PIXEL_SPACING,
                    VR::DS,
                    PrimitiveValue::Strs([ds(spacing.0), ds(spacing.1)].into_iter().collect()),
                ),
            ])],
        )])],
    ));
    let mut per_frame = Vec::new();
    let mut pixels =
        Vec::with_capacity((fw * fh) as usize * input.classes.len() * (across * down) as usize);
    for (s, (_, heat)) in input.classes.iter().enumerate() {
        if (heat.width, heat.height) != (width, height) {
            return Err("heatmaps of different sizes".into());
        }
        let values = heat.to_u8();
        for ty in 0..down {
            for tx in 0..across {
                let (x0, y0) = (tx * fw, ty * fh);
                for y in y0..y0 + fh {
                    for x in x0..x0 + fw {
                        pixels.push(if x < width && y < height {
                            values[(y * width + x) as usize]
                        } else {
                            0
                        });
                    }
                }
                let (px, py) = position(x0, y0);
                per_frame.push(item(vec![
                    seq(tags::DERIVATION_IMAGE_SEQUENCE, Vec::new()),
                    seq(
                        tags::FRAME_CONTENT_SEQUENCE,
                        vec![item(vec![DataElement::new(
                            tags::DIMENSION_INDEX_VALUES,
                            VR::UL,
                            PrimitiveValue::U32(
                                [s as u32 + 1, ty + 1, tx + 1].into_iter().collect(),
                            ),
                        )])],
                    ),
                    seq(
                        tags::PLANE_POSITION_SLIDE_SEQUENCE,
                        vec![item(vec![
                            el(tags::X_OFFSET_IN_SLIDE_COORDINATE_SYSTEM, VR::DS, ds(px)),
                            el(tags::Y_OFFSET_IN_SLIDE_COORDINATE_SYSTEM, VR::DS, ds(py)),
                            el(tags::Z_OFFSET_IN_SLIDE_COORDINATE_SYSTEM, VR::DS, "0"),
                            el(
                                tags::COLUMN_POSITION_IN_TOTAL_IMAGE_PIXEL_MATRIX,
                                VR::SL,
                                x0 as i32 + 1,
                            ),
                            el(
                                tags::ROW_POSITION_IN_TOTAL_IMAGE_PIXEL_MATRIX,
                                VR::SL,
                                y0 as i32 + 1,
                            ),
                        ])],
                    ),
                    seq(
                        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                        vec![item(vec![el(
                            tags::REFERENCED_SEGMENT_NUMBER,
                            VR::US,
                            s as u16 + 1,
                        )])],
                    ),
                ]));
            }
        }
    }
    obj.put(el(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        per_frame.len().to_string(),
    ));
    obj.put(seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame));
    if pixels.len() % 2 == 1 {
        pixels.push(0);
    }
    obj.put(el(tags::PIXEL_DATA, VR::OB, pixels));

    part10(obj, uids::SEGMENTATION_STORAGE, &sop_uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_derived_and_valid() {
        let a = derived_uid(&["x", "y"]);
        assert_eq!(a, derived_uid(&["x", "y"]));
        assert_ne!(a, derived_uid(&["xy"]));
        assert!(a.starts_with("2.25.") && a.len() <= 64);
        assert!(a[5..].bytes().all(|b| b.is_ascii_digit()));
        assert!(!a[5..].starts_with('0'));
    }

    #[test]
    fn decimal_strings_fit() {
        assert_eq!(ds(0.1117760000001), "0.111776");
        assert_eq!(ds(-0.0), "0");
        assert_eq!(ds(25.691574), "25.691574");
        assert!(ds(123456.123456789).len() <= 16);
        assert_eq!(ds(1.0), "1");
    }
}
