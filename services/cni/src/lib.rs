//! routeplane-cni: the CNI plugin a container runtime executes to put a pod on routeplane's
//! network.
//!
//! Contract: thin. It reads the runtime's environment (CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS,
//! CNI_IFNAME, CNI_ARGS) and network configuration (stdin, at most 1 MiB), checks them against
//! the CNI spec (versions 0.3.0 to 1.1.0, all six verbs), asks the node's route agent over its
//! Unix socket (the configuration's `agentSocket`, default /var/run/routeplane/agent.sock), and
//! prints the spec's result — or its error JSON, with the spec's code and a message naming the
//! value, exiting non-zero. It keeps no state: the agent owns the pod's addresses and wiring.
#![forbid(unsafe_code)]

pub mod client;
pub mod spec;

use std::io::Read;

use routeplane_api::agent::v1 as pb;
use serde_json::Value;

use spec::{CniError, Command, Invocation, NetConf, code};

/// What the plugin prints on stdout, and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub stdout: String,
    pub status: u8,
}

fn ok(value: Option<Value>) -> Answer {
    Answer {
        stdout: value.map(|v| v.to_string()).unwrap_or_default(),
        status: 0,
    }
}

fn failed(e: &CniError, version: &str) -> Answer {
    Answer {
        stdout: e.json(version).to_string(),
        // The spec asks for a non-zero exit; a code that fits in one keeps it recognisable.
        status: u8::try_from(e.code).unwrap_or(1).max(1),
    }
}

/// One invocation: `env` is the process environment, `stdin` the configuration.
pub fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &mut dyn Read) -> Answer {
    let mut input = Vec::new();
    if let Err(e) = stdin
        .take(spec::MAX_STDIN as u64 + 1)
        .read_to_end(&mut input)
    {
        return failed(
            &CniError::new(
                code::IO,
                format!("reading the network configuration from stdin: {e}"),
            ),
            spec::NEWEST,
        );
    }
    // The version errors are written in: the configuration's, when it names one we know.
    let requested = serde_json::from_slice::<Value>(&input)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string));
    let version = requested
        .as_deref()
        .and_then(spec::supported)
        .unwrap_or(spec::NEWEST);
    let invocation = match Invocation::from_env(env) {
        Ok(i) => i,
        Err(e) => return failed(&e, version),
    };
    if invocation.command == Command::Version {
        return ok(Some(spec::version_json(requested.as_deref())));
    }
    let conf = match NetConf::parse(&input, invocation.command) {
        Ok(c) => c,
        Err(e) => return failed(&e, version),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return failed(&CniError::new(code::INTERNAL, e.to_string()), version),
    };
    match runtime.block_on(ask(&invocation, &conf)) {
        Ok(v) => ok(v),
        Err(e) => failed(&e, version),
    }
}

async fn ask(i: &Invocation, conf: &NetConf) -> Result<Option<Value>, CniError> {
    let mut agent = client::connect(conf.socket(), i.command).await?;
    let request = || pb::CniRequest {
        container_id: i.container_id.clone(),
        netns: i.netns.clone(),
        ifname: i.ifname.clone(),
        args: i.args.clone().into_iter().collect(),
        network: conf.name.clone(),
    };
    let refused = |s: tonic::Status| client::refusal(&s, i.command);
    match i.command {
        Command::Add => {
            let r = agent.add(request()).await.map_err(refused)?.into_inner();
            Ok(Some(spec::result_json(&conf.cni_version, &r)))
        }
        Command::Del => {
            agent.del(request()).await.map_err(refused)?;
            Ok(None)
        }
        Command::Check => {
            agent.check(request()).await.map_err(refused)?;
            Ok(None)
        }
        Command::Gc => {
            let valid_attachments = conf
                .valid_attachments
                .iter()
                .flatten()
                .map(|a| pb::CniAttachment {
                    container_id: a.container_id.clone(),
                    ifname: a.ifname.clone(),
                })
                .collect();
            agent
                .gc(pb::CniGcRequest { valid_attachments })
                .await
                .map_err(refused)?;
            Ok(None)
        }
        Command::Status => {
            agent
                .status(pb::CniStatusRequest {})
                .await
                .map_err(refused)?;
            Ok(None)
        }
        Command::Version => Ok(Some(spec::version_json(Some(&conf.cni_version)))),
    }
}
