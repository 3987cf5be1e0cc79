//! Slides read over DICOMweb from a real Orthanc (started by the test, `tests/orthanc.rs`): the
//! same pixels, associated images, ICC profile and analysis results as the same series read from
//! its files; typed errors for a server that is down, a missing study, a series that is not a
//! slide, credentials refused or given in the URL, and TLS without the server's CA (against
//! OpenSSL's own test server).

use std::ffi::OsStr;
use std::path::Path;

use tessera::{BackendChoice, DicomWebAuth, DicomWebConfig, Slide, SlideConfig};

use crate::dicom::assert_same_pixels;
use crate::orthanc::{free_port, Orthanc};
use crate::require;
use crate::util::*;

/// The shared DICOM series read both ways (folders hold one series; boxes holds two).
const SERIES: &[&str] = &[
    "slides/dicom/cmu-1-small-region",
    "slides/dicom/boxes/boxes_0.dcm",
    "slides/dicom/boxes/boxes_1.dcm",
    "slides/dicom/camelyon-lowres",
    "slides/dicom/sm-image",
    "slides/dicom/concat",
];

/// The Study and Series Instance UIDs of a series read from files.
fn uids(slide: &Slide) -> (String, String) {
    let p = slide.properties();
    (
        p["dicom.StudyInstanceUID"].clone(),
        p["tessera.dicom.series"].clone(),
    )
}

fn web_config(auth: DicomWebAuth) -> SlideConfig {
    SlideConfig {
        dicomweb: DicomWebConfig {
            auth,
            retries: 1,
            ..DicomWebConfig::default()
        },
        ..SlideConfig::default()
    }
}

#[test]
fn dicomweb_series_read_like_their_files() {
    let dir = require!(data("slides/dicom"));
    let orthanc = require!(Orthanc::start(None));
    for rel in SERIES {
        let path = dir.parent().unwrap().parent().unwrap().join(rel);
        let folder = if path.is_dir() {
            path.clone()
        } else {
            path.parent().unwrap().to_path_buf()
        };
        orthanc.upload_dir(&folder);
        let file = open_as(&path, BackendChoice::Native);
        let (study, series) = uids(&file);
        let url = orthanc.slide_url(&study, Some(&series));
        let web = Slide::open_with(&url, &web_config(DicomWebAuth::None))
            .unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(web.backend().name, "native");
        assert_eq!(web.levels(), file.levels(), "{rel}");
        assert_eq!(web.mpp(), file.mpp(), "{rel}");
        assert_eq!(
            web.icc_profile().unwrap(),
            file.icc_profile().unwrap(),
            "{rel}"
        );
        assert_eq!(web.associated_images(), file.associated_images(), "{rel}");
        for a in file.associated_images() {
            assert_eq!(
                web.read_associated_image(&a.name).unwrap(),
                file.read_associated_image(&a.name).unwrap(),
                "{rel}: {}",
                a.name
            );
        }
        assert_same_pixels(&path, &file, &web);
        let remote = web
            .remote()
            .expect("a DICOMweb slide says where it came from");
        assert_eq!(
            (remote.study.as_str(), remote.series.as_str()),
            (&*study, &*series)
        );
        assert!(!remote.instances.is_empty());
        // The fingerprint is the content's: a second opening gives the same one.
        let again = Slide::open_with(&url, &web_config(DicomWebAuth::None)).unwrap();
        assert_eq!(again.remote().unwrap().fingerprint, remote.fingerprint);
        assert!(file.remote().is_none());
    }
}

#[test]
fn analysis_over_dicomweb_equals_the_file_run() {
    let folder = require!(data("slides/dicom/cmu-1-small-region"));
    let orthanc = require!(Orthanc::start(None));
    orthanc.upload_dir(&folder);
    let (study, series) = uids(&open_as(&folder, BackendChoice::Native));
    let out = tempfile::tempdir().unwrap();
    let run = |slide: &str, to: &str| {
        let o = tessera_str(&[
            "analyze",
            slide,
            "--out",
            out.path().join(to).to_str().unwrap(),
            "--inference",
            "tract",
        ]);
        assert_eq!(code(&o), 0, "{slide}: {}", stderr(&o));
    };
    // The study alone: QIDO-RS finds its one slide series.
    let url = orthanc.slide_url(&study, None);
    run(&url, "web");
    run(folder.to_str().unwrap(), "files");
    let web = out.path().join("web").join(&study);
    let files = out.path().join("files/cmu-1-small-region");
    for f in ["patches.csv", "heatmap-cell-dense.png", "tissue-mask.png"] {
        assert!(
            std::fs::read(web.join(f)).unwrap() == std::fs::read(files.join(f)).unwrap(),
            "{f} differs between the DICOMweb and the file run"
        );
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(web.join("result.json")).unwrap()).unwrap();
    let s = &doc["slide"];
    assert_eq!(s["path"], url.as_str());
    assert_eq!(s["dicomweb"]["study_instance_uid"], study.as_str());
    assert_eq!(s["dicomweb"]["series_instance_uid"], series.as_str());
    assert_eq!(
        s["dicomweb"]["sop_instance_uids"].as_array().unwrap().len(),
        12
    );
    assert_eq!(s["file_size_bytes"], 0);
    assert!(s["fingerprint"]["method"]
        .as_str()
        .unwrap()
        .starts_with("DICOMweb"));
}

#[test]
fn svs_dicomized_into_orthanc_analyses_like_the_svs() {
    // The issue's flow: CMU-1-Small-Region turned into DICOM WSI by Orthanc's own dicomizer,
    // straight into Orthanc, then analysed over DICOMweb.
    let svs = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let orthanc = require!(Orthanc::start(None));
    let dicomizer = std::path::Path::new("/usr/bin/OrthancWSIDicomizer");
    if !dicomizer.exists() {
        skip("OrthancWSIDicomizer is not installed (apt-get install orthanc-wsi)");
        return;
    }
    let o = std::process::Command::new(dicomizer)
        .arg(format!("--orthanc=http://127.0.0.1:{}/", orthanc.port))
        .arg(&svs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let studies = orthanc.rest("/studies");
    let id = studies[0].as_str().unwrap();
    let study = orthanc.rest(&format!("/studies/{id}"))["MainDicomTags"]["StudyInstanceUID"]
        .as_str()
        .unwrap()
        .to_string();
    let url = orthanc.slide_url(&study, None);
    // The dicomizer copies the SVS's JPEG tiles as they are (no ImageType, an RGB Adobe
    // marker): the same pixels.
    let web = Slide::open_with(&url, &web_config(DicomWebAuth::None)).unwrap();
    let file = open_as(&svs, BackendChoice::Native);
    assert_eq!(web.dimensions(), file.dimensions());
    assert!(web
        .properties()
        .contains_key("tessera.dicom.image-type-missing"));
    let size = file.dimensions();
    assert!(
        web.read_region(tessera::Level0Px::new(0, 0), 0, size)
            .unwrap()
            == file
                .read_region(tessera::Level0Px::new(0, 0), 0, size)
                .unwrap(),
        "level 0 differs between the SVS and its dicomized copy"
    );
    // Its Pixel Spacing is a placeholder (a 15 mm imaged width), so both runs are given the
    // SVS's MPP.
    let out = tempfile::tempdir().unwrap();
    for (slide, to) in [(url.as_str(), "web"), (svs.to_str().unwrap(), "svs")] {
        let o = tessera_str(&[
            "analyze",
            slide,
            "--out",
            out.path().join(to).to_str().unwrap(),
            "--inference",
            "tract",
            "--mpp",
            "0.499",
        ]);
        assert_eq!(code(&o), 0, "{slide}: {}", stderr(&o));
    }
    assert!(
        std::fs::read(out.path().join("web").join(&study).join("patches.csv")).unwrap()
            == std::fs::read(out.path().join("svs/CMU-1-Small-Region.svs/patches.csv")).unwrap(),
        "the DICOMweb run's patches differ from the SVS run's"
    );
}

#[test]
fn dicomweb_failures_are_typed_and_name_the_url() {
    let folder = require!(data("slides/dicom/cmu-1-small-region"));
    let orthanc = require!(Orthanc::start(None));
    orthanc.upload_dir(&folder);
    let info = |url: &str| {
        let o = tessera_str(&["info", url]);
        (code(&o), stderr(&o))
    };

    // Nobody listening: retried, then refused with the URL.
    let down = format!(
        "dicomweb+http://127.0.0.1:{}/dicom-web/studies/1.2.3",
        free_port()
    );
    let (c, err) = info(&down);
    assert_eq!(c, 3, "{err}");
    assert!(
        err.contains("http://127.0.0.1") && err.contains("attempts"),
        "{err}"
    );

    // A study the server does not have.
    let (c, err) = info(&orthanc.slide_url("1.2.3.4", Some("5.6.7")));
    assert_eq!(c, 3, "{err}");
    assert!(err.contains("HTTP 404"), "{err}");

    // A series that is not a slide, and a study without a slide series.
    let (study, series) = orthanc.create_dicom(serde_json::json!({
        "PatientName": "NOT^A^SLIDE", "Modality": "OT", "SeriesDescription": "a photo"
    }));
    let (c, err) = info(&orthanc.slide_url(&study, Some(&series)));
    assert_eq!(c, 3, "{err}");
    assert!(
        err.contains("no VL Whole Slide Microscopy instance"),
        "{err}"
    );
    let (c, err) = info(&orthanc.slide_url(&study, None));
    assert_eq!(c, 3, "{err}");
    assert!(err.contains("no slide microscopy (SM) series"), "{err}");
    assert!(
        !err.contains("NOT^A^SLIDE"),
        "a patient name reached the error: {err}"
    );

    // Credentials in the URL are refused without being echoed.
    let with_creds = orthanc
        .slide_url("1.2.3", None)
        .replace("127.0.0.1", "alice:hunter2@127.0.0.1");
    let (c, err) = info(&with_creds);
    assert_eq!(c, 3, "{err}");
    assert!(err.contains("credentials in the URL are refused"), "{err}");

    // Not a URL Tessera reads.
    let (c, err) = info(&format!("dicomweb+{}/series/1.2", orthanc.dicomweb()));
    assert_eq!(c, 3, "{err}");
    assert!(err.contains("not a usable DICOMweb URL"), "{err}");

    // An answer larger than its cap (here the series metadata, configured down to 1,000
    // bytes) is refused with the URL and the cap; the default cap reads it.
    let file = open_as(&folder, BackendChoice::Native);
    let (study, series) = uids(&file);
    let url = orthanc.slide_url(&study, Some(&series));
    let mut small = web_config(DicomWebAuth::None);
    small.dicomweb.max_metadata_bytes = 1000;
    let e = Slide::open_with(&url, &small).unwrap_err().to_string();
    assert!(
        e.contains("/metadata") && e.contains("larger than 1000 bytes"),
        "{e}"
    );
    assert!(Slide::open_with(&url, &web_config(DicomWebAuth::None)).is_ok());
    let o = tessera_str(&["info", &url, "--dicomweb-max-metadata-mib", "0"]);
    assert_eq!(code(&o), 64, "{}", stderr(&o));

    // OpenSlide reads files only.
    let url = orthanc.slide_url("1.2.3", None);
    let o = tessera_str(&["info", &url, "--backend", "openslide"]);
    assert_eq!(code(&o), 3);
    assert!(
        stderr(&o).contains("OpenSlide reads files only"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn dicomweb_basic_authentication() {
    let folder = require!(data("slides/dicom/cmu-1-small-region"));
    let orthanc = require!(Orthanc::start(Some(("alice", "s3cret-pw"))));
    orthanc.upload_dir(&folder);
    let (study, series) = uids(&open_as(&folder, BackendChoice::Native));
    let url = orthanc.slide_url(&study, Some(&series));
    let info = |env: &[(&str, &OsStr)], extra: &[&str]| {
        let mut args: Vec<&OsStr> = vec![OsStr::new("info"), OsStr::new(&url)];
        args.extend(extra.iter().map(OsStr::new));
        let mut cmd_env = vec![("TESSERA_DICOMWEB_PASSWORD", OsStr::new(""))];
        cmd_env.extend_from_slice(env);
        let o = tessera(&args, &cmd_env);
        (
            code(&o),
            format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o)),
        )
    };
    let (c, out) = info(&[], &[]);
    assert_eq!(c, 3, "{out}");
    assert!(out.contains("HTTP 401"), "{out}");

    let (c, out) = info(
        &[("TESSERA_DICOMWEB_PASSWORD", OsStr::new("wrong"))],
        &["--dicomweb-user", "alice"],
    );
    assert_eq!(c, 3, "{out}");
    assert!(out.contains("HTTP 401") && !out.contains("wrong"), "{out}");

    let (c, out) = info(
        &[("TESSERA_DICOMWEB_PASSWORD", OsStr::new("s3cret-pw"))],
        &["--dicomweb-user", "alice"],
    );
    assert_eq!(c, 0, "{out}");
    assert!(
        out.contains("2220 × 2967") && !out.contains("s3cret-pw"),
        "{out}"
    );

    // The password from a file.
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret-pw\n").unwrap();
    let (c, out) = info(
        &[],
        &[
            "--dicomweb-user",
            "alice",
            "--dicomweb-password-file",
            pw.to_str().unwrap(),
        ],
    );
    assert_eq!(c, 0, "{out}");

    // The library's own configuration, and a result.json that holds no credential.
    let cfg = web_config(DicomWebAuth::Basic {
        user: "alice".into(),
        password: "s3cret-pw".into(),
    });
    let slide = Slide::open_with(&url, &cfg).unwrap();
    assert_eq!(slide.dimensions().width, 2220);
    let o = tessera(
        &[
            OsStr::new("analyze"),
            OsStr::new(&url),
            OsStr::new("--out"),
            dir.path().join("out").as_os_str(),
            OsStr::new("--inference"),
            OsStr::new("tract"),
            OsStr::new("--dicomweb-user"),
            OsStr::new("alice"),
        ],
        &[("TESSERA_DICOMWEB_PASSWORD", OsStr::new("s3cret-pw"))],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let result =
        std::fs::read_to_string(dir.path().join("out").join(&series).join("result.json")).unwrap();
    assert!(!result.contains("s3cret-pw") && !stderr(&o).contains("s3cret-pw"));
}

#[test]
fn dicomweb_over_tls_trusts_the_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    std::fs::write(
        p("leaf.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    // A hospital's own CA, and the server's certificate signed by it.
    let steps: [Vec<String>; 3] = [
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Test CA",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["-keyout".into(), p("ca.key"), "-out".into(), p("ca.pem")])
        .collect(),
        [
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(["-keyout".into(), p("key.pem"), "-out".into(), p("leaf.csr")])
        .collect(),
        ["x509", "-req", "-days", "2", "-CAcreateserial"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "-in".into(),
                p("leaf.csr"),
                "-CA".into(),
                p("ca.pem"),
                "-CAkey".into(),
                p("ca.key"),
                "-extfile".into(),
                p("leaf.ext"),
                "-out".into(),
                p("cert.pem"),
            ])
            .collect(),
    ];
    for args in &steps {
        let made = std::process::Command::new("openssl").args(args).output();
        if !made.as_ref().is_ok_and(|o| o.status.success()) {
            skip(&format!(
                "openssl could not make test certificates ({made:?})"
            ));
            return;
        }
    }
    // A real TLS server (OpenSSL's own; Debian's Orthanc 1.10 drops HTTPS connections under
    // OpenSSL 3), answering every request with its status page.
    let port = free_port();
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
        .args(["-cert", &p("cert.pem"), "-key", &p("key.pem")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "openssl s_server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let url = format!("dicomweb+https://127.0.0.1:{port}/dicom-web/studies/1.2.3");
    // Without the CA: the certificate is not trusted, and that is not retried.
    let o = tessera_str(&["info", &url]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("https://127.0.0.1") && err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(
        !err.contains("attempts"),
        "a refused certificate was retried: {err}"
    );
    // With it: the connection is made and the server's answer read (a status page, which is
    // not DICOM JSON).
    let o = tessera_str(&["info", &url, "--dicomweb-ca", &p("ca.pem")]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("not DICOM JSON"), "{}", stderr(&o));
}

/// Checks a Segmentation against patches.csv with highdicom: one segment per class, and each
/// analysed patch's cell holding its probability (0–255), at the patch's grid position.
const CHECK_SEGMENTATION: &str = r#"
import csv, sys
import highdicom as hd
seg = hd.seg.segread(sys.argv[1])
rows = list(csv.DictReader(open(sys.argv[2])))
classes = [k[5:] for k in rows[0] if k.startswith("prob_")]
assert seg.number_of_segments == len(classes), (seg.number_of_segments, classes)
labels = [seg.get_segment_description(i + 1).segment_label for i in range(len(classes))]
assert labels == classes, labels
for i, name in enumerate(classes):
    m = seg.get_total_pixel_matrix(segment_numbers=[i + 1], combine_segments=False)[:, :, 0]
    for r in rows:
        want = round(float(r["prob_" + name]) * 255)
        # highdicom scales fractional values to 0–1.
        got = round(float(m[int(r["row"]), int(r["col"])]) * 255)
        assert abs(got - want) <= 1, (name, r["col"], r["row"], got, want)
# One cell per patch (stride = side): the spacing is the patch side in mm (patches.csv rounds
# the side to whole level-0 pixels, hence the tolerance).
px = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
side, mpp = int(rows[0]["width"]), float(sys.argv[3])
assert all(abs(float(v) / (side * mpp / 1000) - 1) < 0.005 for v in px), (px, side, mpp)

# The annotations: one rectangle per patches.csv row, at its place, with its probabilities.
ann = hd.ann.annread(sys.argv[4])
groups = ann.get_annotation_groups()
patches = groups[0]
assert patches.label == "patches" and patches.number_of_annotations == len(rows)
rects = patches.get_graphic_data(coordinate_type="2D")
names, values, _ = patches.get_measurements()
assert [n.meaning for n in names] == ["Probability of " + c for c in classes], names
for r, rect, v in zip(rows, rects, values):
    x, y, w = float(r["minx"]), float(r["miny"]), float(r["width"])
    assert rect.tolist() == [[x, y], [x + w, y], [x + w, y + w], [x, y + w]], (r, rect)
    for k, c in enumerate(classes):
        assert abs(v[k] - float(r["prob_" + c])) < 1e-6, (r, v)
assert all(g.graphic_type.value == "POLYGON" for g in groups[1:]), groups
print("ok", len(rows), [float(v) for v in px], side, [g.label for g in groups])
"#;

#[test]
fn dicom_outputs_are_valid_and_stored_once() {
    // The Segmentation and the annotations of a DICOMweb slide: valid, read back with
    // patches.csv's values, stored once in the slide's study.
    let folder = require!(data("slides/dicom/cmu-1-small-region"));
    require!(python_with(&["highdicom"]));
    let orthanc = require!(Orthanc::start(None));
    orthanc.upload_dir(&folder);
    let (study, _) = uids(&open_as(&folder, BackendChoice::Native));
    let out = tempfile::tempdir().unwrap();
    let analyze = |extra: &[&str]| {
        let mut args = vec![
            "analyze".to_string(),
            orthanc.slide_url(&study, None),
            "--out".into(),
            out.path().to_string_lossy().into_owned(),
            "--inference".into(),
            "tract".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tessera_str(&args)
    };
    let store = orthanc.dicomweb();
    // With the report printed (Chromium), it is filed too, as an Encapsulated PDF.
    let pdf = tessera::report::pdf::find_chromium().is_some()
        || !skip("Chromium is not installed: the report's Encapsulated PDF is not checked");
    let first: &[&str] = if pdf { &["--pdf"] } else { &[] };
    let o = analyze(&[&["--dicomweb-store", store.as_str()], first].concat());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let dir = out.path().join(&study);
    let seg = dir.join("dicom/segmentation.dcm");
    let ann = dir.join("dicom/annotations.dcm");
    let report = dir.join("dicom/report.dcm");
    if pdf {
        let printed = std::fs::read(dir.join("report.pdf")).unwrap();
        let doc = dicom_object::open_file(&report).unwrap();
        let held = doc
            .element(dicom_dictionary_std::tags::ENCAPSULATED_DOCUMENT)
            .unwrap()
            .to_bytes()
            .unwrap();
        assert!(held.starts_with(&printed) && held.len() - printed.len() <= 1);
        assert_eq!(
            doc.element(dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0'),
            study
        );
    }

    // dciodvfy (dicom3tools) finds no error.
    let mut checked = vec![
        (&seg, "Segmentation"),
        (&ann, "MicroscopyBulkSimpleAnnotations"),
    ];
    if pdf {
        checked.push((&report, "EncapsulatedPDF"));
    }
    for (file, iod) in checked {
        assert_dciodvfy_clean(file, iod);
    }
    // highdicom reads it, and its cells are patches.csv's probabilities.
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
    let mpp = doc["slide"]["mpp"]["x"].as_f64().unwrap();
    let check = std::process::Command::new("python3")
        .args(["-c", CHECK_SEGMENTATION])
        .arg(&seg)
        .arg(dir.join("patches.csv"))
        .arg(mpp.to_string())
        .arg(&ann)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Stored: the archive holds the slide's series and the two new ones, in the slide's study.
    let series = orthanc.rest("/series?expand");
    let of = |modality: &str| -> Vec<serde_json::Value> {
        series
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["MainDicomTags"]["Modality"] == modality)
            .cloned()
            .collect()
    };
    let seg_series = of("SEG");
    assert_eq!(seg_series.len(), 1, "{series}");
    assert_eq!(of("ANN").len(), 1, "{series}");
    assert_eq!(of("DOC").len(), usize::from(pdf), "{series}");
    let instances = orthanc.rest("/instances").as_array().unwrap().len();
    let seg_study = orthanc.rest(&format!(
        "/studies/{}",
        seg_series[0]["ParentStudy"].as_str().unwrap()
    ));
    assert_eq!(
        seg_study["MainDicomTags"]["StudyInstanceUID"],
        study.as_str()
    );

    // A rerun with the same settings (the same run key) makes the same UIDs: the archive gains
    // nothing.
    let o = analyze(&[&["--dicomweb-store", store.as_str(), "--force"], first].concat());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        orthanc.rest("/instances").as_array().unwrap().len(),
        instances
    );

    // An archive that is down: the slide fails (retried first), its folder is complete.
    let down = format!("http://127.0.0.1:{}/dicom-web", free_port());
    let o = analyze(&["--dicomweb-store", &down, "--force"]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("attempts"), "{}", stderr(&o));
    assert!(seg.exists() && dir.join("result.json").exists());
}

/// `tessera watch` over an archive's DICOMweb root, results into `out`, scanning every second,
/// settled after `settle` seconds, no HTTP endpoints, tract inference, then `extra`.
fn archive_watch_args(archive: &str, out: &Path, settle: &str, extra: &[&str]) -> Vec<String> {
    let out = out.to_string_lossy();
    let mut a: Vec<String> = [
        "watch",
        archive,
        "--out",
        &out,
        "--settle",
        settle,
        "--rescan",
        "1",
        "--http",
        "off",
        "--inference",
        "tract",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// That watch, started in the background (quiet).
fn spawn_archive_watch(args: &[String]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// The watch's events (`OUT/.watch/events.jsonl`) so far.
fn watch_events(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join(".watch/events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// How many slides the watch has analysed so far.
fn analysed_count(out: &Path) -> usize {
    watch_events(out)
        .iter()
        .filter(|e| e["event"] == "analysed")
        .count()
}

/// Complete result folders in `out` (not `.NAME.tmp-tessera-PID` ones being written).
fn complete_results(out: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .filter(|p| p.join("result.json").is_file())
        .collect()
}

/// Waits (3 min at most) until the watch has analysed a slide.
fn wait_for_an_analysis(out: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while complete_results(out).is_empty() || analysed_count(out) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the series was not analysed: {:?}",
            watch_events(out)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn watch_analyses_a_series_stored_after_start_exactly_once() {
    let folder = require!(data("slides/dicom/cmu-1-small-region"));
    let orthanc = require!(Orthanc::start(None));
    let out = tempfile::tempdir().unwrap();
    let archive = format!("dicomweb+{}", orthanc.dicomweb());
    let store = orthanc.dicomweb();
    let args = |extra: &[&str]| {
        let mut e = vec!["--dicomweb-store", store.as_str()];
        e.extend_from_slice(extra);
        archive_watch_args(&archive, out.path(), "1", &e)
    };
    let mut watch = spawn_archive_watch(&args(&[]));
    // The series arrives after the service started.
    std::thread::sleep(std::time::Duration::from_secs(2));
    orthanc.upload_dir(&folder);
    wait_for_an_analysis(out.path());
    // Killed without warning, then run again: nothing is analysed twice.
    watch.kill().unwrap();
    watch.wait().unwrap();
    let again = args(&["--once"]);
    let o = tessera_str(&again.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let results = complete_results(out.path());
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(analysed_count(out.path()), 1);
    // Its results were stored back once, and are not taken for slides.
    let series = orthanc.rest("/series?expand");
    let segs = series
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["MainDicomTags"]["Modality"] == "SEG")
        .count();
    assert_eq!(segs, 1, "{series}");
}

/// A frame cut short in the archive (level 0's largest, so certainly read): the analysis fails
/// with a typed error naming the archive, leaves no result folder and stores nothing back.
#[test]
fn a_truncated_frame_in_the_archive_fails_the_slide_and_stores_nothing() {
    let folder = require!(data("slides/dicom/cmu-1-small-region"));
    require!(python_with(&["pydicom"]));
    let orthanc = require!(Orthanc::start(None));
    let tmp = tempfile::tempdir().unwrap();
    let damaged = tmp.path().join("level-0.dcm");
    let o = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, pydicom\n\
             from pydicom.encaps import generate_frames, encapsulate\n\
             ds = pydicom.dcmread(sys.argv[1])\n\
             frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))\n\
             k = max(range(len(frames)), key=lambda i: len(frames[i]))\n\
             frames[k] = frames[k][: len(frames[k]) // 2]\n\
             ds.PixelData = encapsulate(frames)\n\
             ds.save_as(sys.argv[2])\n",
        )
        .arg(folder.join("level-0-frames-0-30.dcm"))
        .arg(&damaged)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for e in std::fs::read_dir(&folder).unwrap() {
        let p = e.unwrap().path();
        if !p.ends_with("level-0-frames-0-30.dcm") {
            orthanc.upload(&p);
        }
    }
    orthanc.upload(&damaged);
    let (study, _) = uids(&open_as(&folder, BackendChoice::Native));
    let out = tmp.path().join("out");
    let o = tessera_str(&[
        "analyze",
        &orthanc.slide_url(&study, None),
        "--out",
        out.to_str().unwrap(),
        "--inference",
        "tract",
        "--dicomweb-store",
        &orthanc.dicomweb(),
    ]);
    let err = stderr(&o);
    assert_eq!(code(&o), 3, "{err}");
    assert!(
        err.contains("http://127.0.0.1") && err.contains("JPEG"),
        "{err}"
    );
    assert!(
        !out.join(&study).exists(),
        "a failed slide leaves no folder"
    );
    let modalities: Vec<serde_json::Value> = orthanc
        .rest("/series?expand")
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["MainDicomTags"]["Modality"].clone())
        .collect();
    assert_eq!(modalities, ["SM"], "nothing stored back");
}

/// A series still being written (its instances arriving one by one, the full-resolution level
/// last) is analysed once, when it has stopped growing for the settle period, whole.
#[test]
fn watch_waits_for_a_series_still_being_written() {
    let folder = require!(data("slides/dicom/cmu-1-small-region"));
    let orthanc = require!(Orthanc::start(None));
    let out = tempfile::tempdir().unwrap();
    let archive = format!("dicomweb+{}", orthanc.dicomweb());
    let mut watch = spawn_archive_watch(&archive_watch_args(&archive, out.path(), "5", &[]));
    // Smallest level first, level 0 last, half a second apart: each scan sees a new count.
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    for f in &files {
        orthanc.upload(f);
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    wait_for_an_analysis(out.path());
    // Two more scans past the settle period: nothing else is analysed.
    std::thread::sleep(std::time::Duration::from_secs(3));
    watch.kill().unwrap();
    watch.wait().unwrap();
    assert_eq!(
        analysed_count(out.path()),
        1,
        "{:?}",
        watch_events(out.path())
    );
    let results = complete_results(out.path());
    assert_eq!(results.len(), 1, "{results:?}");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results[0].join("result.json")).unwrap()).unwrap();
    assert_eq!(
        doc["slide"]["dicomweb"]["sop_instance_uids"]
            .as_array()
            .unwrap()
            .len(),
        files.len(),
        "the whole series"
    );
    assert_eq!(
        doc["slide"]["dimensions"]["width"], 2220,
        "{}",
        doc["slide"]
    );
}

/// The watch's listing of an archive goes page by page (QIDO-RS `limit`/`offset`): pages of one
/// or two series list the same slide series as one page, non-slide series left out; a listing
/// over its limit is an error, not an unbounded list.
#[test]
fn an_archive_is_listed_in_pages() {
    let cmu = require!(data("slides/dicom/cmu-1-small-region"));
    let boxes = require!(data("slides/dicom/boxes"));
    let sm = require!(data("slides/dicom/sm-image"));
    let orthanc = require!(Orthanc::start(None));
    for dir in [&cmu, &boxes, &sm] {
        orthanc.upload_dir(dir);
    }
    orthanc.create_dicom(serde_json::json!({"Modality": "OT", "SeriesDescription": "a photo"}));
    let root = format!("dicomweb+{}", orthanc.dicomweb());
    let list = |page: u64, max: u64| {
        let cfg = DicomWebConfig {
            qido_page: page,
            max_listed_series: max,
            ..DicomWebConfig::default()
        };
        tessera_slide::slide::native::dicomweb::list_slide_series(&root, &cfg)
    };
    let whole = list(500, 1_000_000).unwrap();
    assert_eq!(whole.len(), 3, "{whole:?}");
    assert!(whole.iter().all(|s| s.url.starts_with(&root)));
    // 12 instances, 2 and 1.
    assert_eq!(whole.iter().map(|s| s.instances).sum::<u64>(), 15);
    // This server honours `limit`, so pages of one or two must be followed to the end.
    let (status, body) = orthanc.get(&format!(
        "{}/series?Modality=SM&limit=1",
        orthanc.dicomweb()
    ));
    assert_eq!(status, 200);
    let one: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(one.len(), 1);
    for page in [1, 2] {
        assert_eq!(list(page, 1_000_000).unwrap(), whole, "pages of {page}");
    }
    let err = list(1, 2).unwrap_err();
    assert_eq!(err.kind(), "limit_exceeded", "{err}");
}
