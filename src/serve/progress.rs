//! Progress: what a trainee's answers say over time, per class and per case, and what all
//! trainees' answers say to an instructor (the hardest cases, who needs help), with the CSV
//! export of every answer.
//!
//! In: saved answer records (the JSON the quiz and the course routes save: `time`, `case`,
//! `course`/`item` for a course case, `class` or `question`, `score` for marks, `correct` for
//! a diagnosis). Out: [`Round`]s (one per answer, its score in 0–1), a [`TraineeSummary`] and
//! an [`Overview`]. No coordinates.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// A round's score is below this: the case counts as missed (and returns in "review my
/// misses"); a trainee whose mean is below it is listed as needing help.
pub const PASS: f64 = 0.5;

/// One answer, reduced to what progress needs.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// Who (account name or typed name).
    pub trainee: String,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// The case: `course C, case ID` for a course case (its stable id; `case N`, its position,
    /// for records without one), else the slide id.
    pub case_key: String,
    /// The course case's stable id.
    pub case_id: Option<String>,
    /// The slide id.
    pub slide: String,
    /// The course id and the case's index in it, for a course case.
    pub course: Option<(i64, usize)>,
    /// The course's title, for a course case.
    pub course_title: Option<String>,
    /// "regions", "top_k" or "diagnosis".
    pub kind: String,
    /// The class asked about (for a diagnosis: "diagnosis").
    pub class: String,
    /// Regions found over regions (over k, at most, for the k most suspicious areas), or 1/0
    /// for a right/wrong diagnosis.
    pub score: f64,
    /// Marks inside a region over marks (regions only, when there were marks).
    pub precision: Option<f64>,
    /// Regions, hits, false marks (regions only).
    pub regions: Option<(u64, u64, u64)>,
    /// The diagnosis given and whether it was right (diagnosis only).
    pub diagnosis: Option<(String, bool)>,
}

impl Round {
    /// Reads a saved record; `None` for one that is not an answer (or unreadable).
    pub fn from_record(trainee: &str, r: &Value) -> Option<Round> {
        let time = r["time"].as_str()?.to_string();
        let slide = r["case"].as_str()?.to_string();
        let course = r["course"]
            .as_i64()
            .zip(r["item"].as_u64().map(|i| i as usize));
        let question = &r["question"];
        let kind = question["kind"].as_str().unwrap_or("regions").to_string();
        let case_id = r["case_id"].as_str().map(str::to_string);
        let case_key = match (course, &case_id) {
            (Some((c, _)), Some(id)) => format!("course {c}, case {id}"),
            (Some((c, i)), None) => format!("course {c}, case {}", i + 1),
            (None, _) => slide.clone(),
        };
        let course_title = r["course_title"].as_str().map(str::to_string);
        // What the answer scored: a diagnosis right or wrong, or marks against regions.
        let (class, score, precision, regions, diagnosis) = match r["correct"].as_bool() {
            Some(correct) => (
                "diagnosis".to_string(),
                if correct { 1.0 } else { 0.0 },
                None,
                None,
                Some((r["diagnosis"].as_str().unwrap_or("").to_string(), correct)),
            ),
            None => {
                let s = &r["score"];
                let regions = s["regions"].as_u64()?;
                let hits = s["hits"].as_u64()?;
                let false_marks = s["false_marks"].as_u64().unwrap_or(0);
                let class = question["class"]
                    .as_str()
                    .or_else(|| r["class"].as_str())
                    .unwrap_or("")
                    .to_string();
                let marks = hits_marks(s).unwrap_or(hits + false_marks);
                let top_k = (kind == "top_k").then(|| question["k"].as_u64()).flatten();
                // For "the k most suspicious areas", finding k of them is full marks.
                let score = match (regions, top_k) {
                    (0, _) if false_marks == 0 => 1.0,
                    (0, _) => 0.0,
                    (n, Some(k)) => hits as f64 / n.min(k.max(1)) as f64,
                    (n, _) => hits as f64 / n as f64,
                };
                let precision =
                    (marks > 0).then(|| marks.saturating_sub(false_marks) as f64 / marks as f64);
                (
                    class,
                    score,
                    precision,
                    Some((regions, hits, false_marks)),
                    None,
                )
            }
        };
        Some(Round {
            trainee: trainee.to_string(),
            time,
            case_key,
            case_id,
            slide,
            course,
            course_title,
            kind,
            class,
            score,
            precision,
            regions,
            diagnosis,
        })
    }
}

/// Marks in a score (older records have no precision field).
fn hits_marks(s: &Value) -> Option<u64> {
    s["marks"].as_array().map(|m| m.len() as u64)
}

/// Mean and count of some scores.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Mean {
    /// How many.
    pub n: usize,
    /// Their mean (0 when none).
    pub mean: f64,
}

fn mean<'a>(xs: impl Iterator<Item = &'a f64>) -> Mean {
    let v: Vec<f64> = xs.copied().collect();
    Mean {
        n: v.len(),
        mean: if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        },
    }
}

/// A case as progress sees it.
#[derive(Debug, Clone, Serialize)]
pub struct CaseLine {
    /// `course C, case N` or the slide id.
    pub case_key: String,
    /// The slide.
    pub slide: String,
    /// Course id and index, for a course case.
    pub course: Option<(i64, usize)>,
    /// The course title.
    pub course_title: Option<String>,
    /// The question's class ("diagnosis" for a diagnosis).
    pub class: String,
    /// Attempts and mean score.
    pub score: Mean,
    /// The latest attempt's score.
    pub latest: f64,
    /// When the latest attempt was.
    pub latest_time: String,
    /// Attempts that scored below [`PASS`].
    pub missed: usize,
}

/// A trainee's progress.
#[derive(Debug, Clone, Serialize)]
pub struct TraineeSummary {
    /// Who.
    pub trainee: String,
    /// Every round, oldest first.
    pub rounds: Vec<Round>,
    /// Mean score over all rounds.
    pub overall: Mean,
    /// Per class (the question's class; "diagnosis" for diagnoses).
    pub by_class: BTreeMap<String, Mean>,
    /// Per case, the most missed first.
    pub cases: Vec<CaseLine>,
    /// Cases whose latest attempt scored below [`PASS`], the longest-waiting first: "review my
    /// misses".
    pub review: Vec<CaseLine>,
}

fn cases_of(rounds: &[Round]) -> Vec<CaseLine> {
    let mut by: BTreeMap<&str, Vec<&Round>> = BTreeMap::new();
    for r in rounds {
        by.entry(r.case_key.as_str()).or_default().push(r);
    }
    by.into_values()
        .map(|rs| {
            let last = rs[rs.len() - 1];
            CaseLine {
                case_key: last.case_key.clone(),
                slide: last.slide.clone(),
                course: last.course,
                course_title: last.course_title.clone(),
                class: last.class.clone(),
                score: mean(rs.iter().map(|r| &r.score)),
                latest: last.score,
                latest_time: last.time.clone(),
                missed: rs.iter().filter(|r| r.score < PASS).count(),
            }
        })
        .collect()
}

/// Sorts rounds by time (then as given), so every summary reads oldest first.
fn sorted(mut rounds: Vec<Round>) -> Vec<Round> {
    rounds.sort_by(|a, b| a.time.cmp(&b.time));
    rounds
}

/// Points each course round at its case's present position (`position(course, case id)`),
/// so that links follow a case the instructor moved; a round whose case was removed links to
/// its slide alone.
pub fn relocate(rounds: &mut [Round], mut position: impl FnMut(i64, &str) -> Option<usize>) {
    for r in rounds {
        if let (Some((c, _)), Some(id)) = (r.course, r.case_id.as_deref()) {
            r.course = position(c, id).map(|i| (c, i));
        }
    }
}

/// One trainee's summary.
pub fn trainee(name: &str, rounds: Vec<Round>) -> TraineeSummary {
    let rounds = sorted(rounds);
    let mut by_class: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in &rounds {
        by_class.entry(r.class.clone()).or_default().push(r.score);
    }
    let mut cases = cases_of(&rounds);
    let mut review: Vec<CaseLine> = cases.iter().filter(|c| c.latest < PASS).cloned().collect();
    review.sort_by(|a, b| a.latest_time.cmp(&b.latest_time));
    cases.sort_by(|a, b| {
        b.missed
            .cmp(&a.missed)
            .then(a.score.mean.total_cmp(&b.score.mean))
            .then(a.case_key.cmp(&b.case_key))
    });
    TraineeSummary {
        trainee: name.to_string(),
        overall: mean(rounds.iter().map(|r| &r.score)),
        by_class: by_class
            .into_iter()
            .map(|(k, v)| (k, mean(v.iter())))
            .collect(),
        cases,
        review,
        rounds,
    }
}

/// A trainee's line in the instructor's overview.
#[derive(Debug, Clone, Serialize)]
pub struct TraineeLine {
    /// Who.
    pub trainee: String,
    /// Rounds and mean score.
    pub score: Mean,
    /// The mean of their last five rounds (the trend).
    pub recent: Mean,
    /// Their latest answer.
    pub last_time: String,
    /// Mean below [`PASS`].
    pub needs_help: bool,
}

/// The instructor's overview.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// Every trainee, the weakest first.
    pub trainees: Vec<TraineeLine>,
    /// Every case over all trainees, the hardest (lowest mean score) first.
    pub cases: Vec<CaseLine>,
}

/// The overview of everyone's rounds.
pub fn overview(rounds: Vec<Round>) -> Overview {
    let rounds = sorted(rounds);
    let mut by: BTreeMap<String, Vec<&Round>> = BTreeMap::new();
    for r in &rounds {
        by.entry(r.trainee.clone()).or_default().push(r);
    }
    let mut trainees: Vec<TraineeLine> = by
        .into_iter()
        .map(|(t, rs)| {
            let score = mean(rs.iter().map(|r| &r.score));
            let recent = mean(rs.iter().rev().take(5).map(|r| &r.score));
            TraineeLine {
                trainee: t,
                needs_help: score.mean < PASS,
                score,
                recent,
                last_time: rs[rs.len() - 1].time.clone(),
            }
        })
        .collect();
    trainees.sort_by(|a, b| {
        a.score
            .mean
            .total_cmp(&b.score.mean)
            .then(a.trainee.cmp(&b.trainee))
    });
    let mut cases = cases_of(&rounds);
    cases.sort_by(|a, b| {
        a.score
            .mean
            .total_cmp(&b.score.mean)
            .then(a.case_key.cmp(&b.case_key))
    });
    Overview { trainees, cases }
}

/// Every round as CSV (one row per answer), for a programme's own records.
pub fn csv(rounds: &[Round]) -> String {
    let mut out = String::from(
        "trainee,time,course,course_title,case,slide,question,class,score,precision,regions,hits,false_marks,diagnosis,correct\n",
    );
    let q = |s: &str| {
        // Quoted, and a leading formula character neutralised (spreadsheets run them).
        let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r'])
            || s.trim_start().starts_with(['=', '+', '-', '@'])
        {
            format!("'{s}")
        } else {
            s.to_string()
        };
        format!("\"{}\"", s.replace('"', "\"\""))
    };
    for r in sorted(rounds.to_vec()) {
        let (regions, hits, falses) = r.regions.map_or(
            (String::new(), String::new(), String::new()),
            |(a, b, c)| (a.to_string(), b.to_string(), c.to_string()),
        );
        let (diag, correct) = r
            .diagnosis
            .clone()
            .map_or((String::new(), String::new()), |(d, c)| (d, c.to_string()));
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{:.4},{},{},{},{},{},{}\n",
            q(&r.trainee),
            r.time,
            r.course.map_or(String::new(), |c| c.0.to_string()),
            q(r.course_title.as_deref().unwrap_or("")),
            r.course.map_or(String::new(), |c| (c.1 + 1).to_string()),
            q(&r.slide),
            r.kind,
            q(&r.class),
            r.score,
            r.precision.map_or(String::new(), |p| format!("{p:.4}")),
            regions,
            hits,
            falses,
            q(&diag),
            correct,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn regions(t: &str, time: &str, case: &str, n: u64, hits: u64, f: u64) -> Round {
        let marks: Vec<Value> = (0..hits + f).map(|_| json!(null)).collect();
        Round::from_record(
            t,
            &json!({"time": time, "case": case, "class": "Tumor",
                    "score": {"regions": n, "hits": hits, "false_marks": f, "marks": marks}}),
        )
        .unwrap()
    }

    #[test]
    fn summaries_follow_the_rounds() {
        let d = |t: &str, time: &str, ok: bool| {
            Round::from_record(
                t,
                &json!({"time": time, "case": "s.svs", "course": 3, "item": 1, "course_title": "=cmd",
                        "question": {"kind": "diagnosis", "options": ["a", "b"]}, "diagnosis": "a", "correct": ok}),
            )
            .unwrap()
        };
        let ana = vec![
            regions("ana", "2026-01-02", "x.svs", 4, 1, 2),
            regions("ana", "2026-01-01", "x.svs", 4, 4, 0),
            d("ana", "2026-01-03", false),
            regions("ana", "2026-01-04", "y.svs", 2, 2, 0),
        ];
        let top = Round::from_record(
            "ana",
            &json!({"time": "t", "case": "z.svs", "question": {"kind": "top_k", "k": 2, "class": "c"},
                    "score": {"regions": 5, "hits": 1, "false_marks": 1, "marks": [0, null]}}),
        )
        .unwrap();
        assert_eq!(top.score, 0.5);
        let s = trainee("ana", ana.clone());
        assert_eq!(s.rounds[0].time, "2026-01-01", "oldest first");
        assert_eq!(s.overall.n, 4);
        assert!((s.overall.mean - (0.25 + 1.0 + 0.0 + 1.0) / 4.0).abs() < 1e-12);
        assert!((s.by_class["Tumor"].mean - 0.75).abs() < 1e-12);
        assert_eq!(s.by_class["diagnosis"].mean, 0.0);
        assert_eq!(s.rounds[1].precision, Some(1.0 / 3.0));
        // x.svs was missed last time, the diagnosis too; the oldest miss comes first.
        let review: Vec<&str> = s.review.iter().map(|c| c.case_key.as_str()).collect();
        assert_eq!(review, vec!["x.svs", "course 3, case 2"]);
        assert_eq!(s.cases[0].missed, 1);
        let ben = vec![regions("ben", "2026-01-05", "y.svs", 2, 0, 1)];
        let o = overview(ana.into_iter().chain(ben.clone()).collect());
        assert_eq!(o.trainees[0].trainee, "ben");
        assert!(o.trainees[0].needs_help && !o.trainees[1].needs_help);
        assert_eq!(o.cases[0].case_key, "course 3, case 2", "hardest first");
        let text = csv(&ben);
        assert!(text.starts_with("trainee,time,"));
        assert!(text.contains(
            "\"ben\",2026-01-05,,\"\",,\"y.svs\",regions,\"Tumor\",0.0000,0.0000,2,0,1,\"\","
        ));
        let text = csv(&[d("=ana", "2026-01-03", true)]);
        assert!(
            text.contains("\"'=ana\"") && text.contains("\"'=cmd\""),
            "{text}"
        );
        let text = csv(&[d(" =ana", "2026-01-03", true), d("\tx", "2026-01-03", true)]);
        assert!(
            text.contains("\"' =ana\"") && text.contains("\"'\tx\""),
            "{text}"
        );
    }
}
