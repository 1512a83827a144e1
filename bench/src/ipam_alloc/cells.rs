//! One cell of the table — a tool at a concurrency for a few seconds — and the medians over
//! rounds.

use std::time::{Duration, Instant};

use routeplane_api::ipam::v1 as pb;
use routeplane_api::ipam::v1::ipam_client::IpamClient;
use routeplane_bench::{cpu_seconds, median};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::server::{NODES, Server, metric, quiesce};

/// What the callers of a cell call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// AllocatePodIp: the figure.
    Allocate,
    /// grpc.health.v1 Check on the same server, through the same layers (authorization, rate
    /// limit, tracing): the most unary calls the stack answers when the call itself costs nothing.
    NoOp,
}

/// The ceiling's row in the table.
pub(crate) const NO_OP: &str = "no-op unary (health Check)";

pub(crate) struct Cell {
    pub(crate) tool: String,
    pub(crate) concurrency: usize,
    pub(crate) ops: u64,
    pub(crate) seconds: f64,
    pub(crate) latencies: Vec<Duration>,
    pub(crate) flushes: Option<f64>,
    /// Seconds after the cell until sled had applied everything the cell acknowledged.
    pub(crate) catch_up: Option<f64>,
    /// CPU time per call of the server (through sled's catch-up and checkpoint after the cell)
    /// and of this client, in microseconds: steadier than calls/s on a machine whose speed
    /// varies from run to run, and what the calls/s ratio comes from.
    pub(crate) cpu_us: Option<(f64, f64)>,
}

impl Cell {
    /// A cell of a tool that has no flushes or materializer to report: its latencies over
    /// `seconds`.
    pub(crate) fn timed(
        tool: &str,
        concurrency: usize,
        seconds: f64,
        latencies: Vec<Duration>,
    ) -> Cell {
        Cell {
            tool: tool.to_string(),
            concurrency,
            ops: latencies.len() as u64,
            seconds,
            latencies,
            flushes: None,
            catch_up: None,
            cpu_us: None,
        }
    }

    pub(crate) fn rate(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    pub(crate) fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut l = self.latencies.clone();
        l.sort();
        let i = ((l.len() as f64 * p).ceil() as usize).clamp(1, l.len()) - 1;
        l[i].as_secs_f64() * 1e3
    }
}

pub(crate) fn measured(only: &[String], tool: &str) -> bool {
    only.is_empty() || only.iter().any(|o| o == tool)
}

/// Per tool and concurrency, in the order first measured: a cell whose rate, p50, p99 and
/// flushes/alloc are each the median over the rounds.
pub(crate) fn medians(runs: &[Cell]) -> Vec<Summary> {
    let mut out: Vec<Summary> = Vec::new();
    for r in runs {
        if out
            .iter()
            .any(|s| s.tool == r.tool && s.concurrency == r.concurrency)
        {
            continue;
        }
        let same: Vec<&Cell> = runs
            .iter()
            .filter(|c| c.tool == r.tool && c.concurrency == r.concurrency)
            .collect();
        let of = |f: &dyn Fn(&Cell) -> f64| median(same.iter().map(|c| f(c)).collect());
        out.push(Summary {
            tool: r.tool.clone(),
            concurrency: r.concurrency,
            rate: of(&|c| c.rate()),
            p50: of(&|c| c.percentile(0.5)),
            p99: of(&|c| c.percentile(0.99)),
            flushes: r.flushes.map(|_| of(&|c| c.flushes.unwrap_or(0.0))),
            catch_up: r.catch_up.map(|_| of(&|c| c.catch_up.unwrap_or(0.0))),
            cpu_us: r.cpu_us.map(|_| {
                (
                    of(&|c| c.cpu_us.map_or(0.0, |u| u.0)),
                    of(&|c| c.cpu_us.map_or(0.0, |u| u.1)),
                )
            }),
            rounds: same.len(),
        });
    }
    out
}

/// One row of the table: medians over the rounds.
pub(crate) struct Summary {
    pub(crate) tool: String,
    pub(crate) concurrency: usize,
    pub(crate) rate: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) flushes: Option<f64>,
    pub(crate) catch_up: Option<f64>,
    /// Server and client CPU microseconds per call.
    pub(crate) cpu_us: Option<(f64, f64)>,
    pub(crate) rounds: usize,
}

pub(crate) async fn run_ipam_cell(
    server: &Server,
    call: Call,
    concurrency: usize,
    seconds: f64,
    round: usize,
) -> Cell {
    let channels: Vec<Channel> = {
        let mut v = Vec::new();
        for _ in 0..concurrency.min(16) {
            v.push(server.channel().await);
        }
        v
    };
    let run = |measure: Duration, tag: &'static str| {
        let tasks: Vec<_> = (0..concurrency)
            .map(|t| {
                let channel = channels[t % channels.len()].clone();
                let mut client = IpamClient::new(channel.clone());
                let mut health = HealthClient::new(channel);
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let deadline = Instant::now() + measure;
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        match call {
                            Call::Allocate => {
                                let req = pb::AllocatePodIpRequest {
                                    node: format!("node-{}", (t + i as usize) % NODES),
                                    owner: format!("{tag}{round}-{t}-{i}"),
                                    family: 0,
                                };
                                client.allocate_pod_ip(req).await.expect("allocation");
                            }
                            Call::NoOp => {
                                let req = HealthCheckRequest {
                                    service: routeplane_ipam::GRPC_SERVICE.into(),
                                };
                                health.check(req).await.expect("health check");
                            }
                        }
                        lat.push(started.elapsed());
                        i += 1;
                    }
                    lat
                })
            })
            .collect();
        async move {
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all
        }
    };
    run(Duration::from_millis(300), "warm").await;
    let (f0, c0) = (
        metric(server.metrics, "routeplane_ipam_flushes_total"),
        metric(server.metrics, "routeplane_ipam_commits_total"),
    );
    let cpu0 = (
        cpu_seconds(server.process.pid()),
        cpu_seconds(std::process::id()),
    );
    let started = Instant::now();
    let latencies = run(Duration::from_secs_f64(seconds), "m").await;
    let elapsed = started.elapsed().as_secs_f64();
    let client_cpu = cpu_seconds(std::process::id());
    let (f1, c1) = (
        metric(server.metrics, "routeplane_ipam_flushes_total"),
        metric(server.metrics, "routeplane_ipam_commits_total"),
    );
    let catch_up = if server.materialized {
        Some(quiesce(server).await)
    } else {
        None
    };
    let ops = latencies.len().max(1) as f64;
    let cpu_us = match (cpu0, cpu_seconds(server.process.pid()), client_cpu) {
        ((Some(s0), Some(c0)), Some(s1), Some(c1)) => {
            Some(((s1 - s0) * 1e6 / ops, (c1 - c0) * 1e6 / ops))
        }
        _ => None,
    };
    Cell {
        tool: String::new(),
        concurrency,
        ops: latencies.len() as u64,
        seconds: elapsed,
        latencies,
        flushes: (call == Call::Allocate).then_some(if c1 > c0 {
            (f1 - f0) / (c1 - c0)
        } else {
            0.0
        }),
        catch_up: catch_up.filter(|_| call == Call::Allocate),
        cpu_us,
    }
}
