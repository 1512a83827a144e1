//! routeplane-cni: executed by a container runtime (see the crate documentation).
#![forbid(unsafe_code)]

use std::io::Write;

const HELP: &str = "routeplane-cni: routeplane's CNI plugin (CNI 0.3.0 to 1.1.0: ADD, DEL, CHECK, VERSION, STATUS, GC).

A container runtime executes it, with CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and
CNI_ARGS in the environment and the network configuration on stdin, as the CNI spec says. It asks
the node's routeplane-agent over the Unix socket the configuration names (\"agentSocket\", default
/var/run/routeplane/agent.sock), and prints the spec's result or error JSON. routeplane-agent
--install-cni puts it into /opt/cni/bin and writes its conflist, 05-routeplane.conflist:

  {\"cniVersion\": \"1.0.0\", \"cniVersions\": [\"1.0.0\", \"1.1.0\"], \"name\": \"routeplane\",
   \"plugins\": [{\"type\": \"routeplane-cni\", \"agentSocket\": \"/var/run/routeplane/agent.sock\"}]}

Error codes: the spec's (1 version, 3 unknown container, 4 environment, 6 stdin, 7 configuration,
11 try again later: the agent is not there yet, 50 not available), 100 the node's pod CIDR is full,
101 CHECK found the pod's wiring changed, 999 anything else.
";

fn main() -> std::process::ExitCode {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return std::process::ExitCode::SUCCESS;
    }
    let env = |key: &str| std::env::var(key).ok();
    let answer = routeplane_cni::run(&env, &mut std::io::stdin().lock());
    let mut out = std::io::stdout().lock();
    // A runtime that closed our stdout has gone: the exit status is all that is left to say.
    let _ = out.write_all(answer.stdout.as_bytes());
    let _ = out.flush();
    std::process::ExitCode::from(answer.status)
}
