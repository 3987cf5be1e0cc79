//! Reports pathologists read: `report.html` per slide and `index.html` per cohort.
//!
//! In: a finished slide output folder — result.json, patches.csv, thumbnail.png,
//! overlay-<positive class>.png, tissue-mask.png, region-<n>.jpg and, when the user asked for
//! them, label.png and macro.png — or a cohort folder's summary rows. Out: `report.html`, one
//! self-contained page (CSS inline, images embedded as `data:` URIs, a Content-Security-Policy
//! that forbids fetching anything, no script), laid out for A4 when printed; and
//! `OUT/index.html`, the cohort table (sortable by a small inline script). Everything comes
//! from the files, so [`write_slide_report`] on a folder rebuilds the same bytes without the
//! slide or the model. Coordinates shown are level-0 pixels, as QuPath shows them.

pub mod pdf;
pub mod svg;

use std::path::{Path, PathBuf};

use base64::Engine;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::results::{Identifiers, PatchTable, SlideResult, SlideStatus, Status, TopRegion};
use crate::slide::MppSource;

/// The fixed line every report carries.
pub const DISCLAIMER: &str = "Decision support — findings require review by a pathologist.";

const CSS: &str = r#"
:root{--ink:#1d1d1f;--muted:#5b5b66;--line:#d9d9e0;--soft:#f5f5f8;--accent:#4a2a6b}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);max-width:1040px;margin:24px auto;padding:0 24px;background:#fff}
header .brand{display:flex;justify-content:space-between;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.06em}
h1{font-size:24px;margin:4px 0 8px;word-break:break-all}
h2{font-size:17px;margin:28px 0 10px;padding-bottom:4px;border-bottom:2px solid var(--line);color:var(--accent)}
h3{font-size:14px;margin:16px 0 6px}
.disclaimer{border-left:4px solid #b8860b;background:#fff8e1;padding:8px 12px;font-weight:600;margin:8px 0}
.note{color:var(--muted);font-size:13px;margin:6px 0}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
table.kv th{width:24%;color:var(--muted);font-weight:600}
thead th{background:var(--soft);font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.num{white-space:nowrap}
.mono{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:10px;margin:8px 0 14px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px 12px}
.card .k{font-size:12px;color:var(--muted)}
.card .v{font-size:22px;font-weight:650;font-variant-numeric:tabular-nums}
.card .s{font-size:12px;color:var(--muted)}
ul.warn{margin:4px 0;padding-left:20px}
ul.warn li{color:#8a4b00}
.ok{color:#2e7d32}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:14px}
figure{margin:0;break-inside:avoid}
figcaption{font-size:12px;color:var(--muted);margin-top:4px}
.stack{position:relative;line-height:0;border:1px solid var(--line)}
.stack img{width:100%;height:auto;display:block}
.stack svg{position:absolute;left:0;top:0;width:100%;height:100%}
.regions{display:grid;grid-template-columns:repeat(3,1fr);gap:12px}
.qcregions{display:grid;grid-template-columns:1fr 1fr;gap:8px;align-content:start}
.qcregions img{width:100%;height:auto;display:block;border:1px solid var(--line)}
.qcregions figcaption{font-size:12px}
.regions img{width:100%;height:auto;display:block;border:1px solid var(--line)}
.regions .rank{font-weight:700;color:var(--ink)}
.hists{display:flex;flex-wrap:wrap;gap:18px}
.ids img{max-width:48%;height:auto;border:1px solid var(--line);margin-right:8px}
footer{margin-top:28px;padding-top:8px;border-top:1px solid var(--line);color:var(--muted);font-size:12px}
.status-failed{color:#b71c1c;font-weight:600}
.verdict{font-weight:700;text-transform:uppercase;padding:1px 6px;border-radius:3px;color:#fff}
.verdict-pass{background:#2e7d32}
.verdict-review{background:#ef6c00}
.verdict-rescan{background:#b71c1c}
.swatch{display:inline-block;width:10px;height:10px;border:1px solid #0003;vertical-align:middle}
.status-done,.status-skipped{color:#2e7d32}
th[data-sort]{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" ▲"}
th[aria-sort=descending]::after{content:" ▼"}
@page{size:A4;margin:12mm}
@media print{
 body{max-width:none;margin:0;padding:0;font-size:11px}
 h2{break-after:avoid;margin-top:16px}
 .cards{grid-template-columns:repeat(4,1fr)}
 section{break-inside:auto}
 figure,.card,tr{break-inside:avoid}
 a{color:inherit;text-decoration:none}
 .regions{grid-template-columns:repeat(3,1fr)}
 footer{margin-top:8px;break-before:avoid}
}
"#;

/// Content-Security-Policy of the slide report: nothing may be fetched, images come inline.
const CSP_REPORT: &str = "default-src 'none'; img-src data:; style-src 'unsafe-inline'";
/// The cohort page also runs its inline sorting script.
const CSP_INDEX: &str =
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'";

const SORT_SCRIPT: &str = r#"
document.querySelectorAll('th[data-sort]').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = document.querySelector('#slides tbody');
    var rows = Array.prototype.slice.call(body.rows);
    var dir = th.getAttribute('aria-sort') === 'ascending' ? -1 : 1;
    var num = th.getAttribute('data-sort') === 'num';
    var i = th.cellIndex;
    rows.sort(function (a, b) {
      var x = a.cells[i].getAttribute('data-v'), y = b.cells[i].getAttribute('data-v');
      var c;
      if (num) {
        var nx = x === '' ? -Infinity : parseFloat(x), ny = y === '' ? -Infinity : parseFloat(y);
        c = nx < ny ? -1 : nx > ny ? 1 : 0;
      } else {
        c = x.localeCompare(y);
      }
      return c * dir;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    document.querySelectorAll('th[data-sort]').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
  });
});
"#;

fn report_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Report {
        path: path.into(),
        message: message.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::from_io(path, e))
}

fn data_uri(mime: &str, bytes: &[u8]) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "—".into(),
        other => other.to_string(),
    }
}

/// A value as result.json writes it (numbers in JSON's form, `—` for none), for the places
/// the report shows a field verbatim.
fn shown<T: serde::Serialize>(v: &T) -> String {
    text(&serde_json::to_value(v).unwrap_or(Value::Null))
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".into(), |x| format!("{x:.digits$}"))
}

/// Integers with thin-space thousands separators (12 345).
fn count(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

/// `2026-11-25T11:43:36Z` as `2026-11-25 11:43:36 UTC`.
fn when(t: &str) -> String {
    match t.strip_suffix('Z') {
        Some(body) => format!("{} UTC", body.replacen('T', " ", 1)),
        None => t.to_string(),
    }
}

fn mpp_source(src: &MppSource) -> String {
    match src {
        MppSource::SlideMetadata { field } => format!("from the slide: {field}"),
        MppSource::TiffResolution { unit } => {
            format!("from TIFF resolution tags (per {unit}); often a placeholder")
        }
        MppSource::User => "given by the user (--mpp)".into(),
    }
}

/// One slide folder's files, read for its report.
struct Folder {
    dir: PathBuf,
    result: SlideResult,
    class_names: Vec<String>,
    /// Probabilities per class, in patches.csv order.
    probs: Vec<Vec<f32>>,
}

impl Folder {
    fn load(dir: &Path) -> Result<Folder> {
        let result = SlideResult::read(&dir.join("result.json"))?;
        let class_names = result.model.config.class_names.clone();
        let cpath = dir.join("patches.csv");
        let table = PatchTable::read(&cpath)?;
        let probs = class_names
            .iter()
            .map(|n| {
                table
                    .column(n)
                    .ok_or_else(|| report_err(&cpath, format!("no column prob_{n}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Folder {
            dir: dir.into(),
            result,
            class_names,
            probs,
        })
    }

    fn positive(&self) -> usize {
        self.result.positive_class()
    }

    fn class_color(&self, k: usize) -> [u8; 3] {
        let colors = self.result.model.config.tessera.class_colors.as_ref();
        match colors.and_then(|c| c.get(k)) {
            Some(&c) => c,
            None => crate::imaging::colour::palette(k, self.class_names.len()),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The thumbnail and overlay pictures with their SVG layers.
struct Pictures {
    thumb_uri: String,
    overlay_uri: Option<String>,
    view: (f64, f64),
    outline: String,
    markers: String,
}

fn pictures(f: &Folder) -> Result<Pictures> {
    let r = &f.result;
    let thumb_path = f.file("thumbnail.png");
    let thumb_bytes = read(&thumb_path)?;
    let thumb = image::load_from_memory(&thumb_bytes)
        .map_err(|e| report_err(&thumb_path, format!("cannot decode: {e}")))?;
    let (tw, th) = (thumb.width(), thumb.height());
    let ds = r.parameters.thumbnail_downsample;
    let view = (tw as f64 * ds, th as f64 * ds);

    // The overlay PNG carries its legend below the picture: keep the picture part, so the two
    // pictures are the same size (the report draws its own legend).
    let positive = &f.class_names[f.positive()];
    let overlay_path = f.file(&format!("overlay-{positive}.png"));
    let overlay_uri = if overlay_path.exists() {
        let img = image::load_from_memory(&read(&overlay_path)?)
            .map_err(|e| report_err(&overlay_path, format!("cannot decode: {e}")))?
            .to_rgb8();
        if img.width() != tw || img.height() < th {
            return Err(report_err(
                &overlay_path,
                "its size does not match thumbnail.png",
            ));
        }
        let top = image::imageops::crop_imm(&img, 0, 0, tw, th).to_image();
        use image::ImageEncoder;
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(top.as_raw(), tw, th, image::ExtendedColorType::Rgb8)
            .map_err(|e| report_err(&overlay_path, format!("cannot encode: {e}")))?;
        Some(data_uri("image/png", &png))
    } else {
        None
    };

    // Tissue outline from the mask, at most 400 cells on its longest side.
    let mask_path = f.file("tissue-mask.png");
    let mask = image::load_from_memory(&read(&mask_path)?)
        .map_err(|e| report_err(&mask_path, format!("cannot decode: {e}")))?
        .to_luma8();
    let mds = r.parameters.tissue.mask_downsample;
    let step = (mask.width().max(mask.height()) as usize)
        .div_ceil(400)
        .max(1);
    let (w, h) = (
        (mask.width() as usize).div_ceil(step),
        (mask.height() as usize).div_ceil(step),
    );
    let mut on = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            on[y * w + x] = mask.get_pixel((x * step) as u32, (y * step) as u32)[0] > 0;
        }
    }
    let outline = svg::mask_outline(&on, w, h, mds * step as f64);

    let mut markers = String::new();
    for reg in &r.top_regions {
        let b = &reg.crop_level0;
        markers.push_str(&svg::marker(
            reg.rank,
            b.x as f64,
            b.y as f64,
            b.side as f64,
            view.0.max(view.1),
        ));
    }
    Ok(Pictures {
        thumb_uri: data_uri("image/png", &thumb_bytes),
        overlay_uri,
        view,
        outline,
        markers,
    })
}

fn svg_layer(view: (f64, f64), outline: &str, extra: &str) -> String {
    let sw = view.0.max(view.1) * 0.0025;
    format!(
        r##"<svg viewBox="0 0 {:.0} {:.0}" preserveAspectRatio="none" aria-hidden="true"><path d="{outline}" fill="none" stroke="#1565c0" stroke-width="{sw:.1}" stroke-dasharray="{:.1} {:.1}" stroke-linecap="square"/>{extra}</svg>"##,
        view.0,
        view.1,
        sw * 3.0,
        sw * 2.0
    )
}

/// Builds the HTML of the report for the slide output folder `dir`.
pub fn slide_report_html(dir: &Path) -> Result<String> {
    let f = Folder::load(dir)?;
    let r = &f.result;
    let pics = pictures(&f)?;
    let slide = &r.slide;
    let params = &r.parameters;
    let name = slide.name.clone();
    let positive = f.positive();
    let pos_name = f.class_names[positive].clone();
    let threshold = params.threshold as f32;
    let tissue_mm2 = r.tissue_area_mm2;
    let analysed = r.patches_analysed as u64;
    let skipped = r.patches_skipped as u64;
    let score = &r.slide_score;
    let classes = &r.classes;
    let pos_area = classes
        .get(positive)
        .map_or(0.0, |c| c.area_above_threshold_mm2);
    let share = |a: f64| {
        if tissue_mm2 > 0.0 {
            format!("{:.1} %", 100.0 * a / tissue_mm2)
        } else {
            "—".into()
        }
    };
    let mut warnings: Vec<String> = r.warnings.clone();
    if analysed == 0 {
        warnings.push("no patch had enough tissue to be analysed".into());
    }
    let label_included = r.identifiers.label_included;
    let id_images: Vec<String> = r.identifiers.images.clone();
    let mpp = &slide.mpp;
    let model = &r.model;
    let mcfg = &model.config;
    let spacing = params.spacing_um_px;
    let patch_px = params.patch_size_pixels;
    let stride_px = params.stride_pixels;
    let region_px = params.region_pixels;
    let tissue = &params.tissue;
    let timing = |k: &str| r.timings_s.get(k).copied();
    let geojson = if f.file("annotations.geojson.gz").exists() {
        "annotations.geojson.gz"
    } else {
        "annotations.geojson"
    };
    let dims = format!(
        "{} × {} px",
        count(slide.dimensions.width),
        count(slide.dimensions.height)
    );
    let reader = &slide.reader;
    let inference = &r.inference;
    let regions: Vec<(&TopRegion, Option<String>)> = r
        .top_regions
        .iter()
        .map(|reg| {
            let file = f.file(&reg.file);
            let uri = read(&file).ok().map(|b| data_uri("image/jpeg", &b));
            (reg, uri)
        })
        .collect();
    for (reg, uri) in &regions {
        if uri.is_none() {
            return Err(report_err(
                &f.file(&reg.file),
                "a top-region crop named in result.json is missing",
            ));
        }
    }
    // Slide QC: its overlay and crops, inline.
    let qc = r.qc.as_ref();
    let qc_overlay = match qc {
        Some(_) => Some(data_uri("image/png", &read(&f.file("qc-overlay.png"))?)),
        None => None,
    };
    let mut qc_crops = Vec::new();
    for reg in qc.map(|q| q.regions.as_slice()).unwrap_or_default() {
        qc_crops.push((reg, data_uri("image/jpeg", &read(&f.file(&reg.file))?)));
    }
    let mut ids = Vec::new();
    if label_included {
        for file in &id_images {
            let p = f.file(file);
            ids.push((file.clone(), data_uri("image/png", &read(&p)?)));
        }
    }

    let page: Markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy" content=(CSP_REPORT);
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="generator" content=(format!("Tessera {}", r.tessera_version));
                title { "Slide report — " (name) }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    div.brand {
                        span { "Tessera · slide report" }
                        span { "Analysed " (when(&r.analysed_at)) }
                    }
                    h1 { (name) }
                    p.disclaimer { (DISCLAIMER) }
                    @if let Some(d) = &mcfg.tessera.description {
                        p.note { strong { "Model: " } (d) }
                    }
                    table.kv {
                        tr { th { "Slide file" } td.mono { (slide.path.display()) } }
                        tr { th { "Fingerprint (SHA-256)" } td { span.mono { (slide.fingerprint.sha256) } br; span.note { (slide.fingerprint.method) } } }
                        tr { th { "Scanner / format" } td { (shown(&slide.vendor)) " · " (slide.format) } }
                        tr { th { "Dimensions (level 0)" } td { (dims) @if let Some(o) = slide.objective_power { " · " (o) "× objective" } } }
                        tr { th { "µm per pixel" } td { (num(Some(mpp.x), 4)) " × " (num(Some(mpp.y), 4)) " — " (mpp_source(&mpp.source)) } }
                        tr { th { "Analysed" } td { (when(&r.analysed_at)) } }
                        tr { th { "Model" } td { (model.name) " version " (shown(&model.version)) " · " (mcfg.architecture) } }
                        tr { th { "Model SHA-256" } td.mono { (model.sha256) } }
                        @if let Some(u) = &mcfg.tessera.intended_use {
                            tr { th { "Intended use" } td { (u) } }
                        }
                        @if let Some(d) = &mcfg.tessera.training_data {
                            tr { th { "Training data" } td { (d) } }
                        }
                        @if let Some(t) = mcfg.tessera.spacing_tolerance_um_px {
                            tr { th { "Model resolution" } td { (mcfg.spacing_um_px) " µm/px, for slides within ±" (t) " µm/px" } }
                        }
                        @if let Some(l) = &mcfg.tessera.license {
                            tr { th { "Licence" } td { (l) } }
                        }
                        @if let Some(c) = &mcfg.tessera.citation {
                            tr { th { "Citation" } td { (c) } }
                        }
                        tr { th { "Tessera" } td { "version " (r.tessera_version) } }
                        @if let Some(q) = qc {
                            tr { th { "Slide quality" } td { span class=(format!("verdict verdict-{}", q.verdict)) { (q.verdict) } @if !q.reasons.is_empty() { " — " (q.reasons.join("; ")) } } }
                        }
                    }
                }
                section #summary {
                    h2 { "Summary" }
                    div.cards {
                        div.card {
                            div.k { "Slide score · " (pos_name) }
                            div.v { (num(score.value, 3)) }
                            div.s { (score.description) }
                        }
                        div.card {
                            div.k { "Tissue area" }
                            div.v { (format!("{tissue_mm2:.2}")) " mm²" }
                            div.s { (format!("{:.1} % of the slide", 100.0 * r.tissue_fraction)) }
                        }
                        div.card {
                            div.k { "Patches analysed" }
                            div.v { (count(analysed)) }
                            div.s { (count(skipped)) " skipped (too little tissue)" }
                        }
                        div.card {
                            div.k { (pos_name) " ≥ " (threshold) }
                            div.v { (format!("{pos_area:.2}")) " mm²" }
                            div.s { (share(pos_area)) " of the tissue" }
                        }
                    }
                    table {
                        thead { tr { th { "Class" } th.num { "Area ≥ " (threshold) " (mm²)" } th.num { "Share of tissue" } th.num { "Mean probability" } th.num { "Median" } th.num { "Regions" } } }
                        tbody {
                            @for c in classes {
                                @let a = c.area_above_threshold_mm2;
                                tr {
                                    td { (c.name) }
                                    td.num { (format!("{a:.3}")) }
                                    td.num { (share(a)) }
                                    td.num { (num(c.mean, 3)) }
                                    td.num { (num(c.percentiles.p50, 3)) }
                                    td.num { (c.regions) }
                                }
                            }
                        }
                    }
                    h3 { "Quality checks" }
                    @if warnings.is_empty() {
                        p.ok { "No warnings." }
                    } @else {
                        ul.warn { @for w in &warnings { li { (w) } } }
                    }
                }
                @if let Some(q) = qc {
                    section #qc {
                        h2 { "Slide quality" }
                        p { "Verdict: " span class=(format!("verdict verdict-{}", q.verdict)) { (q.verdict) } }
                        @if q.reasons.is_empty() {
                            p.ok { "No artefact over the verdict rules." }
                        } @else {
                            ul.warn { @for w in &q.reasons { li { (w) } } }
                        }
                        p.note {
                            @match q.mode {
                                crate::qc::QcMode::Exclude => { (q.patches_excluded) " patches with pen, blur, folds or edges over " (format!("{:.0}", qc_patch_max(q) * 100.0)) " % of their area are left out of the slide score, the top regions, the regions and the areas above (they stay in patches.csv, marked excluded); " (q.patches_flagged.saturating_sub(q.patches_excluded)) " more are marked (faint tissue only)." }
                                crate::qc::QcMode::Flag => { (q.patches_flagged) " patches have artefacts; --qc flag keeps them in every figure above (patches.csv marks them)." }
                                crate::qc::QcMode::Off => { "QC was off." }
                            }
                        }
                        table {
                            thead { tr { th { "Artefact" } th.num { "On tissue (mm²)" } th.num { "Share of tissue" } th.num { "Anywhere (mm²)" } } }
                            tbody {
                                @for k in &q.kinds {
                                    tr {
                                        td { span.swatch style=(format!("background:{}", kind_css(&k.kind))) {} " " (k.kind) }
                                        td.num { (format!("{:.3}", k.tissue_area_mm2)) }
                                        td.num { (format!("{:.1} %", k.tissue_pct)) }
                                        td.num { (format!("{:.3}", k.area_mm2)) }
                                    }
                                }
                            }
                        }
                        p.note {
                            @if let Some(why) = &q.focus.not_measured {
                                "Focus not measured: " (why) "."
                            } @else {
                                "Focus measured on " (q.focus.tiles) " " (q.focus.source.clone().unwrap_or_default()) " at "
                                (num(q.focus.um_px, 2)) " µm/px (strong-edge sharpness); the slide's reference (its sharpest tissue) "
                                (num(q.focus.reference, 3)) "; " (q.focus.blurred_tiles) " judged out of focus."
                            }
                        }
                        @if let Some(m) = &q.model {
                            p.note {
                                "The lab's QC model " code { (m.name) } @if let Some(v) = &m.version { " (version " (v) ")" }
                                " (SHA-256 " code { (m.sha256.get(..12).unwrap_or(&m.sha256)) "…" } ") ran on " (m.tiles) " tiles at "
                                (num(Some(m.spacing_um_px), 2)) " µm/px, beside the built-in detectors; it flagged "
                                (m.tissue_pct.iter().map(|(k, v)| format!("{k} {v:.1} %")).collect::<Vec<_>>().join(", "))
                                " of the tissue (its classes: "
                                (m.classes.iter().map(|c| format!("{} → {}", c.class, c.kind)).collect::<Vec<_>>().join(", ")) ")."
                            }
                        }
                        div.pair {
                            figure {
                                @if let Some(uri) = &qc_overlay {
                                    div.stack { img src=(uri) alt="Artefacts outlined on the thumbnail"; }
                                }
                                figcaption { "Artefacts on the thumbnail, tinted and outlined in their colours (table above)." }
                            }
                            @if !qc_crops.is_empty() {
                                div.qcregions {
                                    @for (reg, uri) in &qc_crops {
                                        figure {
                                            img src=(uri) alt=(format!("Artefact {}", reg.rank));
                                            figcaption { span.rank { (reg.rank) } " · " (reg.reason) br; "x " (reg.crop_level0.x) ", y " (reg.crop_level0.y) ", side " (reg.crop_level0.side) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                section #maps {
                    h2 { "Tissue and heatmap" }
                    div.pair {
                        figure {
                            div.stack {
                                img src=(pics.thumb_uri) alt="Slide thumbnail";
                                (PreEscaped(svg_layer(pics.view, &pics.outline, &pics.markers)))
                            }
                            figcaption { "Slide thumbnail; dashed line: tissue outline; numbered boxes: the top regions below." }
                        }
                        figure {
                            @if let Some(uri) = &pics.overlay_uri {
                                div.stack {
                                    img src=(uri) alt=(format!("Heatmap of {pos_name}"));
                                    (PreEscaped(svg_layer(pics.view, &pics.outline, "")))
                                }
                                @if let Some(cell) = r.parameters.class_map_cell_um {
                                    figcaption { "Probability of " (pos_name) " from the dense model's class map (cells of " (cell) " µm, in tissue); cells at or above the threshold outlined in white." }
                                } @else {
                                    figcaption { "Probability of " (pos_name) " per patch; patches at or above the threshold outlined in white." }
                                }
                            } @else {
                                p.note { "No heatmap: no patch was analysed." }
                            }
                        }
                    }
                    (PreEscaped(svg::legend(&pos_name, threshold)))
                }
                section #regions {
                    h2 { "Top regions" }
                    @if regions.is_empty() {
                        p.note { "No region: no patch was analysed." }
                    } @else {
                        p.note {
                            "The " (regions.len()) " patches with the highest probability of " (pos_name)
                            ", at least one crop apart. Each crop is " (region_px) " × " (region_px)
                            " pixels at " (spacing) " µm/px (" (format!("{:.0}", region_px as f64 * spacing)) " µm), centred on the patch. "
                            "Coordinates are level-0 pixels, as QuPath shows them."
                        }
                        div.regions {
                            @for (reg, uri) in &regions {
                                figure {
                                    img src=(uri.clone().unwrap_or_default()) alt=(format!("Region {}", reg.rank));
                                    figcaption {
                                        span.rank { (reg.rank) } " · score " (num(Some(reg.score), 3))
                                        @if reg.score < threshold as f64 { " (below threshold)" }
                                        br;
                                        "centre (" (count(reg.centre_level0.x.max(0) as u64)) ", " (count(reg.centre_level0.y.max(0) as u64)) ")"
                                        br;
                                        "box x " (reg.crop_level0.x) ", y " (reg.crop_level0.y) ", side " (reg.crop_level0.side)
                                    }
                                }
                            }
                        }
                    }
                }
                section #histograms {
                    h2 { "Patch probabilities" }
                    div.hists {
                        @for (k, n) in f.class_names.iter().enumerate() {
                            (PreEscaped(svg::histogram(n, &f.probs[k], threshold, f.class_color(k))))
                        }
                    }
                }
                section #method {
                    h2 { "Method and provenance" }
                    table.kv {
                        tr { th { "Tissue detection" } td { (tissue.method) br; span.note {
                            "mask at " (shown(&tissue.mask_um_px)) " µm/px; Otsu threshold " (tissue.otsu_threshold)
                            "; median " (tissue.median) ", closing " (tissue.closing)
                            "; objects < " (shown(&tissue.min_object_mm2)) " mm² and holes < " (shown(&tissue.max_hole_mm2)) " mm² removed" } } }
                        tr { th { "Patches" } td {
                            (patch_px) " × " (patch_px) " px at " (spacing) " µm/px (" (format!("{:.0}", patch_px as f64 * spacing)) " µm); stride "
                            (stride_px) " px; kept when ≥ " (format!("{:.0}", 100.0 * params.min_tissue_fraction)) " % tissue; read at level "
                            (params.read_level) " (" (params.read_side) " px, " (params.patch_side_level0) " level-0 px)" } }
                        @if let Some(stain) = &params.stain_normalisation {
                            tr { th { "Stain normalisation" } td {
                                "Reinhard, per patch, to Lab mean " (shown(&stain.lab_mean)) " and standard deviation " (shown(&stain.lab_std)) } }
                        }
                        tr { th { "Threshold" } td { (threshold) " (areas, outlines, regions)" } }
                        tr { th { "Slide score" } td { (score.method) ": " (score.description) " of " (pos_name) } }
                        tr { th { "Slide reader" } td { (reader.name) " " (reader.version) @if let Some(l) = &reader.library { span.mono { " (" (l.display()) ")" } } } }
                        tr { th { "Inference" } td { (inference.backend) " " (inference.version) " on " (inference.device) "; batch size " (params.batch_size) } }
                        tr { th { "Timings" } td {
                            "total " (num(timing("total_s"), 2)) " s — open and load " (num(timing("open_and_load_s"), 2))
                            " s, tissue " (num(timing("tissue_s"), 2)) " s, inference " (num(timing("inference_s"), 2))
                            " s, outputs " (num(timing("outputs_s"), 2)) " s" } }
                        tr { th { "Run key" } td.mono { (r.run_key) } }
                        tr { th { "Files" } td {
                            a href="result.json" { "result.json" } " · " a href="patches.csv" { "patches.csv" } " · "
                            a href=(geojson) { (geojson) } " (QuPath) · " a href="tissue-mask.png" { "tissue-mask.png" }
                            @for n in &f.class_names { " · " a href=(format!("heatmap-{n}.png")) { "heatmap-" (n) ".png" } }
                        } }
                    }
                }
                section #identifiers {
                    h2 { "Patient identifiers" }
                    @if label_included {
                        p.disclaimer { "This report contains the slide's label and macro images, included at the user's request (--include-label). They may show patient names and barcodes: handle it as patient-identifiable." }
                        div.ids { @for (file, uri) in &ids { img src=(uri) alt=(file); } }
                        @if ids.is_empty() { p.note { "The slide has no label or macro image." } }
                    } @else {
                        p.note { "The slide's label and macro images are not included: they may carry patient names and barcodes. Run with --include-label to add them." }
                    }
                }
                footer {
                    "Tessera " (r.tessera_version) ". Everything above comes from the files in this folder; "
                    code { "tessera report <folder>" } " rebuilds this page. " (DISCLAIMER)
                }
            }
        }
    };
    Ok(page.into_string())
}

/// The share of a patch an artefact must cover to mark it, from the record's parameters.
fn qc_patch_max(q: &crate::results::QcRecord) -> f64 {
    q.params
        .get("patch_max_fraction")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.25)
}

/// A kind's colour (by its name in result.json) as CSS.
fn kind_css(name: &str) -> String {
    let c = crate::qc::Kind::ALL
        .iter()
        .find(|k| k.name() == name)
        .map_or([128, 128, 128], |k| k.color());
    format!("rgb({},{},{})", c[0], c[1], c[2])
}

/// Writes `report.html` in the slide output folder `dir` (atomically).
pub fn write_slide_report(dir: &Path) -> Result<()> {
    let page = slide_report_html(dir)?;
    crate::output::write_bytes(&dir.join("report.html"), page.as_bytes())
}

/// Builds the cohort page for the summary rows of `out`.
pub fn index_html(out: &Path, rows: &[SlideStatus]) -> String {
    let version = crate::VERSION;
    let failed = rows.iter().filter(|s| s.status == Status::Failed).count();
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy" content=(CSP_INDEX);
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Cohort overview — " (rows.len()) " slides" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    div.brand { span { "Tessera · cohort overview" } span { "Tessera " (version) } }
                    h1 { (rows.len()) " slides · " (failed) " failed" }
                    p.disclaimer { (DISCLAIMER) }
                    p.note { "Failures first, then by slide. Click a column heading to sort." }
                }
                table #slides {
                    thead { tr {
                        th data-sort="text" { "Status" }
                        th data-sort="text" { "Slide" }
                        th data-sort="text" { "Slide quality" }
                        th.num data-sort="num" { "Slide score" }
                        th.num data-sort="num" { "Tissue (mm²)" }
                        th.num data-sort="num" { "Patches" }
                        th data-sort="text" { "Warnings / reason" }
                    } }
                    tbody {
                        @for s in rows {
                            @let report = out.join(&s.name).join("report.html");
                            @let warnings = slide_warnings(out, s);
                            tr {
                                td class=(format!("status-{}", s.status)) data-v=(s.status) { (s.status) }
                                td data-v=(s.name) {
                                    @if report.exists() && s.status != Status::Failed {
                                        a href=(format!("{}/report.html", url_component(&s.name))) { (s.name) }
                                    } @else { (s.name) }
                                    br; span.note.mono { (s.path.display()) }
                                }
                                td data-v=(s.qc_verdict.map(|v| v.to_string()).unwrap_or_default()) {
                                    @if let Some(v) = s.qc_verdict {
                                        span class=(format!("verdict verdict-{v}")) { (v) }
                                        @if let Some(n) = s.qc_excluded.filter(|n| *n > 0) { br; span.note { (n) " patches excluded" } }
                                    } @else { "—" }
                                }
                                td.num data-v=(s.slide_score.map(|v| v.to_string()).unwrap_or_default()) {
                                    (s.slide_score.map_or("—".into(), |v| format!("{v:.3}")))
                                    @if let Some(c) = &s.positive_class { br; span.note { (c) } }
                                }
                                td.num data-v=(s.tissue_mm2.map(|v| v.to_string()).unwrap_or_default()) {
                                    (s.tissue_mm2.map_or("—".into(), |v| format!("{v:.2}")))
                                }
                                td.num data-v=(s.patches.map(|v| v.to_string()).unwrap_or_default()) {
                                    (s.patches.map_or("—".into(), |v| count(v as u64)))
                                }
                                td data-v=(warnings) { (warnings) }
                            }
                        }
                    }
                }
                footer { "Tessera " (version) ". From summary.json and each slide's result.json; " code { "tessera report OUT" } " rebuilds this page." }
                script { (PreEscaped(SORT_SCRIPT)) }
            }
        }
    };
    page.into_string()
}

/// The reason for failed slides; warnings (from result.json) for the others.
fn slide_warnings(out: &Path, s: &SlideStatus) -> String {
    if s.status == Status::Failed || s.status == Status::Locked {
        return s.reason.clone();
    }
    match SlideResult::read(&out.join(&s.name).join("result.json")) {
        Ok(r) => r.warnings.join("; "),
        Err(_) => s.reason.clone(),
    }
}

/// Percent-encodes a folder name for a relative link.
fn url_component(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Writes `OUT/index.html` (atomically).
pub fn write_index(out: &Path, rows: &[SlideStatus]) -> Result<()> {
    let page = index_html(out, rows);
    crate::output::write_bytes(&out.join("index.html"), page.as_bytes())
}

/// `tessera report --include-label` on a folder analysed without it: reads the label and macro
/// images from the slide named in result.json, writes them beside the report and records them.
pub fn add_identifier_images(dir: &Path, slide: &crate::config::SlideConfig) -> Result<()> {
    let rpath = dir.join("result.json");
    let mut result = SlideResult::read(&rpath)?;
    if result.identifiers.label_included {
        return Ok(());
    }
    let opened = crate::slide::Slide::open_with(&result.slide.path, slide).map_err(|e| {
        report_err(
            dir,
            format!("--include-label needs the slide, which cannot be opened: {e}"),
        )
    })?;
    let files = crate::output::write_identifier_images(dir, &opened)?;
    result.identifiers = Identifiers {
        label_included: true,
        images: files,
    };
    crate::output::write_bytes(&rpath, result.to_json()?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_get_thin_space_separators() {
        assert_eq!(count(7), "7");
        assert_eq!(count(1234), "1\u{202f}234");
        assert_eq!(count(1234567), "1\u{202f}234\u{202f}567");
    }

    #[test]
    fn folder_names_are_link_safe() {
        assert_eq!(url_component("a b#?.svs"), "a%20b%23%3F.svs");
    }
}
