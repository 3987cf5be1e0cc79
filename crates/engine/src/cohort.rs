//! Cohort runs: many slides, resumable, shardable across machines, one summary.
//!
//! In: paths (slide files and folders) and an [`AnalyzeConfig`]. Out: one `OUT/<name>/` per
//! slide (see [`crate::pipeline`]) and `OUT/summary.json` + `OUT/summary.csv` listing every slide
//! with its status, and `OUT/index.html`, the cohort page linking each slide's report. Folders are searched recursively for known slide extensions; a folder of
//! DICOM files is one slide, and a MIRAX `.mrxs` file stands for its companion folder.
//! Slides are sorted, so `--shard I/N` (every N-th slide from the I-th) is deterministic
//! across machines; `--claim` walks the whole list largest first instead, taking what no other
//! worker holds. A lock file per slide (`OUT/.locks/<name>.lock`, created with
//! `create_new`) keeps concurrent workers off the same slide; a lock whose process is gone (same
//! host) or older than the stale age is taken over. A slide whose finished result.json has the
//! same run key (model and parameters) is skipped unless forced. A slide that fails for a reason
//! of its own (corrupt, unsupported, undecodable…; not a worker's device, model or disk) leaves
//! `OUT/.failed/<name>.json` (its status, written before its lock is released): a worker that
//! was already running when it was written reports that failure instead of trying the slide
//! again, so concurrent workers try an unreadable slide once; a later run tries it afresh. Both
//! times come from OUT's file system clock (a worker stamps its start there), so workers on
//! machines whose clocks differ agree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::pipeline::{analyze, run_key, slide_name, AnalyzeConfig, AnalyzeOptions};
use crate::results::SlideResult;
pub use crate::results::{SlideStatus, Status};

/// Extensions of slide files found when searching folders.
pub const SLIDE_EXTENSIONS: [&str; 11] = [
    "svs", "tif", "tiff", "ndpi", "vms", "vmu", "scn", "mrxs", "bif", "svslide", "dcm",
];
/// How deep folders are searched.
const MAX_DEPTH: usize = 16;

/// Options of a cohort run besides the analysis itself.
#[derive(Debug, Clone)]
pub struct CohortOptions {
    /// Redo slides whose results are up to date.
    pub force: bool,
    /// `(i, n)`: process every n-th slide starting with the i-th (1-based).
    pub shard: Option<(usize, usize)>,
    /// Walk the whole list, largest slides first, taking each slide no other worker holds
    /// (`--claim`): N workers started on the same list finish within about one slide of each
    /// other, where static shards wait for whichever shard drew the big slides.
    pub claim: bool,
    /// Locks older than this are taken over (default 24 h).
    pub stale_after: Duration,
}

impl Default for CohortOptions {
    fn default() -> Self {
        Self {
            force: false,
            shard: None,
            claim: false,
            stale_after: Duration::from_secs(24 * 3600),
        }
    }
}

fn is_slide_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| SLIDE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// `unreadable`: where sub-folders that cannot be listed go (skipped) instead of failing the
/// walk (the watch service: a root-only `lost+found`, a folder deleted mid-scan).
fn walk(
    dir: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
    mut unreadable: Option<&mut Unreadable>,
) -> Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let listing = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) => match unreadable {
            Some(u) if depth > 0 => {
                u.push((dir.to_path_buf(), e.to_string()));
                return Ok(());
            }
            _ => return Err(Error::from_io(dir, e)),
        },
    };
    let mut entries: Vec<PathBuf> = listing
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    entries.sort();
    // MIRAX: the .mrxs file is the slide; its same-named folder holds its data.
    let mirax: BTreeSet<PathBuf> = entries
        .iter()
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("mrxs"))
        })
        .map(|p| p.with_extension(""))
        .collect();
    let mut dicom_here = false;
    for p in entries {
        if p.is_dir() {
            if !mirax.contains(&p) {
                walk(&p, depth + 1, out, unreadable.as_deref_mut())?;
            }
        } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("dcm")) {
            dicom_here = true;
        } else if is_slide_file(&p) {
            out.push(p);
        }
    }
    // A folder of DICOM files is one slide (a series).
    if dicom_here {
        out.push(dir.to_path_buf());
    }
    Ok(())
}

/// Folders that could not be listed, with the reason.
pub type Unreadable = Vec<(PathBuf, String)>;

/// The sorted slides under the folder `dir`, skipping sub-folders that cannot be listed
/// (returned with the reason); only `dir` itself being unreadable is an error.
pub fn collect_skipping(dir: &Path) -> Result<(Vec<PathBuf>, Unreadable)> {
    let (mut out, mut unreadable) = (Vec::new(), Vec::new());
    walk(dir, 0, &mut out, Some(&mut unreadable))?;
    out.sort();
    out.dedup();
    Ok((out, unreadable))
}

/// The sorted, de-duplicated slides named by `paths` (files and `dicomweb+` URLs as given,
/// folders searched).
pub fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if tessera_slide::slide::native::dicomweb::is_url(p) {
            out.push(p.clone());
            continue;
        }
        let meta = std::fs::metadata(p).map_err(|e| Error::from_io(p, e))?;
        if meta.is_dir() {
            walk(p, 0, &mut out, None)?;
        } else {
            out.push(p.clone());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// This worker's shard `(i, n)` (1-based) from the job scheduler's own variables, read through
/// `var` (the environment, in the binary):
///
/// - Slurm job arrays: `SLURM_ARRAY_TASK_ID`, `_MIN`, `_MAX`, `_STEP` (1 when unset) and
///   `_COUNT`. Shard `(id − min) / step + 1` of `(max − min) / step + 1`, so stepped arrays
///   (`--array=1-9:2`) and arrays starting anywhere (`--array=0-7`) number their shards
///   without gaps. A sparse array (`--array=1,3,7`) would leave shards nobody runs, so it is
///   refused (its task count differs from its range's).
/// - Kubernetes Indexed Jobs: `JOB_COMPLETION_INDEX` (0-based) and `TESSERA_SHARD_COUNT`, which
///   the Job sets to its `completions` (Kubernetes does not pass the count itself).
///
/// Anything else (no array, a value that is not a number, an index outside the range) is an
/// error saying what was found, before any work.
pub fn shard_from_scheduler(
    var: impl Fn(&str) -> Option<String>,
) -> Result<(usize, usize), String> {
    let num = |name: &str| -> Result<Option<usize>, String> {
        match var(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map(Some)
                .map_err(|_| format!("{name}={v:?} is not a whole number")),
        }
    };
    if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
        let need = |name: &str| -> Result<usize, String> {
            num(name)?.ok_or_else(|| format!("SLURM_ARRAY_TASK_ID is set but {name} is not"))
        };
        let (min, max) = (need("SLURM_ARRAY_TASK_MIN")?, need("SLURM_ARRAY_TASK_MAX")?);
        let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
        if id < min || id > max || max < min {
            return Err(format!(
                "SLURM_ARRAY_TASK_ID {id} lies outside the array {min}-{max}"
            ));
        }
        if (id - min) % step != 0 {
            return Err(format!(
                "SLURM_ARRAY_TASK_ID {id} is not on the array's step ({min}-{max}:{step})"
            ));
        }
        let n = (max - min) / step + 1;
        if let Some(count) = num("SLURM_ARRAY_TASK_COUNT")? {
            if count != n {
                return Err(format!(
                    "the array has {count} tasks but its range {min}-{max}:{step} has {n} places: \
                     a sparse array (e.g. --array=1,3,7) would leave shards nobody runs; submit \
                     a range (--array=1-{count}) or give --shard I/N yourself"
                ));
            }
        }
        return Ok(((id - min) / step + 1, n));
    }
    if let Some(index) = num("JOB_COMPLETION_INDEX")? {
        let n = num("TESSERA_SHARD_COUNT")?.ok_or(
            "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but TESSERA_SHARD_COUNT is \
             not: set it to the Job's completions",
        )?;
        if n == 0 || index >= n {
            return Err(format!(
                "JOB_COMPLETION_INDEX {index} lies outside TESSERA_SHARD_COUNT {n}"
            ));
        }
        return Ok((index + 1, n));
    }
    Err(
        "--shard auto needs a job array: SLURM_ARRAY_TASK_ID (sbatch --array) or \
         JOB_COMPLETION_INDEX with TESSERA_SHARD_COUNT (a Kubernetes Indexed Job)"
            .into(),
    )
}

/// `pairs` reordered largest slide first (bytes on disk: a file's size, a folder's files'
/// total, a MIRAX file's with its companion folder's), ties in their given order.
pub fn largest_first<T>(pairs: Vec<(PathBuf, T)>) -> Vec<(PathBuf, T)> {
    let files_in = |dir: &Path| -> u64 {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    // Through symbolic links, as the slide reader goes.
                    .filter_map(|e| std::fs::metadata(e.path()).ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    let size = |p: &Path| -> u64 {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => files_in(p),
            Ok(m)
                if p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("mrxs")) =>
            {
                m.len() + files_in(&p.with_extension(""))
            }
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    };
    let mut sized: Vec<(u64, (PathBuf, T))> = pairs.into_iter().map(|p| (size(&p.0), p)).collect();
    // Stable: equal sizes keep the sorted list's order.
    sized.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
    sized.into_iter().map(|(_, p)| p).collect()
}

/// The shards that never reported: for each shard count N that some run under `OUT/.runs/`
/// was a shard of, the I/N with no run record. A scheduler task that died before writing its
/// record (or was never started) shows here; its slides are missing from the summary.
pub fn missing_shards(out: &Path) -> Vec<(usize, usize)> {
    let mut seen: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    let files = std::fs::read_dir(out.join(".runs"))
        .map(|d| d.filter_map(|e| e.ok()).collect::<Vec<_>>())
        .unwrap_or_default();
    for f in files {
        let name = f.file_name().to_string_lossy().into_owned();
        // summary-shard-I-of-N-PID.json
        let Some(rest) = name.strip_prefix("summary-shard-") else {
            continue;
        };
        let mut parts = rest.split('-');
        let (Some(i), Some("of"), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(i), Ok(n)) = (i.parse::<usize>(), n.parse::<usize>()) {
            seen.entry(n).or_default().insert(i);
        }
    }
    seen.into_iter()
        .flat_map(|(n, got)| {
            (1..=n)
                .filter(move |i| !got.contains(i))
                .map(move |i| (i, n))
        })
        .collect()
}

/// The slides of shard `i` of `n` (1-based): every n-th slide from the i-th.
pub fn shard<T: Clone>(slides: &[T], i: usize, n: usize) -> Vec<T> {
    slides
        .iter()
        .enumerate()
        .filter(|(k, _)| n > 0 && k % n == i.saturating_sub(1))
        .map(|(_, s)| s.clone())
        .collect()
}

/// Output folder names, unique within the run: the file name, or the file name and a short
/// hash of the full path when two slides share a name.
pub fn output_names(slides: &[PathBuf]) -> Vec<String> {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for s in slides {
        *count.entry(slide_name(s)).or_default() += 1;
    }
    slides
        .iter()
        .map(|s| {
            let name = slide_name(s);
            if count[&name] > 1 {
                use sha2::{Digest, Sha256};
                let h = format!("{:x}", Sha256::digest(s.to_string_lossy().as_bytes()));
                format!("{name}-{}", &h[..8])
            } else {
                name
            }
        })
        .collect()
}

/// Is the lock at `path` stale: its process gone (same host) or older than `stale_after`?
fn stale(path: &Path, stale_after: Duration) -> bool {
    if std::fs::read_to_string(path).is_err() {
        return false;
    }
    if crate::lockfile::holder_gone(path) {
        return true;
    }
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > stale_after)
}

/// Takes the lock for `name`, or `None` when a live worker holds it.
fn lock(out: &Path, name: &str, stale_after: Duration) -> Result<Option<crate::lockfile::Lock>> {
    let dir = out.join(".locks");
    std::fs::create_dir_all(&dir).map_err(|e| Error::from_io(&dir, e))?;
    crate::lockfile::try_take(&dir.join(format!("{name}.lock")), |p| stale(p, stale_after))
}

/// Where a failed slide's status is kept for the workers running beside the one that failed it.
fn failure_marker(out: &Path, name: &str) -> PathBuf {
    out.join(".failed").join(format!("{name}.json"))
}

/// This worker's start by OUT's file system clock (the one that dates failure records): the
/// time a file created there now gets; the local clock when none can be created.
fn start_stamp(out: &Path) -> SystemTime {
    let stamp = out
        .join(".failed")
        .join(format!(".start-{}", std::process::id()));
    let by_fs = std::fs::create_dir_all(out.join(".failed"))
        .and_then(|_| std::fs::write(&stamp, b""))
        .and_then(|_| std::fs::metadata(&stamp)?.modified());
    let _ = std::fs::remove_file(&stamp);
    by_fs.unwrap_or_else(|_| SystemTime::now())
}

/// The failure of `name` recorded by another worker after `since` (this worker's start), if any.
fn failed_meanwhile(out: &Path, name: &str, since: SystemTime) -> Option<SlideStatus> {
    let path = failure_marker(out, name);
    let written = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    if written < since {
        return None;
    }
    serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()
}

/// Is `OUT/<name>/result.json` complete and made with `key`?
fn up_to_date(out: &Path, name: &str, key: &str) -> bool {
    SlideResult::read(&out.join(name).join("result.json")).is_ok_and(|r| r.run_key == key)
}

/// Marks `s` skipped, with the figures of the finished result.
fn skipped(s: &mut SlideStatus, out: &Path) {
    s.status = Status::Skipped;
    s.reason = "up to date (same model and parameters)".into();
    let dir = out.join(&s.name);
    if let Ok(r) = SlideResult::read(&dir.join("result.json")) {
        s.patches = Some(r.patches_analysed);
        s.tissue_mm2 = Some(r.tissue_area_mm2);
        s.slide_score = r.slide_score.value;
        s.positive_mean = r
            .classes
            .iter()
            .find(|c| c.name == r.slide_score.class)
            .and_then(|c| c.mean);
        s.positive_class = Some(r.slide_score.class);
        if let Some(q) = &r.qc {
            s.qc_verdict = Some(q.verdict);
            s.qc_reasons = Some(q.reasons.join("; "));
            s.qc_excluded = Some(q.patches_excluded);
        }
    }
    s.output = Some(dir);
}

/// Runs the cohort; `report` is called after each slide (for progress lines).
pub fn run(
    paths: &[PathBuf],
    cfg: &AnalyzeConfig,
    opts: &CohortOptions,
    mut report: impl FnMut(&SlideStatus, usize, usize),
) -> Result<Vec<SlideStatus>> {
    let all = collect(paths)?;
    let names = output_names(&all);
    let mut pairs: Vec<(PathBuf, String)> = all.into_iter().zip(names).collect();
    if let Some((i, n)) = opts.shard {
        pairs = shard(&pairs, i, n);
    }
    if opts.claim {
        // Largest first (then in name order): the longest analyses start early, and the last
        // ones to be claimed are the shortest (the longest-processing-time-first rule).
        pairs = largest_first(pairs);
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::from_io(&cfg.out, e))?;
    let key = run_key(cfg)?;
    let started = start_stamp(&cfg.out);
    let total = pairs.len();
    let mut statuses = Vec::with_capacity(total);
    // The model is loaded once, for the first slide that needs it.
    let mut model = None;
    for (k, (path, name)) in pairs.into_iter().enumerate() {
        cfg.progress
            .emit(crate::pipeline::ProgressEvent::SlideStarted {
                index: k + 1,
                total,
                name: name.clone(),
            });
        let mut s = SlideStatus::failed(path.clone(), name.clone());
        if !opts.force && up_to_date(&cfg.out, &name, &key) {
            skipped(&mut s, &cfg.out);
        } else {
            match lock(&cfg.out, &name, opts.stale_after)? {
                None => {
                    s.status = Status::Locked;
                    s.reason = "another worker is analysing it".into();
                }
                Some(_held) => {
                    // Another worker may have finished it while we waited for the lock, or
                    // failed it since this worker started.
                    if !opts.force && up_to_date(&cfg.out, &name, &key) {
                        skipped(&mut s, &cfg.out);
                    } else if let Some(f) = failed_meanwhile(&cfg.out, &name, started) {
                        s.reason = format!("failed in a concurrent worker: {}", f.reason);
                        s.error_kind = f.error_kind;
                    } else {
                        let opts = AnalyzeOptions {
                            name: Some(&name),
                            model: Some(&mut model),
                        };
                        let marker = failure_marker(&cfg.out, &name);
                        match analyze(&path, cfg, opts) {
                            Ok(r) => {
                                s.status = Status::Done;
                                s.patches = Some(r.patches);
                                s.tissue_mm2 = Some(r.tissue_mm2);
                                s.positive_class = Some(r.positive_class);
                                s.positive_mean = r.positive_mean;
                                s.slide_score = r.slide_score;
                                if let Some(q) = &r.qc {
                                    s.qc_verdict = Some(q.verdict);
                                    s.qc_reasons = Some(q.reasons.join("; "));
                                    s.qc_excluded = Some(q.patches_excluded);
                                }
                                s.output = Some(r.folder);
                                s.reason = r.warnings.join("; ");
                                let _ = std::fs::remove_file(&marker);
                            }
                            Err(e) => {
                                s.status = Status::Failed;
                                s.reason = e.to_string();
                                s.error_kind = Some(e.kind().to_string());
                                // Only the slide's own failures: another worker, on another
                                // machine, may well read a slide this one could not. Without
                                // the marker (OUT not writable) a concurrent worker only tries
                                // the slide again.
                                if e.is_the_slides_own() {
                                    let _ = crate::output::write_json(&marker, &s);
                                }
                            }
                        }
                    }
                }
            }
        }
        report(&s, k + 1, total);
        statuses.push(s);
    }
    let tag = match (opts.shard, opts.claim) {
        (Some((i, n)), _) => format!("shard-{i}-of-{n}"),
        (None, true) => "claim".into(),
        (None, false) => "all".into(),
    };
    write_run_summary(&cfg.out, &tag, &statuses)?;
    merge_summaries(&cfg.out)?;
    Ok(statuses)
}

/// `tessera qc` over `paths`: every slide's QC into `OUT/<name>/` ([`crate::pipeline::qc_slide`]),
/// never stopping at a bad slide, and `OUT/qc-summary.json` + `OUT/qc-summary.csv` (one row per
/// slide: status, verdict, reasons, tissue area, each kind's share of the tissue; failures
/// first). `report` is called after each slide.
pub fn run_qc(
    paths: &[PathBuf],
    cfg: &AnalyzeConfig,
    mut report: impl FnMut(&SlideStatus, usize, usize),
) -> Result<Vec<SlideStatus>> {
    let all = collect(paths)?;
    let names = output_names(&all);
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::from_io(&cfg.out, e))?;
    let total = all.len();
    // A lab's QC model is loaded (and checked) once, before any slide.
    let qc_model = crate::pipeline::load_qc_model(cfg)?;
    let mut statuses = Vec::with_capacity(total);
    let mut kinds: Vec<BTreeMap<String, f64>> = Vec::with_capacity(total);
    for (k, (path, name)) in all.into_iter().zip(names).enumerate() {
        let mut s = SlideStatus::failed(path.clone(), name.clone());
        let mut shares = BTreeMap::new();
        match crate::pipeline::qc_slide(&path, &name, cfg, qc_model.as_ref()) {
            Ok(r) => {
                s.status = Status::Done;
                s.tissue_mm2 = Some(r.tissue_mm2);
                s.qc_verdict = Some(r.qc.verdict);
                s.qc_reasons = Some(r.qc.reasons.join("; "));
                s.reason = r.warnings.join("; ");
                s.output = Some(r.folder);
                for kr in &r.qc.kinds {
                    shares.insert(kr.kind.clone(), kr.tissue_pct);
                }
            }
            Err(e) => {
                s.reason = e.to_string();
                s.error_kind = Some(e.kind().to_string());
            }
        }
        report(&s, k + 1, total);
        statuses.push(s);
        kinds.push(shares);
    }
    let mut order: Vec<usize> = (0..statuses.len()).collect();
    order.sort_by_key(|&i| {
        (
            statuses[i].status != Status::Failed,
            statuses[i].path.clone(),
        )
    });
    let rows: Vec<&SlideStatus> = order.iter().map(|&i| &statuses[i]).collect();
    crate::output::write_json(&cfg.out.join("qc-summary.json"), &rows)?;
    let names: Vec<&str> = crate::qc::Kind::ALL.iter().map(|k| k.name()).collect();
    let mut csv = String::from("path,name,status,reason,qc_verdict,qc_reasons,tissue_mm2");
    for n in &names {
        csv.push_str(&format!(",{n}_pct"));
    }
    csv.push_str(",output\n");
    for &i in &order {
        let s = &statuses[i];
        let opt = |v: Option<String>| v.unwrap_or_default();
        let mut fields = vec![
            csv_field(&s.path.to_string_lossy()),
            csv_field(&s.name),
            s.status.to_string(),
            csv_field(&s.reason),
            opt(s.qc_verdict.map(|v| v.to_string())),
            csv_field(&opt(s.qc_reasons.clone())),
            opt(s.tissue_mm2.map(|v| format!("{v:.4}"))),
        ];
        for n in &names {
            fields.push(opt(kinds[i].get(*n).map(|v| format!("{v:.2}"))));
        }
        fields.push(csv_field(&opt(s
            .output
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()))));
        csv.push_str(&fields.join(","));
        csv.push('\n');
    }
    crate::output::write_bytes(&cfg.out.join("qc-summary.csv"), csv.as_bytes())?;
    Ok(statuses)
}

/// Records this run's statuses in `OUT/.runs/summary-<tag>.json`.
fn write_run_summary(out: &Path, tag: &str, statuses: &[SlideStatus]) -> Result<()> {
    let dir = out.join(".runs");
    std::fs::create_dir_all(&dir).map_err(|e| Error::from_io(&dir, e))?;
    let path = dir.join(format!("summary-{tag}-{}.json", std::process::id()));
    crate::output::write_json(&path, &statuses)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Merges every run's statuses under `OUT/.runs/` into `OUT/summary.json` and
/// `OUT/summary.csv`: one row per slide, the most informative status winning (done or skipped
/// over failed over locked), failures first. This is `tessera summary OUT`.
pub fn merge_summaries(out: &Path) -> Result<Vec<SlideStatus>> {
    let dir = out.join(".runs");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    files.retain(|f| f.extension().is_some_and(|e| e == "json"));
    files.sort_by_key(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok());
    let mut by_slide: BTreeMap<PathBuf, SlideStatus> = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| Error::from_io(&f, e))?;
        let Ok(list) = serde_json::from_str::<Vec<SlideStatus>>(&text) else {
            continue;
        };
        for s in list {
            // A better status wins; at equal rank the later run does.
            let replace = by_slide
                .get(&s.path)
                .is_none_or(|old| s.status.rank() >= old.status.rank());
            if replace {
                by_slide.insert(s.path.clone(), s);
            }
        }
    }
    let mut rows: Vec<SlideStatus> = by_slide.into_values().collect();
    rows.sort_by_key(|s| (s.status != Status::Failed, s.path.clone()));
    crate::output::write_json(&out.join("summary.json"), &rows)?;
    let mut csv = String::from(
        "path,name,status,reason,patches,tissue_mm2,positive_class,positive_mean,slide_score,\
         qc_verdict,qc_excluded,qc_reasons,output\n",
    );
    for s in &rows {
        let opt = |v: Option<String>| v.unwrap_or_default();
        csv.push_str(
            &[
                csv_field(&s.path.to_string_lossy()),
                csv_field(&s.name),
                s.status.to_string(),
                csv_field(&s.reason),
                opt(s.patches.map(|v| v.to_string())),
                opt(s.tissue_mm2.map(|v| format!("{v:.4}"))),
                csv_field(&opt(s.positive_class.clone())),
                opt(s.positive_mean.map(|v| format!("{v:.6}"))),
                opt(s.slide_score.map(|v| format!("{v:.6}"))),
                opt(s.qc_verdict.map(|v| v.to_string())),
                opt(s.qc_excluded.map(|v| v.to_string())),
                csv_field(&opt(s.qc_reasons.clone())),
                csv_field(&opt(s
                    .output
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned()))),
            ]
            .join(","),
        );
        csv.push('\n');
    }
    crate::output::write_bytes(&out.join("summary.csv"), csv.as_bytes())?;
    crate::report::write_index(out, &rows)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_from_the_schedulers_variables() {
        let env = |pairs: &[(&str, &str)]| {
            let m: BTreeMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |k: &str| m.get(k).cloned()
        };
        let slurm = |id: &str, min: &str, max: &str, step: &str, count: &str| {
            shard_from_scheduler(env(&[
                ("SLURM_ARRAY_TASK_ID", id),
                ("SLURM_ARRAY_TASK_MIN", min),
                ("SLURM_ARRAY_TASK_MAX", max),
                ("SLURM_ARRAY_TASK_STEP", step),
                ("SLURM_ARRAY_TASK_COUNT", count),
            ]))
        };
        // --array=1-8, and an array from 0.
        assert_eq!(slurm("3", "1", "8", "1", "8"), Ok((3, 8)));
        assert_eq!(slurm("0", "0", "7", "1", "8"), Ok((1, 8)));
        // --array=1-5:2 is tasks 1, 3, 5: shards 1, 2, 3 of 3 (task 5 ran "--shard 5/3").
        assert_eq!(slurm("5", "1", "5", "2", "3"), Ok((3, 3)));
        assert_eq!(slurm("3", "1", "5", "2", "3"), Ok((2, 3)));
        // --array=1,3,7: three tasks over a range of seven places: refused.
        let e = slurm("3", "1", "7", "1", "3").unwrap_err();
        assert!(e.contains("sparse"), "{e}");
        assert!(slurm("2", "1", "5", "2", "3").unwrap_err().contains("step"));
        assert!(slurm("9", "1", "5", "1", "5")
            .unwrap_err()
            .contains("outside"));
        assert!(slurm("x", "1", "5", "1", "5")
            .unwrap_err()
            .contains("not a whole number"));
        // Kubernetes: a 0-based index and the count the Job passes.
        assert_eq!(
            shard_from_scheduler(env(&[
                ("JOB_COMPLETION_INDEX", "0"),
                ("TESSERA_SHARD_COUNT", "4")
            ])),
            Ok((1, 4))
        );
        assert!(shard_from_scheduler(env(&[("JOB_COMPLETION_INDEX", "0")]))
            .unwrap_err()
            .contains("TESSERA_SHARD_COUNT"));
        assert!(shard_from_scheduler(env(&[]))
            .unwrap_err()
            .contains("needs a job array"));
    }

    #[test]
    fn missing_shards_are_those_without_a_run_record() {
        let t = tempfile::tempdir().unwrap();
        assert!(missing_shards(t.path()).is_empty());
        let runs = t.path().join(".runs");
        std::fs::create_dir_all(&runs).unwrap();
        for f in [
            "summary-shard-1-of-3-100.json",
            "summary-shard-3-of-3-101.json",
            "summary-shard-3-of-3-102.json",
            "summary-all-5.json",
            "summary-claim-7.json",
            "summary-shard-2-of-2-9.json",
            "summary-shard-x-of-2-1.json",
        ] {
            std::fs::write(runs.join(f), "[]").unwrap();
        }
        assert_eq!(missing_shards(t.path()), vec![(1, 2), (2, 3)]);
    }

    #[test]
    fn claiming_orders_slides_largest_first_counting_a_mirax_folder() {
        let t = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: usize| {
            let p = t.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, vec![0u8; bytes]).unwrap();
            p
        };
        let a = file("a.svs", 10);
        let b = file("b.svs", 30);
        let c = file("c.tif", 10);
        let m = file("m.mrxs", 1);
        file("m/Data0000.dat", 25);
        let dcm = t.path().join("series");
        file("series/1.dcm", 12);
        file("series/2.dcm", 12);
        let pairs = vec![(a, 'a'), (b, 'b'), (c, 'c'), (m, 'm'), (dcm, 'd')];
        let order: String = largest_first(pairs).into_iter().map(|(_, k)| k).collect();
        // b 30, m 26 (with its folder), the series 24, then a and c (10 each) in given order.
        assert_eq!(order, "bmdac");
    }

    #[test]
    fn shards_partition_the_list() {
        let v: Vec<u32> = (0..7).collect();
        let a = shard(&v, 1, 2);
        let b = shard(&v, 2, 2);
        assert_eq!(a, [0, 2, 4, 6]);
        assert_eq!(b, [1, 3, 5]);
        assert_eq!(shard(&v, 1, 1), v);
    }

    #[test]
    fn folders_are_searched_and_dicom_series_count_once() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        std::fs::create_dir_all(p.join("a/series")).unwrap();
        std::fs::create_dir_all(p.join(".hidden")).unwrap();
        std::fs::create_dir_all(p.join("m/slide")).unwrap();
        for f in [
            "a/one.svs",
            "a/notes.txt",
            "a/series/1.dcm",
            "a/series/2.dcm",
            ".hidden/x.svs",
            "m/slide.mrxs",
            "m/slide/Index.dat",
            "b.TIFF",
        ] {
            std::fs::write(p.join(f), b"x").unwrap();
        }
        let got = collect(&[p.to_path_buf()]).unwrap();
        let rel: Vec<String> = got
            .iter()
            .map(|g| g.strip_prefix(p).unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(rel, ["a/one.svs", "a/series", "b.TIFF", "m/slide.mrxs"]);
    }

    #[test]
    fn duplicate_names_get_distinct_folders() {
        let n = output_names(&[
            PathBuf::from("/x/a.svs"),
            PathBuf::from("/y/a.svs"),
            PathBuf::from("/y/b.svs"),
        ]);
        assert_ne!(n[0], n[1]);
        assert!(n[0].starts_with("a.svs-") && n[1].starts_with("a.svs-"));
        assert_eq!(n[2], "b.svs");
    }
}
