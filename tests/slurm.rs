//! `docs/slurm-array.sbatch` on a real Slurm 22.05 cluster: each test starts its own single-node
//! cluster (munged, slurmctld and slurmd as plain processes, by `tests/slurm-cluster.sh`, under a
//! temporary folder), submits the documented array with `sbatch --wait` over a mixed folder (two
//! real slides, a corrupt file, one generated 8,000² slide), and stops every daemon by its PID.
//!
//! Needs Debian's `munge` and `slurm-wlm`, root (slurmd starts the jobs) and the shared test
//! data: skipped with the reason outside CI, a failure in CI (`.ci/run` installs both).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::require;
use crate::util::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/slurm-cluster.sh");
const SBATCH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/slurm-array.sbatch");

/// A running single-node cluster; dropped, its daemons are stopped.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a cluster whose node declares `cpus` processors.
    fn start(cpus: u32) -> Option<Cluster> {
        let found = |b: &str| {
            ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(b).exists())
        };
        if !["munged", "slurmctld", "slurmd", "sbatch"]
            .iter()
            .all(|b| found(b))
        {
            skip("Slurm or munge not installed (apt-get install slurm-wlm munge)");
            return None;
        }
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            skip("a Slurm node needs root (slurmd starts the jobs as their user)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let o = Command::new("bash")
            .arg(SCRIPT)
            .arg("start")
            .arg(dir.path().join("slurm"))
            .arg(cpus.to_string())
            .output()
            .unwrap();
        let cluster = Cluster { dir };
        assert!(o.status.success(), "slurm-cluster.sh: {}", stderr(&o));
        Some(cluster)
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("slurm/slurm.conf")
    }

    /// A Slurm client command with this cluster's configuration, run from its folder (where a
    /// job's --output lands before the script redirects it).
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", self.conf())
            .env("TESSERA", env!("CARGO_BIN_EXE_tessera"))
            .current_dir(self.dir.path());
        c
    }

    /// `sbatch --parsable --wait --cpus-per-task=1 --mem=1G --time=10 ARGS…`: the array job's
    /// ID and the exit code (the highest of its tasks').
    fn sbatch(&self, args: &[&OsStr]) -> (String, i32) {
        let o = self
            .command("sbatch")
            .args([
                "--parsable",
                "--wait",
                "--cpus-per-task=1",
                "--mem=1G",
                "--time=10",
            ])
            .args(args)
            .output()
            .unwrap();
        let id = String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(!id.is_empty(), "sbatch: {}", stderr(&o));
        (id, code(&o))
    }

    /// The documented array: `sbatch ARRAY docs/slurm-array.sbatch DIR OUT --mpp 0.5
    /// --log-format json EXTRA…`.
    fn array(&self, array: &str, dir: &Path, out: &Path, extra: &[&str]) -> (String, i32) {
        let mut args = vec![
            OsStr::new(array),
            OsStr::new(SBATCH),
            dir.as_os_str(),
            out.as_os_str(),
        ];
        args.extend(
            ["--mpp", "0.5", "--log-format", "json"]
                .iter()
                .chain(extra)
                .map(OsStr::new),
        );
        self.sbatch(&args)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("stop")
            .arg(self.dir.path().join("slurm"))
            .status();
    }
}

/// The mixed folder: CMU-1-Small-Region.svs, boxes.tiff (links), broken.svs (corrupt) and a
/// generated 8,000² big.svs.
fn mixed_folder(tmp: &Path) -> Option<PathBuf> {
    let dir = tmp.join("cohort");
    std::fs::create_dir_all(&dir).unwrap();
    for (src, name) in [
        (
            "slides/aperio/CMU-1-Small-Region.svs",
            "CMU-1-Small-Region.svs",
        ),
        ("slides/generic-tiff/boxes.tiff", "boxes.tiff"),
        ("corrupt/broken.svs", "broken.svs"),
    ] {
        std::os::unix::fs::symlink(data(src)?, dir.join(name)).unwrap();
    }
    generate(&dir.join("big.svs"), 8000)?;
    Some(dir)
}

/// Each array task's status lines, by task ID: (slide file name, status, reason).
type Lines = Vec<(String, String, String)>;

fn task_logs(out: &Path, job: &str, tasks: &[u32]) -> Vec<(u32, Lines)> {
    tasks
        .iter()
        .map(|t| {
            let path = out.join(format!("logs/tessera-{job}_{t}.log"));
            let log = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let lines = log
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["status"].is_string())
                .map(|v| {
                    let name = Path::new(v["path"].as_str().unwrap())
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                    (name, field("status"), field("reason"))
                })
                .collect();
            (*t, lines)
        })
        .collect()
}

/// The (name, status) pairs of every task, sorted.
fn all_statuses(logs: &[(u32, Lines)]) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = logs
        .iter()
        .flat_map(|(_, l)| l.iter().map(|(n, s, _)| (n.clone(), s.clone())))
        .collect();
    all.sort();
    all
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn summary_code(out: &Path) -> (i32, Vec<serde_json::Value>) {
    let o = tessera(&[OsStr::new("summary"), out.as_os_str()], &[]);
    let rows =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    (code(&o), rows)
}

/// `sbatch --array=1-2`: every slide once across the two shards, the corrupt one failed (the
/// array exits 2), the merged summary; a resubmission with `--failed-slides-exit 0` skips the
/// finished slides and lets an `afterok` job start; a stepped `--array=1-5:2` covers the list
/// once in three shards.
#[test]
fn a_slurm_array_covers_a_mixed_folder_once_and_resubmits_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = require!(mixed_folder(tmp.path()));
    let cluster = require!(Cluster::start(4));
    let out = tmp.path().join("out");

    let (job, c) = cluster.array("--array=1-2", &dir, &out, &[]);
    assert_eq!(c, 2, "the shard with the corrupt slide exits 2");
    let logs = task_logs(&out, &job, &[1, 2]);
    for (t, lines) in &logs {
        assert!(!lines.is_empty(), "task {t} analysed nothing");
    }
    assert_eq!(
        all_statuses(&logs),
        pairs(&[
            ("CMU-1-Small-Region.svs", "done"),
            ("big.svs", "done"),
            ("boxes.tiff", "done"),
            ("broken.svs", "failed"),
        ]),
        "each slide once"
    );
    assert!(out.join("big.svs/result.json").is_file());
    assert!(!out.join("broken.svs").exists());
    let (c, rows) = summary_code(&out);
    assert_eq!(c, 2, "summary: a slide failed");
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0]["status"], "failed");

    // Resubmitted with --failed-slides-exit 0: finished slides skipped, the corrupt one tried
    // again and listed; the array exits 0, so a job waiting with afterok runs.
    let (again, c) = cluster.array("--array=1-2", &dir, &out, &["--failed-slides-exit", "0"]);
    assert_eq!(c, 0);
    assert_eq!(
        all_statuses(&task_logs(&out, &again, &[1, 2])),
        pairs(&[
            ("CMU-1-Small-Region.svs", "skipped"),
            ("big.svs", "skipped"),
            ("boxes.tiff", "skipped"),
            ("broken.svs", "failed"),
        ])
    );
    let after = out.join("after-ok");
    let (_, c) = cluster.sbatch(&[
        OsStr::new(&format!("--dependency=afterok:{again}")),
        OsStr::new("--kill-on-invalid-dep=yes"),
        OsStr::new(&format!("--output={}", after.display())),
        OsStr::new("--wrap=echo ran"),
    ]);
    assert_eq!(c, 0);
    assert_eq!(std::fs::read_to_string(&after).unwrap().trim(), "ran");

    // A stepped array: tasks 1, 3 and 5 are shards 1/3, 2/3 and 3/3.
    let stepped = tmp.path().join("stepped");
    let (job, c) = cluster.array("--array=1-5:2", &dir, &stepped, &[]);
    assert_eq!(c, 2);
    let logs = task_logs(&stepped, &job, &[1, 3, 5]);
    let names: Vec<String> = all_statuses(&logs).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "CMU-1-Small-Region.svs",
            "big.svs",
            "boxes.tiff",
            "broken.svs"
        ],
        "each slide once"
    );
    let (c, rows) = summary_code(&stepped);
    assert_eq!(c, 2, "every shard reported (4 would name a missing one)");
    assert_eq!(rows.len(), 4);
}

/// `sbatch --array=1-3 … --claim`: three tasks run at once (two find the big slide locked by the
/// third), each good slide is analysed by exactly one of them, the corrupt one is tried once, and
/// the summary merges all three.
#[test]
fn three_claiming_array_tasks_take_each_slide_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = require!(mixed_folder(tmp.path()));
    let cluster = require!(Cluster::start(4));
    let out = tmp.path().join("out");
    let (job, c) = cluster.array("--array=1-3", &dir, &out, &["--claim"]);
    assert_eq!(c, 2, "a slide failed");
    let logs = task_logs(&out, &job, &[1, 2, 3]);
    let statuses = all_statuses(&logs);
    let of = |name: &str, status: &str| {
        statuses
            .iter()
            .filter(|(n, s)| n == name && s == status)
            .count()
    };
    for name in ["CMU-1-Small-Region.svs", "big.svs", "boxes.tiff"] {
        assert_eq!(of(name, "done"), 1, "{name}: {statuses:?}");
    }
    // The largest slide is every task's first: the two tasks that did not get it ran while it
    // was being analysed.
    assert_eq!(of("big.svs", "locked"), 2, "{statuses:?}");
    let tries = logs
        .iter()
        .flat_map(|(_, l)| l.iter())
        .filter(|(n, s, r)| n == "broken.svs" && s == "failed" && !r.contains("concurrent"))
        .count();
    assert_eq!(tries, 1, "the corrupt slide is tried once: {logs:?}");
    let (c, rows) = summary_code(&out);
    assert_eq!(c, 2);
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows.iter().filter(|r| r["status"] == "done").count(),
        3,
        "{rows:?}"
    );
}
