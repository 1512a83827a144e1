//! The fan-out as each watcher's socket sees it. On one machine the simulated watchers share
//! IPAM's two cores: how soon an event reaches every watcher then depends on how fast the
//! simulator reads 5,000 sockets as much as on how fast IPAM writes them, while real agents read
//! on machines of their own. So this times each change to the moment its bytes reached each
//! watcher's connection — the kernel's timestamp of the last packet IPAM sent it before the next
//! change (tcpdump on the namespace's loopback, nanoseconds; the last, not the first, because
//! plaintext connections carry fifty watchers each) — with IPAM's threads put first on
//! the CPU (`renice -19`) for the while, so that the simulator reads in the time IPAM leaves, as
//! machines of their own would.
//!
//! A connection that sent anything after the change began (an HTTP/2 PING, a window update, the
//! change's own call) is left out: what IPAM sent it may be the answer, not the event. Anything
//! else IPAM sent it can only make the arrival look later.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

/// A TCP packet carrying data, as captured.
#[derive(Debug, PartialEq)]
pub struct Packet {
    pub at: SystemTime,
    pub from_port: u16,
    pub to_port: u16,
}

/// tcpdump capturing, on `lo`, every TCP packet that carries data to or from a port.
pub struct Capture {
    child: Child,
    /// The capture file, read from tcpdump's stdout as it comes.
    reader: std::thread::JoinHandle<std::io::Result<Vec<u8>>>,
    /// tcpdump's messages, a line at a time, read by a thread of their own so that every wait
    /// for one is bounded.
    messages: mpsc::Receiver<String>,
}

/// The longest wait for tcpdump to listen, or to end once told to.
const PATIENCE: Duration = Duration::from_secs(10);

impl Capture {
    /// Starts tcpdump in this thread's network namespace and waits until it listens.
    pub fn start(port: u16) -> Result<Capture, String> {
        // Data only: the IP length less both headers is not zero.
        let filter = format!(
            "tcp port {port} and (((ip[2:2] - ((ip[0]&0xf)<<2)) - ((tcp[12]&0xf0)>>2)) != 0)"
        );
        let mut child = Command::new("tcpdump")
            .args(["-i", "lo", "-n", "-s", "96", "-B", "65536", "-Z", "root"])
            .args(["--time-stamp-precision=nano", "-w", "-", &filter])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting tcpdump: {e}"))?;
        let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err("tcpdump's output was not piped".to_string());
        };
        let reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            stdout.read_to_end(&mut bytes).map(|_| bytes)
        });
        let (lines, messages) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + PATIENCE;
        loop {
            match messages.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("listening on") => break,
                Ok(_) => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(match e {
                        RecvTimeoutError::Timeout => {
                            format!("tcpdump did not listen within {PATIENCE:?}")
                        }
                        RecvTimeoutError::Disconnected => {
                            "tcpdump ended before it listened".to_string()
                        }
                    });
                }
            }
        }
        Ok(Capture {
            child,
            reader,
            messages,
        })
    }

    /// Stops the capture: the packets, and how many the kernel dropped — each possibly the last
    /// packet IPAM sent a connection, which would make its arrival look earlier: the count is
    /// printed beside the figures (0 in every run so far).
    pub fn stop(mut self) -> Result<(Vec<Packet>, u64), String> {
        routeplane_bench::sh(&["kill", "-INT", &self.child.id().to_string()]);
        // Its last lines say what it captured and dropped; it ends after them.
        let deadline = Instant::now() + PATIENCE;
        let mut rest = String::new();
        while let Ok(line) = self
            .messages
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            rest.push_str(&line);
            rest.push('\n');
        }
        // Its stderr closed as it ends: the exit follows at once.
        while self.child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "tcpdump did not end within {PATIENCE:?} of SIGINT: {rest}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let bytes = self
            .reader
            .join()
            .map_err(|_| "the capture's reader panicked".to_string())?
            .map_err(|e| format!("reading tcpdump's capture: {e}"))?;
        let dropped = rest
            .lines()
            .find_map(|l| l.strip_suffix(" packets dropped by kernel"))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| format!("tcpdump did not say what it dropped: {rest}"))?;
        Ok((parse(&bytes)?, dropped))
    }
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_le_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// A pcap file (little-endian, nanosecond timestamps, Ethernet framing as Linux gives `lo`):
/// its IPv4 TCP packets.
fn parse(bytes: &[u8]) -> Result<Vec<Packet>, String> {
    const NANOSECOND_MAGIC: u32 = 0xa1b2_3c4d;
    const ETHERNET: u32 = 1;
    if u32_le_at(bytes, 0) != Some(NANOSECOND_MAGIC) {
        return Err(format!(
            "not a little-endian nanosecond pcap file ({} bytes)",
            bytes.len()
        ));
    }
    if u32_le_at(bytes, 20) != Some(ETHERNET) {
        return Err(format!(
            "link type {:?}, not Ethernet",
            u32_le_at(bytes, 20)
        ));
    }
    let mut packets = Vec::new();
    let mut i = 24;
    while i < bytes.len() {
        let (Some(seconds), Some(nanos), Some(captured)) = (
            u32_le_at(bytes, i),
            u32_le_at(bytes, i + 4),
            u32_le_at(bytes, i + 8),
        ) else {
            return Err(format!("a record header cut at byte {i}"));
        };
        let frame = bytes
            .get(i + 16..i + 16 + captured as usize)
            .ok_or_else(|| format!("a record cut at byte {i}"))?;
        i += 16 + captured as usize;
        // Ethernet, then IPv4 (type 0x0800) carrying TCP (protocol 6).
        let ip = &frame[frame.len().min(14)..];
        if u16_at(frame, 12) != Some(0x0800) || ip.first().map(|b| b >> 4) != Some(4) {
            continue;
        }
        if ip.get(9) != Some(&6) {
            continue;
        }
        let tcp = usize::from(ip[0] & 0xf) * 4;
        let (Some(from_port), Some(to_port)) = (u16_at(ip, tcp), u16_at(ip, tcp + 2)) else {
            continue;
        };
        packets.push(Packet {
            at: SystemTime::UNIX_EPOCH
                + Duration::from_secs(seconds.into())
                + Duration::from_nanos(nanos.into()),
            from_port,
            to_port,
        });
    }
    Ok(packets)
}

/// One change's arrivals: milliseconds from `start` to the last packet `port` sent each
/// connection in [`start`, `end`), and how many connections were left out for sending after
/// `start` themselves.
pub fn arrivals(
    packets: &[Packet],
    port: u16,
    start: SystemTime,
    end: SystemTime,
) -> (Vec<f64>, usize) {
    let window = || packets.iter().filter(|p| p.at >= start && p.at < end);
    let sent: HashSet<u16> = window()
        .filter(|p| p.to_port == port)
        .map(|p| p.from_port)
        .collect();
    let mut last: HashMap<u16, SystemTime> = HashMap::new();
    for p in window().filter(|p| p.from_port == port && !sent.contains(&p.to_port)) {
        let at = last.entry(p.to_port).or_insert(p.at);
        *at = (*at).max(p.at);
    }
    let latencies = last
        .values()
        .map(|at| at.duration_since(start).unwrap_or_default().as_secs_f64() * 1e3)
        .collect();
    (latencies, sent.len())
}

/// Sets the nice value of every thread `pid` has now (threads it starts later take their
/// creator's); a failure panics with renice's message.
pub fn renice(pid: u32, nice: i32) {
    let tids: Vec<String> = threads(pid).into_iter().map(|(tid, _)| tid).collect();
    renice_tids(&tids, nice);
}

/// Sets the nice value of this process's threads named `name`.
pub fn renice_threads(name: &str, nice: i32) {
    let tids: Vec<String> = threads(std::process::id())
        .into_iter()
        .filter(|(_, comm)| comm == name)
        .map(|(tid, _)| tid)
        .collect();
    assert!(!tids.is_empty(), "no thread named {name} to renice");
    renice_tids(&tids, nice);
}

/// The threads of `pid`: each one's id and name.
fn threads(pid: u32) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("listing the threads of {pid}: {e}"));
    tasks
        .filter_map(|t| t.ok())
        .map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            (
                t.file_name().to_string_lossy().into_owned(),
                comm.trim_end().to_string(),
            )
        })
        .collect()
}

fn renice_tids(tids: &[String], nice: i32) {
    let nice = nice.to_string();
    let mut args = vec!["renice", "-n", &nice, "-p"];
    args.extend(tids.iter().map(String::as_str));
    routeplane_bench::sh(&args);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pcap record: Ethernet, IPv4 (header of 20 bytes), TCP from one port to another.
    fn record(seconds: u32, nanos: u32, from: u16, to: u16) -> Vec<u8> {
        let mut frame = vec![0u8; 12];
        frame.extend(0x0800u16.to_be_bytes());
        let mut ip = vec![
            0x45, 0, 0, 60, 0, 0, 0, 0, 64, 6, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        ip.extend(from.to_be_bytes());
        ip.extend(to.to_be_bytes());
        ip.extend([0u8; 16]);
        frame.extend(ip);
        let mut r = Vec::new();
        for v in [seconds, nanos, frame.len() as u32, frame.len() as u32] {
            r.extend(v.to_le_bytes());
        }
        r.extend(frame);
        r
    }

    fn file(records: &[Vec<u8>]) -> Vec<u8> {
        let mut f = Vec::new();
        for v in [0xa1b2_3c4d_u32, 0x0004_0002, 0, 0, 96, 1] {
            f.extend(v.to_le_bytes());
        }
        for r in records {
            f.extend(r);
        }
        f
    }

    #[test]
    fn packets_are_read_with_their_ports_and_nanoseconds() {
        let packets = parse(&file(&[
            record(10, 5, 50051, 40000),
            record(11, 0, 40000, 50051),
        ]))
        .unwrap();
        assert_eq!(
            packets,
            vec![
                Packet {
                    at: SystemTime::UNIX_EPOCH + Duration::new(10, 5),
                    from_port: 50051,
                    to_port: 40000
                },
                Packet {
                    at: SystemTime::UNIX_EPOCH + Duration::from_secs(11),
                    from_port: 40000,
                    to_port: 50051
                },
            ]
        );
        // A file cut inside a record, or not pcap at all, is refused, never read short.
        let mut cut = file(&[record(10, 5, 50051, 40000)]);
        cut.truncate(cut.len() - 3);
        assert!(parse(&cut).unwrap_err().contains("cut"));
        assert!(parse(b"not pcap").unwrap_err().contains("not a"));
    }

    #[test]
    fn each_connection_is_timed_by_its_last_packet_unless_it_sent() {
        let t = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(1_000 + ms);
        let p = |ms, from, to| Packet {
            at: t(ms),
            from_port: from,
            to_port: to,
        };
        let packets = [
            // Before the change: not counted.
            p(0, 50051, 1),
            // Connection 1: events at 30 ms and 60 ms (two of its watchers).
            p(1030, 50051, 1),
            p(1060, 50051, 1),
            // Connection 2 sent a PING at 10 ms: what follows may be its answer.
            p(1010, 2, 50051),
            p(1020, 50051, 2),
            // Connection 3 at 80 ms.
            p(1080, 50051, 3),
            // After the window.
            p(3000, 50051, 4),
        ];
        let (mut latencies, sent) = arrivals(&packets, 50051, t(1000), t(2000));
        latencies.sort_by(f64::total_cmp);
        assert_eq!(sent, 1);
        assert_eq!(latencies.len(), 2);
        assert!((latencies[0] - 60.0).abs() < 1e-6 && (latencies[1] - 80.0).abs() < 1e-6);
    }
}
