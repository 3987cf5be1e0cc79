//! The course routes: instructors create, edit, export and import courses; trainees see a
//! course's questions and answer its cases, each answer scored against the case's own truth
//! and saved under their account.
//!
//! - `GET /courses`, `/courses/{id}`, `/courses/{id}/edit`, `/courses/new`: the pages.
//! - `GET /api/courses`: the list; `POST /api/courses`: a new course, or an imported one (the
//!   same document); `GET /api/courses/{id}`: the whole course for an instructor, the
//!   questions alone for a trainee; `PUT /api/courses/{id}`: replace it;
//!   `GET /api/courses/{id}/export`: the course document as a file.
//! - `POST /api/courses/{id}/cases/{n}/answer` `{"marks": […]}` or `{"diagnosis": "…"}`.
//!
//! In: requests, the session (accounts mode; the one local user counts as an instructor in
//! single-user mode). Out: JSON. Coordinates: marks and regions in level-0 pixels.

use super::accounts::{Role, Session, User};

use super::course::{self, Course, Question, Truth};
use super::state::*;
use super::*;

fn db(st: &St) -> std::result::Result<Arc<accounts::Db>, Fail> {
    st.db.clone().ok_or_else(|| {
        Fail(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "courses need the viewer database {}, which could not be created",
                st.db_file.display()
            ),
        )
    })
}

/// Checks a course document against the slides analysed here.
fn checked(st: &St, body: &[u8]) -> std::result::Result<Course, Fail> {
    st.refresh();
    let cat = st.catalogue();
    course::parse(body, |id| {
        cat.get(id)
            .map(|c| c.result.slide.fingerprint.sha256.clone())
    })
    .map_err(|e| Fail(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
}

pub(super) async fn list(
    State(st): State<St>,
    session: Option<axum::Extension<Session>>,
) -> Response {
    let (role, _) = role_of(&session);
    blocking(move || {
        let rows = db(&st)?.courses().map_err(internal)?;
        Ok(Json(json!({"courses": rows, "role": role})))
    })
    .await
}

pub(super) async fn create(
    State(st): State<St>,
    session: Option<axum::Extension<Session>>,
    body: Bytes,
) -> Response {
    let (role, user) = role_of(&session);
    blocking(move || {
        instructors_only(role)?;
        let db = db(&st)?;
        let c = checked(&st, &body)?;
        let id = db.create_course(&c, user.as_ref()).map_err(internal)?;
        Ok(Json(
            json!({"id": id, "title": c.title, "cases": c.cases.len()}),
        ))
    })
    .await
}

pub(super) async fn update(
    State(st): State<St>,
    UrlPath(id): UrlPath<i64>,
    session: Option<axum::Extension<Session>>,
    body: Bytes,
) -> Response {
    let (role, _) = role_of(&session);
    blocking(move || {
        instructors_only(role)?;
        let db = db(&st)?;
        let c = checked(&st, &body)?;
        if !db.update_course(id, &c).map_err(internal)? {
            return Err(not_found("no such course"));
        }
        Ok(Json(
            json!({"id": id, "title": c.title, "cases": c.cases.len()}),
        ))
    })
    .await
}

fn load(st: &St, id: i64) -> std::result::Result<Course, Fail> {
    db(st)?
        .course(id)
        .map_err(internal)?
        .ok_or_else(|| not_found("no such course"))
}

pub(super) async fn get_course(
    State(st): State<St>,
    UrlPath(id): UrlPath<i64>,
    session: Option<axum::Extension<Session>>,
) -> Response {
    let (role, _) = role_of(&session);
    blocking(move || {
        let c = load(&st, id)?;
        Ok(match role {
            Role::Instructor => {
                let mut v = serde_json::to_value(&c).unwrap_or_default();
                v["description_html"] = Value::from(course::markdown(&c.description));
                Json(v)
            }
            Role::Trainee => Json(c.for_trainee()),
        })
    })
    .await
}

pub(super) async fn export(
    State(st): State<St>,
    UrlPath(id): UrlPath<i64>,
    session: Option<axum::Extension<Session>>,
) -> Response {
    let (role, _) = role_of(&session);
    blocking(move || {
        instructors_only(role)?;
        let body = serde_json::to_vec_pretty(&load(&st, id)?).map_err(internal)?;
        Ok((
            [
                (header::CONTENT_TYPE, "application/json".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"course-{id}.json\""),
                ),
            ],
            body,
        ))
    })
    .await
}

#[derive(Deserialize)]
pub(super) struct Answer {
    marks: Option<Vec<quiz::Mark>>,
    diagnosis: Option<String>,
}

pub(super) async fn answer(
    State(st): State<St>,
    UrlPath((id, n)): UrlPath<(i64, usize)>,
    session: Option<axum::Extension<Session>>,
    Json(a): Json<Answer>,
) -> Response {
    let (_, user) = role_of(&session);
    blocking(move || answer_blocking(&st, id, n, user, a)).await
}

fn answer_blocking(
    st: &St,
    id: i64,
    n: usize,
    user: Option<User>,
    a: Answer,
) -> std::result::Result<Json<Value>, Fail> {
    let c = load(st, id)?;
    let Some(item) = c.cases.get(n) else {
        return Err(not_found("no such case in this course"));
    };
    let case = st.case(&item.slide)?;
    if item.fingerprint.as_deref() != Some(case.result.slide.fingerprint.sha256.as_str()) {
        return Err(Fail(
            StatusCode::CONFLICT,
            "this slide was analysed again or replaced since the course was made: the \
             instructor must save the course again"
                .into(),
        ));
    }
    let bad = |m: &str| Fail(StatusCode::BAD_REQUEST, m.into());
    let mut out = json!({
        "notes_html": course::markdown(&item.notes),
        "show_ai": item.show_ai,
    });
    let mut record = json!({
        "course": id,
        "course_title": c.title,
        "item": n,
        "case_id": item.id,
        "case": item.slide,
        "question": item.question,
        "slide_fingerprint": case.result.slide.fingerprint.sha256,
        "model_sha256": case.result.model.sha256,
        "tessera_version": crate::VERSION,
    });
    match (&item.question, &item.truth) {
        (Question::Diagnosis { options }, Truth::Label { label }) => {
            let Some(d) = a.diagnosis else {
                return Err(bad("a diagnosis is needed"));
            };
            if !options.contains(&d) {
                return Err(bad("the diagnosis must be one of the options"));
            }
            let correct = d == *label;
            out["correct"] = Value::Bool(correct);
            out["label"] = Value::from(label.clone());
            record["diagnosis"] = Value::from(d);
            record["correct"] = Value::Bool(correct);
        }
        (Question::Regions { class } | Question::TopK { class, .. }, _) => {
            let marks = a.marks.unwrap_or_default();
            let limit = match item.question {
                Question::TopK { k, .. } => k as usize,
                _ => 1000,
            };
            if marks.len() > limit || marks.iter().any(|m| !m.x.is_finite() || !m.y.is_finite()) {
                return Err(bad(&format!("at most {limit} finite marks")));
            }
            let grid = st.grid(&item.slide)?;
            // The class whose probability is shown under a false mark: the question's when the
            // model has it, else the class the report scored.
            let ai_class = grid
                .classes
                .iter()
                .position(|c| c.eq_ignore_ascii_case(class))
                .or_else(|| {
                    let p = case.result.positive_class_name();
                    grid.classes.iter().position(|c| c == p)
                });
            let threshold = case.result.parameters.threshold as f32;
            let reference = match course::expert_reference(item) {
                Some(r) => r,
                None => {
                    let Some(k) = grid
                        .classes
                        .iter()
                        .position(|c| c.eq_ignore_ascii_case(class))
                    else {
                        return Err(Fail(
                            StatusCode::CONFLICT,
                            format!("the model has no class {class:?} to take the AI's regions of"),
                        ));
                    };
                    quiz::ai_regions(&grid, k, threshold)
                }
            };
            let mut score = quiz::score(&marks, &reference);
            if let Some(k) = ai_class {
                for f in &mut score.false_mark_details {
                    let m = marks[f.mark];
                    f.ai_probability = grid.at(m.x, m.y).and_then(|p| p.probs.get(k).copied());
                }
            }
            out["score"] = serde_json::to_value(&score).unwrap_or_default();
            out["reference"] = serde_json::to_value(&reference).unwrap_or_default();
            out["ai_class"] = ai_class
                .and_then(|k| grid.classes.get(k).cloned())
                .map_or(Value::Null, Value::from);
            record["marks"] = serde_json::to_value(&marks).unwrap_or_default();
            record["score"] = out["score"].clone();
        }
        (Question::Diagnosis { .. }, _) => {
            return Err(internal("a diagnosis case without a label"));
        }
    }
    let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let trainee = user
        .as_ref()
        .map(|u| u.name.clone())
        .or_else(|| st.cfg.trainee.clone())
        .unwrap_or_else(|| "local".into());
    record["trainee"] = Value::from(trainee.clone());
    record["time"] = Value::from(time.clone());
    let saved = db(st)?
        .save_answer(user.as_ref(), &trainee, &item.slide, &time, &record)
        .map_err(internal)?;
    out["answer"] = Value::from(saved);
    out["next"] = if n + 1 < c.cases.len() {
        Value::from(n + 1)
    } else {
        Value::Null
    };
    Ok(Json(out))
}
