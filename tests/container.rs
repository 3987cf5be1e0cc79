//! The `Containerfile`, built and run with podman: the image analyses a slide with the default
//! model as a non-root user, finds ONNX Runtime and OpenSlide 4 from its pip packages, and
//! holds only what the file says; the Kubernetes Job's container spec runs in it as a pod would.
//!
//! No registry is reachable here, so the `debian:bookworm-slim` the file starts from is made by
//! `debootstrap --variant=minbase bookworm` and imported under that name; the binary is this
//! test build's, with its debug sections stripped. Everything podman stores lives in a temporary
//! folder. Needs podman, runc, debootstrap and objcopy (Debian), PyYAML, root, and Debian's and PyPI's
//! registries (the build installs python3 and pip packages): skipped with the reason outside
//! CI, a failure in CI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::require;
use crate::util::*;

/// podman with its storage under `root`, in the settings this kind of machine allows: vfs
/// storage, runc (crun refuses hybrid cgroups), cgroupfs.
struct Podman {
    root: PathBuf,
}

impl Podman {
    fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.root.join("storage"))
            .arg("--runroot")
            .arg(self.root.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
            ]);
        c
    }

    /// `podman run --rm --network=none -v VOLUMES… -e ENV… [--entrypoint E] IMAGE`, ready for
    /// the arguments (limits below the sandbox's own: podman's defaults are above what it may
    /// set).
    fn run_command(&self, volumes: &[String], env: &[String], entrypoint: Option<&str>) -> Command {
        let mut c = self.command();
        c.args([
            "run",
            "--rm",
            "--network=none",
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
        ]);
        for v in volumes {
            c.arg("-v").arg(v);
        }
        for e in env {
            c.arg("-e").arg(e);
        }
        if let Some(e) = entrypoint {
            c.arg("--entrypoint").arg(e);
        }
        c.arg(IMAGE);
        c
    }

    /// [`Podman::run_command`] without environment, run with `args`.
    fn run(&self, volumes: &[String], entrypoint: Option<&str>, args: &[&str]) -> Output {
        self.run_command(volumes, &[], entrypoint)
            .args(args)
            .output()
            .unwrap()
    }
}

const IMAGE: &str = "localhost/tessera:test";

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        stderr(o),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn tools_present() -> Option<()> {
    for tool in ["podman", "runc", "debootstrap", "objcopy"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
            .unwrap_or(false)
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(tool).exists());
        if !found {
            skip(&format!(
                "{tool} not installed (apt-get install podman runc debootstrap binutils)"
            ));
            return None;
        }
    }
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        skip("building the base image with debootstrap needs root");
        return None;
    }
    Some(())
}

#[test]
fn the_container_image_analyses_a_slide_as_a_non_root_user() {
    let slides = require!(data("slides/aperio"));
    require!(tools_present());
    require!(python_with(&["yaml"]));
    let tmp = tempfile::tempdir().unwrap();
    let podman = Podman {
        root: tmp.path().join("podman"),
    };

    // The base: Debian 12 from debootstrap, under the name the Containerfile starts from.
    let rootfs = tmp.path().join("rootfs");
    let o = Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&rootfs)
        .arg("http://deb.debian.org/debian")
        .output()
        .unwrap();
    ok(&o, "debootstrap");
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-c", "."])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let o = podman
        .command()
        .args(["import", "-", "docker.io/library/debian:bookworm-slim"])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(tar.wait().unwrap().success(), "tar of the base");
    ok(&o, "podman import");
    std::fs::remove_dir_all(&rootfs).unwrap();

    // The build context as `cargo build --release` leaves it, plus files the image must not take.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ctx = tmp.path().join("context");
    std::fs::create_dir_all(ctx.join("target/release")).unwrap();
    std::fs::create_dir_all(ctx.join("models/he-cellularity")).unwrap();
    let o = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(env!("CARGO_BIN_EXE_tessera"))
        .arg(ctx.join("target/release/tessera"))
        .output()
        .unwrap();
    ok(&o, "objcopy");
    // The model folder as the repository has it (its build.py stays out: .dockerignore).
    for e in std::fs::read_dir(repo.join("models/he-cellularity")).unwrap() {
        let f = e.unwrap().path();
        std::fs::copy(
            &f,
            ctx.join("models/he-cellularity")
                .join(f.file_name().unwrap()),
        )
        .unwrap();
    }
    assert!(ctx.join("models/he-cellularity/build.py").is_file());
    for f in ["Containerfile", ".dockerignore"] {
        std::fs::copy(repo.join(f), ctx.join(f)).unwrap();
    }
    std::fs::write(ctx.join("target/release/leftover.d"), "not for the image").unwrap();

    let mut build = podman.command();
    build.args([
        "build",
        "--pull=never",
        "--network=host",
        "--ulimit",
        "nofile=4096:4096",
        "--ulimit",
        "nproc=4096:4096",
        "-t",
        IMAGE,
        "-f",
    ]);
    build.arg(ctx.join("Containerfile"));
    // pip reaches PyPI through whatever re-signs TLS here: the machine's CA bundle, mounted for
    // the build only.
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if bundle.is_file() {
        build
            .arg("-v")
            .arg(format!("{}:/run/build-ca.crt:ro", bundle.display()))
            .args(["--build-arg", "PIP_CERT=/run/build-ca.crt"]);
    }
    ok(&build.arg(&ctx).output().unwrap(), "podman build");

    // What the image holds of Tessera: the binary and the default model, nothing else.
    let files = ok(
        &podman.run(
            &[],
            Some("find"),
            &["/opt/tessera/bin", "/opt/tessera/share"],
        ),
        "find",
    );
    let mut files: Vec<&str> = files.lines().collect();
    files.sort();
    assert_eq!(
        files,
        [
            "/opt/tessera/bin",
            "/opt/tessera/bin/tessera",
            "/opt/tessera/share",
            "/opt/tessera/share/tessera",
            "/opt/tessera/share/tessera/models",
            "/opt/tessera/share/tessera/models/he-cellularity",
            "/opt/tessera/share/tessera/models/he-cellularity/README.md",
            "/opt/tessera/share/tessera/models/he-cellularity/config.json",
            "/opt/tessera/share/tessera/models/he-cellularity/model.onnx",
        ]
    );
    assert_eq!(
        ok(&podman.run(&[], Some("id"), &["-u"]), "id").trim(),
        "10001"
    );
    let version = ok(&podman.run(&[], None, &["--version"]), "--version");
    assert!(version.starts_with("tessera "), "{version}");

    // A slide analysed with the default model, the output owned by the image's user.
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let volumes = [
        format!("{}:/slides:ro", slides.display()),
        format!("{}:/out", out.display()),
    ];
    let o = podman.run(
        &volumes,
        None,
        &["analyze", "/slides/CMU-1-Small-Region.svs", "--out", "/out"],
    );
    ok(&o, "tessera analyze in the container");
    let result: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("CMU-1-Small-Region.svs/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(result["model"]["name"], "he-cellularity");
    assert_eq!(
        result["inference"]["backend"], "onnxruntime",
        "{}",
        result["inference"]
    );
    let ort = &result["inference"]["note"];
    assert!(
        ort.as_str()
            .is_some_and(|f| f.contains("/opt/tessera/python/")),
        "ONNX Runtime from the image's pip package: {ort}"
    );
    // The Kubernetes Job's container (docs/k8s-indexed-job.yaml) as its pod 0 runs it: the
    // manifest's command, args and env, the volume at /data, JOB_COMPLETION_INDEX set.
    let o = Command::new("python3")
        .arg("-c")
        .arg(
            "import json, sys, yaml; j = yaml.safe_load(open(sys.argv[1])); \
             c = j['spec']['template']['spec']['containers'][0]; \
             print(json.dumps([c['command'], c.get('args', []), c.get('env', [])]))",
        )
        .arg(repo.join("docs/k8s-indexed-job.yaml"))
        .output()
        .unwrap();
    let (command, args, env): (Vec<String>, Vec<String>, Vec<serde_json::Value>) =
        serde_json::from_str(&ok(&o, "reading the manifest")).unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("slides")).unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let job_volumes = [
        format!("{}:/data", data.display()),
        format!(
            "{}:/data/slides/CMU-1-Small-Region.svs:ro",
            slides.join("CMU-1-Small-Region.svs").display()
        ),
    ];
    let mut env: Vec<String> = env
        .iter()
        .map(|e| {
            format!(
                "{}={}",
                e["name"].as_str().unwrap(),
                e["value"].as_str().unwrap()
            )
        })
        .collect();
    env.push("JOB_COMPLETION_INDEX=0".into());
    let mut job = podman.run_command(&job_volumes, &env, Some(&command[0]));
    job.args(&command[1..]).args(&args);
    ok(&job.output().unwrap(), "the manifest's container");
    let job_out = data.join("tessera-out");
    assert!(job_out.join("CMU-1-Small-Region.svs/result.json").is_file());
    let log = std::fs::read_to_string(job_out.join("logs/tessera-0.log")).unwrap();
    assert!(
        log.contains("done /data/slides/CMU-1-Small-Region.svs"),
        "{log}"
    );
    assert!(
        std::fs::read_dir(job_out.join(".runs")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("summary-claim-")),
        "the manifest's args reach analyze (--claim)"
    );

    // OpenSlide 4 from the openslide-bin package.
    let info = ok(
        &podman.run(
            &volumes[..1],
            None,
            &[
                "info",
                "--backend",
                "openslide",
                "--json",
                "/slides/CMU-1-Small-Region.svs",
            ],
        ),
        "tessera info",
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let backend = &info["slides"][0]["backend"];
    assert_eq!(backend["name"], "openslide");
    assert!(
        backend["version"].as_str().unwrap().starts_with('4'),
        "{backend}"
    );
    assert!(
        backend["library"]
            .as_str()
            .unwrap()
            .starts_with("/opt/tessera/python/"),
        "{backend}"
    );
}
