//! Putting routeplane-cni where container runtimes look, as Cilium's install-cni does: the plugin
//! into the CNI bin directory, then — only once the agent serves its socket, so that no pod is
//! handed to a plugin without an agent — the conflist into the CNI conf directory. Both written
//! to a temporary name and renamed, so a runtime never reads half a file. Removed again with
//! `--uninstall-cni`, or in Kubernetes mode when the agent's DaemonSet is going away for good.

use std::path::{Path, PathBuf};

/// The conflist's file name: sorted first among the usual names, as Cilium's 05-cilium.conflist.
pub const CONFLIST: &str = "05-routeplane.conflist";
pub const PLUGIN: &str = "routeplane-cni";
/// The network's name in the conflist.
pub const NETWORK: &str = "routeplane";

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct InstallError {
    path: String,
    source: std::io::Error,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError {
        path: path.display().to_string(),
        source,
    }
}

/// The conflist runtimes read: one plugin, the agent's socket. `cniVersions` (CNI 1.1.0) lets a
/// runtime pick the newest version both know; one older than 1.1.0 reads `cniVersion`, 1.0.0 —
/// the newest whose results containerd 1.6 and the runtimes of Kubernetes 1.22 parse.
pub fn conflist(socket: &Path) -> String {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": NETWORK,
        "plugins": [{ "type": PLUGIN, "agentSocket": socket.display().to_string() }],
    });
    serde_json::to_string_pretty(&conf).unwrap_or_default()
}

fn replace(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<PathBuf, InstallError> {
    std::fs::create_dir_all(dir).map_err(at(dir))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    write(&tmp).map_err(at(&tmp))?;
    std::fs::rename(&tmp, &target).map_err(at(&target))?;
    Ok(target)
}

/// Copies the plugin binary into `bin_dir` (executable).
pub fn install_plugin(plugin: &Path, bin_dir: &Path) -> Result<PathBuf, InstallError> {
    use std::os::unix::fs::PermissionsExt;
    replace(bin_dir, PLUGIN, |tmp| {
        std::fs::copy(plugin, tmp)?;
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755))
    })
}

/// Writes the conflist into `conf_dir`.
pub fn install_conflist(conf_dir: &Path, socket: &Path) -> Result<PathBuf, InstallError> {
    replace(conf_dir, CONFLIST, |tmp| {
        std::fs::write(tmp, conflist(socket))
    })
}

/// Removes the conflist and the plugin; what is not there is no error. Returns what went.
pub fn uninstall(conf_dir: &Path, bin_dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut removed = Vec::new();
    for path in [conf_dir.join(CONFLIST), bin_dir.join(PLUGIN)] {
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(at(&path)(e)),
        }
    }
    Ok(removed)
}

/// Kubernetes mode: whether this agent's DaemonSet is gone or being deleted — routeplane is being
/// removed from the node, not restarted (a rolling update or a node drain keeps the DaemonSet).
pub async fn daemonset_going(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<bool, String> {
    let api: kube::Api<k8s_openapi::api::apps::v1::DaemonSet> =
        kube::Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(None) => Ok(true),
        Ok(Some(ds)) => Ok(ds.metadata.deletion_timestamp.is_some()),
        Err(e) => Err(format!("reading DaemonSet {namespace}/{name}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_then_uninstall_leaves_nothing_and_the_conflist_names_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
        let plugin = dir.path().join("routeplane-cni-build");
        std::fs::write(&plugin, b"#!/bin/sh\n").unwrap();
        install_plugin(&plugin, &bin).unwrap();
        let written = install_conflist(&conf, Path::new("/var/run/routeplane/agent.sock")).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&written).unwrap()).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["cniVersions"], serde_json::json!(["1.0.0", "1.1.0"]));
        assert_eq!(v["name"], "routeplane");
        assert_eq!(v["plugins"][0]["type"], "routeplane-cni");
        assert_eq!(
            v["plugins"][0]["agentSocket"],
            "/var/run/routeplane/agent.sock"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(bin.join(PLUGIN))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let removed = uninstall(&conf, &bin).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(uninstall(&conf, &bin).unwrap().is_empty(), "twice is fine");
        assert_eq!(
            std::fs::read_dir(&conf).unwrap().count(),
            0,
            "no temporary file left"
        );
    }

    /// Over kube's mocked API: the DaemonSet there (a restart), being deleted, and gone.
    #[tokio::test]
    async fn only_a_daemonset_going_away_takes_the_conflist_with_it() {
        use routeplane_kubernetes::mock::MockApi;
        let path = "/apis/apps/v1/namespaces/routeplane/daemonsets/routeplane-agent";
        let ds = |deleting: bool| {
            let mut metadata =
                serde_json::json!({"name": "routeplane-agent", "namespace": "routeplane"});
            if deleting {
                metadata["deletionTimestamp"] = serde_json::json!("2026-12-02T10:00:00Z");
            }
            serde_json::json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": metadata,
                "spec": {"selector": {}, "template": {}}})
        };
        let gone = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "daemonsets.apps \"routeplane-agent\" not found"});
        for (status, reply, going) in [
            (200, ds(false), false),
            (200, ds(true), true),
            (404, gone, true),
        ] {
            let (client, mut api) = MockApi::new();
            let server = async {
                api.expect("GET", path, status, reply.clone()).await;
            };
            let (asked, ()) = tokio::join!(
                daemonset_going(&client, "routeplane", "routeplane-agent"),
                server
            );
            assert_eq!(asked, Ok(going), "{reply}");
        }
    }
}
