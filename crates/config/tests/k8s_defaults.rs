//! k8s/config/ holds the files the Kustomize ConfigMaps are generated from (Kustomize reads no file
//! outside its directory). Users replace them with their own; the defaults shipped must be
//! routeplane's own defaults, byte for byte, so that the cluster and the compose stack agree.

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_kubernetes_bgp_config_is_routeplanes_default() {
    assert_eq!(
        repo_file("k8s/config/bgp-config.yaml"),
        repo_file("config/bgp-config.yaml")
    );
}

#[test]
fn the_kubernetes_values_are_the_seeds() {
    assert_eq!(
        repo_file("k8s/config/values.yaml"),
        repo_file("examples/seed/values.yaml")
    );
}
