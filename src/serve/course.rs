//! Courses: an instructor's ordered cases from the analysed slides, each with its question,
//! its ground truth, teaching notes and whether the AI's heatmap may be shown after the
//! answer. One course is one JSON document ([`Course`], `"format": "tessera-course/1"`): the
//! form it is stored in (the viewer's database), exported in and imported from, so that a
//! programme can share it.
//!
//! In: a course document (from the browser's editor or an imported file) and the catalogue of
//! analysed slides. Out: a validated [`Course`] (or a [`CourseError`] naming the case and the
//! reason), the trainee's view of it (no ground truth, no notes before the answer), the
//! expert regions of a case as a quiz [`Reference`], and teaching notes rendered from Markdown
//! to safe HTML. Coordinates: the ground truth's polygons are level-0 pixels of the slide
//! (QuPath's GeoJSON export).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::quiz::{self, Reference};

/// The format string of a course document.
pub const FORMAT: &str = "tessera-course/1";
/// Most cases in a course.
pub const MAX_CASES: usize = 500;
/// Largest course document accepted (bytes), expert annotations included.
pub const MAX_BYTES: usize = 32 << 20;

/// A course.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Course {
    /// Always [`FORMAT`].
    pub format: String,
    /// Its title (1–200 characters).
    pub title: String,
    /// What it teaches (Markdown).
    #[serde(default)]
    pub description: String,
    /// The cases, in order.
    pub cases: Vec<CourseCase>,
}

/// One case of a course.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CourseCase {
    /// A stable id (letters, digits, `-`, `_`; 16 hex digits when given on the first save),
    /// kept through edits, exports and imports: answers are kept per case id, so moving or
    /// removing cases never credits an answer to another case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The analysed slide: its id in the viewer (the output folder's name).
    pub slide: String,
    /// The slide's content fingerprint (SHA-256) when the course was made: an imported course
    /// whose slide differs is refused rather than scored against the wrong tissue. Filled in
    /// on save when absent.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// What the trainee is asked.
    pub question: Question,
    /// The answer it is scored against.
    pub truth: Truth,
    /// Teaching notes (Markdown), shown after the answer.
    #[serde(default)]
    pub notes: String,
    /// Whether the AI's heatmap is shown after the answer.
    #[serde(default)]
    pub show_ai: bool,
}

/// A case's question.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Question {
    /// Mark the regions of a class (expert regions of that label, or the AI's).
    Regions {
        /// The class (an expert label, or one of the model's classes).
        class: String,
    },
    /// Give the slide's diagnosis from a list.
    Diagnosis {
        /// The choices (2–30).
        options: Vec<String>,
    },
    /// Mark the k most suspicious areas (at most k marks).
    TopK {
        /// How many marks (1–20).
        k: u32,
        /// The class the regions are of (an expert label, or one of the model's classes).
        class: String,
    },
}

/// A case's ground truth.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Truth {
    /// Expert annotations: a QuPath GeoJSON export (polygons in level-0 pixels).
    Regions {
        /// The GeoJSON document.
        geojson: Value,
    },
    /// A slide-level label (one of the diagnosis question's options).
    Label {
        /// The correct choice.
        label: String,
    },
    /// No expert truth: scored against the AI's thresholded regions (the trainee is told).
    Ai,
}

/// Why a course is refused.
#[derive(Debug, thiserror::Error)]
pub enum CourseError {
    /// Not a course document at all.
    #[error("not a course document ({FORMAT}): {0}")]
    Parse(String),
    /// A field of the course itself.
    #[error("course: {0}")]
    Course(String),
    /// A field of one case (1-based number).
    #[error("case {number} ({slide}): {message}")]
    Case {
        /// 1-based.
        number: usize,
        /// Its slide id.
        slide: String,
        /// What is wrong.
        message: String,
    },
}

fn text_ok(s: &str, max: usize) -> bool {
    !s.trim().is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control)
}

/// Parses and checks a course document. `slide` says whether a slide id is analysed here and
/// gives its fingerprint.
pub fn parse(bytes: &[u8], slide: impl Fn(&str) -> Option<String>) -> Result<Course, CourseError> {
    if bytes.len() > MAX_BYTES {
        return Err(CourseError::Course(format!(
            "larger than {} MiB",
            MAX_BYTES >> 20
        )));
    }
    let mut c: Course =
        serde_json::from_slice(bytes).map_err(|e| CourseError::Parse(e.to_string()))?;
    if c.format != FORMAT {
        return Err(CourseError::Parse(format!("format {:?}", c.format)));
    }
    if !text_ok(&c.title, 200) {
        return Err(CourseError::Course(
            "a title has 1–200 characters, no control characters".into(),
        ));
    }
    if c.description.len() > 100_000 {
        return Err(CourseError::Course("the description is too long".into()));
    }
    if c.cases.is_empty() || c.cases.len() > MAX_CASES {
        return Err(CourseError::Course(format!(
            "a course has 1–{MAX_CASES} cases"
        )));
    }
    let mut ids = std::collections::BTreeSet::new();
    for (i, case) in c.cases.iter_mut().enumerate() {
        let id = match &case.id {
            Some(id) => id.clone(),
            None => super::random::random_bytes::<8>()
                .map(|b| super::random::hex(&b))
                .map_err(|e| CourseError::Course(e.to_string()))?,
        };
        let id_ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok || !ids.insert(id.clone()) {
            return Err(CourseError::Case {
                number: i + 1,
                slide: case.slide.clone(),
                message: format!(
                    "case id {id:?}: 1–64 letters, digits, '-' or '_', unique in the course"
                ),
            });
        }
        case.id = Some(id);
        let bad = |message: String| CourseError::Case {
            number: i + 1,
            slide: case.slide.clone(),
            message,
        };
        let Some(fp) = slide(&case.slide) else {
            return Err(bad("no analysed slide with this id in the viewer".into()));
        };
        match &case.fingerprint {
            Some(f) if *f != fp => {
                return Err(bad(
                    "the slide analysed here is not the one the course was made on \
                     (fingerprints differ)"
                        .into(),
                ))
            }
            Some(_) => {}
            None => case.fingerprint = Some(fp),
        }
        if case.notes.len() > 100_000 {
            return Err(bad("the notes are too long".into()));
        }
        match (&case.question, &case.truth) {
            (Question::Diagnosis { options }, Truth::Label { label }) => {
                if options.len() < 2
                    || options.len() > 30
                    || !options.iter().all(|o| text_ok(o, 200))
                {
                    return Err(bad(
                        "a diagnosis question has 2–30 options of 1–200 characters".into(),
                    ));
                }
                if !options.contains(label) {
                    return Err(bad(format!(
                        "the correct label {label:?} is not among the options"
                    )));
                }
            }
            (Question::Diagnosis { .. }, _) => {
                return Err(bad("a diagnosis question needs a label as its truth".into()))
            }
            (Question::Regions { class } | Question::TopK { class, .. }, truth) => {
                if !text_ok(class, 200) {
                    return Err(bad("the question needs a class".into()));
                }
                if let Question::TopK { k, .. } = &case.question {
                    if !(1..=20).contains(k) {
                        return Err(bad("k is 1–20".into()));
                    }
                }
                match truth {
                    Truth::Regions { geojson } => {
                        let all = quiz::expert_from_value(geojson, None)
                            .map_err(|e| bad(format!("the expert annotation: {e}")))?;
                        if all.regions.is_empty() {
                            return Err(bad("the expert annotation has no polygon to find".into()));
                        }
                        // The class must name some of the expert's regions: a typo would
                        // otherwise score against every region, stroma included.
                        let labelled = |r: &quiz::Region| {
                            r.label
                                .as_deref()
                                .is_some_and(|l| l.eq_ignore_ascii_case(class))
                        };
                        let unlabelled = all.regions.iter().all(|r| r.label.is_none());
                        if !unlabelled && !all.regions.iter().any(labelled) {
                            let mut labels: Vec<&str> = all
                                .regions
                                .iter()
                                .filter_map(|r| r.label.as_deref())
                                .collect();
                            labels.sort_unstable();
                            labels.dedup();
                            return Err(bad(format!(
                                "no expert region is labelled {class:?} (labels: {})",
                                labels.join(", ")
                            )));
                        }
                    }
                    Truth::Ai => {}
                    Truth::Label { .. } => {
                        return Err(bad(
                            "a region question needs expert regions or the AI as its truth".into(),
                        ))
                    }
                }
            }
        }
    }
    Ok(c)
}

impl Course {
    /// What a trainee sees: the questions, not the truth nor the notes.
    pub fn for_trainee(&self) -> Value {
        serde_json::json!({
            "format": self.format,
            "title": self.title,
            "description_html": markdown(&self.description),
            "cases": self.cases.iter().map(|c| serde_json::json!({
                "id": c.id,
                "slide": c.slide,
                "question": c.question,
                "truth_kind": match c.truth {
                    Truth::Regions { .. } => "expert",
                    Truth::Label { .. } => "label",
                    Truth::Ai => "ai",
                },
            })).collect::<Vec<_>>(),
        })
    }
}

/// The expert regions of a case to score marks against (`None`: the AI's regions).
pub fn expert_reference(case: &CourseCase) -> Option<Reference> {
    let class = match &case.question {
        Question::Regions { class } | Question::TopK { class, .. } => Some(class.as_str()),
        Question::Diagnosis { .. } => None,
    };
    match &case.truth {
        Truth::Regions { geojson } => quiz::expert_from_value(geojson, class).ok(),
        _ => None,
    }
}

/// Markdown to HTML that is safe to insert into a page: raw HTML in the source is shown as
/// text, links keep only http(s), mailto and in-viewer (relative) targets, images become
/// their alt text (the viewer loads nothing from elsewhere).
pub fn markdown(src: &str) -> String {
    use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd};
    let safe_url = |u: &str| {
        let l = u.trim().to_ascii_lowercase();
        let scheme = l.split_once(':').map(|(s, _)| s);
        match scheme {
            None => true,
            Some(s) if s.contains('/') || s.contains('?') || s.contains('#') => true,
            Some("http" | "https" | "mailto") => true,
            _ => false,
        }
    };
    let mut in_image = 0usize;
    let events = Parser::new_ext(src, Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH)
        .filter_map(|e| match e {
            Event::Html(h) | Event::InlineHtml(h) => Some(Event::Text(h)),
            Event::Start(Tag::Image { .. }) => {
                in_image += 1;
                None
            }
            Event::End(TagEnd::Image) => {
                in_image = in_image.saturating_sub(1);
                None
            }
            Event::Start(Tag::Link {
                link_type,
                dest_url,
                title,
                id,
            }) => Some(Event::Start(Tag::Link {
                link_type,
                dest_url: if safe_url(&dest_url) {
                    dest_url
                } else {
                    CowStr::from("#")
                },
                title,
                id,
            })),
            other => Some(other),
        })
        .collect::<Vec<_>>();
    let mut out = String::new();
    pulldown_cmark::html::push_html(&mut out, events.into_iter());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_never_lets_html_or_scripts_through() {
        let html = markdown(
            "**Invasive** front <script>alert(1)</script>\n\n<img src=x onerror=alert(2)>\n\n\
             [ok](https://example.org) [bad](javascript:alert(3)) [rel](/view/x) \
             ![pic](http://tracker/x.png)",
        );
        assert!(html.contains("<strong>Invasive</strong>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(html.contains("&lt;img src=x"), "{html}");
        assert!(
            !html.contains("<script") && !html.contains("<img"),
            "{html}"
        );
        assert!(html.contains("href=\"https://example.org\""), "{html}");
        assert!(html.contains("href=\"/view/x\""), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(!html.contains("tracker"), "{html}");
        assert!(html.contains("pic"), "{html}");
    }

    fn doc(cases: Value) -> Vec<u8> {
        serde_json::json!({"format": FORMAT, "title": "Breast 1", "cases": cases})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn course_documents_are_checked_case_by_case() {
        let known = |id: &str| (id == "a.svs").then(|| "f00d".to_string());
        let square = serde_json::json!({"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}});
        let ok = doc(serde_json::json!([
            {"slide": "a.svs", "question": {"kind": "regions", "class": "Tumor"}, "truth": {"kind": "regions", "geojson": square}, "notes": "*n*", "show_ai": true},
            {"slide": "a.svs", "question": {"kind": "diagnosis", "options": ["benign", "malignant"]}, "truth": {"kind": "label", "label": "benign"}},
            {"slide": "a.svs", "question": {"kind": "top_k", "k": 3, "class": "cell-dense"}, "truth": {"kind": "ai"}},
        ]));
        let c = parse(&ok, known).unwrap();
        assert_eq!(c.cases[0].fingerprint.as_deref(), Some("f00d"));
        let t = c.for_trainee();
        assert!(!t.to_string().contains("malignant\"}") && !t.to_string().contains("geojson"));
        assert!(!t.to_string().contains("*n*"));
        for (bad, why) in [
            (b"{".to_vec(), "not a course document"),
            (doc(serde_json::json!([])), "1–500 cases"),
            (
                doc(
                    serde_json::json!([{"slide": "b.svs", "question": {"kind": "regions", "class": "T"}, "truth": {"kind": "ai"}}]),
                ),
                "case 1 (b.svs): no analysed slide",
            ),
            (
                doc(
                    serde_json::json!([{"slide": "a.svs", "fingerprint": "beef", "question": {"kind": "regions", "class": "T"}, "truth": {"kind": "ai"}}]),
                ),
                "fingerprints differ",
            ),
            (
                doc(
                    serde_json::json!([{"slide": "a.svs", "question": {"kind": "diagnosis", "options": ["x", "y"]}, "truth": {"kind": "label", "label": "z"}}]),
                ),
                "not among the options",
            ),
            (
                doc(
                    serde_json::json!([{"slide": "a.svs", "question": {"kind": "regions", "class": "T"}, "truth": {"kind": "label", "label": "z"}}]),
                ),
                "expert regions or the AI",
            ),
            (
                doc(
                    serde_json::json!([{"slide": "a.svs", "question": {"kind": "top_k", "k": 0, "class": "T"}, "truth": {"kind": "ai"}}]),
                ),
                "k is 1–20",
            ),
            (
                doc(
                    serde_json::json!([{"slide": "a.svs", "question": {"kind": "regions", "class": "T"}, "truth": {"kind": "regions", "geojson": {"type": "FeatureCollection", "features": []}}}]),
                ),
                "no polygon",
            ),
            (
                doc(
                    serde_json::json!([{"slide": "a.svs", "question": {"kind": "regions", "class": "T"}, "truth": {"kind": "ai"}, "extra": 1}]),
                ),
                "unknown field",
            ),
            (
                doc(
                    serde_json::json!([{"slide": "a.svs", "question": {"kind": "regions", "class": "Tumour"}, "truth": {"kind": "regions", "geojson": square}}]),
                ),
                "no expert region is labelled \"Tumour\" (labels: Tumor)",
            ),
        ] {
            let e = parse(&bad, known).unwrap_err().to_string();
            assert!(e.contains(why), "{e} (wanted {why})");
        }
    }
}
