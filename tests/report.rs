//! Reports: the slide page and the cohort page in a real browser (headless Chromium), the
//! label images only on request, rebuilding from outputs alone, and PDF printing.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::browser::{chromium, outside, Browser};
use crate::require;
use crate::util::*;

/// `tessera analyze SLIDE... --out OUT --inference tract EXTRA...`; returns the exit code.
fn analyze(slides: &[&Path], out: &Path, extra: &[&str]) -> i32 {
    let mut args = vec![OsStr::new("analyze")];
    args.extend(slides.iter().map(|s| s.as_os_str()));
    args.extend([OsStr::new("--out"), out.as_os_str()]);
    args.extend(["--inference", "tract", "-q"].iter().map(OsStr::new));
    args.extend(extra.iter().map(OsStr::new));
    let o = tessera(&args, &[]);
    eprint!("{}", stderr(&o));
    code(&o)
}

fn cmu1() -> Option<PathBuf> {
    data("slides/aperio/CMU-1-Small-Region.svs")
}

fn html(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn result(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap()
}

/// Distinct colours in a screenshot (a blank or broken page has a handful).
fn colours(img: &image::RgbImage) -> usize {
    let mut seen = std::collections::HashSet::new();
    for p in img.pixels().step_by(7) {
        seen.insert(p.0);
    }
    seen.len()
}

#[test]
fn cmu1_report_in_chromium_requests_nothing_outside_its_folder_and_logs_no_error() {
    let svs = require!(cmu1());
    let exe = require!(chromium());
    let t = tempfile::tempdir().unwrap();
    assert_eq!(analyze(&[&svs], t.path(), &[]), 0);
    let dir = t.path().join("CMU-1-Small-Region.svs");
    let r = result(&dir);
    let regions = r["top_regions"].as_array().unwrap().len();
    assert!((1..=6).contains(&regions), "{regions} top regions");

    let mut b = Browser::start(&exe);
    let url = tessera::report::pdf::file_url(&dir.join("report.html")).unwrap();
    let v = b.visit(&url, 1100);
    assert!(
        v.errors.is_empty(),
        "the page logged errors: {:#?}",
        v.errors
    );
    assert_eq!(outside(&v.requests, &dir), Vec::<String>::new());
    assert!(v.requests.iter().any(|u| u == &url), "{:?}", v.requests);

    // Every picture decoded: thumbnail, overlay and each region crop; no label image.
    let images = b.eval(
        &v.session,
        "Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])",
    );
    let images = images.as_array().unwrap();
    // … and QC's overlay (a clean slide: no artefact crop).
    assert_eq!(images.len(), 3 + regions, "{images:?}");
    assert!(images.iter().all(|i| i[1] == true), "{images:?}");
    assert!(!images.iter().any(|i| i[0] == "label.png"));
    // The sections a pathologist reads, in order, and no script in the page.
    let sections = b.eval(
        &v.session,
        "Array.from(document.querySelectorAll('h2')).map(h => h.textContent)",
    );
    assert_eq!(
        sections,
        serde_json::json!([
            "Summary",
            "Slide quality",
            "Tissue and heatmap",
            "Top regions",
            "Patch probabilities",
            "Method and provenance",
            "Patient identifiers"
        ])
    );
    assert_eq!(b.eval(&v.session, "document.scripts.length"), 0);
    let text = b.eval(&v.session, "document.body.innerText");
    let text = text.as_str().unwrap();
    assert!(text.contains(tessera::report::DISCLAIMER));
    assert!(text.contains(r["model"]["sha256"].as_str().unwrap()));
    assert!(text.contains(r["slide"]["fingerprint"]["sha256"].as_str().unwrap()));
    assert!(text.contains("label and macro images are not included"));
    // The two pictures side by side have the same size on screen.
    let sizes = b.eval(
        &v.session,
        "Array.from(document.querySelectorAll('#maps .stack')).map(s => [s.offsetWidth, s.offsetHeight])",
    );
    let sizes = sizes.as_array().unwrap();
    assert_eq!(sizes.len(), 2);
    assert_eq!(sizes[0], sizes[1]);
    // One histogram per class.
    assert_eq!(
        b.eval(&v.session, "document.querySelectorAll('svg.hist').length"),
        2
    );

    let shot = b.screenshot(&v.session, "report-CMU-1-Small-Region");
    assert!(shot.width() >= 1000, "{}", shot.width());
    assert!(shot.height() > 2500, "a short page: {}", shot.height());
    assert!(colours(&shot) > 1000, "the screenshot looks blank");
}

#[test]
fn the_browser_harness_sees_outside_requests_and_console_errors() {
    // The checks above can fail: a page that fetches from a CDN and logs an error is caught.
    let exe = require!(chromium());
    let t = tempfile::tempdir().unwrap();
    let page = t.path().join("bad.html");
    std::fs::write(
        &page,
        r#"<!doctype html><title>bad</title><img src="https://cdn.example.invalid/x.png">
<script>console.error("boom")</script>"#,
    )
    .unwrap();
    let mut b = Browser::start(&exe);
    let v = b.visit(&tessera::report::pdf::file_url(&page).unwrap(), 800);
    assert_eq!(
        outside(&v.requests, t.path()),
        ["https://cdn.example.invalid/x.png"]
    );
    assert!(
        v.errors.iter().any(|e| e.contains("boom")),
        "{:#?}",
        v.errors
    );
}

#[test]
fn cohort_page_lists_the_failure_first_and_sorts_in_the_browser() {
    let svs = require!(cmu1());
    let broken = require!(data("corrupt/broken.svs"));
    let exe = require!(chromium());
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    assert_eq!(analyze(&[&svs, &broken], &out, &[]), 2);
    let index = out.join("index.html");
    let page = html(&index);
    assert!(page.contains("CMU-1-Small-Region.svs/report.html"));

    let mut b = Browser::start(&exe);
    let v = b.visit(&tessera::report::pdf::file_url(&index).unwrap(), 1100);
    assert!(v.errors.is_empty(), "{:#?}", v.errors);
    assert_eq!(outside(&v.requests, &out), Vec::<String>::new());
    let rows = "Array.from(document.querySelectorAll('#slides tbody tr')).map(r => \
                Array.from(r.cells).map(c => c.innerText))";
    let before = b.eval(&v.session, rows);
    let before = before.as_array().unwrap();
    assert_eq!(before.len(), 2);
    assert_eq!(before[0][0], "failed");
    assert!(
        before[0][1].as_str().unwrap().contains("broken.svs"),
        "{before:?}"
    );
    assert!(
        before[0][6].as_str().unwrap().contains("broken.svs"),
        "the reason names the file: {before:?}"
    );
    assert_eq!(before[1][0], "done");
    // Slide QC's verdict has its column (shown in capitals).
    assert_eq!(before[1][2], "PASS", "{before:?}");
    // Sorting by slide score (ascending puts the failure, which has none, first; descending
    // puts the analysed slide first).
    b.eval(
        &v.session,
        "document.querySelectorAll('#slides th')[3].click()",
    );
    let asc = b.eval(&v.session, rows);
    assert_eq!(asc[0][0], "failed");
    b.eval(
        &v.session,
        "document.querySelectorAll('#slides th')[3].click()",
    );
    let desc = b.eval(&v.session, rows);
    assert_eq!(desc[0][0], "done");
    assert_eq!(
        b.eval(
            &v.session,
            "document.querySelectorAll('#slides th')[3].getAttribute('aria-sort')"
        ),
        "descending"
    );
    // The link leads to the slide's report.
    let href = b.eval(&v.session, "document.querySelector('#slides a').href");
    assert_eq!(
        href.as_str().unwrap(),
        tessera::report::pdf::file_url(&out.join("CMU-1-Small-Region.svs/report.html")).unwrap()
    );
    let shot = b.screenshot(&v.session, "index-with-failure");
    assert!(colours(&shot) > 20);
}

#[test]
fn label_images_appear_only_when_asked() {
    let svs = require!(cmu1());
    let exe = require!(chromium());
    let t = tempfile::tempdir().unwrap();
    let (plain, labelled) = (t.path().join("plain"), t.path().join("labelled"));
    assert_eq!(analyze(&[&svs], &plain, &[]), 0);
    assert_eq!(analyze(&[&svs], &labelled, &["--include-label"]), 0);
    let (p, l) = (
        plain.join("CMU-1-Small-Region.svs"),
        labelled.join("CMU-1-Small-Region.svs"),
    );
    // By default nothing identifying is written, in files or in the page.
    assert!(!p.join("label.png").exists() && !p.join("macro.png").exists());
    assert_eq!(result(&p)["identifiers"]["label_included"], false);
    assert!(!html(&p.join("report.html")).contains("alt=\"label.png\""));
    // With the flag, both images are written, shown and announced.
    assert!(l.join("label.png").exists() && l.join("macro.png").exists());
    assert_eq!(result(&l)["identifiers"]["label_included"], true);
    let mut b = Browser::start(&exe);
    let v = b.visit(
        &tessera::report::pdf::file_url(&l.join("report.html")).unwrap(),
        1100,
    );
    assert!(v.errors.is_empty(), "{:#?}", v.errors);
    let ids = b.eval(
        &v.session,
        "Array.from(document.querySelectorAll('#identifiers img')).map(i => [i.alt, i.naturalWidth])",
    );
    assert_eq!(
        ids,
        serde_json::json!([["label.png", 387], ["macro.png", 1280]])
    );
    let text = b.eval(
        &v.session,
        "document.querySelector('#identifiers').innerText",
    );
    assert!(text.as_str().unwrap().contains("--include-label"), "{text}");
    b.screenshot(&v.session, "report-with-label");

    // `tessera report --include-label` adds them to a folder analysed without.
    let o = tessera_str(&["report", p.to_str().unwrap(), "--include-label"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(p.join("label.png").exists());
    assert!(html(&p.join("report.html")).contains("alt=\"label.png\""));
}

#[test]
fn the_report_rebuilt_from_outputs_alone_is_identical() {
    let svs = require!(cmu1());
    let t = tempfile::tempdir().unwrap();
    // Analyse a link to the slide, so the slide can be taken away afterwards.
    let link = t.path().join("slide.svs");
    std::os::unix::fs::symlink(&svs, &link).unwrap();
    let out = t.path().join("out");
    assert_eq!(analyze(&[&link], &out, &[]), 0);
    let first = std::fs::read(out.join("slide.svs/report.html")).unwrap();
    let first_index = std::fs::read(out.join("index.html")).unwrap();
    // No slide, no model, another place: the same bytes.
    std::fs::remove_file(&link).unwrap();
    let moved = t.path().join("elsewhere");
    std::fs::rename(&out, &moved).unwrap();
    std::fs::remove_file(moved.join("slide.svs/report.html")).unwrap();
    std::fs::remove_file(moved.join("index.html")).unwrap();
    let none = t.path().join("no-models");
    let dir = moved.join("slide.svs");
    let o = tessera(
        &[OsStr::new("report"), dir.as_os_str(), moved.as_os_str()],
        &[("TESSERA_MODELS", none.as_os_str())],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(std::fs::read(dir.join("report.html")).unwrap() == first);
    assert!(std::fs::read(moved.join("index.html")).unwrap() == first_index);
}

#[test]
fn a_broken_folder_is_a_clear_error_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("not-a-result");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("result.json"), "{ not json").unwrap();
    let o = tessera_str(&["report", dir.to_str().unwrap()]);
    assert_eq!(code(&o), 3);
    let err = stderr(&o);
    assert!(
        err.contains("result.json") && err.contains("not valid JSON"),
        "{err}"
    );
    assert!(!dir.join("report.html").exists());
}

#[test]
fn pdf_is_printed_with_chromium_and_its_absence_is_explained() {
    let svs = require!(cmu1());
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("no-chromium");
    // Without Chromium: refused before any work, with the fix in the message.
    let o = tessera(
        &[
            OsStr::new("analyze"),
            svs.as_os_str(),
            OsStr::new("--out"),
            t.path().as_os_str(),
            OsStr::new("--pdf"),
        ],
        &[("TESSERA_CHROMIUM", missing.as_os_str())],
    );
    assert_eq!(code(&o), 64);
    assert!(stderr(&o).contains("apt-get") || stderr(&o).contains("chromium"));
    assert!(!t.path().join("CMU-1-Small-Region.svs").exists());

    require!(chromium());
    assert_eq!(analyze(&[&svs], t.path(), &["--pdf"]), 0);
    let pdf = std::fs::read(t.path().join("CMU-1-Small-Region.svs/report.pdf")).unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    // A4 pages: 595 × 842 points.
    let text = String::from_utf8_lossy(&pdf);
    assert!(
        text.contains("/MediaBox [0 0 594.9") || text.contains("/MediaBox [0 0 595"),
        "not A4"
    );
}
