//! routeplane-bgp's views: `peers` (cilium bgp peers), `routes advertised|received` (cilium bgp
//! routes), `explain PREFIX`.

use routeplane_api::bgp::v1 as pb;
use routeplane_api::bgp::v1::bgp_client::BgpClient;
use serde::Serialize;
use tonic::Code;

use super::age;
use crate::cli::Direction;
use crate::connect::{Conn, CtlError, request};
use crate::output::{Progress, Render, Table};

fn client(c: &Conn) -> BgpClient<tonic::transport::Channel> {
    BgpClient::new(c.channel.clone()).max_decoding_message_size(routeplane_api::MAX_MESSAGE_BYTES)
}

#[derive(Debug, Serialize)]
pub struct Peer {
    pub peer: String,
    pub local_asn: u32,
    pub peer_asn: u32,
    pub state: String,
    pub uptime_seconds: u64,
    pub families: Vec<String>,
    pub advertised: u64,
    pub received: u64,
    pub hold_time_seconds: u32,
    pub router_id: String,
    pub peer_router_id: String,
    pub last_error: String,
    pub last_error_time: String,
}

#[derive(Debug, Serialize)]
pub struct Peers {
    pub peers: Vec<Peer>,
}

impl Render for Peers {
    fn tables(&self) -> Vec<Table> {
        let mut t = Table::new(&[
            "PEER",
            "LOCAL AS",
            "PEER AS",
            "STATE",
            "UPTIME",
            "FAMILIES",
            "ADVERTISED",
            "RECEIVED",
            "HOLD",
            "LAST ERROR",
        ]);
        for p in &self.peers {
            t.row(vec![
                p.peer.clone(),
                p.local_asn.to_string(),
                p.peer_asn.to_string(),
                p.state.clone(),
                age(p.uptime_seconds),
                p.families.join(","),
                p.advertised.to_string(),
                p.received.to_string(),
                if p.hold_time_seconds == 0 {
                    "-".into()
                } else {
                    format!("{}s", p.hold_time_seconds)
                },
                p.last_error.clone(),
            ]);
        }
        vec![t]
    }
}

pub async fn peers(c: &Conn) -> Result<Peers, CtlError> {
    let listed = c
        .answer(client(c).list_peers(request(pb::ListPeersRequest {})).await)
        .await?;
    let peers = listed
        .peers
        .into_iter()
        .map(|p| Peer {
            peer: p.peer_address,
            local_asn: p.local_asn,
            peer_asn: p.peer_asn,
            state: p.session_state,
            uptime_seconds: p.uptime_seconds,
            families: p.families,
            advertised: p.advertised,
            received: p.received,
            hold_time_seconds: p.hold_time_seconds,
            router_id: p.router_id,
            peer_router_id: p.peer_router_id,
            last_error: p.last_error,
            last_error_time: p.last_error_time,
        })
        .collect();
    Ok(Peers { peers })
}

#[derive(Debug, Serialize)]
pub struct Route {
    pub peer: String,
    pub prefix: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub path_id: u32,
    pub next_hop: String,
    pub as_path: Vec<u32>,
    pub origin: String,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    pub communities: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Route {
    fn of(peer: &str, r: pb::Route) -> Route {
        Route {
            peer: peer.to_string(),
            prefix: r.prefix,
            path_id: r.path_id,
            next_hop: r.next_hop,
            as_path: r.as_path,
            origin: r.origin,
            local_pref: r.local_pref,
            med: r.med,
            communities: r.communities,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Routes {
    pub direction: &'static str,
    pub routes: Vec<Route>,
    /// Peers whose received routes are not kept (keep-received: false).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Render for Routes {
    fn tables(&self) -> Vec<Table> {
        let mut t = Table::new(&[
            "PEER",
            "PREFIX",
            "NEXT HOP",
            "AS PATH",
            "LOCAL PREF",
            "MED",
            "COMMUNITIES",
        ]);
        for r in &self.routes {
            let opt = |v: Option<u32>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
            let prefix = if r.path_id == 0 {
                r.prefix.clone()
            } else {
                format!("{} (path {})", r.prefix, r.path_id)
            };
            t.row(vec![
                r.peer.clone(),
                prefix,
                r.next_hop.clone(),
                r.as_path
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
                opt(r.local_pref),
                opt(r.med),
                r.communities.join(" "),
            ]);
        }
        vec![t]
    }
}

pub async fn routes(
    c: &Conn,
    direction: Direction,
    peer: Option<&str>,
) -> Result<Routes, CtlError> {
    let peers: Vec<String> = match peer {
        Some(p) => vec![p.to_string()],
        None => peers(c).await?.peers.into_iter().map(|p| p.peer).collect(),
    };
    let progress = Progress::new();
    let (mut routes, mut notes) = (Vec::new(), Vec::new());
    for (i, p) in peers.iter().enumerate() {
        progress.step("reading the peers' routes", i, peers.len());
        let req = request(pb::ListRoutesRequest {
            peer_address: p.clone(),
        });
        let answer = match direction {
            Direction::Advertised => client(c).list_advertised(req).await,
            Direction::Received => client(c).list_received(req).await,
        };
        match answer {
            Ok(r) => routes.extend(r.into_inner().routes.into_iter().map(|r| Route::of(p, r))),
            // Asked of every peer: one that keeps nothing is a note, not a failure.
            Err(s) if peer.is_none() && s.code() == Code::FailedPrecondition => {
                notes.push(format!("{p}: {}", s.message()));
            }
            Err(s) => {
                progress.done();
                return Err(c.error(s).await);
            }
        }
    }
    progress.done();
    Ok(Routes {
        direction: match direction {
            Direction::Advertised => "advertised",
            Direction::Received => "received",
        },
        routes,
        notes,
    })
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    pub source: String,
    pub peer: String,
    pub advertised: bool,
    pub routes: Vec<Route>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub prefix: String,
    pub verdicts: Vec<Verdict>,
}

impl Render for Explanation {
    fn tables(&self) -> Vec<Table> {
        let mut t = Table::new(&["SOURCE", "PEER", "SENT", "PATHS OR WHY NOT"]);
        for v in &self.verdicts {
            let what = if v.advertised {
                v.routes
                    .iter()
                    .map(|r| {
                        let mut s = format!("via {}", r.next_hop);
                        if !r.communities.is_empty() {
                            s += &format!(" [{}]", r.communities.join(" "));
                        }
                        s
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                v.reason.clone()
            };
            let sent = if v.advertised { "yes" } else { "no" };
            t.row(vec![v.source.clone(), v.peer.clone(), sent.into(), what]);
        }
        vec![t.titled(format!("prefix {}", self.prefix))]
    }
}

pub async fn explain(c: &Conn, prefix: &str) -> Result<Explanation, CtlError> {
    let req = request(pb::ExplainPrefixRequest {
        prefix: prefix.to_string(),
    });
    let answer = c.answer(client(c).explain_prefix(req).await).await?;
    let mut verdicts = Vec::new();
    for s in answer.sources {
        let source = match (s.node.is_empty(), s.service.is_empty()) {
            (false, _) => format!("{} of node {}", s.kind, s.node),
            (true, false) => format!("{} of {} (pool {})", s.kind, s.service, s.pool),
            (true, true) => s.kind.clone(),
        };
        for v in s.peers {
            verdicts.push(Verdict {
                source: source.clone(),
                peer: v.peer_address.clone(),
                advertised: v.advertised,
                routes: v
                    .routes
                    .into_iter()
                    .map(|r| Route::of(&v.peer_address, r))
                    .collect(),
                reason: v.reason,
            });
        }
    }
    Ok(Explanation {
        prefix: answer.prefix,
        verdicts,
    })
}
