//! The viewer's pages and JSON API: the slide list, a slide's result.json and GeoJSON, the
//! patch under a level-0 point, the label image (only with `--allow-label`), and the quiz:
//! scoring and saving a round against the expert's or the AI's regions, and a trainee's
//! progress.
//!
//! In: requests naming a case by its id (looked up in the catalogue, never joined to a path).
//! Out: HTML from `assets/`, JSON. Coordinates: level-0 pixels.

use super::state::*;
use super::*;

pub(super) fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response()
}

pub(super) mod assets {
    pub const INDEX: &str = include_str!("assets/index.html");
    pub const VIEWER: &str = include_str!("assets/viewer.html");
    pub const PROGRESS: &str = include_str!("assets/progress.html");
    pub const LOGIN: &str = include_str!("assets/login.html");
    pub const COURSES: &str = include_str!("assets/courses.html");
    pub const COURSE: &str = include_str!("assets/course.html");
    pub const EDITOR: &str = include_str!("assets/editor.html");
    pub const COURSE_JS: &str = include_str!("assets/course.js");
    pub const OVERVIEW: &str = include_str!("assets/overview.html");
    pub const VIEWER_JS: &str = include_str!("assets/viewer.js");
    pub const PAGES_JS: &str = include_str!("assets/pages.js");
    pub const CSS: &str = include_str!("assets/viewer.css");
    /// OpenSeadragon 6.1.1 from its npm package (`assets/fetch-openseadragon.sh`).
    pub const OSD: &str = include_str!("assets/openseadragon.min.js");
}

pub(super) async fn view(State(st): State<St>, UrlPath(id): UrlPath<String>) -> Response {
    match st.case(&id) {
        Ok(_) => page(assets::VIEWER),
        Err(f) => f.into_response(),
    }
}

pub(super) async fn static_file(UrlPath(file): UrlPath<String>) -> Response {
    let (body, ctype) = match file.as_str() {
        "viewer.js" => (assets::VIEWER_JS, "text/javascript; charset=utf-8"),
        "pages.js" => (assets::PAGES_JS, "text/javascript; charset=utf-8"),
        "course.js" => (assets::COURSE_JS, "text/javascript; charset=utf-8"),
        "viewer.css" => (assets::CSS, "text/css; charset=utf-8"),
        "openseadragon.min.js" => (assets::OSD, "text/javascript; charset=utf-8"),
        _ => return not_found("no such file").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn list(State(st): State<St>) -> Json<Value> {
    let st2 = st.clone();
    let _ = tokio::task::spawn_blocking(move || st2.refresh()).await;
    let slides: Vec<Value> = st
        .catalogue()
        .values()
        .map(|c| {
            let r = &c.result;
            let cfg = &r.model.config;
            json!({
                "id": c.id,
                "name": r.slide.path.file_name().map(|n| n.to_string_lossy()),
                "dimensions": r.slide.dimensions,
                "mpp": r.slide.mpp.x,
                "slide_score": r.slide_score,
                "classes": cfg.class_names,
                "positive_class": r.positive_class_name(),
                "threshold": r.parameters.threshold,
                "model": r.model.name,
                "patches": r.patches_analysed,
                "viewable": c.slide.is_some(),
                "why_not": c.missing,
                "expert_annotation": c.dir.join("expert.geojson").is_file(),
            })
        })
        .collect();
    Json(json!({"slides": slides, "trainee": st.cfg.trainee, "allow_label": st.cfg.allow_label}))
}

pub(super) async fn result_json(State(st): State<St>, UrlPath(id): UrlPath<String>) -> Response {
    match st.case(&id) {
        Ok(c) => Json(c.result.clone()).into_response(),
        Err(f) => f.into_response(),
    }
}

pub(super) async fn geojson(State(st): State<St>, UrlPath(id): UrlPath<String>) -> Response {
    let c = match st.case(&id) {
        Ok(c) => c,
        Err(f) => return f.into_response(),
    };
    match std::fs::read(c.dir.join("annotations.geojson")) {
        Ok(b) => ([(header::CONTENT_TYPE, "application/geo+json")], b).into_response(),
        Err(_) => not_found("annotations.geojson").into_response(),
    }
}

/// The case's slide-QC artefacts (its `qc-mask.png`) as a PNG with clean pixels transparent,
/// for the viewer's QC layer; 404 when the analysis ran without QC.
pub(super) async fn qc_layer(State(st): State<St>, UrlPath(id): UrlPath<String>) -> Response {
    let c = match st.case(&id) {
        Ok(c) => c,
        Err(f) => return f.into_response(),
    };
    let path = c.dir.join("qc-mask.png");
    let Ok(img) = image::open(&path).map(|i| i.to_rgb8()) else {
        return not_found("no slide QC for this case (qc-mask.png)").into_response();
    };
    let rgba = image::RgbaImage::from_fn(img.width(), img.height(), |x, y| {
        let [r, g, b] = img.get_pixel(x, y).0;
        let a = if [r, g, b] == [0, 0, 0] { 0 } else { 255 };
        image::Rgba([r, g, b, a])
    });
    match crate::output::encode_rgba_png(&rgba) {
        Ok(png) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
pub(super) struct Point {
    x: f64,
    y: f64,
}

pub(super) async fn patch_at(
    State(st): State<St>,
    UrlPath(id): UrlPath<String>,
    Query(p): Query<Point>,
) -> Response {
    let g = match st.grid(&id) {
        Ok(g) => g,
        Err(f) => return f.into_response(),
    };
    match g.at(p.x, p.y) {
        Some(patch) => {
            let probs: BTreeMap<&str, f32> = g
                .classes
                .iter()
                .map(String::as_str)
                .zip(patch.probs.iter().copied())
                .collect();
            Json(json!({"patch": patch, "probabilities": probs})).into_response()
        }
        None => not_found("no analysed patch at this point").into_response(),
    }
}

pub(super) async fn label(State(st): State<St>, UrlPath(id): UrlPath<String>) -> Response {
    if !st.cfg.allow_label {
        return not_found("label images are not served (start the viewer with --allow-label)")
            .into_response();
    }
    let slide = match slide_of(&st, &id).await {
        Ok(s) => s,
        Err(f) => return f.into_response(),
    };
    let res = tokio::task::spawn_blocking(move || {
        let img = slide.read_associated_image("label")?;
        crate::output::encode_rgb_png(&img)
    })
    .await;
    match res {
        Ok(Ok(png)) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        Ok(Err(e)) => not_found(&e.to_string()).into_response(),
        Err(e) => Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `{id}.dzi` → id.
#[derive(Deserialize)]
pub(super) struct QuizRound {
    trainee: Option<String>,
    marks: Vec<quiz::Mark>,
    class: Option<String>,
    threshold: Option<f32>,
}

pub(super) async fn quiz_round(
    State(st): State<St>,
    UrlPath(id): UrlPath<String>,
    session: Option<axum::Extension<accounts::Session>>,
    Json(round): Json<QuizRound>,
) -> Response {
    let case = match st.case(&id) {
        Ok(c) => c,
        Err(f) => return f.into_response(),
    };
    let user = session.map(|s| s.0.user);
    // With accounts, a round is the logged-in account's; naming anyone else is refused.
    let given = match (&user, &round.trainee) {
        (Some(u), Some(t)) if !t.eq_ignore_ascii_case(&u.name) => {
            return Fail(
                StatusCode::FORBIDDEN,
                "answers are saved under your own account only".into(),
            )
            .into_response()
        }
        (Some(u), _) => Some(u.name.clone()),
        (None, t) => t.clone(),
    };
    let Some(trainee) = given.or_else(|| st.cfg.trainee.clone()) else {
        return Fail(StatusCode::BAD_REQUEST, "a trainee name is needed".into()).into_response();
    };
    if !quiz::trainee_ok(&trainee) {
        return Fail(
            StatusCode::BAD_REQUEST,
            "a trainee name has 1–64 letters, digits, spaces, '.', '_' or '-'".into(),
        )
        .into_response();
    }
    if round.marks.len() > 1000
        || round
            .marks
            .iter()
            .any(|m| !m.x.is_finite() || !m.y.is_finite())
    {
        return Fail(StatusCode::BAD_REQUEST, "at most 1000 finite marks".into()).into_response();
    }
    // The class the report scored: the slide score's, else the model's, else the last.
    let positive = case.result.positive_class_name().to_string();
    let class_name = round.class.clone().unwrap_or(positive);
    if class_name.chars().count() > 200 {
        return Fail(
            StatusCode::BAD_REQUEST,
            "a class name has at most 200 characters".into(),
        )
        .into_response();
    }
    // A trainee's round is scored at the analysis's threshold: a threshold of their own could
    // empty the AI's regions and make any answer perfect.
    let own_threshold = match &user {
        Some(u) if u.role == accounts::Role::Trainee => None,
        _ => round
            .threshold
            .filter(|t| t.is_finite() && (0.0..=1.0).contains(t)),
    };
    let threshold = own_threshold.unwrap_or(case.result.parameters.threshold as f32);
    // The grid gives the AI's regions (without an expert annotation) and the AI's probability
    // under each false mark.
    let grid = st.grid(&id).ok();
    let class = grid
        .as_ref()
        .and_then(|g| g.classes.iter().position(|c| *c == class_name));
    let reference = match quiz::expert(&case.dir, Some(&class_name)) {
        Ok(Some(r)) => r,
        Ok(None) => {
            let g = match st.grid(&id) {
                Ok(g) => g,
                Err(f) => return f.into_response(),
            };
            let Some(class) = class else {
                return Fail(StatusCode::BAD_REQUEST, format!("no class {class_name:?}"))
                    .into_response();
            };
            quiz::ai_regions(&g, class, threshold)
        }
        Err(e) => return Fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let mut score = quiz::score(&round.marks, &reference);
    if let (Some(g), Some(class)) = (&grid, class) {
        for f in &mut score.false_mark_details {
            let m = round.marks[f.mark];
            f.ai_probability = g.at(m.x, m.y).and_then(|p| p.probs.get(class).copied());
        }
    }
    let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let record = json!({
        "trainee": trainee,
        "case": id,
        "time": time,
        "slide_fingerprint": case.result.slide.fingerprint.sha256,
        "model_sha256": case.result.model.sha256,
        "class": class_name,
        "threshold": threshold,
        "marks": round.marks,
        "score": score,
        "tessera_version": crate::VERSION,
    });
    let Some(db) = st.db.clone() else {
        return Fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "answers cannot be saved: the viewer database {} could not be created",
                st.db_file.display()
            ),
        )
        .into_response();
    };
    blocking(move || {
        let answer = db
            .save_answer(user.as_ref(), &trainee, &id, &time, &record)
            .map_err(internal)?;
        Ok(Json(json!({
            "score": score,
            "reference": reference,
            "answer": answer,
        })))
    })
    .await
}

#[derive(Deserialize)]
pub(super) struct Trainee {
    trainee: Option<String>,
}

pub(super) async fn progress(
    State(st): State<St>,
    session: Option<axum::Extension<accounts::Session>>,
    Query(t): Query<Trainee>,
) -> Response {
    let Some(db) = st.db.clone() else {
        return Json(json!({"trainee": t.trainee, "rounds": []})).into_response();
    };
    if let Some(axum::Extension(s)) = session {
        // Accounts: one's own rounds; an instructor may ask for anyone's.
        let me = s.user;
        return blocking(move || {
            let whose = match t.trainee {
                None => me,
                Some(name) if name.eq_ignore_ascii_case(&me.name) => me,
                Some(name) if me.role == accounts::Role::Instructor => db
                    .user(&name)
                    .map_err(internal)?
                    .ok_or_else(|| not_found("no such account"))?,
                Some(_) => {
                    return Err(Fail(
                        StatusCode::FORBIDDEN,
                        "a trainee sees their own progress only".into(),
                    ))
                }
            };
            let rounds = db
                .answers(accounts::Who::Account(&whose))
                .map_err(internal)?;
            Ok(progress_reply(&st, &whose.name, rounds))
        })
        .await;
    }
    let Some(trainee) = t.trainee.or_else(|| st.cfg.trainee.clone()) else {
        return Fail(
            StatusCode::BAD_REQUEST,
            "which trainee? (?trainee=NAME)".into(),
        )
        .into_response();
    };
    if !quiz::trainee_ok(&trainee) {
        return Fail(StatusCode::BAD_REQUEST, "invalid trainee name".into()).into_response();
    }
    blocking(move || {
        let rounds = db
            .answers(accounts::Who::Typed(&trainee))
            .map_err(internal)?;
        Ok(progress_reply(&st, &trainee, rounds))
    })
    .await
}

/// Where each course case is now: `(course, case id) → position`, courses read once each.
fn positions(db: Option<&accounts::Db>) -> impl FnMut(i64, &str) -> Option<usize> + '_ {
    let mut cache: HashMap<i64, Option<Vec<Option<String>>>> = HashMap::new();
    move |course, id| {
        let ids = cache.entry(course).or_insert_with(|| {
            db.and_then(|db| db.course(course).ok().flatten())
                .map(|c| c.cases.into_iter().map(|k| k.id).collect())
        });
        ids.as_ref()?.iter().position(|k| k.as_deref() == Some(id))
    }
}

/// A trainee's saved rounds and their summary ([`super::progress`]).
fn progress_reply(st: &St, name: &str, records: Vec<Value>) -> Response {
    let mut rounds: Vec<progress::Round> = records
        .iter()
        .filter_map(|r| progress::Round::from_record(name, r))
        .collect();
    progress::relocate(&mut rounds, positions(st.db.as_deref()));
    let summary = progress::trainee(name, rounds);
    Json(json!({"trainee": name, "rounds": records, "summary": summary})).into_response()
}

/// Everyone's rounds: accounts' under their names (accounts mode), else the typed names.
fn all_rounds(st: &St) -> std::result::Result<Vec<progress::Round>, Fail> {
    let db = st
        .db
        .clone()
        .ok_or_else(|| not_found("no viewer database, no answers"))?;
    let accounts = matches!(st.mode, Mode::Accounts(_));
    let all = db.all_answers(accounts).map_err(internal)?;
    let mut rounds: Vec<progress::Round> = all
        .iter()
        .filter_map(|(who, r)| progress::Round::from_record(who, r))
        .collect();
    progress::relocate(&mut rounds, positions(Some(&db)));
    Ok(rounds)
}

/// `GET /api/overview` (instructors): every trainee (the weakest first) and every case (the
/// hardest first).
pub(super) async fn overview(
    State(st): State<St>,
    session: Option<axum::Extension<accounts::Session>>,
) -> Response {
    let (role, _) = role_of(&session);
    blocking(move || {
        instructors_only(role)?;
        Ok(Json(progress::overview(all_rounds(&st)?)))
    })
    .await
}

/// `GET /api/answers.csv` (instructors): every answer, one row each.
pub(super) async fn answers_csv(
    State(st): State<St>,
    session: Option<axum::Extension<accounts::Session>>,
) -> Response {
    let (role, _) = role_of(&session);
    blocking(move || {
        instructors_only(role)?;
        Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"tessera-answers.csv\"",
                ),
            ],
            progress::csv(&all_rounds(&st)?),
        ))
    })
    .await
}
