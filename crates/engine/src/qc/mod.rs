//! Slide quality control: pen ink, out-of-focus tissue, folds, faint tissue and edges.
//!
//! In: the thumbnail the tissue stage read (RGB at the tissue mask's scale, about 8 µm/px),
//! the [`TissueMask`] on the same raster, and focus scores of tissue tiles (from the patches
//! during `analyze`, from tiles read for the purpose in `tessera qc`). Out: a [`QcMap`] — one
//! byte of artefact flags per mask pixel, so pixel `(mx, my)` covers level-0 pixels
//! `[mx·d, (mx+1)·d) × [my·d, (my+1)·d)` with `d` the mask's downsample, exactly as the tissue
//! mask — its areas per [`Kind`], each patch's artefact fractions, and a [`Verdict`] with its
//! reasons by [`VerdictRules`].
//!
//! The detectors, each with its method and sources in its module: [`pen`], [`focus`],
//! [`stain`] (folds and faint tissue), [`edge`]; a lab's own dense QC model adds its classes
//! through [`learned`]. Every threshold is a field of [`QcParams`]
//! with a documented default.

pub mod edge;
pub mod focus;
pub mod learned;
pub mod pen;
pub mod stain;

use image::{GrayImage, RgbImage};

use crate::geom::Level0Px;
use crate::tissue::TissueMask;

/// What QC does with the patches it finds artefacts in (`--qc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QcMode {
    /// Artefact patches stay in patches.csv, marked, but not in the slide score, the top
    /// regions, the thresholded regions or the per-class figures (default).
    #[default]
    Exclude,
    /// Artefact patches are marked and kept in every figure.
    Flag,
    /// No QC.
    Off,
}

impl std::str::FromStr for QcMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exclude" => Ok(Self::Exclude),
            "flag" => Ok(Self::Flag),
            "off" => Ok(Self::Off),
            _ => Err(format!("--qc takes exclude, flag or off, not {s:?}")),
        }
    }
}

impl std::fmt::Display for QcMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Exclude => "exclude",
            Self::Flag => "flag",
            Self::Off => "off",
        })
    }
}

/// An artefact kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Pen ink.
    Pen,
    /// Out of focus.
    Blur,
    /// Fold, thick or over-stained tissue.
    Fold,
    /// Faint or under-stained tissue.
    Faint,
    /// Coverslip or slide edge.
    Edge,
}

impl Kind {
    /// Every kind, in flag order.
    pub const ALL: [Kind; 5] = [Kind::Pen, Kind::Blur, Kind::Fold, Kind::Faint, Kind::Edge];

    /// Its bit in a [`QcMap`] pixel.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Its name in result.json and patches.csv (`pen`, `blur`, …).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pen => "pen",
            Kind::Blur => "blur",
            Kind::Fold => "fold",
            Kind::Faint => "faint",
            Kind::Edge => "edge",
        }
    }

    /// Its QuPath classification (`Pen`, `Blur`, …).
    pub fn qupath_class(self) -> &'static str {
        match self {
            Kind::Pen => "Pen",
            Kind::Blur => "Blur",
            Kind::Fold => "Fold",
            Kind::Faint => "Faint",
            Kind::Edge => "Edge",
        }
    }

    /// Its colour in qc-mask.png, the overlay, the report and QuPath.
    pub fn color(self) -> [u8; 3] {
        match self {
            Kind::Pen => [0, 160, 80],
            Kind::Blur => [230, 140, 0],
            Kind::Fold => [200, 0, 60],
            Kind::Faint => [80, 140, 230],
            Kind::Edge => [120, 60, 160],
        }
    }

    /// Whether `--qc exclude` drops patches of this kind (faint tissue is only marked: the
    /// model still sees tissue there).
    pub fn excludes(self) -> bool {
        !matches!(self, Kind::Faint)
    }
}

/// When a slide passes, needs review or needs rescanning. Shares are percent of tissue.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerdictRules {
    /// Rescan when more than this share is out of focus (default 10 %).
    pub rescan_blur_pct: f64,
    /// Review when more than this share is out of focus (default 2 %).
    pub review_blur_pct: f64,
    /// Review when pen covers more than this share (default 1 %).
    pub review_pen_pct: f64,
    /// Rescan when pen covers more than this share: ink over most of the tissue, clean the
    /// coverslip (default 50 %).
    pub rescan_pen_pct: f64,
    /// Review when folds cover more than this share (default 5 %).
    pub review_fold_pct: f64,
    /// Review when faint tissue covers more than this share (default 50 %).
    pub review_faint_pct: f64,
    /// Review when an edge crosses more than this share (default 1 %).
    pub review_edge_pct: f64,
    /// When more than this share is out of focus, the reason says the whole scan is soft
    /// (default 50 %).
    pub soft_scan_pct: f64,
}

impl Default for VerdictRules {
    fn default() -> Self {
        Self {
            rescan_blur_pct: 10.0,
            review_blur_pct: 2.0,
            review_pen_pct: 1.0,
            rescan_pen_pct: 50.0,
            review_fold_pct: 5.0,
            review_faint_pct: 50.0,
            review_edge_pct: 1.0,
            soft_scan_pct: 50.0,
        }
    }
}

/// Every QC setting. `--qc-config FILE` reads a JSON object of the same shape (any field left
/// out keeps its default; an unknown field is an error), e.g.
/// `{"rules": {"rescan_blur_pct": 20}, "focus": {"um_px": 0.5}}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QcParams {
    /// What happens to artefact patches.
    pub mode: QcMode,
    /// A patch is marked with a kind when more than this share of it has it (default 0.25).
    pub patch_max_fraction: f64,
    /// Pen detector.
    pub pen: pen::PenParams,
    /// Focus measure.
    pub focus: focus::FocusParams,
    /// Fold and faint detectors.
    pub stain: stain::StainParams,
    /// Edge detector.
    pub edge: edge::EdgeParams,
    /// A lab's QC model (`--qc-model`), where one is given.
    pub model: learned::QcModelParams,
    /// Verdict rules.
    pub rules: VerdictRules,
}

impl QcParams {
    /// Reads `--qc-config`'s JSON file.
    pub fn read(path: &std::path::Path) -> crate::error::Result<QcParams> {
        let text =
            std::fs::read_to_string(path).map_err(|e| crate::error::Error::from_io(path, e))?;
        serde_json::from_str(&text).map_err(|e| crate::error::Error::InvalidInput {
            path: path.into(),
            reason: format!("not a QC configuration: {e}"),
        })
    }
}

impl Default for QcParams {
    fn default() -> Self {
        Self {
            mode: QcMode::Exclude,
            patch_max_fraction: 0.25,
            pen: Default::default(),
            focus: Default::default(),
            stain: Default::default(),
            edge: Default::default(),
            model: Default::default(),
            rules: Default::default(),
        }
    }
}

/// The slide's verdict.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// No rule fired.
    Pass,
    /// A pathologist should look at the artefacts before trusting the analysis.
    Review,
    /// Scan the glass again.
    Rescan,
}

impl Verdict {
    /// `pass`, `review` or `rescan`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Review => "review",
            Verdict::Rescan => "rescan",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bit of a [`QcMap`] pixel that says it is tissue (the tissue mask, kept beside the
/// artefacts so that shares of tissue can be measured after the mask itself is dropped).
pub const TISSUE: u8 = 1 << 7;

/// Artefact flags on the tissue mask's raster.
#[derive(Debug, Clone, PartialEq)]
pub struct QcMap {
    /// One byte per pixel, row-major: [`Kind::bit`]s and [`TISSUE`].
    pub flags: Vec<u8>,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Level-0 pixels per QC pixel.
    pub downsample: f64,
    /// µm per QC pixel (level-0 µm/px × downsample).
    pub um_px: f64,
    /// The slide's median tissue optical density, which folds are judged against.
    pub median_tissue_od: f32,
}

/// The thumbnail detectors (pen, fold, faint, edge) on `thumb`, the tissue stage's thumbnail
/// on `mask`'s raster, at `um_px` µm per pixel.
pub fn detect(thumb: &RgbImage, mask: &TissueMask, um_px: f64, params: &QcParams) -> QcMap {
    let (w, h) = (thumb.width() as usize, thumb.height() as usize);
    // The flags fill in detector by detector, each one's temporaries dropped before the next
    // (a 4096² thumbnail costs 17 MB per byte per pixel).
    let mut flags: Vec<u8> = if mask.pixels.len() == w * h {
        mask.pixels
            .iter()
            .map(|&p| if p > 0 { TISSUE } else { 0 })
            .collect()
    } else {
        vec![0; w * h]
    };
    let has =
        |flags: &[u8], bits: u8| -> Vec<bool> { flags.iter().map(|&f| f & bits != 0).collect() };
    for (f, c) in flags.iter_mut().zip(pen::detect(thumb, um_px, &params.pen)) {
        if c != 0 {
            *f |= Kind::Pen.bit();
        }
    }
    let edges = edge::detect(thumb, &has(&flags, Kind::Pen.bit()), um_px, &params.edge);
    for (f, e) in flags.iter_mut().zip(edges) {
        if e {
            *f |= Kind::Edge.bit();
        }
    }
    let (fold, faint, median) = stain::detect(
        thumb,
        &has(&flags, TISSUE),
        &has(&flags, Kind::Pen.bit() | Kind::Edge.bit()),
        um_px,
        &params.stain,
    );
    for ((f, a), b) in flags.iter_mut().zip(fold).zip(faint) {
        if a {
            *f |= Kind::Fold.bit();
        }
        if b {
            *f |= Kind::Faint.bit();
        }
    }
    QcMap {
        flags,
        width: w,
        height: h,
        downsample: mask.downsample,
        um_px,
        median_tissue_od: median,
    }
}

impl QcMap {
    /// Empties the cells of `map` (a class map in level-0 cells) whose centre lies on an
    /// artefact that `--qc exclude` leaves out ([`Kind::excludes`]): a dense model's class
    /// areas, regions and pictures then leave artefacts out as its patch figures do.
    pub fn mask_cells(&self, map: &mut crate::stitch::Heatmap) {
        let bits = Kind::ALL
            .iter()
            .filter(|k| k.excludes())
            .fold(0u8, |a, k| a | k.bit());
        let (w, d) = (map.width as usize, self.downsample);
        if w == 0 || d <= 0.0 {
            return;
        }
        for (i, v) in map.values.iter_mut().enumerate() {
            let x = (((i % w) as f64 + 0.5) * map.cell_l0 / d) as usize;
            let y = (((i / w) as f64 + 0.5) * map.cell_l0 / d) as usize;
            if x < self.width && y < self.height && self.flags[y * self.width + x] & bits != 0 {
                *v = None;
            }
        }
    }

    /// Marks the level-0 square at `at` with side `side` as `kind`.
    pub fn paint(&mut self, kind: Kind, at: Level0Px, side: u64) {
        let d = self.downsample;
        let x0 = (at.x.max(0) as f64 / d).floor() as usize;
        let y0 = (at.y.max(0) as f64 / d).floor() as usize;
        let x1 = (((at.x.max(0) as u64 + side) as f64 / d).ceil() as usize).min(self.width);
        let y1 = (((at.y.max(0) as u64 + side) as f64 / d).ceil() as usize).min(self.height);
        for y in y0..y1 {
            for x in x0..x1 {
                self.flags[y * self.width + x] |= kind.bit();
            }
        }
    }

    /// The share of the level-0 square at `at` (side `side`) flagged with each kind, in
    /// [`Kind::ALL`] order, each pixel weighted by its overlap with the square.
    pub fn fractions_in(&self, at: Level0Px, side: u64) -> [f64; 5] {
        let mut out = [0f64; 5];
        let area = self.cover(at, side, |f, overlap| {
            for (k, kind) in Kind::ALL.iter().enumerate() {
                if f & kind.bit() != 0 {
                    out[k] += overlap;
                }
            }
        });
        if area <= 0.0 {
            return [0.0; 5];
        }
        out.map(|v| (v / area).clamp(0.0, 1.0))
    }

    /// The share of the level-0 square at `at` (side `side`) that is tissue, weighted as
    /// [`QcMap::fractions_in`].
    pub fn tissue_in(&self, at: Level0Px, side: u64) -> f64 {
        let mut tissue = 0.0;
        let area = self.cover(at, side, |f, overlap| {
            if f & TISSUE != 0 {
                tissue += overlap;
            }
        });
        if area <= 0.0 {
            return 0.0;
        }
        (tissue / area).clamp(0.0, 1.0)
    }

    /// Calls `each(flags, overlap)` for every non-zero raster pixel the level-0 square at `at`
    /// (side `side`) overlaps, the overlap in raster pixels; returns the square's area in
    /// raster pixels.
    fn cover(&self, at: Level0Px, side: u64, mut each: impl FnMut(u8, f64)) -> f64 {
        let d = self.downsample;
        let (x0, y0) = (at.x as f64 / d, at.y as f64 / d);
        let (x1, y1) = (x0 + side as f64 / d, y0 + side as f64 / d);
        let area = (x1 - x0) * (y1 - y0);
        if area <= 0.0 {
            return area;
        }
        let cx0 = x0.floor().max(0.0) as usize;
        let cy0 = y0.floor().max(0.0) as usize;
        let cx1 = (x1.ceil().max(0.0) as usize).min(self.width);
        let cy1 = (y1.ceil().max(0.0) as usize).min(self.height);
        for my in cy0..cy1 {
            let oy = (y1.min(my as f64 + 1.0) - y0.max(my as f64)).max(0.0);
            for mx in cx0..cx1 {
                let f = self.flags[my * self.width + mx];
                if f == 0 {
                    continue;
                }
                let ox = (x1.min(mx as f64 + 1.0) - x0.max(mx as f64)).max(0.0);
                each(f, ox * oy);
            }
        }
        area
    }

    /// Pixels with `kind`, and those of them on tissue.
    pub fn count(&self, kind: Kind) -> (usize, usize) {
        let mut all = 0;
        let mut on_tissue = 0;
        for &f in &self.flags {
            if f & kind.bit() != 0 {
                all += 1;
                on_tissue += usize::from(f & TISSUE != 0);
            }
        }
        (all, on_tissue)
    }

    /// Tissue pixels.
    pub fn tissue_pixels(&self) -> usize {
        self.flags.iter().filter(|&&f| f & TISSUE != 0).count()
    }

    /// The mask of one kind as a 0/255 greyscale image.
    pub fn kind_image(&self, kind: Kind) -> GrayImage {
        let px = self
            .flags
            .iter()
            .map(|&f| if f & kind.bit() != 0 { 255 } else { 0 })
            .collect();
        GrayImage::from_raw(self.width as u32, self.height as u32, px).unwrap_or_default()
    }

    /// `qc-mask.png`'s picture: each pixel in the colour of its first kind ([`Kind::ALL`]
    /// order) among those that exclude patches, black elsewhere (faint tissue, which only
    /// marks patches, is in the GeoJSON and result.json).
    pub fn to_image(&self) -> RgbImage {
        let mut img = RgbImage::new(self.width as u32, self.height as u32);
        for (i, &f) in self.flags.iter().enumerate() {
            if let Some(k) = Kind::ALL.iter().find(|k| f & k.bit() != 0 && k.excludes()) {
                img.put_pixel(
                    (i % self.width) as u32,
                    (i / self.width) as u32,
                    image::Rgb(k.color()),
                );
            }
        }
        img
    }
}

/// A kind's figures for a slide.
#[derive(Debug, Clone, PartialEq)]
pub struct KindFigures {
    /// The kind.
    pub kind: Kind,
    /// Area flagged anywhere, mm².
    pub area_mm2: f64,
    /// Area flagged on tissue, mm².
    pub tissue_mm2: f64,
    /// Share of the tissue flagged, percent.
    pub tissue_pct: f64,
}

/// Per-kind figures of `map` at level-0 `mpp` (x, y).
pub fn figures(map: &QcMap, mpp: (f64, f64)) -> Vec<KindFigures> {
    let px_mm2 = map.downsample * mpp.0 * map.downsample * mpp.1 / 1e6;
    let tissue_px = map.tissue_pixels();
    Kind::ALL
        .iter()
        .map(|&kind| {
            let (all, on) = map.count(kind);
            KindFigures {
                kind,
                area_mm2: all as f64 * px_mm2,
                tissue_mm2: on as f64 * px_mm2,
                tissue_pct: if tissue_px == 0 {
                    0.0
                } else {
                    on as f64 * 100.0 / tissue_px as f64
                },
            }
        })
        .collect()
}

/// The verdict and its reasons, from the per-kind figures, whether tissue was found and
/// whether focus could be measured (`None`: it could not, with the reason).
pub fn verdict(
    figures: &[KindFigures],
    tissue_found: bool,
    focus: Result<&focus::Assessment, &str>,
    rules: &VerdictRules,
) -> (Verdict, Vec<String>) {
    let mut v = Verdict::Pass;
    let mut reasons = Vec::new();
    let mut raise = |to: Verdict, why: String| {
        v = v.max(to);
        reasons.push(format!("{to}: {why}"));
    };
    if !tissue_found {
        raise(
            Verdict::Rescan,
            "no tissue found: check that the scanner found the section".into(),
        );
        return (v, reasons);
    }
    let pct = |k: Kind| {
        figures
            .iter()
            .find(|f| f.kind == k)
            .map_or(0.0, |f| f.tissue_pct)
    };
    let (blur, pen) = (pct(Kind::Blur), pct(Kind::Pen));
    match focus {
        Err(why) => raise(Verdict::Review, format!("focus not measured: {why}")),
        Ok(a) => {
            if blur > rules.rescan_blur_pct {
                raise(
                    Verdict::Rescan,
                    if blur > rules.soft_scan_pct {
                        format!(
                            "{blur:.1}% of the tissue is out of focus: the whole scan is soft \
                             (focus reference {})",
                            a.reference.map_or("not set".into(), |r| format!("{r:.3}"))
                        )
                    } else {
                        format!(
                            "{blur:.1}% of the tissue is out of focus (rule: more than {}%)",
                            rules.rescan_blur_pct
                        )
                    },
                );
            } else if blur > rules.review_blur_pct {
                raise(
                    Verdict::Review,
                    format!(
                        "{blur:.1}% of the tissue is out of focus (rule: more than {}%)",
                        rules.review_blur_pct
                    ),
                );
            }
        }
    }
    if pen > rules.rescan_pen_pct {
        raise(
            Verdict::Rescan,
            format!("pen ink covers {pen:.1}% of the tissue: clean the coverslip and rescan"),
        );
    } else if pen > rules.review_pen_pct {
        raise(
            Verdict::Review,
            format!(
                "pen ink over {pen:.1}% of the tissue (rule: more than {}%)",
                rules.review_pen_pct
            ),
        );
    }
    for (kind, limit, what) in [
        (Kind::Fold, rules.review_fold_pct, "folded or over-stained"),
        (
            Kind::Faint,
            rules.review_faint_pct,
            "faint or under-stained",
        ),
        (
            Kind::Edge,
            rules.review_edge_pct,
            "crossed by a coverslip or slide edge or under an air bubble",
        ),
    ] {
        let p = pct(kind);
        if p > limit {
            raise(
                Verdict::Review,
                format!("{p:.1}% of the tissue is {what} (rule: more than {limit}%)"),
            );
        }
    }
    (v, reasons)
}

/// A patch's QC: its artefact shares, its focus score, and what `--qc` made of them.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchQc {
    /// Share of the patch with each kind, in [`Kind::ALL`] order.
    pub fractions: [f64; 5],
    /// The patch's focus score (`None`: not measured).
    pub focus: Option<f32>,
    /// The kinds over [`QcParams::patch_max_fraction`], as [`Kind::bit`]s.
    pub kinds: u8,
    /// Left out of the slide's figures (`--qc exclude` and a kind that excludes).
    pub excluded: bool,
}

impl PatchQc {
    /// Judges the level-0 square at `at` (side `side`) on `map`.
    pub fn judge(
        map: &QcMap,
        at: Level0Px,
        side: u64,
        focus: Option<f32>,
        params: &QcParams,
    ) -> PatchQc {
        let fractions = map.fractions_in(at, side);
        let mut kinds = 0u8;
        for (k, kind) in Kind::ALL.iter().enumerate() {
            if fractions[k] > params.patch_max_fraction {
                kinds |= kind.bit();
            }
        }
        let excluded = params.mode == QcMode::Exclude
            && Kind::ALL
                .iter()
                .any(|k| kinds & k.bit() != 0 && k.excludes());
        PatchQc {
            fractions,
            focus,
            kinds,
            excluded,
        }
    }

    /// `ok`, `flagged` or `excluded`.
    pub fn status(&self) -> &'static str {
        if self.excluded {
            "excluded"
        } else if self.kinds != 0 {
            "flagged"
        } else {
            "ok"
        }
    }

    /// The kinds over the limit with their shares, e.g. `pen 62%; blur 100%` (empty: none).
    pub fn reason(&self) -> String {
        Kind::ALL
            .iter()
            .enumerate()
            .filter(|(_, k)| self.kinds & k.bit() != 0)
            .map(|(i, k)| format!("{} {:.0}%", k.name(), self.fractions[i] * 100.0))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// How focus was measured on a slide, and what came of it.
#[derive(Debug, Clone, PartialEq)]
pub struct FocusOutcome {
    /// The µm/px focus was measured at.
    pub um_px: f64,
    /// What was measured: `patches` (during analyze) or `focus tiles` (`tessera qc`).
    pub source: &'static str,
    /// The verdict over the tiles.
    pub assessment: focus::Assessment,
}

/// Everything QC concluded about a slide.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Per-kind figures.
    pub figures: Vec<KindFigures>,
    /// Focus, or why it could not be measured.
    pub focus: Result<FocusOutcome, String>,
    /// The verdict.
    pub verdict: Verdict,
    /// Its reasons, each starting with the verdict it raised.
    pub reasons: Vec<String>,
}

/// Finishes QC on `map`: paints the blurred tiles of `focus` (`Ok((tiles, µm/px, source))`,
/// or why focus was not measured), measures every kind against the tissue, and judges.
pub fn finish(
    map: &mut QcMap,
    focus: Result<(&[focus::FocusTile], f64, &'static str), String>,
    mpp: (f64, f64),
    params: &QcParams,
) -> Outcome {
    let focus = focus.and_then(|(tiles, um_px, source)| {
        let scores: Vec<Option<f32>> = tiles.iter().map(|t| t.score).collect();
        let assessment = focus::assess(&scores, &params.focus);
        if assessment.measured == 0 {
            return Err("no tissue tile had enough contrast to judge".to_string());
        }
        for (t, &b) in tiles.iter().zip(&assessment.blurred) {
            if b {
                map.paint(Kind::Blur, t.at, t.side);
            }
        }
        Ok(FocusOutcome {
            um_px,
            source,
            assessment,
        })
    });
    // Blur only counts on tissue: clear it elsewhere (a patch or tile reaches past the mask).
    for f in map.flags.iter_mut() {
        if *f & TISSUE == 0 {
            *f &= !Kind::Blur.bit();
        }
    }
    let figures = figures(map, mpp);
    let tissue_found = map.tissue_pixels() > 0;
    let (verdict, reasons) = verdict(
        &figures,
        tissue_found,
        focus
            .as_ref()
            .map(|f| &f.assessment)
            .map_err(|e| e.as_str()),
        &params.rules,
    );
    Outcome {
        figures,
        focus,
        verdict,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures_with(kind: Kind, pct: f64) -> Vec<KindFigures> {
        Kind::ALL
            .iter()
            .map(|&k| KindFigures {
                kind: k,
                area_mm2: 0.0,
                tissue_mm2: 0.0,
                tissue_pct: if k == kind { pct } else { 0.0 },
            })
            .collect()
    }

    #[test]
    fn verdict_rules_and_patch_judgement() {
        let rules = VerdictRules::default();
        let sharp = focus::assess(&[Some(0.3); 10], &focus::FocusParams::default());
        let v = |k, pct| verdict(&figures_with(k, pct), true, Ok(&sharp), &rules);
        assert_eq!(v(Kind::Pen, 0.5).0, Verdict::Pass);
        assert_eq!(v(Kind::Pen, 3.0).0, Verdict::Review);
        assert_eq!(v(Kind::Pen, 60.0).0, Verdict::Rescan);
        assert_eq!(v(Kind::Blur, 5.0).0, Verdict::Review);
        assert_eq!(v(Kind::Blur, 15.0).0, Verdict::Rescan);
        assert!(v(Kind::Blur, 80.0).1[0].contains("the whole scan is soft"));
        assert_eq!(v(Kind::Faint, 40.0).0, Verdict::Pass);
        let (none, why) = verdict(&figures_with(Kind::Pen, 0.0), false, Ok(&sharp), &rules);
        assert_eq!(none, Verdict::Rescan);
        assert!(why[0].contains("no tissue"));
        let (unmeasured, _) = verdict(&figures_with(Kind::Pen, 0.0), true, Err("why"), &rules);
        assert_eq!(unmeasured, Verdict::Review);

        // A 4 × 4 raster, 10 level-0 px per pixel: pen over the left half.
        let mut map = QcMap {
            flags: (0..16)
                .map(|i| {
                    if i % 4 < 2 {
                        Kind::Pen.bit() | TISSUE
                    } else {
                        TISSUE
                    }
                })
                .collect(),
            width: 4,
            height: 4,
            downsample: 10.0,
            um_px: 5.0,
            median_tissue_od: 0.3,
        };
        let params = QcParams::default();
        let left = PatchQc::judge(&map, Level0Px::new(0, 0), 20, None, &params);
        assert!(left.excluded && left.reason() == "pen 100%");
        let right = PatchQc::judge(&map, Level0Px::new(20, 0), 20, None, &params);
        assert_eq!(right.status(), "ok");
        let flag = QcParams {
            mode: QcMode::Flag,
            ..QcParams::default()
        };
        assert_eq!(
            PatchQc::judge(&map, Level0Px::new(0, 0), 20, None, &flag).status(),
            "flagged"
        );
        map.paint(Kind::Blur, Level0Px::new(20, 20), 20);
        let figures = figures(&map, (0.5, 0.5));
        assert_eq!(figures[1].tissue_pct, 25.0);
        // Tissue shares: all tissue; then the bottom row glass; a square half off the raster.
        assert_eq!(map.tissue_in(Level0Px::new(0, 0), 40), 1.0);
        for x in 0..4 {
            map.flags[12 + x] &= !TISSUE;
        }
        assert_eq!(map.tissue_in(Level0Px::new(0, 20), 20), 0.5);
        assert_eq!(map.tissue_in(Level0Px::new(0, 30), 10), 0.0);
        assert_eq!(map.tissue_in(Level0Px::new(30, 0), 20), 0.5);
    }
}
