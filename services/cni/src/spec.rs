//! The CNI specification's side of the plugin, without I/O: the runtime's environment and network
//! configuration read and checked, results and errors written in the JSON each spec version wants.
//! Versions 0.3.0 to 1.1.0 are answered (0.4.0 added CHECK, 1.1.0 STATUS and GC; results before
//! 1.0.0 carry each address's "version").

// The runtime's stdin and environment may hold anything: no indexing, unwrap or expect that
// could panic.
#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

use std::collections::BTreeMap;

use routeplane_api::agent::v1 as pb;
use serde::Deserialize;
use serde_json::{Value, json};

/// Every configuration version this plugin answers, oldest first.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version of answers when the configuration names none we know.
pub const NEWEST: &str = "1.1.0";
/// The agent socket when the configuration names none (as Cilium's plugin asks its agent).
pub const DEFAULT_SOCKET: &str = "/var/run/routeplane/agent.sock";
/// The most of stdin read: a network configuration is a few hundred bytes.
pub const MAX_STDIN: usize = 1 << 20;

/// The spec's well-known error codes, and this plugin's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// The node's pod CIDR is full.
    pub const EXHAUSTED: u32 = 100;
    /// CHECK found the pod not as ADD left it.
    pub const CHECK_FAILED: u32 = 101;
    pub const INTERNAL: u32 = 999;
}

/// An error as the spec prints it (`{"cniVersion", "code", "msg", "details"}`), with the exit
/// status that goes with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    pub fn json(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(text: &str) -> Result<Command, CniError> {
        Ok(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!(
                        "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
                    ),
                ));
            }
        })
    }

    /// The first configuration version that has this verb.
    fn since(self) -> &'static str {
        match self {
            Command::Check => "0.4.0",
            Command::Status | Command::Gc => "1.1.0",
            _ => "0.3.0",
        }
    }
}

/// What the runtime says in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: BTreeMap<String, String>,
}

fn required(
    get: &dyn Fn(&str) -> Option<String>,
    key: &str,
    what: &str,
) -> Result<String, CniError> {
    match get(key) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("{key} is not set: the runtime must pass {what}"),
        )),
    }
}

/// CNI_ARGS: `KEY=VALUE` pairs separated by ';'.
fn parse_args(text: &str) -> Result<BTreeMap<String, String>, CniError> {
    text.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_ARGS item {pair:?} is not KEY=VALUE (items are separated by ';')"),
            )),
        })
        .collect()
}

impl Invocation {
    /// Reads the environment a runtime sets (`get` is `std::env::var` outside tests); each verb
    /// requires what the spec says it gets.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
        let command = Command::parse(&required(get, "CNI_COMMAND", "the verb (ADD, DEL…)")?)?;
        let (mut container_id, mut netns, mut ifname) =
            (String::new(), String::new(), String::new());
        if matches!(command, Command::Add | Command::Del | Command::Check) {
            container_id = required(get, "CNI_CONTAINERID", "the container's ID")?;
            ifname = required(get, "CNI_IFNAME", "the interface to create, such as eth0")?;
            netns = get("CNI_NETNS").unwrap_or_default();
            if command != Command::Del && netns.is_empty() {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    "CNI_NETNS is not set: the runtime must pass the path of the container's network namespace",
                ));
            }
        }
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
            args,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration on stdin (the runtime adds fields of its own: they are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "agentSocket", default)]
    pub agent_socket: Option<String>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

fn version_key(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// The version `text` names, if supported.
pub fn supported(text: &str) -> Option<&'static str> {
    SUPPORTED.iter().copied().find(|v| *v == text)
}

impl NetConf {
    /// Reads and checks stdin's configuration for `command`.
    pub fn parse(stdin: &[u8], command: Command) -> Result<NetConf, CniError> {
        if stdin.len() > MAX_STDIN {
            return Err(CniError::new(
                code::DECODE,
                format!("the network configuration on stdin is over {MAX_STDIN} bytes"),
            ));
        }
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                "the network configuration on stdin is not valid JSON for a CNI network",
            )
            .details(e.to_string())
        })?;
        if supported(&conf.cni_version).is_none() {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {:?} is not supported: routeplane-cni answers {}",
                    conf.cni_version,
                    SUPPORTED.join(", ")
                ),
            ));
        }
        if version_key(&conf.cni_version) < version_key(command.since()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "{command:?} came with CNI {}; it needs a configuration of cniVersion {} or later",
                    conf.cni_version,
                    command.since()
                ),
            ));
        }
        let name_ok = conf
            .name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && conf
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !name_ok {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "network name {:?} is not valid: letters, digits, '_', '.' and '-', starting with a letter or digit",
                    conf.name
                ),
            ));
        }
        if let Some(socket) = &conf.agent_socket
            && !socket.starts_with('/')
        {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("agentSocket {socket:?} is not an absolute path, e.g. {DEFAULT_SOCKET}"),
            ));
        }
        if command == Command::Gc && conf.valid_attachments.is_none() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "GC came without cni.dev/valid-attachments: nothing can be told apart from what to keep",
            ));
        }
        Ok(conf)
    }

    pub fn socket(&self) -> &str {
        self.agent_socket.as_deref().unwrap_or(DEFAULT_SOCKET)
    }
}

/// VERSION's answer.
pub fn version_json(requested: Option<&str>) -> Value {
    json!({
        "cniVersion": requested.and_then(supported).unwrap_or(NEWEST),
        "supportedVersions": SUPPORTED,
    })
}

/// ADD's result in the configuration's version.
pub fn result_json(version: &str, r: &pb::CniResult) -> Value {
    let old = version_key(version) < version_key("1.0.0");
    let ips: Vec<Value> = r
        .ips
        .iter()
        .map(|ip| {
            let mut v = json!({
                "address": ip.address,
                "gateway": ip.gateway,
                "interface": ip.interface,
            });
            if let (true, Some(o)) = (old, v.as_object_mut()) {
                let family = if ip.address.contains(':') { "6" } else { "4" };
                o.insert("version".into(), json!(family));
            }
            v
        })
        .collect();
    let interfaces: Vec<Value> = r
        .interfaces
        .iter()
        .map(|i| {
            let mut v = json!({ "name": i.name, "mac": i.mac });
            if let (false, Some(o)) = (i.sandbox.is_empty(), v.as_object_mut()) {
                o.insert("sandbox".into(), json!(i.sandbox));
            }
            v
        })
        .collect();
    let routes: Vec<Value> = r
        .routes
        .iter()
        .map(|x| json!({ "dst": x.dst, "gw": x.gw }))
        .collect();
    json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": {},
    })
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_environment_of_each_verb_is_required_and_named_when_missing() {
        let add = Invocation::from_env(&env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/c1"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=busybox",
            ),
        ]))
        .unwrap();
        assert_eq!(add.args["K8S_POD_NAME"], "busybox");
        for (pairs, needle) in [
            (vec![], "CNI_COMMAND is not set"),
            (vec![("CNI_COMMAND", "FROB")], "CNI_COMMAND \"FROB\""),
            (vec![("CNI_COMMAND", "ADD")], "CNI_CONTAINERID is not set"),
            (
                vec![("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1")],
                "CNI_IFNAME is not set",
            ),
            (
                vec![
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "CNI_NETNS is not set",
            ),
            (
                vec![
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_ARGS", "K8S_POD_NAME"),
                ],
                "CNI_ARGS item \"K8S_POD_NAME\"",
            ),
        ] {
            let e = Invocation::from_env(&env(&pairs)).unwrap_err();
            assert_eq!(e.code, code::INVALID_ENVIRONMENT, "{pairs:?}");
            assert!(e.msg.contains(needle), "{pairs:?}: {e}");
        }
        let del = Invocation::from_env(&env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(del.netns, "", "DEL may come without a namespace");
        let gc = Invocation::from_env(&env(&[("CNI_COMMAND", "GC")])).unwrap();
        assert_eq!(gc.command, Command::Gc);
    }

    #[test]
    fn configurations_are_checked_version_by_verb() {
        let conf = |v: &str| {
            format!(
                r#"{{"cniVersion": "{v}", "name": "routeplane", "type": "routeplane-cni", "runtimeConfig": {{}}}}"#
            )
        };
        assert_eq!(
            NetConf::parse(conf("1.1.0").as_bytes(), Command::Add)
                .unwrap()
                .socket(),
            DEFAULT_SOCKET
        );
        for (stdin, command, code, needle) in [
            (
                "{\"cniVers".to_string(),
                Command::Add,
                code::DECODE,
                "not valid JSON",
            ),
            ("".to_string(), Command::Add, code::DECODE, "not valid JSON"),
            (
                conf("0.2.0"),
                Command::Add,
                code::INCOMPATIBLE_VERSION,
                "cniVersion \"0.2.0\" is not supported",
            ),
            (
                conf("0.3.1"),
                Command::Check,
                code::INCOMPATIBLE_VERSION,
                "needs a configuration of cniVersion 0.4.0",
            ),
            (
                conf("1.0.0"),
                Command::Status,
                code::INCOMPATIBLE_VERSION,
                "1.1.0 or later",
            ),
            (
                conf("1.1.0"),
                Command::Gc,
                code::INVALID_CONFIG,
                "cni.dev/valid-attachments",
            ),
            (
                r#"{"cniVersion": "1.1.0", "name": "-bad"}"#.to_string(),
                Command::Add,
                code::INVALID_CONFIG,
                "network name \"-bad\"",
            ),
            (
                r#"{"cniVersion": "1.1.0", "name": "n", "agentSocket": "agent.sock"}"#.to_string(),
                Command::Add,
                code::INVALID_CONFIG,
                "agentSocket \"agent.sock\"",
            ),
            (
                "x".repeat(MAX_STDIN + 1),
                Command::Add,
                code::DECODE,
                "over 1048576 bytes",
            ),
        ] {
            let e = NetConf::parse(stdin.as_bytes(), command).unwrap_err();
            assert_eq!((e.code, e.msg.contains(needle)), (code, true), "{e}");
        }
    }

    #[test]
    fn results_follow_the_configurations_version() {
        let r = pb::CniResult {
            interfaces: vec![
                pb::CniInterface {
                    name: "rp0123456789ab".into(),
                    mac: "aa:bb:cc:dd:ee:ff".into(),
                    sandbox: String::new(),
                },
                pb::CniInterface {
                    name: "eth0".into(),
                    mac: "11:22:33:44:55:66".into(),
                    sandbox: "/var/run/netns/c1".into(),
                },
            ],
            ips: vec![
                pb::CniIp {
                    address: "10.5.112.7/32".into(),
                    gateway: "10.5.112.1".into(),
                    interface: 1,
                },
                pb::CniIp {
                    address: "fd00::7/128".into(),
                    gateway: "fd00::1".into(),
                    interface: 1,
                },
            ],
            routes: vec![pb::CniRoute {
                dst: "0.0.0.0/0".into(),
                gw: "10.5.112.1".into(),
            }],
        };
        let new = result_json("1.1.0", &r);
        assert_eq!(new["cniVersion"], "1.1.0");
        assert_eq!(new["ips"][0]["address"], "10.5.112.7/32");
        assert!(new["ips"][0].get("version").is_none());
        assert!(new["interfaces"][0].get("sandbox").is_none());
        assert_eq!(new["interfaces"][1]["sandbox"], "/var/run/netns/c1");
        let old = result_json("0.4.0", &r);
        assert_eq!(
            (
                old["ips"][0]["version"].as_str(),
                old["ips"][1]["version"].as_str()
            ),
            (Some("4"), Some("6"))
        );
        assert_eq!(version_json(Some("0.4.0"))["cniVersion"], "0.4.0");
        assert_eq!(version_json(Some("9.9.9"))["cniVersion"], NEWEST);
        assert_eq!(version_json(None)["supportedVersions"][4], "1.1.0");
    }
}
