//! The netlink seam of pod wiring: a veth pair per attachment — the host side (`rp` + 12 hex
//! digits) in the node's namespace, the other end created straight inside the pod's namespace
//! under the runtime's interface name — and inside the pod: the addresses (/32, /128), permanent
//! neighbour entries for the node's router IPs (the host side's MAC: the pod never has to resolve
//! its gateway) and a default route through them. The host routes back to the pod are the
//! reconciler's (`kernel.rs`, protocol 194). Nothing here decides anything.
//!
//! A pod's namespace is reached with a netlink socket opened inside it: a short-lived thread
//! enters the namespace (setns), opens the socket and leaves; the socket stays bound to the
//! namespace it was opened in.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{RouteAttribute, RouteScope};
use rtnetlink::sys::AsyncSocket;
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use super::store::Attachment;

#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("network namespace {path} does not exist ({source}): was the container deleted?")]
    NoNetns {
        path: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("{0}")]
    Mismatch(String),
    #[error("cannot enter network namespace {path}: {why}")]
    Enter { path: String, why: String },
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> WiringError {
    let what = what.into();
    move |source| WiringError::Netlink { what, source }
}

/// The host side's name for an attachment: stable (a restarted agent finds it), unique per
/// (container, interface), within Linux's 15 bytes.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bits: no dependency, and collisions among a node's pods are 1 in 2^48.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([b'/']).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("rp{:012x}", h >> 16)
}

/// Whether a link name is one of ours (a pod's host side), for sweeping what no record names.
pub fn is_host_veth(name: &str) -> bool {
    name.len() == 14 && name.starts_with("rp") && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// What ADD made: the host side (index, MAC) and the pod side's MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wired {
    pub host_index: u32,
    pub host_mac: Vec<u8>,
    pub pod_mac: Vec<u8>,
}

pub fn mac_text(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The node side of wiring, on a runtime of its own. A netlink request that changes links is
/// carried out inside the kernel's sendmsg, which blocks the calling thread for as long as the
/// kernel works — a veth's creation or deletion: milliseconds, far more while other pods' are
/// under way. On the agent's two worker threads, twenty DELs at once queued behind each other
/// (350–550 ms each, measured); on [`THREADS`] threads of their own, each with a netlink connection
/// of its own (the kernel serves one socket's requests one after the other), they overlap — and
/// the agent's API and reconciler never wait for them.
pub struct Wiring {
    runtime: Option<tokio::runtime::Runtime>,
}

/// Wiring operations under way at once.
const THREADS: usize = 8;

async fn link(
    handle: &Handle,
    name: &str,
) -> Result<Option<(u32, Vec<u8>, bool)>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => {
            let mac = l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Address(m) => Some(m.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            Ok(Some((
                l.header.index,
                mac,
                l.header.flags.contains(LinkFlags::Up),
            )))
        }
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(e),
    }
}

async fn set_up(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .set(
            LinkMessageBuilder::<LinkUnspec>::new()
                .index(index)
                .up()
                .build(),
        )
        .execute()
        .await
}

/// A netlink handle inside the network namespace `ns` (an open namespace file).
fn handle_in(ns: &std::fs::File, path: &str) -> Result<Handle, WiringError> {
    let runtime = tokio::runtime::Handle::current();
    let fd = ns.try_clone().map_err(|e| WiringError::Enter {
        path: path.to_string(),
        why: e.to_string(),
    })?;
    let socket = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // This thread alone moves; the socket keeps the namespace it was opened in.
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| e.to_string())?;
                let _runtime = runtime.enter();
                rtnetlink::sys::TokioSocket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
                    .map_err(|e| e.to_string())
            })
            .join()
            .unwrap_or_else(|_| Err("the thread entering it panicked".into()))
    })
    .map_err(|why| WiringError::Enter {
        path: path.to_string(),
        why,
    })?;
    let (connection, handle, _) = rtnetlink::from_socket(socket);
    tokio::spawn(connection);
    Ok(handle)
}

fn open_netns(path: &str) -> Result<std::fs::File, WiringError> {
    std::fs::File::open(path).map_err(|source| WiringError::NoNetns {
        path: path.to_string(),
        source,
    })
}

/// A netlink connection in the agent's namespace, for one operation.
fn host() -> Result<Handle, WiringError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| WiringError::Enter {
        path: "the agent's own namespace".into(),
        why: e.to_string(),
    })?;
    tokio::spawn(connection);
    Ok(handle)
}

impl Drop for Wiring {
    fn drop(&mut self) {
        // Dropped inside the agent's own runtime: shut down without waiting there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Wiring {
    /// Starts the wiring runtime.
    pub fn start() -> std::io::Result<Wiring> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(THREADS)
            .thread_name("rp-wiring")
            .enable_all()
            .build()?;
        Ok(Wiring {
            runtime: Some(runtime),
        })
    }

    /// Runs an operation on the wiring runtime and waits for it.
    async fn off_runtime<T, Fut>(&self, work: Fut) -> Result<T, WiringError>
    where
        Fut: std::future::Future<Output = Result<T, WiringError>> + Send + 'static,
        T: Send + 'static,
    {
        let failed = |why: String| WiringError::Enter {
            path: "the wiring runtime".into(),
            why,
        };
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| failed("stopped".into()))?;
        runtime
            .spawn(work)
            .await
            .map_err(|e| failed(e.to_string()))?
    }

    /// Wires the pod: replaces a host side left by an interrupted ADD, creates the pair with the
    /// pod end inside its namespace, and sets up its addresses, neighbours and default routes
    /// through `gateways` (the node's router IPs). On the wiring runtime.
    pub async fn create(&self, a: &Attachment, gateways: &[IpAddr]) -> Result<Wired, WiringError> {
        let (a, gateways) = (a.clone(), gateways.to_vec());
        self.off_runtime(async move { create_here(&a, &gateways).await })
            .await
    }

    /// Deletes a host side (its pod end goes with it); whether there was one. On the wiring
    /// runtime.
    pub async fn remove(&self, host_veth: &str) -> Result<bool, WiringError> {
        let name = host_veth.to_string();
        self.off_runtime(async move { remove_here(&name).await })
            .await
    }
}

async fn create_here(a: &Attachment, gateways: &[IpAddr]) -> Result<Wired, WiringError> {
    let ns = open_netns(&a.netns)?;
    remove_here(&a.host_veth).await?;
    let host = host()?;
    let pod_end = LinkMessageBuilder::<LinkUnspec>::new()
        .name(a.ifname.clone())
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let pair = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(a.host_veth.clone())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(pod_end)))
        .build();
    host.link().add(pair).execute().await.map_err(nl(format!(
        "creating veth {} with {} in {}",
        a.host_veth, a.ifname, a.netns
    )))?;
    let (host_index, host_mac, _) = link(&host, &a.host_veth)
        .await
        .map_err(nl(format!("reading {}", a.host_veth)))?
        .ok_or_else(|| WiringError::Mismatch(format!("{} vanished once created", a.host_veth)))?;
    set_up(&host, host_index)
        .await
        .map_err(nl(format!("setting {} up", a.host_veth)))?;
    let pod = handle_in(&ns, &a.netns)?;
    let inside = |what: &str| format!("{what} in {}", a.netns);
    if let Some((lo, _, _)) = link(&pod, "lo").await.map_err(nl(inside("reading lo")))? {
        set_up(&pod, lo)
            .await
            .map_err(nl(inside("setting lo up")))?;
    }
    let (index, pod_mac, _) = link(&pod, &a.ifname)
        .await
        .map_err(nl(inside(&format!("reading {}", a.ifname))))?
        .ok_or_else(|| WiringError::Mismatch(inside(&format!("{} missing", a.ifname))))?;
    for ip in &a.ips {
        let mut add = pod
            .address()
            .add(index, *ip, if ip.is_ipv4() { 32 } else { 128 })
            .replace();
        // Ours alone: duplicate address detection would only keep it unusable for a while.
        add.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        add.execute()
            .await
            .map_err(nl(inside(&format!("adding {ip} to {}", a.ifname))))?;
    }
    set_up(&pod, index)
        .await
        .map_err(nl(inside(&format!("setting {} up", a.ifname))))?;
    for gw in gateways
        .iter()
        .filter(|g| a.ips.iter().any(|ip| ip.is_ipv4() == g.is_ipv4()))
    {
        pod.neighbours()
            .add(index, *gw)
            .link_layer_address(&host_mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(nl(inside(&format!("neighbour {gw}"))))?;
        let host = if gw.is_ipv4() { 32 } else { 128 };
        let on_link = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(*gw, host)
            .map_err(|e| WiringError::Mismatch(e.to_string()))?
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        pod.route()
            .add(on_link)
            .replace()
            .execute()
            .await
            .map_err(nl(inside(&format!("route to {gw}"))))?;
        let unspecified = if gw.is_ipv4() {
            IpAddr::from([0u8; 4])
        } else {
            IpAddr::from([0u8; 16])
        };
        let default = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(unspecified, 0)
            .map_err(|e| WiringError::Mismatch(e.to_string()))?
            .gateway(*gw)
            .map_err(|e| WiringError::Mismatch(e.to_string()))?
            .output_interface(index)
            .build();
        pod.route()
            .add(default)
            .replace()
            .execute()
            .await
            .map_err(nl(inside(&format!("default route via {gw}"))))?;
    }
    Ok(Wired {
        host_index,
        host_mac,
        pod_mac,
    })
}

async fn remove_here(host_veth: &str) -> Result<bool, WiringError> {
    let host = host()?;
    let Some((index, _, _)) = link(&host, host_veth)
        .await
        .map_err(nl(format!("reading {host_veth}")))?
    else {
        return Ok(false);
    };
    match host.link().del(index).execute().await {
        Ok(()) => Ok(true),
        // Gone meanwhile (its namespace deleted): what DEL wanted.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(false),
        Err(e) => Err(nl(format!("deleting {host_veth}"))(e)),
    }
}

impl Wiring {
    /// The host side's index and MAC, if it exists and is up.
    pub async fn host_side(&self, host_veth: &str) -> Result<Option<(u32, Vec<u8>)>, WiringError> {
        Ok(link(&host()?, host_veth)
            .await
            .map_err(nl(format!("reading {host_veth}")))?
            .filter(|(_, _, up)| *up)
            .map(|(i, mac, _)| (i, mac)))
    }

    /// The pod end's MAC, for an ADD answered again.
    pub async fn pod_mac(&self, a: &Attachment) -> Result<Vec<u8>, WiringError> {
        let ns = open_netns(&a.netns)?;
        let pod = handle_in(&ns, &a.netns)?;
        Ok(link(&pod, &a.ifname)
            .await
            .map_err(nl(format!("reading {} in {}", a.ifname, a.netns)))?
            .map(|(_, mac, _)| mac)
            .unwrap_or_default())
    }

    /// CHECK inside the pod: its interface up with its addresses, and a default route per family.
    pub async fn inspect(&self, a: &Attachment) -> Result<(), WiringError> {
        let ns = open_netns(&a.netns)?;
        let pod = handle_in(&ns, &a.netns)?;
        let (index, _, up) = link(&pod, &a.ifname)
            .await
            .map_err(nl(format!("reading {} in {}", a.ifname, a.netns)))?
            .ok_or_else(|| {
                WiringError::Mismatch(format!("{} is missing in {}", a.ifname, a.netns))
            })?;
        if !up {
            return Err(WiringError::Mismatch(format!(
                "{} in {} is down",
                a.ifname, a.netns
            )));
        }
        let mut have = Vec::new();
        let mut addresses = pod.address().get().set_link_index_filter(index).execute();
        while let Some(m) = addresses
            .try_next()
            .await
            .map_err(nl(format!("reading the addresses of {}", a.ifname)))?
        {
            have.extend(m.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            }));
        }
        if let Some(missing) = a.ips.iter().find(|ip| !have.contains(ip)) {
            return Err(WiringError::Mismatch(format!(
                "{} in {} lacks its address {missing} (it has {have:?})",
                a.ifname, a.netns
            )));
        }
        for ip in &a.ips {
            let request = if ip.is_ipv4() {
                RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
            } else {
                RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
            };
            let mut routes = pod.route().get(request).execute();
            let mut default = false;
            while let Some(m) = routes
                .try_next()
                .await
                .map_err(nl(format!("reading the routes in {}", a.netns)))?
            {
                default |= m.header.destination_prefix_length == 0
                    && m.attributes
                        .iter()
                        .any(|x| matches!(x, RouteAttribute::Gateway(_)));
            }
            if !default {
                return Err(WiringError::Mismatch(format!(
                    "{} has no default route for {ip} (deleted by hand?)",
                    a.netns
                )));
            }
        }
        Ok(())
    }

    /// The host sides on this node (links named like ours), by name with their index.
    pub async fn host_veths(&self) -> Result<Vec<String>, WiringError> {
        let mut out = Vec::new();
        let mut links = host()?.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(nl("listing links"))? {
            out.extend(l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) if is_host_veth(n) => Some(n.clone()),
                _ => None,
            }));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_sides_are_stable_distinct_and_fit_linux_names() {
        let a = host_veth_name("4f0c2b8a9d1e", "eth0");
        assert_eq!(a, host_veth_name("4f0c2b8a9d1e", "eth0"));
        assert_ne!(a, host_veth_name("4f0c2b8a9d1e", "net1"));
        assert_ne!(a, host_veth_name("4f0c2b8a9d1f", "eth0"));
        assert_eq!(a.len(), 14);
        assert!(is_host_veth(&a) && !is_host_veth("rp_host") && !is_host_veth("eth0"));
    }
}
