//! A real container runtime attaches containers through routeplane-cni from its conflist:
//! Debian's containerd (`ctr run --cni`) on two nodes of a namespace lab, each node's agent having
//! installed the plugin and written the conflist itself (--install-cni), as the DaemonSet does.
//! A container on one node reaches the container on the other.

use std::time::Duration;

use routeplane_testkit::containerd::Containerd;
use routeplane_testkit::lab::NodeLab;
use routeplane_testkit::wait_until;

mod privileged {
    use super::*;

    #[test]
    fn containerd_attaches_containers_through_routeplane_cni_on_two_nodes() {
        routeplane_testkit::privileged::require(&[
            "ip",
            "grpcurl",
            "containerd",
            "ctr",
            "unshare",
            "sha256sum",
            "gzip",
        ]);
        let mut lab = NodeLab::new();
        lab.start_ipam(false);
        let mut dirs = Vec::new();
        for (name, host) in [("n1", 11), ("n2", 12)] {
            let node = lab.add_node(name, 94, host);
            let (bin, conf) = (
                lab.path(&format!("{name}/cni-bin")),
                lab.path(&format!("{name}/net.d")),
            );
            std::fs::create_dir_all(&bin).unwrap();
            // ctr sets up the container's loopback with the reference plugin.
            std::fs::copy("/usr/lib/cni/loopback", bin.join("loopback"))
                .expect("/usr/lib/cni/loopback (Debian's containernetworking-plugins)");
            let plugin = routeplane_testkit::bin("routeplane-cni");
            lab.start_agent(
                node,
                &[
                    "--install-cni",
                    "--cni-plugin",
                    plugin.to_str().unwrap(),
                    "--cni-bin-dir",
                    bin.to_str().unwrap(),
                    "--cni-conf-dir",
                    conf.to_str().unwrap(),
                ],
            );
            lab.wait_agent_ready(node);
            assert!(
                conf.join("05-routeplane.conflist").exists(),
                "the agent wrote its conflist"
            );
            assert!(
                bin.join("routeplane-cni").exists(),
                "and installed the plugin"
            );
            dirs.push((conf, bin));
        }
        let containerd = Containerd::start(&lab.path("containerd"));
        let (conf2, bin2) = &dirs[1];
        let (ok, out) = containerd.run_cni(
            lab.nodes[1].ns.name(),
            conf2,
            bin2,
            &["-d"],
            "b",
            &["sleep", "120"],
        );
        assert!(ok, "ctr run -d b on n2: {out}\n{}", lab.logs());
        // ctr names the attachment "<namespace>-<container>": the agent holds it.
        let (ip_b, _) = wait_until(
            "n2's agent holds container b",
            Duration::from_secs(20),
            || {
                let held = lab.attachments(1);
                held["attachments"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["containerId"] == "default-b")
                    .and_then(|a| a["ips"][0].as_str().map(str::to_string))
                    .ok_or_else(|| format!("{held}"))
            },
        );
        let (conf1, bin1) = &dirs[0];
        let (ok, out) = containerd.run_cni(
            lab.nodes[0].ns.name(),
            conf1,
            bin1,
            &["--rm"],
            "a",
            &["ping", "-c", "3", "-W", "2", &ip_b],
        );
        assert!(
            ok && out.contains("3 packets received"),
            "container a on n1 pings b on n2 ({ip_b}): {out}\n{}",
            lab.logs()
        );
        // `ctr run --rm` deleted a: its DEL released the attachment on n1.
        let held = lab.attachments(0);
        assert_eq!(
            held["attachments"],
            serde_json::Value::Null,
            "n1 holds nothing once a is gone: {held}"
        );
    }
}
