//! Cohort runs: folders, failures, resume, shards, concurrent workers, summaries.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::require;
use crate::util::*;

/// A folder with two good slides, a corrupt one and an unsupported one (symlinks to the shared
/// files), plus a non-slide file that the search must ignore.
fn cohort_folder() -> Option<tempfile::TempDir> {
    let data = testdata()?;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cohort");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let link = |src: &str, dst: &str| {
        std::os::unix::fs::symlink(data.join(src), dir.join(dst)).unwrap();
    };
    link(
        "slides/aperio/CMU-1-Small-Region.svs",
        "CMU-1-Small-Region.svs",
    );
    link("slides/generic-tiff/boxes.tiff", "sub/boxes.tiff");
    link("corrupt/broken.svs", "broken.svs");
    link("unsupported/kidney-stripped-rgb.tif", "sub/kidney.tif");
    std::fs::write(dir.join("notes.txt"), "not a slide").unwrap();
    Some(tmp)
}

/// `tessera analyze ARGS... --inference tract --log-format json`, with `env` set.
fn analyze(args: &[&OsStr], env: &[(&str, &OsStr)]) -> std::process::Output {
    let mut all = vec![OsStr::new("analyze")];
    all.extend_from_slice(args);
    all.extend([
        OsStr::new("--inference"),
        OsStr::new("tract"),
        OsStr::new("--log-format"),
        OsStr::new("json"),
    ]);
    tessera(&all, env)
}

fn run(args: &[&OsStr]) -> (i32, String) {
    let out = analyze(args, &[]);
    (
        code(&out),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The arguments of `tessera analyze DIR --out OUT --mpp 0.5 EXTRA...` (boxes.tiff states a
/// 72 dpi placeholder MPP, so an MPP is given for every slide).
fn cohort_args<'a>(dir: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a OsStr> {
    let mut args = vec![dir.as_os_str(), OsStr::new("--out"), out.as_os_str()];
    args.extend(["--mpp", "0.5"].iter().chain(extra).map(|a| OsStr::new(*a)));
    args
}

fn run_cohort(dir: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    run(&cohort_args(dir, out, extra))
}

/// Starts `n` workers `tessera analyze DIR --out OUT --mpp 0.5 EXTRA... --inference tract
/// --log-format json` together, waits for all, and returns the names they report done, sorted.
fn workers_done(dir: &Path, out: &Path, n: usize, extra: &[&str]) -> Vec<String> {
    let workers: Vec<_> = (0..n)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
                .arg("analyze")
                .args(cohort_args(dir, out, extra))
                .args(["--inference", "tract", "--log-format", "json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut done: Vec<String> = workers
        .into_iter()
        .map(|w| w.wait_with_output().unwrap())
        .flat_map(|o| statuses(&String::from_utf8_lossy(&o.stdout)))
        .filter(|(_, st)| st == "done")
        .map(|(name, _)| name)
        .collect();
    done.sort();
    done
}

/// How many status lines have `status`.
fn count(stdout: &str, status: &str) -> usize {
    statuses(stdout)
        .iter()
        .filter(|(_, st)| st == status)
        .count()
}

/// (path file name, status) for each JSON status line.
fn statuses(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let p = PathBuf::from(v["path"].as_str().unwrap());
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                v["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn summary(out: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str::<Vec<serde_json::Value>>(
        &std::fs::read_to_string(out.join("summary.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn a_folder_completes_the_good_slides_exits_2_and_a_rerun_skips_everything() {
    let tmp = require!(cohort_folder());
    let dir = tmp.path().join("cohort");
    let out = tmp.path().join("out");
    let (code1, stdout) = run_cohort(&dir, &out, &[]);
    assert_eq!(code1, 2, "{stdout}");
    let mut s = statuses(&stdout);
    s.sort();
    assert_eq!(
        s,
        [
            ("CMU-1-Small-Region.svs".to_string(), "done".to_string()),
            ("boxes.tiff".into(), "done".into()),
            ("broken.svs".into(), "failed".into()),
            ("kidney.tif".into(), "failed".into()),
        ]
    );
    assert!(out.join("CMU-1-Small-Region.svs/result.json").is_file());
    assert!(
        !out.join("broken.svs").exists(),
        "a failed slide leaves no folder"
    );
    let rows = summary(&out);
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0]["status"], "failed", "failures are listed first");
    assert!(
        rows[0]["reason"].as_str().unwrap().contains("broken.svs")
            || rows[0]["reason"].as_str().unwrap().contains("kidney")
    );
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5);
    assert!(csv.starts_with("path,name,status,reason"));

    // Rerun: everything done is skipped, the failures fail again.
    let (code2, stdout) = run_cohort(&dir, &out, &[]);
    assert_eq!(code2, 2);
    assert_eq!(count(&stdout, "skipped"), 2, "{stdout}");
    assert_eq!(count(&stdout, "done"), 0, "{stdout}");
    // Different parameters are not "the same run": the good slides are redone.
    let (_, stdout) = run_cohort(&dir, &out, &["--threshold", "0.7"]);
    assert_eq!(count(&stdout, "done"), 2, "{stdout}");
    // --force redoes them too.
    let (_, stdout) = run_cohort(&dir, &out, &["--threshold", "0.7", "--force"]);
    assert_eq!(count(&stdout, "done"), 2, "{stdout}");
}

#[test]
fn shards_cover_every_slide_exactly_once_and_merge() {
    let tmp = require!(cohort_folder());
    let dir = tmp.path().join("cohort");
    let out = tmp.path().join("out");
    let mut seen = Vec::new();
    for shard in ["1/2", "2/2"] {
        let (_, stdout) = run_cohort(&dir, &out, &["--shard", shard]);
        seen.extend(statuses(&stdout).into_iter().map(|(name, _)| name));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "CMU-1-Small-Region.svs",
            "boxes.tiff",
            "broken.svs",
            "kidney.tif"
        ]
    );
    // The merged summary lists all four.
    std::fs::remove_file(out.join("summary.json")).unwrap();
    let merged = tessera(&[OsStr::new("summary"), out.as_os_str()], &[]);
    assert_eq!(code(&merged), 2, "{}", stderr(&merged));
    assert_eq!(summary(&out).len(), 4);
}

#[test]
fn shard_auto_numbers_a_stepped_slurm_array_and_refuses_a_sparse_one() {
    let tmp = require!(cohort_folder());
    let dir = tmp.path().join("cohort");
    let out = tmp.path().join("out");
    // sbatch --array=1-7:2: tasks 1, 3, 5 and 7, four shards.
    let slurm = |out: &Path, id: &str, max: &str, step: Option<&str>, count: &str| {
        let mut env = vec![
            ("SLURM_ARRAY_TASK_ID", OsStr::new(id)),
            ("SLURM_ARRAY_TASK_MIN", OsStr::new("1")),
            ("SLURM_ARRAY_TASK_MAX", OsStr::new(max)),
            ("SLURM_ARRAY_TASK_COUNT", OsStr::new(count)),
        ];
        if let Some(step) = step {
            env.push(("SLURM_ARRAY_TASK_STEP", OsStr::new(step)));
        }
        analyze(&cohort_args(&dir, out, &["--shard", "auto"]), &env)
    };
    let mut seen = Vec::new();
    for id in ["1", "3", "5", "7"] {
        let o = slurm(&out, id, "7", Some("2"), "4");
        let err = stderr(&o);
        let shard = (id.parse::<usize>().unwrap() - 1) / 2 + 1;
        assert!(err.contains(&format!("shard {shard}/4")), "{err}");
        let names: Vec<String> = statuses(&String::from_utf8_lossy(&o.stdout))
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names.len(), 1, "task {id}: {names:?}");
        seen.extend(names);
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "CMU-1-Small-Region.svs",
            "boxes.tiff",
            "broken.svs",
            "kidney.tif"
        ]
    );
    // sbatch --array=1,3,7: three tasks over a range of seven; refused before any work.
    let fresh = tmp.path().join("fresh");
    let o = slurm(&fresh, "3", "7", None, "3");
    assert_eq!(code(&o), 64, "{}", stderr(&o));
    assert!(stderr(&o).contains("sparse"), "{}", stderr(&o));
    assert!(!fresh.exists(), "nothing written");
}

#[test]
fn failed_slides_have_a_chosen_exit_code_and_an_empty_shard_is_no_failure() {
    let tmp = require!(cohort_folder());
    let dir = tmp.path().join("cohort");
    let out = tmp.path().join("out");
    // Sorted: CMU-1-Small-Region.svs, broken.svs, sub/boxes.tiff, sub/kidney.tif. Shard 2/4 is
    // the corrupt file alone: by default "none read" (3); with --failed-slides-exit 0 the run
    // counts as finished, the failure listed in the summary.
    let (c, stdout) = run_cohort(&dir, &out, &["--shard", "2/4"]);
    assert_eq!(c, 3, "{stdout}");
    let (c, stdout) = run_cohort(&dir, &out, &["--shard", "2/4", "--failed-slides-exit", "0"]);
    assert_eq!(c, 0, "{stdout}");
    assert_eq!(
        statuses(&stdout),
        [("broken.svs".to_string(), "failed".to_string())]
    );
    // The whole folder: some failed (2 by default, the chosen code otherwise).
    let (c, _) = run_cohort(&dir, &out, &["--failed-slides-exit", "0"]);
    assert_eq!(c, 0);
    let (c, _) = run_cohort(&dir, &out, &[]);
    assert_eq!(c, 2);
    // More shards than slides: shard 6 of 6 holds nothing, which is not a failure.
    let (c, stdout) = run_cohort(&dir, &out, &["--shard", "6/6"]);
    assert_eq!(c, 0, "{stdout}");
    assert!(statuses(&stdout).is_empty());
}

#[test]
fn two_workers_started_together_analyse_each_slide_once() {
    let tmp = require!(cohort_folder());
    let dir = tmp.path().join("cohort");
    let out = tmp.path().join("out");
    let done = workers_done(&dir, &out, 2, &[]);
    assert_eq!(
        done,
        ["CMU-1-Small-Region.svs", "boxes.tiff"],
        "each good slide analysed exactly once"
    );
    // No lock is left behind.
    assert_eq!(std::fs::read_dir(out.join(".locks")).unwrap().count(), 0);
}

/// `--claim`: one worker takes the slides largest first; three started together analyse each
/// good slide exactly once, leave no lock, and each leaves its run record.
#[test]
fn claiming_workers_take_the_largest_first_and_each_slide_once() {
    let tmp = require!(cohort_folder());
    let dir = tmp.path().join("cohort");
    let (_, stdout) = run_cohort(&dir, &tmp.path().join("one"), &["--claim"]);
    let order: Vec<String> = statuses(&stdout).into_iter().map(|(n, _)| n).collect();
    let mut by_size: Vec<(u64, String)> = [
        "CMU-1-Small-Region.svs",
        "sub/boxes.tiff",
        "broken.svs",
        "sub/kidney.tif",
    ]
    .iter()
    .map(|p| {
        let path = dir.join(p);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        (std::fs::metadata(&path).unwrap().len(), name)
    })
    .collect();
    by_size.sort_by_key(|s| std::cmp::Reverse(s.0));
    let expected: Vec<String> = by_size.into_iter().map(|(_, n)| n).collect();
    assert_eq!(order, expected, "largest first");
    // --claim and --shard exclude each other.
    let (code_both, _) = run_cohort(&dir, &tmp.path().join("x"), &["--claim", "--shard", "1/2"]);
    assert_eq!(code_both, 64);

    let out = tmp.path().join("three");
    let done = workers_done(&dir, &out, 3, &["--claim"]);
    assert_eq!(
        done,
        ["CMU-1-Small-Region.svs", "boxes.tiff"],
        "each good slide analysed exactly once"
    );
    assert_eq!(std::fs::read_dir(out.join(".locks")).unwrap().count(), 0);
    let records = std::fs::read_dir(out.join(".runs"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("summary-claim-")
        })
        .count();
    assert_eq!(records, 3);
    let merged = tessera(&[OsStr::new("summary"), out.as_os_str()], &[]);
    assert_eq!(code(&merged), 2, "{}", stderr(&merged));
    let rows = summary(&out);
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows.iter().filter(|r| r["status"] == "done").count(),
        2,
        "{rows:?}"
    );
}

/// A slide that fails is tried once by workers running together: a claiming worker that reaches
/// it after another failed it reports that failure; a later run tries it again.
#[test]
fn concurrent_workers_try_a_failing_slide_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cohort");
    std::fs::create_dir_all(&dir).unwrap();
    require!(generate(&dir.join("big.svs"), 6000));
    let broken = require!(data("corrupt/broken.svs"));
    std::os::unix::fs::symlink(broken, dir.join("broken.svs")).unwrap();
    let out = tmp.path().join("out");
    let start = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("analyze")
            .args(cohort_args(&dir, &out, &["--claim"]))
            .args(["--inference", "tract", "--log-format", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // The first worker takes the big slide (largest first) and is held there (SIGSTOP: still a
    // live lock holder); the second finds it locked and fails the corrupt one meanwhile.
    let first = start();
    let lock = out.join(".locks/big.svs.lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !lock.exists() {
        assert!(std::time::Instant::now() < deadline, "no lock taken");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &first.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let second = start().wait_with_output().unwrap();
    signal("-CONT");
    let first = first.wait_with_output().unwrap();
    let lines = |o: &std::process::Output| -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| {
                v["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("broken.svs"))
            })
            .collect()
    };
    let (tried, reported) = (lines(&second), lines(&first));
    assert_eq!(tried.len(), 1);
    assert_eq!(tried[0]["status"], "failed");
    assert!(!tried[0]["reason"].as_str().unwrap().contains("concurrent"));
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0]["status"], "failed");
    assert!(
        reported[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("failed in a concurrent worker: "),
        "{}",
        reported[0]
    );
    assert_eq!(reported[0]["error_kind"], tried[0]["error_kind"]);
    // A later run tries it again (the file may have been replaced since).
    let (_, stdout) = run_cohort(&dir, &out, &["--claim"]);
    let again: Vec<_> = stdout
        .lines()
        .filter(|l| l.contains("broken.svs"))
        .collect();
    assert_eq!(again.len(), 1, "{stdout}");
    assert!(!again[0].contains("concurrent"), "{stdout}");
}

/// A shard that never reported (its task died, or never ran) is named by `tessera summary`,
/// which exits 4; once it has run, the summary's own code returns.
#[test]
fn summary_names_a_shard_that_never_reported() {
    let tmp = require!(cohort_folder());
    let dir = tmp.path().join("cohort");
    let out = tmp.path().join("out");
    for shard in ["1/3", "3/3"] {
        run_cohort(&dir, &out, &["--shard", shard]);
    }
    let merged = tessera(&[OsStr::new("summary"), out.as_os_str()], &[]);
    assert_eq!(code(&merged), 4, "{}", stderr(&merged));
    assert!(
        stderr(&merged).contains("shard 2/3 never reported"),
        "{}",
        stderr(&merged)
    );
    run_cohort(&dir, &out, &["--shard", "2/3"]);
    let merged = tessera(&[OsStr::new("summary"), out.as_os_str()], &[]);
    // Every shard reported; the corrupt slide keeps it from 0.
    assert_eq!(code(&merged), 2, "{}", stderr(&merged));
    assert_eq!(summary(&out).len(), 4);
}

/// `docs/slurm-array.sbatch` as an array task runs it (Slurm's variables set by hand; the real
/// scheduler is not started here): its log lands under OUT/logs/, extra arguments reach
/// `analyze`, `--shard auto` numbers the shard, and `--claim` among the arguments replaces it.
#[test]
fn the_sbatch_script_logs_under_out_and_passes_flags_through() {
    let tmp = require!(cohort_folder());
    let dir = tmp.path().join("cohort");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/slurm-array.sbatch");
    let task = |out: &Path, (job, id): (&str, &str), extra: &[&str]| {
        let o = std::process::Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .arg(out)
            .args([
                "--inference",
                "tract",
                "--mpp",
                "0.5",
                "--log-format",
                "json",
            ])
            .args(extra)
            .env("TESSERA", env!("CARGO_BIN_EXE_tessera"))
            .env("SLURM_ARRAY_JOB_ID", job)
            .env("SLURM_ARRAY_TASK_ID", id)
            .env("SLURM_ARRAY_TASK_MIN", "1")
            .env("SLURM_ARRAY_TASK_MAX", "2")
            .env("SLURM_ARRAY_TASK_COUNT", "2")
            .env("SLURM_CPUS_PER_TASK", "1")
            .output()
            .unwrap();
        let log = std::fs::read_to_string(out.join(format!("logs/tessera-{job}_{id}.log")))
            .unwrap_or_else(|e| panic!("no log under OUT/logs: {e}"));
        (o.status.code(), log)
    };
    let out = tmp.path().join("out");
    let mut names = Vec::new();
    for id in ["1", "2"] {
        let (_, log) = task(&out, ("77", id), &[]);
        assert!(log.contains(&format!("shard {id}/2")), "{log}");
        names.extend(statuses(&log).into_iter().map(|(n, _)| n));
    }
    names.sort();
    assert_eq!(
        names,
        [
            "CMU-1-Small-Region.svs",
            "boxes.tiff",
            "broken.svs",
            "kidney.tif"
        ],
        "the two shards cover the list once"
    );
    // --claim (a second job): no shard; the task walks the whole list, all of it done before.
    let (_, log) = task(&out, ("78", "1"), &["--claim"]);
    assert!(!log.contains("shard 1/2"), "{log}");
    assert_eq!(statuses(&log).len(), 4, "{log}");
}
