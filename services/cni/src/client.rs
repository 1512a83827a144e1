//! Asking the node's route agent, over its Unix socket: one connection per invocation, a deadline
//! on every call, and the agent's gRPC status turned into the CNI error code cni.proto names.

use std::time::Duration;

use hyper_util::rt::TokioIo;
use routeplane_api::agent::v1 as pb;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::spec::{CniError, Command, code};

/// The longest a call may take: ADD wires a pod (milliseconds) but may wait for another call on
/// the same container; runtimes give a plugin minutes.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub type Client = pb::cni_client::CniClient<Channel>;

/// A client on the agent's socket; an agent that is not there is "try again later" (11) — for
/// STATUS, "not available" (50).
pub async fn connect(socket: &str, command: Command) -> Result<Client, CniError> {
    let path = socket.to_string();
    let channel = Endpoint::from_static("http://routeplane-agent")
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .map_err(|e| {
            let code = if command == Command::Status {
                code::NOT_AVAILABLE
            } else {
                code::TRY_AGAIN_LATER
            };
            CniError::new(
                code,
                format!("the routeplane agent does not answer on {socket}: is routeplane-agent running on this node?"),
            )
            .details(source_chain(&e))
        })?;
    Ok(pb::cni_client::CniClient::new(channel)
        .max_decoding_message_size(routeplane_api::MAX_MESSAGE_BYTES))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        text.push_str(": ");
        text.push_str(&s.to_string());
        next = s.source();
    }
    text
}

/// The agent's refusal as the CNI error a runtime understands.
pub fn refusal(status: &tonic::Status, command: Command) -> CniError {
    use tonic::Code;
    let code = match status.code() {
        Code::Unavailable | Code::DeadlineExceeded if command == Command::Status => {
            code::NOT_AVAILABLE
        }
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => code::TRY_AGAIN_LATER,
        Code::NotFound => code::UNKNOWN_CONTAINER,
        Code::InvalidArgument => code::INVALID_CONFIG,
        Code::ResourceExhausted => code::EXHAUSTED,
        Code::FailedPrecondition => code::CHECK_FAILED,
        _ => code::INTERNAL,
    };
    CniError::new(code, status.message().to_string())
}
