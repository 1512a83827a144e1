//! Reloading the configuration: on SIGHUP, and when values.yaml or bgp-config changes on disk
//! (checked every 2 s by modification time and content, which also catches a Kubernetes ConfigMap
//! volume swapping its files, and an edit within the file system's timestamp granularity). A file that does not load is refused with its error; the running
//! configuration stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use routeplane_runtime::shutdown::Shutdown;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::settings::Cli;
use crate::speaker::SpeakerSettings;

/// How long a changed file must stay unchanged before it is loaded.
const SETTLE: Duration = Duration::from_millis(300);

/// What a file looks like now: its modification time and a hash of its content (None when it
/// cannot be read). The content counts because two writes within one tick of a coarse clock leave
/// the time unchanged.
fn stamps(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    use std::hash::{Hash, Hasher};
    files
        .iter()
        .map(|f| {
            let modified = std::fs::metadata(f).and_then(|m| m.modified()).ok()?;
            let content = std::fs::read(f).ok()?;
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            content.hash(&mut hasher);
            Some((modified, hasher.finish()))
        })
        .collect()
}

/// `router_id`: the one in use since the start. A router ID taken from the host's addresses stays
/// through reloads: it is this speaker's identity, not something an edited peer list should move.
pub async fn run(
    cli: Arc<Cli>,
    router_id: Option<std::net::Ipv4Addr>,
    tx: mpsc::UnboundedSender<SpeakerSettings>,
    shutdown: Shutdown,
) {
    let files: Vec<PathBuf> = cli
        .values
        .iter()
        .chain(cli.bgp_config.iter())
        .cloned()
        .collect();
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: reloading on file changes only");
            None
        }
    };
    let mut seen = stamps(&files);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        let why = tokio::select! {
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = tick.tick() => {
                let now = stamps(&files);
                if now == seen {
                    continue;
                }
                // A writer that truncates and then writes changes the time twice; reading in
                // between would load half a file, which may still parse. Wait for it to settle.
                tokio::time::sleep(SETTLE).await;
                if stamps(&files) != now {
                    continue;
                }
                "a configuration file changed"
            }
            () = shutdown.wait() => return,
        };
        // Whatever triggered it, this load reads the files as they are now: a later tick must
        // not load them again.
        seen = stamps(&files);
        match cli.load() {
            Ok((mut settings, _)) => {
                settings.router_id = router_id.or(settings.router_id);
                tracing::info!(trigger = why, "reloading the configuration");
                if tx.send(settings).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(trigger = why, error = %e, "reload refused: the running configuration stays")
            }
        }
    }
}
