//! The netlink seam: the routes carrying our protocol number, the subnets this node is directly
//! connected to, and carrying out reconcile actions. Nothing here decides anything.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use routeplane_net::Cidr;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressScope};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::desired::{Connected, Route};
use crate::reconcile::Action;

/// The netlink route protocol that marks routes as routeplane's (`ip route show proto 194`). The
/// kernel and iproute2 leave 193–251 unassigned.
pub const PROTOCOL: u8 = 194;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("route {0}: {1}")]
    Route(String, String),
}

pub struct Kernel {
    handle: Handle,
    /// The kernel runs one dump at a time per netlink socket (a second one gets EBUSY): the
    /// reconciler, registration and the API share this connection, so dumps take turns.
    dumps: tokio::sync::Mutex<()>,
}

fn addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// One of our routes, from its netlink message.
fn route_of(m: &RouteMessage) -> Option<Route> {
    if u8::from(m.header.protocol) != PROTOCOL {
        return None;
    }
    let (mut dest, mut gateway, mut ifindex) = (None, None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dest = addr(d),
            RouteAttribute::Gateway(g) => gateway = addr(g),
            RouteAttribute::Oif(i) => ifindex = Some(*i),
            _ => {}
        }
    }
    Some(Route {
        destination: Cidr::containing(dest?, m.header.destination_prefix_length)?,
        gateway,
        ifindex: ifindex?,
    })
}

impl Kernel {
    /// Opens a netlink connection, driven by a task on the current runtime.
    pub fn connect() -> Result<Kernel, KernelError> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Kernel {
            handle,
            dumps: tokio::sync::Mutex::new(()),
        })
    }

    /// The routes carrying our protocol number, both families.
    pub async fn our_routes(&self) -> Result<Vec<Route>, KernelError> {
        let _turn = self.dumps.lock().await;
        let mut out = Vec::new();
        for request in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut stream = self.handle.route().get(request).execute();
            while let Some(m) = stream.try_next().await? {
                out.extend(route_of(&m));
            }
        }
        Ok(out)
    }

    /// Subnets of this node's global addresses, with their interfaces.
    pub async fn connected(&self) -> Result<Vec<Connected>, KernelError> {
        let _turn = self.dumps.lock().await;
        let mut names = BTreeMap::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links.try_next().await? {
            let name = l.attributes.iter().find_map(|a| {
                if let LinkAttribute::IfName(n) = a {
                    Some(n.clone())
                } else {
                    None
                }
            });
            names.insert(l.header.index, name.unwrap_or_default());
        }
        let mut out = Vec::new();
        let mut addresses = self.handle.address().get().execute();
        while let Some(a) = addresses.try_next().await? {
            if a.header.scope != AddressScope::Universe {
                continue;
            }
            let ip = a.attributes.iter().find_map(|x| {
                if let AddressAttribute::Address(ip) = x {
                    Some(*ip)
                } else {
                    None
                }
            });
            if let Some(subnet) = ip.and_then(|ip| Cidr::containing(ip, a.header.prefix_len)) {
                out.push(Connected {
                    subnet,
                    ifindex: a.header.index,
                    ifname: names.get(&a.header.index).cloned().unwrap_or_default(),
                });
            }
        }
        Ok(out)
    }

    /// This node's global addresses (to register with IPAM when none are configured).
    pub async fn addresses(&self) -> Result<Vec<IpAddr>, KernelError> {
        let _turn = self.dumps.lock().await;
        let mut out = Vec::new();
        let mut addresses = self.handle.address().get().execute();
        while let Some(a) = addresses.try_next().await? {
            if a.header.scope == AddressScope::Universe
                && matches!(a.header.family, AddressFamily::Inet | AddressFamily::Inet6)
            {
                out.extend(a.attributes.iter().find_map(|x| {
                    if let AddressAttribute::Address(ip) = x {
                        Some(*ip)
                    } else {
                        None
                    }
                }));
            }
        }
        Ok(out)
    }

    fn message(route: &Route) -> Result<RouteMessage, KernelError> {
        fn bad(route: &Route, e: impl std::fmt::Display) -> KernelError {
            KernelError::Route(route.destination.to_string(), e.to_string())
        }
        let builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(route.destination.network(), route.destination.prefix_len())
            .map_err(|e| bad(route, e))?;
        let builder = match route.gateway {
            Some(gateway) => builder.gateway(gateway).map_err(|e| bad(route, e))?,
            None => builder.scope(RouteScope::Link),
        };
        Ok(builder
            .output_interface(route.ifindex)
            .protocol(RouteProtocol::from(PROTOCOL))
            .build())
    }

    /// The gateway of the main table's default route of a family, with its interface index.
    pub async fn default_gateway(&self, v6: bool) -> Result<Option<(IpAddr, u32)>, KernelError> {
        let _turn = self.dumps.lock().await;
        let request = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let mut stream = self.handle.route().get(request).execute();
        let mut found = None;
        // Read to the end: a dump left unread makes the connection drop (and complain of) the rest.
        while let Some(m) = stream.try_next().await? {
            if found.is_some() || m.header.destination_prefix_length != 0 || m.header.table != 254 {
                continue;
            }
            let gw = m.attributes.iter().find_map(|a| {
                if let RouteAttribute::Gateway(g) = a {
                    addr(g)
                } else {
                    None
                }
            });
            let oif = m.attributes.iter().find_map(|a| {
                if let RouteAttribute::Oif(i) = a {
                    Some(*i)
                } else {
                    None
                }
            });
            if let (Some(gw), Some(oif)) = (gw, oif) {
                found = Some((gw, oif));
            }
        }
        Ok(found)
    }

    /// The interface that carries this node's router IPs, as Cilium's cilium_host does.
    pub const ROUTER_LINK: &'static str = "rp_host";
    const ROUTER_PEER: &'static str = "rp_net";

    async fn link_index(&self, name: &str) -> Option<u32> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        links
            .try_next()
            .await
            .ok()
            .flatten()
            .map(|l| l.header.index)
    }

    /// Makes sure the router interface exists and is up and carries exactly the router IPs given
    /// (an address of an earlier pod CIDR goes: the interface is ours alone). Returns its index;
    /// the routes of the node's pod CIDRs to it are the reconciler's. Idempotent: every reconcile
    /// pass calls it.
    pub async fn ensure_router(&self, router_ips: &[IpAddr]) -> Result<u32, KernelError> {
        let index = match self.link_index(Self::ROUTER_LINK).await {
            Some(i) => i,
            None => {
                // A veth pair, since dummy devices are missing on some kernels.
                self.handle
                    .link()
                    .add(LinkVeth::new(Self::ROUTER_LINK, Self::ROUTER_PEER).build())
                    .execute()
                    .await?;
                self.link_index(Self::ROUTER_LINK).await.ok_or_else(|| {
                    KernelError::Route(Self::ROUTER_LINK.into(), "created but not found".into())
                })?
            }
        };
        for name in [Self::ROUTER_LINK, Self::ROUTER_PEER] {
            if let Some(i) = self.link_index(name).await {
                self.handle
                    .link()
                    .set(
                        rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
                            .index(i)
                            .up()
                            .build(),
                    )
                    .execute()
                    .await?;
            }
        }
        let mut stale = Vec::new();
        let turn = self.dumps.lock().await;
        let mut addresses = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(a) = addresses.try_next().await? {
            let ip = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if a.header.scope == AddressScope::Universe
                && ip.is_some_and(|ip| !router_ips.contains(&ip))
            {
                stale.push(a);
            }
        }
        drop(turn);
        for a in stale {
            self.handle.address().del(a).execute().await?;
        }
        for router_ip in router_ips {
            let host = if router_ip.is_ipv4() { 32 } else { 128 };
            let mut add = self.handle.address().add(index, *router_ip, host).replace();
            if router_ip.is_ipv6() {
                // Ours alone, on a private link: duplicate address detection would only keep it
                // tentative (unusable) for a second or two.
                add.message_mut().header.flags |= AddressHeaderFlags::Nodad;
            }
            add.execute().await?;
        }
        Ok(index)
    }

    /// Every link's index by name.
    pub async fn links(&self) -> Result<BTreeMap<String, u32>, KernelError> {
        let _turn = self.dumps.lock().await;
        let mut out = BTreeMap::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links.try_next().await? {
            if let Some(name) = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }) {
                out.insert(name, l.header.index);
            }
        }
        Ok(out)
    }

    /// Installs one route of ours at once (a pod's, on ADD): added, or replacing one of ours to
    /// the same destination — never one of another owner, which is an error naming it.
    pub async fn install(&self, route: &Route) -> Result<(), KernelError> {
        match self.execute(Action::Add(*route)).await {
            Ok(()) => Ok(()),
            Err(KernelError::Netlink(rtnetlink::Error::NetlinkError(e))) if e.raw_code() == -17 => {
                if self
                    .our_routes()
                    .await?
                    .iter()
                    .any(|r| r.destination == route.destination)
                {
                    self.execute(Action::Replace(*route)).await
                } else {
                    Err(KernelError::Route(
                        route.destination.to_string(),
                        "a route to it exists that is not routeplane's (not protocol 194): it is left alone; remove it, or keep its address out of the pod CIDRs".into(),
                    ))
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes one route of ours; one that is not there is no error.
    pub async fn uninstall(&self, route: &Route) -> Result<(), KernelError> {
        match self.execute(Action::Delete(*route)).await {
            Err(KernelError::Netlink(rtnetlink::Error::NetlinkError(e)))
                if e.raw_code() == -3 || e.raw_code() == -19 =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Requests in flight at once: netlink matches replies to requests by sequence number, so the
    /// kernel works through a window of them instead of waiting for each acknowledgement.
    const PIPELINE: usize = 256;

    async fn execute(&self, action: Action) -> Result<(), KernelError> {
        match action {
            Action::Add(r) => {
                self.handle
                    .route()
                    .add(Self::message(&r)?)
                    .execute()
                    .await?
            }
            Action::Replace(r) => {
                self.handle
                    .route()
                    .add(Self::message(&r)?)
                    .replace()
                    .execute()
                    .await?
            }
            Action::Delete(r) => {
                self.handle
                    .route()
                    .del(Self::message(&r)?)
                    .execute()
                    .await?
            }
        }
        Ok(())
    }

    /// Carries out the actions in netlink batches (see `batch.rs`) on a blocking thread; returns
    /// each failure with its action (the others still happen). Should the batch socket itself
    /// fail, the actions go one by one, pipelined, on the async connection.
    pub async fn apply(&self, actions: &[Action]) -> Vec<(Action, KernelError)> {
        let mut prepared = Vec::with_capacity(actions.len());
        let mut failed = Vec::new();
        for a in actions {
            let route = match a {
                Action::Add(r) | Action::Replace(r) | Action::Delete(r) => r,
            };
            match Self::message(route) {
                Ok(m) => prepared.push((*a, m)),
                Err(e) => failed.push((*a, e)),
            }
        }
        match tokio::task::spawn_blocking(move || crate::batch::apply(&prepared)).await {
            Ok(Ok(mut more)) => {
                failed.append(&mut more);
                failed
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "batched netlink failed; applying one by one");
                self.apply_pipelined(actions).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "batched netlink thread failed; applying one by one");
                self.apply_pipelined(actions).await
            }
        }
    }

    /// One request per route, many in flight.
    pub async fn apply_pipelined(&self, actions: &[Action]) -> Vec<(Action, KernelError)> {
        use futures::StreamExt as _;
        futures::stream::iter(actions.iter().copied())
            .map(|action| async move { self.execute(action).await.err().map(|e| (action, e)) })
            .buffer_unordered(Self::PIPELINE)
            .filter_map(|failed| async move { failed })
            .collect()
            .await
    }
}
