//! Route changes in batches: many netlink requests in one `sendmsg`, their acknowledgements read
//! back in bulk and matched by sequence number. The kernel's FIB work is the same as for one
//! request at a time; what goes is a system call and a wakeup per route — with `ip -batch`, which
//! waits for each acknowledgement, those are most of the cost beside the FIB.

use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::kernel::KernelError;
use crate::reconcile::Action;

/// Requests per `sendmsg`: their acknowledgements must fit the socket's receive buffer.
const PER_SEND: usize = 512;
const RECEIVE_BUFFER: usize = 4 << 20;

/// Applies the actions (each already turned into its route message) on a fresh blocking netlink
/// socket; returns the failures with their actions.
pub fn apply(
    actions: &[(Action, RouteMessage)],
) -> Result<Vec<(Action, KernelError)>, KernelError> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.set_rx_buf_sz(RECEIVE_BUFFER)?;
    // Acknowledgements without a copy of the request: smaller, so more fit the buffer.
    socket.set_cap_ack(true)?;
    let mut failed = Vec::new();
    let mut out = Vec::new();
    let mut input = vec![0u8; 1 << 16];
    for (chunk_no, chunk) in actions.chunks(PER_SEND).enumerate() {
        out.clear();
        let base = (chunk_no * PER_SEND) as u32 + 1;
        for (i, (action, message)) in chunk.iter().enumerate() {
            let (payload, flags) = match action {
                Action::Add(_) => (
                    RouteNetlinkMessage::NewRoute(message.clone()),
                    NLM_F_CREATE | NLM_F_EXCL,
                ),
                Action::Replace(_) => (
                    RouteNetlinkMessage::NewRoute(message.clone()),
                    NLM_F_CREATE | NLM_F_REPLACE,
                ),
                Action::Delete(_) => (RouteNetlinkMessage::DelRoute(message.clone()), 0),
            };
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
            header.sequence_number = base + i as u32;
            let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
            packet.finalize();
            let at = out.len();
            out.resize(at + packet.buffer_len(), 0);
            packet.serialize(&mut out[at..]);
        }
        let mut sent = 0;
        while sent < out.len() {
            sent += socket.send(&out[sent..], 0)?;
        }
        let mut acked = 0;
        while acked < chunk.len() {
            let n = socket.recv(&mut &mut input[..], 0)?;
            let mut at = 0;
            while at + 16 <= n {
                let len =
                    u32::from_ne_bytes([input[at], input[at + 1], input[at + 2], input[at + 3]])
                        as usize;
                if len < 16 || at + len > n {
                    break;
                }
                let parsed =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&input[at..at + len]);
                at += (len + 3) & !3;
                let Ok(msg) = parsed else { continue };
                if let NetlinkPayload::Error(e) = msg.payload {
                    let seq = msg.header.sequence_number;
                    if let Some(i) = seq
                        .checked_sub(base)
                        .map(|i| i as usize)
                        .filter(|i| *i < chunk.len())
                    {
                        acked += 1;
                        if e.code.is_some() {
                            failed.push((chunk[i].0, KernelError::Socket(e.to_io())));
                        }
                    }
                }
            }
        }
    }
    Ok(failed)
}
