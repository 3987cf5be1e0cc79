//! `tessera serve`: every route over HTTP against a real server process, traversal attempts,
//! tokens, label images, quiz rounds, and the viewer and a quiz round in headless Chromium.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::browser::{chromium, Browser};
use crate::require;
use crate::util::*;

/// A running `tessera serve`.
struct Server {
    child: Child,
    /// host:port
    addr: String,
    /// The URL it printed.
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(results: &Path, extra: &[&OsStr]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("serve")
        .arg(results)
        .args(extra)
        .env_remove("TESSERA_SERVE_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tessera serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("Tessera viewer on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let addr = url
        .strip_prefix("http://")
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    Server { child, addr, url }
}

struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request with a raw target (sent as given, so encoded traversal attempts reach
/// the server unchanged).
fn request(addr: &str, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<BTreeMap<_, _>>();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v == "chunked")
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + n]);
        b = &b[end + 2 + n + 2..];
    }
}

/// Decodes a JPEG tile (the image crate here is built without JPEG).
fn jpeg(bytes: &[u8]) -> image::RgbImage {
    let mut d = zune_jpeg::JpegDecoder::new(std::io::Cursor::new(bytes));
    let px = d.decode().unwrap();
    let (w, h) = d.dimensions().unwrap();
    image::RgbImage::from_raw(w as u32, h as u32, px).unwrap()
}

fn get(addr: &str, target: &str) -> Reply {
    request(addr, "GET", target, &[], &[])
}

/// `tessera analyze SLIDE --out OUT --inference tract`, which must succeed.
fn analyze_into(slide: &Path, out: &Path) {
    analyze_into_with(slide, out, &[]);
}

/// [`analyze_into`] with more analysis flags.
fn analyze_into_with(slide: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        OsStr::new("analyze"),
        slide.as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
        OsStr::new("--inference"),
        OsStr::new("tract"),
        OsStr::new("-q"),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let o = tessera(&args, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// `tessera serve OUT` on 127.0.0.1 (a free port), reading slides from `slides` if given.
fn serve_local(out: &Path, slides: Option<&Path>, extra: &[&OsStr]) -> Server {
    let mut args = vec![OsStr::new("--bind"), OsStr::new("127.0.0.1:0")];
    if let Some(d) = slides {
        args.extend([OsStr::new("--slides"), d.as_os_str()]);
    }
    args.extend_from_slice(extra);
    serve(out, &args)
}

/// CMU-1-Small-Region analysed into a fresh temporary results folder (each test its own).
fn results() -> Option<(tempfile::TempDir, PathBuf, String)> {
    let slide = data("slides/aperio/CMU-1-Small-Region.svs")?;
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("results");
    analyze_into(&slide, &out);
    Some((t, out, "CMU-1-Small-Region.svs".to_string()))
}

fn slide_dir() -> PathBuf {
    data("slides/aperio/CMU-1-Small-Region.svs")
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

/// patches.csv as (x, y, side, p(cell-dense)).
fn patches(case: &Path) -> Vec<(i64, i64, i64, f32)> {
    let text = std::fs::read_to_string(case.join("patches.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let i = |n: &str| header.iter().position(|h| *h == n).unwrap();
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (
                f[i("minx")].parse().unwrap(),
                f[i("miny")].parse().unwrap(),
                f[i("width")].parse().unwrap(),
                f[i("prob_cell-dense")].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_route_answers_and_tiles_match_the_slide() {
    let (_t, out, id) = require!(results());
    let dir = slide_dir();
    let srv = serve_local(&out, Some(&dir), &[]);
    let a = srv.addr.as_str();
    assert_eq!(srv.url, format!("http://{a}/"));

    for page in ["/", "/progress", &format!("/view/{id}")] {
        let r = get(a, page);
        assert_eq!(r.status, 200, "{page}");
        assert!(r.headers["content-type"].starts_with("text/html"));
        assert!(r.headers["content-security-policy"].contains("default-src 'self'"));
        assert!(
            !r.text().contains("http://") && !r.text().contains("https://"),
            "{page} names an outside address"
        );
    }
    let osd = get(a, "/static/openseadragon.min.js");
    assert_eq!(osd.status, 200);
    assert!(osd.text().starts_with("//! openseadragon 6.1.1"));
    assert_eq!(get(a, "/static/../Cargo.toml").status, 404);
    assert_eq!(get(a, "/view/nothing").status, 404);

    let list = get(a, "/api/slides").json();
    let s = &list["slides"][0];
    assert_eq!(list["slides"].as_array().unwrap().len(), 1);
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["viewable"], true, "{s}");
    let case = out.join(&id);
    let stored: Value =
        serde_json::from_slice(&std::fs::read(case.join("result.json")).unwrap()).unwrap();
    assert_eq!(get(a, &format!("/api/slides/{id}")).json(), stored);
    let gj = get(a, &format!("/api/slides/{id}/geojson"));
    assert_eq!(gj.status, 200);
    assert_eq!(gj.json()["type"], "FeatureCollection");
    // Slide QC's layer: qc-mask.png's raster with clean pixels transparent (this slide is
    // clean: all of it).
    let qc = get(a, &format!("/api/slides/{id}/qc.png"));
    assert_eq!(qc.status, 200);
    assert_eq!(qc.headers["content-type"], "image/png");
    let layer = image::load_from_memory(&qc.body).unwrap().to_rgba8();
    let mask = image::open(case.join("qc-mask.png")).unwrap();
    assert_eq!(layer.dimensions(), (mask.width(), mask.height()));
    assert!(layer.pixels().all(|p| p.0[3] == 0));

    // A click inside a patch gives that patch's probabilities; outside any patch, 404.
    let ps = patches(&case);
    let (x, y, side, p) = ps[ps.len() / 2];
    let hit = get(
        a,
        &format!(
            "/api/slides/{id}/patch?x={}&y={}",
            x + side / 2,
            y + side / 2
        ),
    )
    .json();
    assert_eq!(hit["patch"]["x"], x);
    assert!((hit["probabilities"]["cell-dense"].as_f64().unwrap() - p as f64).abs() < 1e-6);
    assert_eq!(
        get(a, &format!("/api/slides/{id}/patch?x=1&y=1")).status,
        404
    );
    assert_eq!(
        get(a, &format!("/api/slides/{id}/patch?x=a&y=1")).status,
        400
    );

    // Deep Zoom: the descriptor, tiles with their overlap, the pixels of the slide.
    let dzi = get(a, &format!("/slides/{id}.dzi")).text();
    assert!(
        dzi.contains("TileSize=\"254\"") && dzi.contains("Overlap=\"1\""),
        "{dzi}"
    );
    assert!(dzi.contains("Height=\"2967\" Width=\"2220\""), "{dzi}");
    let t00 = get(a, &format!("/slides/{id}_files/12/0_0.jpeg"));
    assert_eq!(t00.status, 200);
    assert_eq!(t00.headers["content-type"], "image/jpeg");
    let img = jpeg(&t00.body);
    assert_eq!(img.dimensions(), (255, 255));
    let slide =
        tessera::Slide::open(data("slides/aperio/CMU-1-Small-Region.svs").unwrap()).unwrap();
    let want = slide
        .read_region(
            tessera::geom::Level0Px { x: 0, y: 0 },
            0,
            tessera::geom::Size::new(255, 255),
        )
        .unwrap();
    let mad = img
        .as_raw()
        .iter()
        .zip(want.as_raw())
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .sum::<f64>()
        / want.as_raw().len() as f64;
    assert!(mad < 4.0, "tile differs from the slide by {mad} on average");
    let inner = jpeg(&get(a, &format!("/slides/{id}_files/11/1_1.jpeg")).body);
    assert_eq!(inner.dimensions(), (256, 256));
    for missing in [
        format!("/slides/{id}_files/12/9_0.jpeg"),
        format!("/slides/{id}_files/13/0_0.jpeg"),
        format!("/slides/{id}_files/12/0_0.png"),
        format!("/slides/{id}_files/x/0_0.jpeg"),
        format!("/slides/{id}_files/12/-1_0.jpeg"),
    ] {
        assert_eq!(get(a, &missing).status, 404, "{missing}");
    }
    // Cached tiles carry an ETag; asking again with it gives 304.
    let etag = t00.headers["etag"].clone();
    assert!(t00.headers["cache-control"].contains("max-age"));
    let again = request(
        a,
        "GET",
        &format!("/slides/{id}_files/12/0_0.jpeg"),
        &[("If-None-Match", &etag)],
        &[],
    );
    assert_eq!(again.status, 304);

    // Heatmap tiles: the colour of the probability inside analysed patches, transparent
    // elsewhere; above the threshold only.
    let (x, y, side, p) = ps
        .iter()
        .copied()
        .max_by(|a, b| a.3.total_cmp(&b.3))
        .unwrap();
    let (cx, cy) = (x + side / 2, y + side / 2);
    let (col, row) = (cx / 254, cy / 254);
    let ov = get(
        a,
        &format!("/overlay/{id}_files/12/{col}_{row}.png?cmap=viridis"),
    );
    assert_eq!(ov.status, 200);
    assert_eq!(ov.headers["content-type"], "image/png");
    let ov = image::load_from_memory(&ov.body).unwrap().to_rgba8();
    let off = |c: i64| if c > 0 { 1 } else { 0 };
    let px = ov.get_pixel(
        (cx - col * 254 + off(col)) as u32,
        (cy - row * 254 + off(row)) as u32,
    );
    let v = tessera::imaging::colour::viridis(p);
    assert_eq!(px.0, [v[0], v[1], v[2], 255]);
    let corner = image::load_from_memory(&get(a, &format!("/overlay/{id}_files/12/0_0.png")).body)
        .unwrap()
        .to_rgba8();
    assert_eq!(
        corner.get_pixel(0, 0).0[3],
        0,
        "no patch at the slide's corner"
    );
    let high = image::load_from_memory(
        &get(
            a,
            &format!(
                "/overlay/{id}_files/12/{col}_{row}.png?threshold={}",
                p + 0.001
            ),
        )
        .body,
    )
    .unwrap()
    .to_rgba8();
    assert!(
        high.pixels().all(|p| p.0[3] == 0),
        "nothing is above a threshold above the maximum"
    );
    assert_eq!(
        get(a, &format!("/overlay/{id}_files/12/0_0.png?cmap=rainbow")).status,
        400
    );
    assert_eq!(
        get(a, &format!("/overlay/{id}_files/12/0_0.png?class=tumour")).status,
        400
    );
    assert_eq!(
        get(a, &format!("/overlay/{id}_files/12/0_0.png?threshold=2")).status,
        400
    );
    for cmap in ["jet", "coolwarm"] {
        assert_eq!(
            get(a, &format!("/overlay/{id}_files/10/0_0.png?cmap={cmap}")).status,
            200
        );
    }
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let (_t, out, _id) = require!(results());
    let mut srv = serve_local(&out, None, &[]);
    assert_eq!(get(&srv.addr, "/api/slides").status, 200);
    let ok = Command::new("kill")
        .args(["-TERM", &srv.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = srv.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "still running 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    assert!(TcpStream::connect(&srv.addr).is_err(), "still listening");
}

#[test]
fn ids_cannot_reach_anything_outside_the_configured_folders() {
    let (t, out, id) = require!(results());
    let dir = slide_dir();
    // A second case whose slide is a symbolic link in the slide folder pointing out of it.
    let links = t.path().join("linked-slides");
    std::fs::create_dir_all(&links).unwrap();
    let real = data("slides/aperio/CMU-1-Small-Region.svs").unwrap();
    std::os::unix::fs::symlink(&real, links.join("linked.svs")).unwrap();
    analyze_into(&links.join("linked.svs"), &out);
    let srv = serve_local(&out, Some(&links), &[]);
    let a = srv.addr.as_str();
    let list = get(a, "/api/slides").json();
    let linked = list["slides"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "linked.svs")
        .unwrap()
        .clone();
    assert_eq!(linked["viewable"], false, "{linked}");
    assert_eq!(get(a, "/slides/linked.svs.dzi").status, 404);
    assert_eq!(get(a, "/slides/linked.svs_files/12/0_0.jpeg").status, 404);
    // The other case's slide is outside --slides too.
    assert_eq!(get(a, &format!("/slides/{id}.dzi")).status, 404);
    let passwd = std::fs::read("/etc/passwd").unwrap_or_default();
    for target in [
        "/slides/..%2F..%2F..%2F..%2Fetc%2Fpasswd.dzi",
        "/slides/%2e%2e.dzi",
        "/slides/%2e%2e%2f%2e%2e%2fetc%2fpasswd_files/12/0_0.jpeg",
        "/slides/%2Fetc%2Fpasswd.dzi",
        "/slides//etc/passwd.dzi",
        "/slides/../../etc/passwd.dzi",
        "/api/slides/..",
        "/api/slides/..%2Flinked.svs",
        "/api/slides/%2e%2e%2f%2e%2e%2fetc%2fpasswd/geojson",
        &format!("/api/slides/{}/geojson", dir.join("x").display()),
        "/overlay/..%2F..%2Fresults_files/12/0_0.png",
        "/static/..%2F..%2F..%2FCargo.toml",
        "/static/%2Fetc%2Fpasswd",
        "/view/..%2F..%2Fetc%2Fpasswd",
        "/api/progress?trainee=..%2F..%2Fetc",
    ] {
        let r = get(a, target);
        assert!(
            matches!(r.status, 400 | 404),
            "{target}: {} {}",
            r.status,
            r.text()
        );
        assert!(
            passwd.is_empty()
                || !r
                    .body
                    .windows(passwd.len().min(16))
                    .any(|w| w == &passwd[..passwd.len().min(16)]),
            "{target}"
        );
    }
    // Without --slides no slide file is read at all (results only), and the list says why.
    drop(srv);
    let srv = serve_local(&out, None, &[]);
    assert_eq!(get(&srv.addr, &format!("/slides/{id}.dzi")).status, 404);
    let list = get(&srv.addr, "/api/slides").json();
    assert!(
        list["slides"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["viewable"] == false && s["why_not"].as_str().unwrap().contains("--slides")),
        "{list}"
    );
    assert_eq!(get(&srv.addr, &format!("/api/slides/{id}")).status, 200);
    // With the real folder given, the first case is viewable, the link is not.
    drop(srv);
    let srv = serve_local(&out, Some(&dir), &[]);
    assert_eq!(get(&srv.addr, &format!("/slides/{id}.dzi")).status, 200);
}

#[test]
fn off_loopback_every_request_needs_the_token() {
    let (_t, out, id) = require!(results());
    let dir = slide_dir();
    // 127.0.0.2 is not 127.0.0.1: a token is generated and printed.
    let srv = serve(
        &out,
        &[
            OsStr::new("--bind"),
            OsStr::new("127.0.0.2:0"),
            OsStr::new("--slides"),
            dir.as_os_str(),
        ],
    );
    let a = srv.addr.as_str();
    let token = srv
        .url
        .split("?token=")
        .nth(1)
        .expect("a token in the printed URL")
        .to_string();
    assert!(token.len() >= 32, "{token}");
    for target in [
        "/",
        "/api/slides",
        &format!("/slides/{id}.dzi"),
        "/static/viewer.js",
        "/nothing",
    ] {
        let r = get(a, target);
        assert_eq!(r.status, 401, "{target}");
        assert!(r.text().contains("token"), "{}", r.text());
        let wrong = request(
            a,
            "GET",
            target,
            &[("Authorization", "Bearer 0123456789abcdef0123456789abcdef")],
            &[],
        );
        assert_eq!(wrong.status, 401, "{target}");
        assert!(wrong.text().contains("wrong token"));
    }
    let bearer = format!("Bearer {token}");
    assert_eq!(
        request(a, "GET", "/api/slides", &[("Authorization", &bearer)], &[]).status,
        200
    );
    let first = get(a, &format!("/?token={token}"));
    assert_eq!(first.status, 200);
    let cookie = first.headers["set-cookie"]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(first.headers["set-cookie"].contains("HttpOnly"));
    assert_eq!(
        request(
            a,
            "GET",
            &format!("/slides/{id}.dzi"),
            &[("Cookie", &cookie)],
            &[]
        )
        .status,
        200
    );
    assert_eq!(
        request(
            a,
            "GET",
            "/api/slides",
            &[("Cookie", "tessera_token=nope")],
            &[]
        )
        .status,
        401
    );
    drop(srv);
    // A token given on the command line must not be trivially short.
    let o = tessera_str(&[
        "serve",
        out.to_str().unwrap(),
        "--bind",
        "127.0.0.2:0",
        "--token",
        "short",
    ]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("16 characters"));
}

#[test]
fn label_images_are_served_only_with_allow_label() {
    let (_t, out, id) = require!(results());
    let dir = slide_dir();
    let target = format!("/api/slides/{id}/label");
    let with = serve_local(&out, Some(&dir), &[OsStr::new("--allow-label")]);
    let r = get(&with.addr, &target);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["content-type"], "image/png");
    // The label as the slide stores it.
    let slide =
        tessera::Slide::open(data("slides/aperio/CMU-1-Small-Region.svs").unwrap()).unwrap();
    let want = slide.read_associated_image("label").unwrap();
    assert_eq!(image::load_from_memory(&r.body).unwrap().to_rgb8(), want);
    assert_eq!(get(&with.addr, "/api/slides/nothing/label").status, 404);
    let without = serve_local(&out, Some(&dir), &[]);
    let r = get(&without.addr, &target);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("--allow-label"), "{}", r.text());
    // The page never links to it then.
    let list = get(&without.addr, "/api/slides").json();
    assert_eq!(list["allow_label"], false);
}

#[test]
fn quiz_rounds_are_scored_against_the_expert_or_the_ai_and_saved() {
    let (_t, out, id) = require!(results());
    let dir = slide_dir();
    let srv = serve_local(&out, Some(&dir), &[]);
    let a = srv.addr.as_str();
    let case = out.join(&id);
    let ps = patches(&case);
    // Expected from patches.csv: regions are 4-connected patches with p ≥ 0.5.
    let positive: Vec<_> = ps.iter().filter(|p| p.3 >= 0.5).collect();
    let best = ps
        .iter()
        .copied()
        .max_by(|a, b| a.3.total_cmp(&b.3))
        .unwrap();
    let marks = json!([
        {"x": best.0 + best.2 / 2, "y": best.1 + best.2 / 2},
        {"x": 5, "y": 5},
    ]);
    let post = |body: &Value| {
        request(
            a,
            "POST",
            &format!("/api/quiz/{id}"),
            &[],
            body.to_string().as_bytes(),
        )
    };
    let r = post(&json!({"trainee": "Ana María", "marks": marks}));
    assert_eq!(r.status, 200, "{}", r.text());
    let s = &r.json()["score"];
    assert_eq!(s["reference"], "ai");
    assert!(s["reference_description"]
        .as_str()
        .unwrap()
        .contains("no expert annotation"));
    assert_eq!(s["hits"], 1);
    assert_eq!(s["false_marks"], 1);
    let regions = s["regions"].as_u64().unwrap();
    assert!(
        regions >= 1 && regions <= positive.len() as u64,
        "{regions} regions of {} positive patches",
        positive.len()
    );
    assert_eq!(s["misses"].as_u64().unwrap(), regions - 1);
    // Saved in the viewer's database, under the typed name (single-user mode: no account).
    let answer = r.json()["answer"].as_i64().unwrap();
    let stored = stored_answers(&out);
    assert_eq!(stored.len(), 1);
    let (row, user, trainee, case_id, record) = &stored[0];
    assert_eq!(
        (*row, *user, trainee.as_str(), case_id.as_str()),
        (answer, None, "Ana María", id.as_str())
    );
    assert_eq!(&record["score"], s);
    assert_eq!(
        record["slide_fingerprint"],
        get(a, &format!("/api/slides/{id}")).json()["slide"]["fingerprint"]["sha256"]
    );

    // An expert annotation (QuPath export) in the case folder takes precedence.
    let poly = |x0: i64, y0: i64, s: i64| {
        json!({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s], [x0, y0]]]},
               "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}})
    };
    let expert = json!({"type": "FeatureCollection", "features": [poly(100, 100, 200), poly(1000, 1000, 300), poly(1800, 2500, 100)]});
    std::fs::write(case.join("expert.geojson"), expert.to_string()).unwrap();
    let r = post(
        &json!({"trainee": "Ana María", "marks": [{"x": 150, "y": 150}, {"x": 1100, "y": 1290}, {"x": 1200, "y": 1200}, {"x": 900, "y": 900}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let s = &r.json()["score"];
    assert_eq!(s["reference"], "expert");
    assert_eq!(
        (
            s["regions"].as_u64(),
            s["hits"].as_u64(),
            s["misses"].as_u64(),
            s["false_marks"].as_u64()
        ),
        (Some(3), Some(2), Some(1), Some(1))
    );
    assert_eq!(s["marks"], json!([0, 1, 1, null]));
    assert_eq!(s["found"], json!([true, true, false]));
    assert_eq!(
        (s["sensitivity"].as_f64(), s["precision"].as_f64()),
        (Some(2.0 / 3.0), Some(0.75))
    );
    // The FROC-style curve, as the marks were placed: region 0, region 1, region 1 again, false.
    let curve: Vec<(u64, u64, f64)> = s["froc"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["marks"].as_u64().unwrap(),
                p["false_marks"].as_u64().unwrap(),
                p["sensitivity"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        curve,
        vec![
            (1, 0, 1.0 / 3.0),
            (2, 0, 2.0 / 3.0),
            (3, 0, 2.0 / 3.0),
            (4, 1, 2.0 / 3.0)
        ]
    );
    // The false mark at (900, 900): the AI's probability there, from patches.csv.
    let under = ps
        .iter()
        .find(|p| (p.0..p.0 + p.2).contains(&900) && (p.1..p.1 + p.2).contains(&900))
        .map(|p| p.3);
    let f = &s["false_mark_details"][0];
    assert_eq!(f["mark"], 3);
    assert_eq!(f["expert_label"], Value::Null);
    match under {
        Some(p) => assert!(
            (f["ai_probability"].as_f64().unwrap() - p as f64).abs() < 1e-3,
            "{f}"
        ),
        None => assert_eq!(f["ai_probability"], Value::Null),
    }

    // A question about one class: the expert's regions of that class are to be found, the
    // others tell a false mark what lies there (label and note as the expert wrote them).
    let mut stroma = poly(850, 850, 100);
    stroma["properties"] =
        json!({"classification": {"name": "Stroma"}, "description": "Loose stroma, not tumour."});
    let mut features = expert["features"].as_array().unwrap().clone();
    features[0]["properties"]["description"] = json!("Invasive front");
    features.push(stroma);
    let expert2 = json!({"type": "FeatureCollection", "features": features});
    std::fs::write(case.join("expert.geojson"), expert2.to_string()).unwrap();
    let r = post(
        &json!({"trainee": "Ana María", "class": "tumor", "marks": [{"x": 900, "y": 900}, {"x": 150, "y": 150}]}),
    );
    let d = r.json();
    let s = &d["score"];
    assert_eq!(
        (
            s["regions"].as_u64(),
            s["hits"].as_u64(),
            s["false_marks"].as_u64()
        ),
        (Some(3), Some(1), Some(1))
    );
    assert_eq!(s["false_mark_details"][0]["expert_label"], "Stroma");
    assert_eq!(
        d["reference"]["context"][0]["note"],
        "Loose stroma, not tumour."
    );
    assert_eq!(d["reference"]["regions"][0]["label"], "Tumor");
    assert_eq!(d["reference"]["regions"][0]["note"], "Invasive front");
    std::fs::write(case.join("expert.geojson"), expert.to_string()).unwrap();

    // Progress lists the rounds, oldest first.
    let p = get(a, "/api/progress?trainee=Ana%20Mar%C3%ADa").json();
    let rounds = p["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    assert_eq!(rounds[0]["score"]["reference"], "ai");
    assert_eq!(rounds[1]["score"]["reference"], "expert");
    // Bad rounds are refused and nothing is saved.
    for bad in [
        json!({"trainee": "../../etc", "marks": []}),
        json!({"trainee": ".hidden", "marks": []}),
        json!({"marks": []}),
        json!({"trainee": "x", "marks": "no"}),
    ] {
        let r = post(&bad);
        assert!(matches!(r.status, 400 | 422), "{bad}: {}", r.status);
    }
    assert_eq!(
        request(
            a,
            "POST",
            "/api/quiz/nothing",
            &[],
            b"{\"trainee\":\"x\",\"marks\":[]}"
        )
        .status,
        404
    );
    let stored = stored_answers(&out);
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|r| r.2 == "Ana María"));
    assert!(
        !out.join(".quiz").exists(),
        "answers are no longer loose files"
    );
}

/// The viewer database's answers: (row, account id, trainee, case, record), in order.
fn stored_answers(out: &Path) -> Vec<(i64, Option<i64>, String, String, Value)> {
    let db = viewer_db(out);
    let mut q = db
        .prepare("SELECT id, user_id, trainee, case_id, record FROM answers ORDER BY id")
        .unwrap();
    q.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            serde_json::from_str(&r.get::<_, String>(4)?).unwrap(),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Waits until `expr` is true in the page.
fn wait_true(b: &mut Browser, session: &str, expr: &str, what: &str) {
    let t = Instant::now();
    while b.eval(session, expr) != Value::Bool(true) {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A real mouse click (DevTools input events) on the slide at a level-0 point.
fn click_image_point(b: &mut Browser, session: &str, x: i64, y: i64) {
    let at = b.eval(
        session,
        &format!(
            "(() => {{ const p = tesseraViewer.world.getItemAt(0).imageToViewerElementCoordinates(new OpenSeadragon.Point({x}, {y})); \
               const r = document.getElementById('osd').getBoundingClientRect(); return [r.left + p.x, r.top + p.y]; }})()"
        ),
    );
    let (cx, cy) = (at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
    for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
        b.call(
            Some(session),
            "Input.dispatchMouseEvent",
            json!({"type": kind, "x": cx, "y": cy, "button": "left", "clickCount": 1}),
        );
    }
    b.eval(session, "new Promise(r => setTimeout(() => r(true), 300))");
}

/// Distinct colours in an image (sampled).
fn colours(img: &image::RgbImage) -> usize {
    img.pixels()
        .step_by(5)
        .map(|p| p.0)
        .collect::<std::collections::HashSet<_>>()
        .len()
}

#[test]
fn the_viewer_and_a_quiz_round_in_chromium() {
    let (_t, out, id) = require!(results());
    let Some(exe) = chromium() else { return };
    let dir = slide_dir();
    let srv = serve_local(&out, Some(&dir), &[]);
    let origin = format!("http://{}/", srv.addr);
    let mut b = Browser::start(&exe);

    // The viewer: slide tiles, then the heatmap layer; toggling removes the layer.
    let v = b.visit(&format!("{origin}view/{id}"), 1400);
    assert!(v.errors.is_empty(), "{:#?}", v.errors);
    let s = v.session.clone();
    let loaded = "(() => { const w = tesseraViewer.world; if (w.getItemCount() < 2) return false; \
                  for (let i = 0; i < w.getItemCount(); i++) if (!w.getItemAt(i).getFullyLoaded()) return false; return true; })()";
    wait_true(&mut b, &s, loaded, "slide and heatmap tiles");
    let with = b.screenshot(&s, "viewer-heatmap");
    assert!(b
        .eval(&s, "document.getElementById('scalebar-text').textContent")
        .as_str()
        .unwrap()
        .contains("µm"));
    assert_eq!(
        b.eval(&s, "document.querySelectorAll('#regions li').length"),
        json!(5)
    );
    b.eval(&s, "document.getElementById('show').click()");
    wait_true(&mut b, &s, "tesseraViewer.world.getItemCount() === 1 && tesseraViewer.world.getItemAt(0).getFullyLoaded()", "the heatmap to go");
    b.eval(&s, "new Promise(r => setTimeout(() => r(true), 500))");
    let without = b.screenshot(&s, "viewer-slide-only");
    assert!(
        colours(&with) > 500 && colours(&without) > 500,
        "tiles drawn"
    );
    let changed = with
        .pixels()
        .zip(without.pixels())
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        changed > (with.width() * with.height() / 20) as usize,
        "the heatmap changed only {changed} pixels"
    );
    // Clicking a patch shows its probabilities; a top region jumps there.
    b.eval(&s, "document.getElementById('show').click()");
    let ps = patches(&out.join(&id));
    let best = ps
        .iter()
        .copied()
        .max_by(|a, b| a.3.total_cmp(&b.3))
        .unwrap();
    click_image_point(&mut b, &s, best.0 + best.2 / 2, best.1 + best.2 / 2);
    wait_true(
        &mut b,
        &s,
        "document.querySelector('#patch table') !== null",
        "the patch's probabilities",
    );
    let shown = b
        .eval(&s, "document.getElementById('patch').textContent")
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        shown.contains(&format!("P(cell-dense){:.3}", best.3)),
        "{shown}"
    );
    let zoom = "tesseraViewer.viewport.getZoom(true)";
    let before = b.eval(&s, zoom).as_f64().unwrap();
    b.eval(&s, "document.querySelector('#regions li').click()");
    b.eval(&s, "new Promise(r => setTimeout(() => r(true), 2500))");
    let after = b.eval(&s, zoom).as_f64().unwrap();
    assert!(
        after > 2.0 * before,
        "the top region did not zoom in: {before} → {after}"
    );
    let centre = b.eval(&s, "(() => { const c = tesseraViewer.world.getItemAt(0).viewportToImageCoordinates(tesseraViewer.viewport.getCenter(true)); return [c.x, c.y]; })()");
    let top =
        &get(&srv.addr, &format!("/api/slides/{id}")).json()["top_regions"][0]["centre_level0"];
    assert!(
        (centre[0].as_f64().unwrap() - top["x"].as_f64().unwrap()).abs() < 10.0,
        "{centre} vs {top}"
    );
    assert!(
        (centre[1].as_f64().unwrap() - top["y"].as_f64().unwrap()).abs() < 10.0,
        "{centre} vs {top}"
    );
    // Slide QC: the verdict is shown, and the artefact layer is added over the slide.
    assert_eq!(
        b.eval(&s, "document.getElementById('qcverdict').textContent"),
        json!("PASS")
    );
    let items = b
        .eval(&s, "tesseraViewer.world.getItemCount()")
        .as_i64()
        .unwrap();
    b.eval(&s, "document.getElementById('qc').click()");
    wait_true(
        &mut b,
        &s,
        &format!("tesseraViewer.world.getItemCount() === {}", items + 1),
        "the QC layer",
    );
    let (requests, errors) = b.seen(&s);
    assert!(errors.is_empty(), "{errors:#?}");
    let elsewhere: Vec<_> = requests
        .iter()
        .filter(|u| !u.starts_with(&origin) && !u.starts_with("data:"))
        .collect();
    assert!(elsewhere.is_empty(), "{elsewhere:#?}");
    assert!(requests
        .iter()
        .any(|u| u.contains("_files/") && u.ends_with(".jpeg")));
    assert!(requests
        .iter()
        .any(|u| u.starts_with(&format!("{origin}overlay/"))));

    // A quiz round: the AI layer is hidden, the trainee clicks two points, reveals.
    let q = b.visit(&format!("{origin}view/{id}?quiz=1"), 1400);
    let s = q.session.clone();
    wait_true(&mut b, &s, "tesseraViewer.world.getItemCount() === 1 && tesseraViewer.world.getItemAt(0).getFullyLoaded()", "slide tiles");
    assert_eq!(
        b.eval(&s, "document.getElementById('ai').hidden"),
        json!(true)
    );
    b.eval(
        &s,
        "document.getElementById('trainee').value = 'Quiz Tester'",
    );
    let ps = patches(&out.join(&id));
    let best = ps
        .iter()
        .copied()
        .max_by(|a, b| a.3.total_cmp(&b.3))
        .unwrap();
    for (x, y) in [(best.0 + best.2 / 2, best.1 + best.2 / 2), (60, 60)] {
        click_image_point(&mut b, &s, x, y);
    }
    assert_eq!(
        b.eval(&s, "document.getElementById('markcount').textContent"),
        json!("2")
    );
    b.eval(&s, "document.getElementById('reveal').click()");
    wait_true(&mut b, &s, "!document.getElementById('score').hidden && tesseraViewer.world.getItemCount() === 2 && tesseraViewer.world.getItemAt(1).getFullyLoaded()", "the score and the heatmap");
    b.eval(&s, "new Promise(r => setTimeout(() => r(true), 500))");
    b.screenshot(&s, "quiz-revealed");
    let text = b
        .eval(&s, "document.getElementById('score').textContent")
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("Scored against the AI's regions"), "{text}");
    assert!(text.contains("false marks: 1"), "{text}");
    assert_eq!(
        b.eval(&s, "document.querySelectorAll('.mark.hit').length"),
        json!(1)
    );
    assert_eq!(
        b.eval(&s, "document.querySelectorAll('.mark.false').length"),
        json!(1)
    );
    let (_, errors) = b.seen(&s);
    assert!(errors.is_empty(), "{errors:#?}");
    // The saved answer is the one shown.
    let stored = stored_answers(&out);
    assert_eq!(stored.len(), 1);
    let (_, _, trainee, case_id, record) = &stored[0];
    assert_eq!(
        (trainee.as_str(), case_id.as_str()),
        ("Quiz Tester", id.as_str())
    );
    assert_eq!(record["score"]["hits"], 1);
    assert_eq!(record["score"]["false_marks"], 1);
    assert_eq!(record["marks"].as_array().unwrap().len(), 2);
    // The progress page lists it.
    let pg = b.visit(&format!("{origin}progress?trainee=Quiz%20Tester"), 1000);
    wait_true(
        &mut b,
        &pg.session,
        "document.querySelectorAll('#rounds tbody tr').length === 1",
        "the progress table",
    );
    b.screenshot(&pg.session, "quiz-progress");
    let list = b.visit(&origin, 1000);
    wait_true(
        &mut b,
        &list.session,
        "document.querySelectorAll('#cases tbody tr').length === 1",
        "the slide list",
    );
    b.screenshot(&list.session, "viewer-index");
}

#[test]
fn slides_analysed_while_the_viewer_runs_appear_in_the_list() {
    let (_t, out, id) = require!(results());
    let dir = slide_dir();
    let srv = serve_local(&out, Some(&dir), &[]);
    let a = srv.addr.as_str();
    assert_eq!(
        get(a, "/api/slides").json()["slides"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let small = data("slides/aperio/small.svs").unwrap();
    analyze_into(&small, &out);
    // The list is refreshed at most every 5 s.
    let t = Instant::now();
    let ids = loop {
        let list = get(a, "/api/slides").json();
        let ids: Vec<String> = list["slides"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        if ids.len() == 2 || t.elapsed() > Duration::from_secs(60) {
            break ids;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(ids, vec![id.clone(), "small.svs".to_string()]);
    assert_eq!(get(a, "/slides/small.svs.dzi").status, 200);
    assert_eq!(get(a, &format!("/slides/{id}.dzi")).status, 200);

    // A slide analysed again into its folder (another threshold, another stride): the viewer
    // shows the new result and the new patches, without a restart.
    let before = get(a, &format!("/api/slides/{id}")).json();
    assert_eq!(before["parameters"]["threshold"], 0.5);
    let cmu = data("slides/aperio/CMU-1-Small-Region.svs").unwrap();
    analyze_into_with(&cmu, &out, &["--threshold", "0.75", "--stride", "112"]);
    let t = Instant::now();
    let after = loop {
        let _ = get(a, "/api/slides"); // the listing is what refreshes the catalogue
        let r = get(a, &format!("/api/slides/{id}")).json();
        if r["parameters"]["threshold"] == 0.75 || t.elapsed() > Duration::from_secs(60) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        after["parameters"]["threshold"], 0.75,
        "the new result.json is served"
    );
    assert_eq!(after["parameters"]["stride_pixels"], 112);
    assert!(
        after["patches_analysed"].as_u64().unwrap() > before["patches_analysed"].as_u64().unwrap(),
        "half the stride, more patches"
    );
    // The patch under a point comes from the new patches.csv: take a patch that starts where
    // no patch of the first analysis started (half a stride away).
    let csv = std::fs::read_to_string(out.join(&id).join("patches.csv")).unwrap();
    let rows: Vec<Vec<i64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').take(2).map(|v| v.parse().unwrap()).collect())
        .collect();
    let step = rows
        .iter()
        .map(|r| r[0])
        .filter(|&x| x > rows[0][0])
        .min()
        .unwrap()
        - rows[0][0];
    let new = rows
        .iter()
        .find(|r| ((r[0] - rows[0][0]) / step) % 2 == 1)
        .expect("a patch at an odd step");
    let p = get(
        a,
        &format!("/api/slides/{id}/patch?x={}&y={}", new[0] + 2, new[1] + 2),
    )
    .json();
    assert_eq!(
        [
            p["patch"]["x"].as_i64().unwrap(),
            p["patch"]["y"].as_i64().unwrap()
        ],
        [new[0], new[1]],
        "{p}"
    );
}

/// A model whose config.json names no positive class (as WSInfer's zoo models do): the viewer
/// takes the class the report scored (the last), for the slide list, the overlay tiles and the
/// quiz, as the report does.
#[test]
fn without_a_named_positive_class_the_viewer_uses_the_reports() {
    let slide = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let bundled = tessera::pipeline::default_model_dir().unwrap();
    std::fs::copy(bundled.join("model.onnx"), model.join("model.onnx")).unwrap();
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(bundled.join("config.json")).unwrap()).unwrap();
    assert!(config["tessera"]
        .as_object_mut()
        .unwrap()
        .remove("positive_class")
        .is_some());
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let out = t.path().join("results");
    analyze_into_with(&slide, &out, &["--model", model.to_str().unwrap()]);
    let server = serve_local(&out, Some(&slide_dir()), &[]);
    let a = &server.addr;
    let list: Value = serde_json::from_slice(&get(a, "/api/slides").body).unwrap();
    assert_eq!(list["slides"][0]["positive_class"], "cell-dense", "{list}");
    let id = list["slides"][0]["id"].as_str().unwrap().to_string();
    let tile = get(a, &format!("/overlay/{id}_files/12/0_0.png"));
    assert_eq!(tile.status, 200, "{}", String::from_utf8_lossy(&tile.body));
}

/// A dense model's result: the viewer's overlay draws the class map (heatmap-<class>.png,
/// cells of `class_map_cell_um`), not the tiles' means.
#[test]
fn a_dense_models_overlay_draws_its_class_map() {
    let slide = require!(data("slides/aperio/CMU-1-Small-Region.svs"));
    require!(python_with(&["onnx", "numpy"]));
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("dense");
    build_random("tiny", &model, &DENSE_TINY);
    let out = t.path().join("results");
    analyze_into_with(&slide, &out, &["--model", model.to_str().unwrap()]);
    let id = "CMU-1-Small-Region.svs";
    let case = out.join(id);
    let r: Value =
        serde_json::from_slice(&std::fs::read(case.join("result.json")).unwrap()).unwrap();
    let cell_l0 = r["parameters"]["class_map_cell_um"].as_f64().unwrap()
        / r["slide"]["mpp"]["x"].as_f64().unwrap();
    let map = image::open(case.join("heatmap-class1.png"))
        .unwrap()
        .to_luma8();
    let srv = serve_local(&out, Some(&slide_dir()), &[]);
    let a = srv.addr.as_str();
    // Cells whose map value is above the threshold and differs from its tile's mean: the
    // overlay (level 12 is full resolution, tiles of 254 with a 1-pixel overlap) shows the
    // cell's own colour.
    let means: Vec<(i64, i64, i64, f32)> =
        tessera::results::PatchTable::read(&case.join("patches.csv"))
            .unwrap()
            .rows
            .into_iter()
            .map(|r| (r.minx, r.miny, r.width as i64, r.probs[1]))
            .collect();
    let mut checked = 0;
    for (cx, cy, v) in map
        .enumerate_pixels()
        .filter(|(_, _, p)| p.0[0] >= 140)
        .map(|(x, y, p)| (x, y, p.0[0]))
        .step_by(997)
        .take(6)
    {
        let (x, y) = (
            ((cx as f64 + 0.5) * cell_l0) as i64,
            ((cy as f64 + 0.5) * cell_l0) as i64,
        );
        let (col, row) = (x / 254, y / 254);
        let tile = get(a, &format!("/overlay/{id}_files/12/{col}_{row}.png"));
        assert_eq!(tile.status, 200);
        let tile = image::load_from_memory(&tile.body).unwrap().to_rgba8();
        let off = |c: i64| if c > 0 { 1 } else { 0 };
        let px = tile.get_pixel(
            (x - col * 254 + off(col)) as u32,
            (y - row * 254 + off(row)) as u32,
        );
        let want = tessera::imaging::colour::viridis(v as f32 / 255.0);
        assert_eq!(px.0, [want[0], want[1], want[2], 255], "cell ({cx}, {cy})");
        let mean = means
            .iter()
            .find(|&&(px, py, side, _)| x >= px && y >= py && x < px + side && y < py + side)
            .map(|m| m.3);
        if mean.is_some_and(|m| (m - v as f32 / 255.0).abs() > 0.02) {
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "too few cells differ from their tile's mean to tell the layers apart"
    );
}

/// `tessera users OUT ARGS…` with `input` on standard input (the password).
fn users(out: &Path, args: &[&str], input: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("users")
        .arg(out)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A logged-in browser's cookie and CSRF token.
struct Login {
    cookie: String,
    csrf: String,
}

impl Login {
    fn cookie_header(&self) -> String {
        format!("tessera_session={}", self.cookie)
    }
}

/// `POST /api/login`; the reply, and the session when it succeeded.
fn login_as(a: &str, name: &str, password: &str, extra: &[(&str, &str)]) -> (Reply, Option<Login>) {
    let body = json!({"name": name, "password": password}).to_string();
    let r = request(a, "POST", "/api/login", extra, body.as_bytes());
    let login = (r.status == 200).then(|| {
        let set = &r.headers["set-cookie"];
        let cookie = set
            .strip_prefix("tessera_session=")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        Login {
            cookie,
            csrf: r.json()["csrf"].as_str().unwrap().to_string(),
        }
    });
    (r, login)
}

#[test]
fn with_accounts_every_route_needs_a_login_and_answers_belong_to_the_account() {
    let (_t, out, id) = require!(results());
    // Accounts, added by the administrator; passwords from standard input.
    for (name, role, pw) in [
        ("Dr Teach", "instructor", "instructor password"),
        ("ana", "trainee", "ana's long password"),
        ("ben", "trainee", "ben's long password"),
    ] {
        let o = users(&out, &["add", name, "--role", role], &format!("{pw}\n"));
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    for (args, pw, why) in [
        (
            vec!["add", "carl", "--role", "trainee"],
            "short\n",
            "at least 10",
        ),
        (
            vec!["add", "ANA", "--role", "trainee"],
            "long enough pw\n",
            "exists already",
        ),
        (
            vec!["add", "<script>alert(1)</script>", "--role", "trainee"],
            "long enough pw\n",
            "a name has",
        ),
        (vec!["passwd", "nobody"], "long enough pw\n", "no account"),
    ] {
        let o = users(&out, &args, pw);
        assert_eq!(code(&o), 3, "{args:?}");
        assert!(stderr(&o).contains(why), "{args:?}: {}", stderr(&o));
    }
    let o = users(&out, &["list"], "");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "ana\ttrainee\nben\ttrainee\nDr Teach\tinstructor\n"
    );
    // The password is stored only as an Argon2id hash.
    let db = viewer_db(&out);
    let phc: String = db
        .query_row("SELECT password FROM users WHERE name = 'ana'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    drop(db);

    let srv = serve_local(&out, Some(&slide_dir()), &[]);
    let a = srv.addr.as_str();
    // Without a session: pages redirect to the login page, everything else is refused; the
    // login page and the static assets are public.
    for page in ["/", "/progress", &format!("/view/{id}")] {
        let r = get(a, page);
        assert_eq!(r.status, 303, "{page}");
        assert_eq!(r.headers["location"], "/login");
    }
    for route in [
        "/api/slides".to_string(),
        format!("/api/slides/{id}"),
        format!("/api/slides/{id}/geojson"),
        format!("/slides/{id}.dzi"),
        format!("/slides/{id}_files/0/0_0.jpeg"),
        format!("/overlay/{id}_files/0/0_0.png"),
        "/api/progress?trainee=ana".into(),
        "/api/users".into(),
        "/api/me".into(),
        "/api/courses".into(),
        "/api/courses/1".into(),
        "/api/courses/1/export".into(),
        "/api/overview".into(),
        "/api/answers.csv".into(),
    ] {
        assert_eq!(get(a, &route).status, 401, "{route}");
    }
    for page in [
        "/courses",
        "/courses/1",
        "/courses/new",
        "/courses/1/edit",
        "/overview",
    ] {
        assert_eq!(get(a, page).status, 303, "{page}");
    }
    for (m, route) in [
        ("POST", "/api/courses"),
        ("PUT", "/api/courses/1"),
        ("POST", "/api/courses/1/cases/0/answer"),
        ("POST", "/api/logout"),
    ] {
        assert_eq!(request(a, m, route, &[], b"{}").status, 401, "{m} {route}");
    }
    assert_eq!(get(a, "/login").status, 200);
    assert_eq!(get(a, "/static/pages.js").status, 200);
    let round = json!({"marks": [{"x": 10, "y": 10}]}).to_string();
    let quiz = format!("/api/quiz/{id}");
    assert_eq!(request(a, "POST", &quiz, &[], round.as_bytes()).status, 401);

    // Log in: a fresh 256-bit session id in an HttpOnly, SameSite=Strict cookie.
    let (r, _) = login_as(a, "ana", "wrong password!", &[]);
    assert_eq!(r.status, 401);
    assert!(!r.headers.contains_key("set-cookie"));
    let (r, ana) = login_as(a, "ANA", "ana's long password", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let ana = ana.unwrap();
    let set = &r.headers["set-cookie"];
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "{set}");
    assert!(ana.cookie.len() == 64 && ana.cookie.bytes().all(|b| b.is_ascii_hexdigit()));
    let c = ana.cookie_header();
    let me = request(a, "GET", "/api/me", &[("Cookie", &c)], b"").json();
    assert_eq!(
        (me["name"].as_str(), me["role"].as_str()),
        (Some("ana"), Some("trainee"))
    );
    assert_eq!(request(a, "GET", "/", &[("Cookie", &c)], b"").status, 200);
    assert_eq!(
        request(a, "GET", "/api/slides", &[("Cookie", &c)], b"").status,
        200
    );
    let dzi = format!("/slides/{id}.dzi");
    assert_eq!(request(a, "GET", &dzi, &[("Cookie", &c)], b"").status, 200);

    // State changes need the CSRF token, from this origin.
    let csrf = ana.csrf.as_str();
    for headers in [
        vec![("Cookie", c.as_str())],
        vec![("Cookie", c.as_str()), ("X-CSRF-Token", "0000")],
        vec![
            ("Cookie", c.as_str()),
            ("X-CSRF-Token", csrf),
            ("Origin", "http://evil.example"),
        ],
    ] {
        let r = request(a, "POST", &quiz, &headers, round.as_bytes());
        assert_eq!(r.status, 403, "{headers:?}: {}", r.text());
    }
    let ok = [("Cookie", c.as_str()), ("X-CSRF-Token", csrf)];
    // Another trainee's name is refused; the round is the account's.
    let as_ben = json!({"trainee": "ben", "marks": []}).to_string();
    let r = request(a, "POST", &quiz, &ok, as_ben.as_bytes());
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(stored_answers(&out).is_empty());
    // A trainee's own threshold is ignored: the AI's regions stay those of the analysis.
    let greedy = json!({"marks": [], "threshold": 2.0}).to_string();
    let r = request(a, "POST", &quiz, &ok, greedy.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["score"]["regions"].as_u64().unwrap() >= 1,
        "{}",
        r.text()
    );
    db_delete_answers(&out);
    let r = request(a, "POST", &quiz, &ok, round.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let stored = stored_answers(&out);
    assert_eq!(stored.len(), 1);
    let db = viewer_db(&out);
    let ana_id: i64 = db
        .query_row("SELECT id FROM users WHERE name = 'ana'", [], |r| r.get(0))
        .unwrap();
    assert_eq!((stored[0].1, stored[0].2.as_str()), (Some(ana_id), "ana"));
    // Progress: one's own; another trainee's is refused; the list of accounts is for
    // instructors.
    let p = request(a, "GET", "/api/progress", &[("Cookie", &c)], b"").json();
    assert_eq!(p["rounds"].as_array().unwrap().len(), 1);
    for route in ["/api/progress?trainee=ben", "/api/users"] {
        assert_eq!(
            request(a, "GET", route, &[("Cookie", &c)], b"").status,
            403,
            "{route}"
        );
    }
    let (_, ben) = login_as(a, "ben", "ben's long password", &[]);
    let ben = ben.unwrap();
    let p = request(
        a,
        "GET",
        "/api/progress",
        &[("Cookie", &ben.cookie_header())],
        b"",
    )
    .json();
    assert_eq!(
        (p["trainee"].as_str(), p["rounds"].as_array().unwrap().len()),
        (Some("ben"), 0)
    );
    let (_, teach) = login_as(a, "dr teach", "instructor password", &[]);
    let t = teach.unwrap().cookie_header();
    let p = request(
        a,
        "GET",
        "/api/progress?trainee=ana",
        &[("Cookie", &t)],
        b"",
    )
    .json();
    assert_eq!(p["rounds"][0]["score"], stored[0].4["score"]);
    let u = request(a, "GET", "/api/users", &[("Cookie", &t)], b"").json();
    assert_eq!(u["users"].as_array().unwrap().len(), 3);
    assert!(!u.to_string().contains("argon2"), "no hashes in the list");

    // Tampered cookies and the CSRF token in place of the cookie open nothing.
    let mut bad = ana.cookie.clone().into_bytes();
    bad[10] = if bad[10] == b'a' { b'b' } else { b'a' };
    for cookie in [
        String::from_utf8(bad).unwrap(),
        ana.csrf.clone(),
        "x".repeat(64),
    ] {
        let h = format!("tessera_session={cookie}");
        assert_eq!(
            request(a, "GET", "/api/me", &[("Cookie", &h)], b"").status,
            401
        );
    }
    // Session fixation: a session id planted before login is ended, never adopted.
    let planted = ben.cookie_header();
    let (r, ana2) = login_as(a, "ana", "ana's long password", &[("Cookie", &planted)]);
    assert_eq!(r.status, 200);
    assert_ne!(ana2.as_ref().unwrap().cookie, ben.cookie);
    assert_eq!(
        request(a, "GET", "/api/me", &[("Cookie", &planted)], b"").status,
        401
    );
    // Logging out ends the session.
    let ana2 = ana2.unwrap();
    let h2 = ana2.cookie_header();
    let r = request(
        a,
        "POST",
        "/api/logout",
        &[("Cookie", &h2), ("X-CSRF-Token", &ana2.csrf)],
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(r.headers["set-cookie"].contains("Max-Age=0"));
    assert_eq!(
        request(a, "GET", "/api/me", &[("Cookie", &h2)], b"").status,
        401
    );

    // Wrong passwords are throttled: after five, even the right one waits.
    for _ in 0..5 {
        assert_eq!(login_as(a, "ben", "not ben's password", &[]).0.status, 401);
    }
    let (r, _) = login_as(a, "ben", "ben's long password", &[]);
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.headers["retry-after"].parse::<u64>().unwrap() >= 1);
    // Other names are not held up by it.
    assert_eq!(login_as(a, "ana", "ana's long password", &[]).0.status, 200);
    // Guesses sent at once are counted before they are checked: of 12 at the same moment for
    // a fresh name, exactly 5 reach the password check.
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..12)
            .map(|i| {
                scope.spawn(move || {
                    login_as(a, "carl", &format!("guess number {i}"), &[])
                        .0
                        .status
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        7,
        "{statuses:?}"
    );
    // A page rebinding its own domain to 127.0.0.1 reaches nothing, not even the login.
    let evil = [("Host", "evil.example:80")];
    assert_eq!(request(a, "GET", "/login", &evil, b"").status, 403);
    let body = json!({"name": "ana", "password": "ana's long password"}).to_string();
    assert_eq!(
        request(a, "POST", "/api/login", &evil, body.as_bytes()).status,
        403
    );

    // The administrator disables an account while the viewer runs: its session ends at once.
    let o = users(&out, &["disable", "ana"], "");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        request(a, "GET", "/api/me", &[("Cookie", &c)], b"").status,
        401
    );
    assert_eq!(login_as(a, "ana", "ana's long password", &[]).0.status, 401);
    // A new password ends the sessions too; the new one works, the old does not.
    let o = users(&out, &["passwd", "Dr Teach"], "a brand new password\n");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        request(a, "GET", "/api/me", &[("Cookie", &t)], b"").status,
        401
    );
    assert_eq!(
        login_as(a, "Dr Teach", "instructor password", &[]).0.status,
        401
    );
    assert_eq!(
        login_as(a, "Dr Teach", "a brand new password", &[])
            .0
            .status,
        200
    );
}

#[test]
fn answers_saved_as_files_by_an_older_viewer_are_imported_once() {
    let (_t, out, id) = require!(results());
    let dir = out.join(".quiz/Ana/").join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, hits) in [(1, 2), (2, 3)] {
        let record = json!({"trainee": "Ana", "case": id, "time": format!("2026-01-0{i}T10:00:00.000Z"), "score": {"hits": hits}});
        std::fs::write(dir.join(format!("{i}.json")), record.to_string()).unwrap();
    }
    std::fs::write(dir.join("broken.json"), "{").unwrap();
    for _ in 0..2 {
        let srv = serve_local(&out, None, &[]);
        let p = get(&srv.addr, "/api/progress?trainee=Ana").json();
        let hits: Vec<_> = p["rounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["score"]["hits"].clone())
            .collect();
        assert_eq!(
            hits,
            vec![json!(2), json!(3)],
            "imported once, oldest first"
        );
    }
    assert!(dir.join("1.json").is_file(), "the files are left in place");
}

#[test]
fn a_trainee_logs_in_answers_and_sees_their_progress_in_chromium() {
    let (_t, out, id) = require!(results());
    let Some(exe) = chromium() else { return };
    let o = users(
        &out,
        &["add", "ana", "--role", "trainee"],
        "ana's long password\n",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let srv = serve_local(&out, Some(&slide_dir()), &[]);
    let origin = format!("http://{}/", srv.addr);
    let mut b = Browser::start(&exe);

    // The slide list sends the browser to the login page; a wrong password says so.
    let s = browser_login(&mut b, &origin, "ana", "not the password", false);
    b.screenshot(&s, "accounts-login-refused");
    let s = browser_login(&mut b, &origin, "ana", "ana's long password", true);
    let who = b.eval(&s, "document.getElementById('who').textContent");
    assert!(who.as_str().unwrap().contains("ana (trainee)"), "{who}");
    b.screenshot(&s, "accounts-slide-list");

    // A quiz round: the name is the account's and cannot be edited; the answer is saved. The
    // expert's label and note carry HTML, which must show as text and never run.
    let html = "<img src=x onerror=\"document.title='pwned'\">";
    let expert = json!({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[1000, 1000], [1600, 1000], [1600, 1600], [1000, 1600], [1000, 1000]]]},
         "properties": {"classification": {"name": format!("Tumor {html}")}, "description": format!("Note {html}")}}]});
    std::fs::write(out.join(&id).join("expert.geojson"), expert.to_string()).unwrap();
    let q = b.visit(&format!("{origin}view/{id}?quiz=1"), 1400);
    let s = q.session.clone();
    wait_true(&mut b, &s, "tesseraViewer.world.getItemCount() === 1 && tesseraViewer.world.getItemAt(0).getFullyLoaded() && document.getElementById('trainee').readOnly", "slide tiles");
    assert_eq!(
        b.eval(&s, "document.getElementById('trainee').value"),
        json!("ana")
    );
    click_image_point(&mut b, &s, 60, 60);
    b.eval(&s, "document.getElementById('reveal').click()");
    wait_true(&mut b, &s, "!document.getElementById('score').hidden && document.getElementById('score').textContent.includes('answer')", "the score");
    let text = b.eval(&s, "document.getElementById('score').textContent");
    let text = text.as_str().unwrap();
    assert!(text.contains("of ana"), "{text}");
    assert!(text.contains("1. missed — Tumor <img src=x"), "{text}");
    assert!(text.contains(": Note <img"), "{text}");
    assert!(text.contains("Sensitivity 0 % · precision 0 %"), "{text}");
    assert!(
        text.contains("mark 1: outside the expert's regions"),
        "{text}"
    );
    assert_eq!(
        b.eval(&s, "document.querySelectorAll('#score img').length"),
        json!(0)
    );
    assert_ne!(b.eval(&s, "document.title"), json!("pwned"));
    let (_, errors) = b.seen(&s);
    assert!(errors.is_empty(), "{errors:#?}");
    b.screenshot(&s, "accounts-quiz-scored");
    let stored = stored_answers(&out);
    assert_eq!(stored.len(), 1);
    assert!(stored[0].1.is_some(), "tied to the account");
    assert_eq!(stored[0].4["marks"].as_array().unwrap().len(), 1);

    // The progress page shows the round, for this account only.
    let p = b.visit(&format!("{origin}progress"), 1000);
    let s = p.session.clone();
    wait_true(
        &mut b,
        &s,
        "document.querySelectorAll('#rounds tbody tr').length === 1",
        "the progress table",
    );
    assert_eq!(
        b.eval(&s, "document.getElementById('trainee').readOnly"),
        json!(true)
    );
    b.screenshot(&s, "accounts-progress");
    // Logging out returns to the login page; the pages are closed again.
    b.eval(
        &s,
        "setTimeout(() => document.getElementById('logout').click(), 0); true",
    );
    std::thread::sleep(Duration::from_millis(500));
    wait_true(
        &mut b,
        &s,
        "location.pathname === '/login'",
        "the login page",
    );
    let v = b.visit(&format!("{origin}progress"), 1000);
    assert_eq!(b.eval(&v.session, "location.pathname"), json!("/login"));
}

/// A square feature of a QuPath export, level-0 pixels.
fn square_feature(x0: i64, y0: i64, s: i64, class: &str) -> Value {
    json!({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s], [x0, y0]]]},
           "properties": {"objectType": "annotation", "classification": {"name": class}}})
}

#[test]
fn instructors_build_share_and_score_courses_trainees_only_answer_them() {
    let (_t, out, id) = require!(results());
    for (name, role, pw) in [
        ("teach", "instructor", "instructor password"),
        ("ana", "trainee", "ana's long password"),
    ] {
        let o = users(&out, &["add", name, "--role", role], &format!("{pw}\n"));
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    let srv = serve_local(&out, Some(&slide_dir()), &[]);
    let a = srv.addr.as_str();
    let (_, t) = login_as(a, "teach", "instructor password", &[]);
    let t = t.unwrap();
    let (_, ana) = login_as(a, "ana", "ana's long password", &[]);
    let ana = ana.unwrap();
    let (tc, ac) = (t.cookie_header(), ana.cookie_header());
    let as_teach = [("Cookie", tc.as_str()), ("X-CSRF-Token", t.csrf.as_str())];
    let as_ana = [("Cookie", ac.as_str()), ("X-CSRF-Token", ana.csrf.as_str())];

    let expert = json!({"type": "FeatureCollection", "features": [
        square_feature(100, 100, 200, "Tumor"), square_feature(1000, 1000, 300, "Tumor"),
        square_feature(1800, 2500, 100, "Stroma")]});
    let course = json!({"format": "tessera-course/1", "title": "Cellularity <b>1</b>",
        "description": "Three cases. <script>alert(1)</script>",
        "cases": [
            {"slide": id, "question": {"kind": "regions", "class": "Tumor"},
             "truth": {"kind": "regions", "geojson": expert}, "notes": "Look at the **front**. <img src=x onerror=alert(1)>", "show_ai": true},
            {"slide": id, "question": {"kind": "diagnosis", "options": ["benign", "malignant"]},
             "truth": {"kind": "label", "label": "malignant"}, "notes": "", "show_ai": false},
            {"slide": id, "question": {"kind": "top_k", "k": 2, "class": "cell-dense"}, "truth": {"kind": "ai"}}]});
    let body = course.to_string();
    // Only instructors create courses.
    assert_eq!(
        request(a, "POST", "/api/courses", &as_ana, body.as_bytes()).status,
        403
    );
    let r = request(a, "POST", "/api/courses", &as_teach, body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let cid = r.json()["id"].as_i64().unwrap();
    // The trainee sees the questions, never the truth or the notes before answering.
    let seen = request(
        a,
        "GET",
        &format!("/api/courses/{cid}"),
        &[("Cookie", &ac)],
        b"",
    );
    assert_eq!(seen.status, 200);
    let text = seen.text();
    for secret in ["geojson", "malignant\"}", "front", "label\":"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    assert!(seen.json()["description_html"]
        .as_str()
        .unwrap()
        .contains("&lt;script&gt;"));
    for (m, route) in [
        ("PUT", format!("/api/courses/{cid}")),
        ("GET", format!("/api/courses/{cid}/export")),
    ] {
        assert_eq!(
            request(a, m, &route, &as_ana, body.as_bytes()).status,
            403,
            "{m} {route}"
        );
    }

    // Case 1: regions of Tumor; the stroma square is context.
    let answer = |n: usize, v: Value| {
        request(
            a,
            "POST",
            &format!("/api/courses/{cid}/cases/{n}/answer"),
            &as_ana,
            v.to_string().as_bytes(),
        )
    };
    let r = answer(
        0,
        json!({"marks": [{"x": 150, "y": 150}, {"x": 1850, "y": 2550}, {"x": 700, "y": 700}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let d = r.json();
    let s = &d["score"];
    assert_eq!(
        (
            s["regions"].as_u64(),
            s["hits"].as_u64(),
            s["false_marks"].as_u64()
        ),
        (Some(2), Some(1), Some(2))
    );
    assert_eq!(s["false_mark_details"][0]["expert_label"], "Stroma");
    assert_eq!(
        (s["sensitivity"].as_f64(), s["precision"].as_f64()),
        (Some(0.5), Some(1.0 / 3.0))
    );
    let notes = d["notes_html"].as_str().unwrap();
    assert!(
        notes.contains("<strong>front</strong>")
            && notes.contains("&lt;img")
            && !notes.contains("<img"),
        "{notes}"
    );
    assert_eq!(d["show_ai"], true);
    assert_eq!(d["next"], 1);
    // Case 2: a diagnosis; only the options count.
    assert_eq!(answer(1, json!({"diagnosis": "unsure"})).status, 400);
    let d = answer(1, json!({"diagnosis": "benign"})).json();
    assert_eq!(
        (
            d["correct"].as_bool(),
            d["label"].as_str(),
            d["show_ai"].as_bool()
        ),
        (Some(false), Some("malignant"), Some(false))
    );
    // Case 3: at most k marks, scored against the AI's regions (P ≥ the analysis threshold).
    let three = json!({"marks": [{"x": 1, "y": 1}, {"x": 2, "y": 2}, {"x": 3, "y": 3}]});
    assert_eq!(answer(2, three).status, 400);
    let ps = patches(&out.join(&id));
    let best = ps
        .iter()
        .copied()
        .max_by(|a, b| a.3.total_cmp(&b.3))
        .unwrap();
    let d = answer(
        2,
        json!({"marks": [{"x": best.0 + best.2 / 2, "y": best.1 + best.2 / 2}]}),
    )
    .json();
    assert_eq!(d["score"]["reference"], "ai");
    assert_eq!(
        (d["score"]["hits"].as_u64(), d["next"].clone()),
        (Some(1), Value::Null)
    );
    assert_eq!(answer(3, json!({"marks": []})).status, 404);
    // The answers are the trainee's, with the course and case they answered.
    let stored = stored_answers(&out);
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|r| r.2 == "ana" && r.4["course"] == cid));
    assert_eq!(
        stored
            .iter()
            .map(|r| r.4["item"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );

    // Progress: the wrong diagnosis waits in "review my misses"; the instructor's overview
    // puts it first among the hardest cases; every answer exports as CSV.
    let p = get_with(a, "/api/progress", &ac).json();
    let review: Vec<Value> = p["summary"]["review"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["course"].clone())
        .collect();
    assert_eq!(review, vec![json!([cid, 1])]);
    assert_eq!(p["summary"]["by_class"]["diagnosis"]["mean"], 0.0);
    assert_eq!(p["summary"]["by_class"]["Tumor"]["mean"], 0.5);
    assert_eq!(get_with(a, "/api/overview", &ac).status, 403);
    assert_eq!(get_with(a, "/api/answers.csv", &ac).status, 403);
    let o = get_with(a, "/api/overview", &tc).json();
    assert_eq!(o["trainees"][0]["trainee"], "ana");
    assert_eq!(o["trainees"][0]["score"]["n"], 3);
    assert_eq!(o["cases"][0]["course"], json!([cid, 1]));
    let csv = get_with(a, "/api/answers.csv", &tc);
    assert!(csv.headers["content-disposition"].contains("tessera-answers.csv"));
    let lines: Vec<String> = csv.text().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(
        lines[2].contains(",diagnosis,") && lines[2].contains("\"benign\",false"),
        "{}",
        lines[2]
    );

    // Export, then import: the same course under a new id.
    let ex = request(
        a,
        "GET",
        &format!("/api/courses/{cid}/export"),
        &[("Cookie", &tc)],
        b"",
    );
    assert_eq!(ex.status, 200);
    assert!(ex.headers["content-disposition"].contains("attachment"));
    let doc = ex.json();
    assert_eq!(doc["cases"][0]["truth"]["geojson"], expert);
    assert_eq!(
        doc["cases"][0]["fingerprint"],
        get_with(a, &format!("/api/slides/{id}"), &tc).json()["slide"]["fingerprint"]["sha256"]
    );
    let r = request(a, "POST", "/api/courses", &as_teach, &ex.body);
    assert_eq!(r.status, 200, "{}", r.text());
    let cid2 = r.json()["id"].as_i64().unwrap();
    assert_ne!(cid, cid2);
    let again = request(
        a,
        "GET",
        &format!("/api/courses/{cid2}/export"),
        &[("Cookie", &tc)],
        b"",
    )
    .json();
    assert_eq!(again["cases"], doc["cases"]);
    // A broken or mismatched course file gets a clear error and changes nothing.
    let mut other_slide = doc.clone();
    other_slide["cases"][1]["fingerprint"] = json!("0".repeat(64));
    let mut missing = doc.clone();
    missing["cases"][2]["slide"] = json!("not-analysed.svs");
    for (bad, why) in [
        (
            b"{\"format\": \"tessera-course/1\", \"title\": ".to_vec(),
            "not a course document",
        ),
        (other_slide.to_string().into_bytes(), "case 2 ("),
        (
            missing.to_string().into_bytes(),
            "case 3 (not-analysed.svs): no analysed slide",
        ),
    ] {
        let r = request(a, "POST", "/api/courses", &as_teach, &bad);
        assert_eq!(r.status, 422, "{}", r.text());
        assert!(r.text().contains(why), "{}", r.text());
    }
    let list = get_with(a, "/api/courses", &ac).json();
    assert_eq!(list["courses"].as_array().unwrap().len(), 2);
    assert_eq!(list["role"], "trainee");
    // An edit replaces the course; a trainee's view follows.
    let mut edited = doc.clone();
    edited["title"] = json!("Cellularity 2");
    let r = request(
        a,
        "PUT",
        &format!("/api/courses/{cid}"),
        &as_teach,
        edited.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        get_with(a, &format!("/api/courses/{cid}"), &ac).json()["title"],
        "Cellularity 2"
    );
    assert_eq!(
        request(
            a,
            "PUT",
            "/api/courses/999",
            &as_teach,
            edited.to_string().as_bytes()
        )
        .status,
        404
    );
    // Cases keep their ids through edits: moving the diagnosis case first moves the trainee's
    // miss with it, and the answers stay with their cases.
    let ids: Vec<Value> = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert!(
        ids.iter()
            .all(|i| i.as_str().is_some_and(|i| i.len() == 16)),
        "{ids:?}"
    );
    let mut moved = edited.clone();
    moved["cases"].as_array_mut().unwrap().swap(0, 1);
    let r = request(
        a,
        "PUT",
        &format!("/api/courses/{cid}"),
        &as_teach,
        moved.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let p = get_with(a, "/api/progress", &ac).json();
    assert_eq!(p["summary"]["review"][0]["course"], json!([cid, 0]));
    assert_eq!(p["summary"]["review"].as_array().unwrap().len(), 1);
    let mut twice = moved.clone();
    twice["cases"][1]["id"] = twice["cases"][0]["id"].clone();
    let r = request(
        a,
        "PUT",
        &format!("/api/courses/{cid}"),
        &as_teach,
        twice.to_string().as_bytes(),
    );
    assert_eq!(r.status, 422);
    assert!(r.text().contains("unique in the course"), "{}", r.text());
}

/// GET with a session cookie header value.
fn get_with(addr: &str, target: &str, cookie: &str) -> Reply {
    request(addr, "GET", target, &[("Cookie", cookie)], b"")
}

/// Opens the viewer (which sends the browser to /login) and logs in through the form; with
/// `ok`, waits for the slide list, else for the refusal. Returns the page's session.
fn browser_login(b: &mut Browser, origin: &str, name: &str, pw: &str, ok: bool) -> String {
    let v = b.visit(origin, 1000);
    let s = v.session.clone();
    assert_eq!(b.eval(&s, "location.pathname"), json!("/login"));
    b.eval(
        &s,
        &format!(
            "document.getElementById('name').value = {}; \
             document.getElementById('password').value = {}; \
             setTimeout(() => document.querySelector('#login button').click(), 0); true",
            json!(name),
            json!(pw)
        ),
    );
    if ok {
        std::thread::sleep(Duration::from_millis(500));
        wait_true(b, &s, "location.pathname === '/' && document.querySelectorAll('#cases tbody tr').length >= 1 && !!document.getElementById('who')", "the slide list");
    } else {
        wait_true(
            b,
            &s,
            "document.getElementById('failed').textContent.includes('wrong name or password')",
            "the refusal",
        );
    }
    s
}

/// Clicks "Log out" on a page and waits for the login page.
fn browser_logout(b: &mut Browser, s: &str) {
    b.eval(
        s,
        "setTimeout(() => document.getElementById('logout').click(), 0); true",
    );
    std::thread::sleep(Duration::from_millis(500));
    wait_true(b, s, "location.pathname === '/login'", "the login page");
}

#[test]
fn a_course_from_the_editor_to_the_trainees_progress_in_chromium() {
    let (_t, out, id) = require!(results());
    let Some(exe) = chromium() else { return };
    for (name, role, pw) in [
        ("teach", "instructor", "instructor password"),
        ("ana", "trainee", "ana's long password"),
    ] {
        let o = users(&out, &["add", name, "--role", role], &format!("{pw}\n"));
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    // The expert's annotation, as a QuPath export the instructor uploads.
    let expert = json!({"type": "FeatureCollection", "features": [
        square_feature(1000, 1000, 600, "Tumor"), square_feature(300, 2300, 400, "Tumor"),
        square_feature(1700, 300, 300, "Stroma")]});
    let srv = serve_local(&out, Some(&slide_dir()), &[]);
    let origin = format!("http://{}/", srv.addr);
    let mut b = Browser::start(&exe);

    // The instructor builds a two-case course in the editor.
    let s = browser_login(&mut b, &origin, "teach", "instructor password", true);
    browser_logout(&mut b, &s);
    let s = browser_login(&mut b, &origin, "teach", "instructor password", true);
    let e = b.visit(&format!("{origin}courses/new"), 1200);
    let s2 = e.session.clone();
    wait_true(
        &mut b,
        &s2,
        "document.querySelectorAll('#caselist fieldset').length === 1",
        "the editor",
    );
    let fill = format!(
        "(() => {{ document.getElementById('title').value = 'Cellularity, week 1'; \
          document.getElementById('description').value = 'Find the **cell-dense** areas.'; \
          let e = document.querySelector('#caselist fieldset').els; \
          e.slide.value = {id}; e.kind.value = 'regions'; e.cls.value = 'Tumor'; \
          e.truth.value = 'regions'; e.truth.dispatchEvent(new Event('change')); e.geojson.value = {gj}; \
          e.notes.value = 'The dense nests are the **tumour**.'; e.showAi.checked = true; \
          document.getElementById('addcase').click(); \
          e = document.querySelectorAll('#caselist fieldset')[1].els; \
          e.kind.value = 'diagnosis'; e.kind.dispatchEvent(new Event('change')); \
          e.options.value = 'benign\\nmalignant'; e.truth.value = 'label'; e.truth.dispatchEvent(new Event('change')); e.label.value = 'malignant'; \
          e.showAi.checked = false; return true; }})()",
        id = json!(id),
        gj = json!(expert.to_string()),
    );
    assert_eq!(b.eval(&s2, &fill), json!(true));
    b.screenshot(&s2, "course-editor");
    b.eval(
        &s2,
        "setTimeout(() => document.getElementById('save').click(), 0); true",
    );
    // Saved, the editor reopens on the stored course.
    wait_true(&mut b, &s2, "location.pathname === '/courses/1/edit' && document.querySelectorAll('#caselist fieldset').length === 2", "the saved course");
    assert_eq!(
        b.eval(&s2, "document.getElementById('title').value"),
        json!("Cellularity, week 1")
    );
    browser_logout(&mut b, &s2);
    drop(s);

    // The trainee opens the course, answers the first case, sees the feedback and the notes.
    let s = browser_login(&mut b, &origin, "ana", "ana's long password", true);
    let c = b.visit(&format!("{origin}courses/1"), 1000);
    let s = {
        drop(s);
        c.session.clone()
    };
    wait_true(
        &mut b,
        &s,
        "document.querySelectorAll('#items li').length === 2",
        "the course page",
    );
    assert_eq!(
        b.eval(&s, "document.getElementById('tools').hidden"),
        json!(true)
    );
    b.screenshot(&s, "course-page");
    let q = b.visit(&format!("{origin}view/{id}?course=1&item=0"), 1400);
    let s = q.session.clone();
    wait_true(&mut b, &s, "tesseraViewer.world.getItemCount() === 1 && tesseraViewer.world.getItemAt(0).getFullyLoaded() && document.getElementById('question').textContent.length > 0", "the case");
    assert_eq!(
        b.eval(&s, "document.getElementById('question').textContent"),
        json!("Mark the regions of Tumor.")
    );
    // One mark in the first tumour region, one in the stroma.
    for (x, y) in [(1300, 1300), (1850, 450)] {
        click_image_point(&mut b, &s, x, y);
    }
    b.eval(&s, "document.getElementById('reveal').click()");
    wait_true(&mut b, &s, "!document.getElementById('score').hidden && !!document.getElementById('next') && tesseraViewer.world.getItemCount() === 2", "the feedback");
    b.eval(&s, "new Promise(r => setTimeout(() => r(true), 800))");
    let text = b
        .eval(&s, "document.getElementById('score').textContent")
        .as_str()
        .unwrap()
        .to_string();
    for want in [
        "Regions found: 1 of 2",
        "Sensitivity 50 % · precision 50 %",
        "1. found — Tumor",
        "2. missed — Tumor",
        "mark 2: the expert labelled this Stroma",
        "The AI heatmap is now shown",
    ] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }
    assert_eq!(
        b.eval(
            &s,
            "document.querySelector('#score .notes strong').textContent"
        ),
        json!("tumour")
    );
    b.screenshot(&s, "course-case-feedback");
    // The second case: a diagnosis, the AI kept hidden.
    b.eval(
        &s,
        "setTimeout(() => document.getElementById('next').click(), 0); true",
    );
    std::thread::sleep(Duration::from_millis(500));
    wait_true(&mut b, &s, "location.search.includes('item=1') && document.getElementById('diagnosis').options.length === 2", "the second case");
    b.eval(&s, "document.getElementById('diagnosis').value = 'malignant'; document.getElementById('reveal').click(); true");
    wait_true(
        &mut b,
        &s,
        "document.getElementById('score').textContent.includes('Correct: malignant')",
        "the verdict",
    );
    assert_eq!(
        b.eval(&s, "document.getElementById('ai').hidden"),
        json!(true)
    );
    assert!(b
        .eval(&s, "document.getElementById('score').textContent")
        .as_str()
        .unwrap()
        .contains("does not show the AI"));
    let (_, errors) = b.seen(&s);
    assert!(errors.is_empty(), "{errors:#?}");
    b.screenshot(&s, "course-diagnosis");

    // Progress: both answers, under the trainee's account.
    let p = b.visit(&format!("{origin}progress"), 1000);
    wait_true(
        &mut b,
        &p.session,
        "document.querySelectorAll('#rounds tbody tr').length === 2",
        "the progress table",
    );
    b.screenshot(&p.session, "course-progress");
    let stored = stored_answers(&out);
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].4["score"]["hits"], 1);
    assert_eq!(stored[1].4["correct"], true);
    assert_eq!(
        b.eval(
            &p.session,
            "document.querySelectorAll('#scorechart circle').length"
        ),
        json!(2)
    );
    assert_eq!(
        b.eval(
            &p.session,
            "document.querySelectorAll('#byclass tbody tr').length"
        ),
        json!(2)
    );
    assert_eq!(
        b.eval(&p.session, "document.getElementById('noreview').hidden"),
        json!(false)
    );

    // A miss: the first case again, marking only the stroma. It waits in "review my misses";
    // the review mode brings it back, and a right answer leaves nothing to review.
    let q = b.visit(&format!("{origin}view/{id}?course=1&item=0"), 1400);
    let s = q.session.clone();
    wait_true(&mut b, &s, "tesseraViewer.world.getItemCount() === 1 && tesseraViewer.world.getItemAt(0).getFullyLoaded() && document.getElementById('question').textContent.length > 0", "the case again");
    click_image_point(&mut b, &s, 1850, 450);
    b.eval(&s, "document.getElementById('reveal').click()");
    wait_true(
        &mut b,
        &s,
        "document.getElementById('score').textContent.includes('Regions found: 0 of 2')",
        "the miss",
    );
    let p = b.visit(&format!("{origin}progress"), 1000);
    let s = p.session.clone();
    wait_true(&mut b, &s, "document.querySelectorAll('#review li').length === 1 && !document.getElementById('startreview').hidden && document.querySelectorAll('#missed tbody tr').length === 1", "the review list");
    b.screenshot(&s, "course-progress-review");
    b.eval(
        &s,
        "setTimeout(() => document.getElementById('startlink').click(), 0); true",
    );
    std::thread::sleep(Duration::from_millis(500));
    wait_true(&mut b, &s, "location.search.includes('review=1') && !!document.getElementById('question') && document.getElementById('question').textContent.length > 0 && tesseraViewer.world.getItemCount() === 1 && tesseraViewer.world.getItemAt(0).getFullyLoaded()", "the case under review");
    for (x, y) in [(1300, 1300), (500, 2500)] {
        click_image_point(&mut b, &s, x, y);
    }
    b.eval(&s, "document.getElementById('reveal').click()");
    wait_true(&mut b, &s, "!!document.getElementById('next') && document.getElementById('next').textContent.startsWith('Nothing left to review')", "the end of the review");
    assert!(b
        .eval(&s, "document.getElementById('score').textContent")
        .as_str()
        .unwrap()
        .contains("Regions found: 2 of 2"));
    assert_eq!(stored_answers(&out).len(), 4);
    let p = b.visit(&format!("{origin}progress"), 1000);
    wait_true(&mut b, &p.session, "document.querySelectorAll('#rounds tbody tr').length === 4 && document.querySelectorAll('#scorechart circle').length === 4", "the progress after the review");
    assert_eq!(
        b.eval(&p.session, "document.getElementById('noreview').hidden"),
        json!(false)
    );
    // The instructor's overview lists the trainee and the cases.
    browser_logout(&mut b, &p.session);
    let s = browser_login(&mut b, &origin, "teach", "instructor password", true);
    let o = b.visit(&format!("{origin}overview"), 1000);
    drop(s);
    wait_true(&mut b, &o.session, "document.querySelectorAll('#trainees tbody tr').length === 1 && document.querySelectorAll('#hardest tbody tr').length === 2", "the overview");
    assert_eq!(
        b.eval(
            &o.session,
            "document.querySelector('#trainees tbody td').textContent.trim()"
        ),
        json!("ana")
    );
    b.screenshot(&o.session, "course-overview");
}

/// Empties the answers table (a test's setup rounds out of the way).
fn db_delete_answers(out: &Path) {
    let db = viewer_db(out);
    db.execute("DELETE FROM answers", []).unwrap();
}

/// The viewer's database of a results folder, opened beside the server.
fn viewer_db(out: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(out.join(".tessera/viewer.sqlite")).unwrap()
}
