//! Property tests with hostile input (issue #12): the network configuration on stdin and the
//! runtime's environment, edited, cut or garbled, are taken or refused with one of the spec's
//! error codes and a message — never a panic, never an empty or unknown answer.

use proptest::prelude::*;
use routeplane_testkit::hostile::{any_text, config, mutated};

use super::*;

/// A configuration as a runtime passes it for GC (the verb that reads the most keys).
const CONF: &str = r#"{"cniVersion": "1.1.0", "name": "routeplane", "type": "routeplane-cni",
 "agentSocket": "/var/run/routeplane/agent.sock",
 "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}"#;

const COMMANDS: [Command; 6] = [
    Command::Add,
    Command::Del,
    Command::Check,
    Command::Version,
    Command::Status,
    Command::Gc,
];

/// The codes a configuration or an environment may be refused with.
const REFUSALS: [u32; 4] = [
    code::INCOMPATIBLE_VERSION,
    code::INVALID_ENVIRONMENT,
    code::DECODE,
    code::INVALID_CONFIG,
];

fn refused_well(e: &CniError) -> bool {
    REFUSALS.contains(&e.code) && !e.msg.is_empty()
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn stdin_edited_or_garbled_is_taken_or_refused_with_a_spec_code(
        text in prop_oneof![mutated(CONF), any_text()],
        verb in 0..COMMANDS.len(),
    ) {
        if let Err(e) = NetConf::parse(text.as_bytes(), COMMANDS[verb]) {
            prop_assert!(refused_well(&e), "{e:?}");
        }
    }

    #[test]
    fn stdin_of_any_bytes_is_refused_with_a_spec_code(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        if let Err(e) = NetConf::parse(&bytes, Command::Add) {
            prop_assert!(refused_well(&e), "{e:?}");
        }
    }

    #[test]
    fn any_environment_values_are_taken_or_refused_with_a_spec_code(
        command in prop_oneof![Just("ADD".to_string()), Just("GC".to_string()), any_text()],
        container in any_text(),
        netns in any_text(),
        ifname in any_text(),
        args in prop_oneof![mutated("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=busybox"), any_text()],
    ) {
        let env = |key: &str| match key {
            "CNI_COMMAND" => Some(command.clone()),
            "CNI_CONTAINERID" => Some(container.clone()),
            "CNI_NETNS" => Some(netns.clone()),
            "CNI_IFNAME" => Some(ifname.clone()),
            "CNI_ARGS" => Some(args.clone()),
            _ => None,
        };
        if let Err(e) = Invocation::from_env(&env) {
            prop_assert!(refused_well(&e), "{e:?}");
        }
    }
}
