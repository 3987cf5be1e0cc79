//! The results contract: the types of what Tessera writes and reads back.
//!
//! In: nothing (plain serde types). Out: the shapes of `OUT/summary.json` and `summary.csv`
//! rows ([`SlideStatus`], [`Status`]) and the schema version of `result.json`
//! ([`RESULT_SCHEMA_VERSION`]). The cohort runner writes them; the cohort page, `tessera
//! summary`, the watch service and the viewer read them back through the same types, so a
//! field renamed here is renamed for every reader at once.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Version of result.json's layout. 2 added the `preprocessing` block (where patches were
/// preprocessed, and every fallback from a GPU with its reason); readers accept 1 and 2.
pub const RESULT_SCHEMA_VERSION: u32 = 2;

/// What became of one slide in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Analysed now.
    Done,
    /// Up to date: a finished result with the same run key exists.
    Skipped,
    /// Another worker holds the slide's lock.
    Locked,
    /// The analysis failed; the reason says why.
    Failed,
}

impl Status {
    /// The word written in summaries: `done`, `skipped`, `locked` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Skipped => "skipped",
            Status::Locked => "locked",
            Status::Failed => "failed",
        }
    }

    /// How informative a status is when merging summaries of several runs: a finished result
    /// beats an up-to-date skip, which beats a failure, which beats a lock.
    pub fn rank(self) -> u8 {
        match self {
            Status::Done => 3,
            Status::Skipped => 2,
            Status::Failed => 1,
            Status::Locked => 0,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One slide's outcome in a cohort run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlideStatus {
    /// The slide.
    pub path: PathBuf,
    /// Its output folder name.
    pub name: String,
    /// What became of it.
    pub status: Status,
    /// Why it failed or was skipped.
    pub reason: String,
    /// For a failure, the error's stable kind (e.g. `corrupt`, `missing_mpp`: [`crate::Error::kind`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// Patches analysed.
    pub patches: Option<usize>,
    /// Tissue area in mm².
    pub tissue_mm2: Option<f64>,
    /// Positive class and its mean probability.
    pub positive_class: Option<String>,
    /// Mean probability of the positive class.
    pub positive_mean: Option<f64>,
    /// The slide-level score of the positive class (see result.json's `slide_score`).
    #[serde(default)]
    pub slide_score: Option<f64>,
    /// The slide's output folder.
    pub output: Option<PathBuf>,
}
