//! A real container runtime for the CNI tests: Debian's containerd, started with a configuration
//! of the test's own (root, state and socket in a temporary directory, in the host's namespaces —
//! under `ip netns exec` runc finds no cgroup mount), an image made here from busybox-static (no
//! registry: an OCI layout written by hand and imported), and `ctr run --cni` inside a node's
//! network namespace, so that the plugin runs there and the host side of the veth lands there.
//!
//! ctr reads its CNI configuration from /etc/cni/net.d and plugins from /opt/cni/bin. Each ctr
//! runs in a private mount namespace where those are the node's own directories (an overlay on
//! /etc, a tmpfs on /opt): the machine's /etc and /opt are never written.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Service, sh, wait_for};

/// The image every test container runs.
pub const IMAGE: &str = "routeplane.test/busybox:latest";

pub struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
    _process: Service,
    runs: std::sync::atomic::AtomicUsize,
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// An OCI image layout tar of busybox-static with the applets the tests use.
fn busybox_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("/bin/busybox (Debian's busybox-static; scripts/test installs it)");
    for applet in ["sh", "ping", "ip", "sleep", "cat", "traceroute", "ifconfig"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("applet");
    }
    let layer = dir.join("layer.tar");
    sh(&[
        "tar",
        "-C",
        rootfs.to_str().unwrap_or_default(),
        "-cf",
        layer.to_str().unwrap_or_default(),
        ".",
    ]);
    let diff_id = sha256(&layer);
    sh(&["gzip", "-n", "-k", "-f", layer.to_str().unwrap_or_default()]);
    let gz = dir.join("layer.tar.gz");
    let blobs = dir.join("oci/blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs");
    let blob = |path: &Path| -> (String, u64) {
        let digest = sha256(path);
        std::fs::copy(path, blobs.join(&digest)).expect("blob");
        (digest, size(path))
    };
    let (layer_digest, layer_size) = blob(&gz);
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        })
        .to_string(),
    )
    .expect("config");
    let (config_digest, config_size) = blob(&config);
    let manifest = dir.join("manifest.json");
    std::fs::write(
        &manifest,
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}"), "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": format!("sha256:{layer_digest}"), "size": layer_size}],
        })
        .to_string(),
    )
    .expect("manifest");
    let (manifest_digest, manifest_size) = blob(&manifest);
    std::fs::write(
        dir.join("oci/index.json"),
        serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"), "size": manifest_size,
                "annotations": {"org.opencontainers.image.ref.name": "latest", "io.containerd.image.name": IMAGE},
            }],
        })
        .to_string(),
    )
    .expect("index");
    std::fs::write(
        dir.join("oci/oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("layout");
    let image = dir.join("image.tar");
    sh(&[
        "tar",
        "-C",
        dir.join("oci").to_str().unwrap_or_default(),
        "-cf",
        image.to_str().unwrap_or_default(),
        ".",
    ]);
    image
}

impl Containerd {
    /// containerd with state under `dir`, the busybox image imported.
    pub fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).expect("containerd's directory");
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n[grpc]\n  address = \"{socket}\"\n",
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display()
            ),
        )
        .expect("config.toml");
        let process = Service::spawn(
            "containerd",
            None,
            Path::new("containerd"),
            &["-c", config.to_str().unwrap_or_default()],
        );
        let c = Containerd {
            dir: dir.to_path_buf(),
            socket,
            _process: process,
            runs: std::sync::atomic::AtomicUsize::new(0),
        };
        wait_for("containerd answers", Duration::from_secs(30), || {
            c.ctr(&["version"]).0
        });
        let image = busybox_image(&dir.join("image"));
        let (ok, out) = c.ctr(&["image", "import", image.to_str().unwrap_or_default()]);
        assert!(ok, "ctr image import: {out}");
        c
    }

    /// ctr on this containerd (host namespaces): whether it succeeded, and its output.
    pub fn ctr(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("ctr (Debian's containerd; scripts/test installs it)");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// `ctr run --cni [run_args] IMAGE ID COMMAND…` in network namespace `netns`, with
    /// `conf_dir` as /etc/cni/net.d and `bin_dir` as /opt/cni/bin: whether it succeeded, and its
    /// output.
    pub fn run_cni(
        &self,
        netns: &str,
        conf_dir: &Path,
        bin_dir: &Path,
        run_args: &[&str],
        id: &str,
        command: &[&str],
    ) -> (bool, String) {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let overlay = self.dir.join(format!("etc-{n}"));
        for d in ["up", "work"] {
            std::fs::create_dir_all(overlay.join(d)).expect("overlay directories");
        }
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let ctr: Vec<String> = ["ip", "netns", "exec", netns, "ctr", "--address"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                self.socket.display().to_string(),
                "run".into(),
                "--cni".into(),
            ])
            .chain(run_args.iter().map(|s| s.to_string()))
            .chain([IMAGE.to_string(), id.to_string()])
            .chain(command.iter().map(|s| s.to_string()))
            .map(|a| quote(&a))
            .collect();
        let script = format!(
            "set -e\n\
             mount -t overlay overlay -o lowerdir=/etc,upperdir={up},workdir={work} /etc\n\
             mkdir -p /etc/cni/net.d && mount --bind {conf} /etc/cni/net.d\n\
             mount -t tmpfs tmpfs /opt && mkdir -p /opt/cni/bin && mount --bind {bin} /opt/cni/bin\n\
             exec {ctr}\n",
            up = quote(&overlay.join("up").display().to_string()),
            work = quote(&overlay.join("work").display().to_string()),
            conf = quote(&conf_dir.display().to_string()),
            bin = quote(&bin_dir.display().to_string()),
            ctr = ctr.join(" "),
        );
        let out = Command::new("timeout")
            .args([
                "120",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .output()
            .expect("unshare");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks left running would outlive the test: kill and delete them, then containerd goes
        // with its Service.
        let (_, tasks) = self.ctr(&["task", "ls", "-q"]);
        for id in tasks.lines().filter(|l| !l.is_empty()) {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["task", "delete", "-f", id]);
        }
        let (_, containers) = self.ctr(&["container", "ls", "-q"]);
        for id in containers.lines().filter(|l| !l.is_empty()) {
            let _ = self.ctr(&["container", "delete", id]);
        }
    }
}
