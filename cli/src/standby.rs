//! Active/standby on a shared directory (`--shared-dir`): the process waits as standby (no
//! AMQP listener, /health role "standby") until it takes the directory's lock, then serves as
//! the active from the log in that directory; if the directory fails under it (gone,
//! read-only, hung) it stops serving, closes the log, lets go of the lock and waits as standby
//! again. If it finds itself fenced (another process took over), it exits at once without
//! another write. See `raftmq_raft::shared` for the lock, the epoch and the checks.

use crate::config::ServeConfig;
use crate::node_view::{Deployment, NodeView};
use crate::serve::{bind_amqp, log_config, serve_log, HttpServer, Stop};
use anyhow::{Context, Result};
use raftmq_broker::dispatch::Dispatcher;
use raftmq_raft::{LeaseInfo, LogNode, LogStatus, Role, SharedDir, SharedError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// The pair shares one log, so both processes are the same member of it; `--node-id` only
/// tells the two processes apart (in /health, the lock file and the logs).
pub const SHARED_MEMBER_ID: u64 = 1;

/// How often the standby tries the lock: the bulk of the failover time.
const POLL: Duration = Duration::from_millis(100);
/// After a failed takeover (storage unavailable), wait this long before trying again.
const RETRY: Duration = Duration::from_secs(1);
/// How often the active checks that it still owns a writable directory.
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// A check that takes longer than this means hung storage.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Exit code of a fenced process.
const EXIT_FENCED: i32 = 75;

pub async fn run(config: ServeConfig, dir: PathBuf, stop: Stop) -> Result<()> {
    // First start on a fresh volume: create the directory. Later, a missing directory is an
    // unmounted share, and takeovers wait for it (SharedDir::try_take never creates it).
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the shared directory {}", dir.display()))?;
    let shared = SharedDir::new(&dir);
    let view = NodeView::new(config.node_id, Deployment::Shared);
    let http = HttpServer::start(&config, view.clone()).await?;
    let holder = format!("node={} amqp={}", config.node_id, config.amqp_listen);
    info!(shared_dir = %dir.display(), "active/standby mode: waiting for the shared directory's lock");
    let mut last_problem: Option<String> = None;
    let result = loop {
        if stop.is_set() {
            break Ok(());
        }
        let attempt = {
            let shared = shared.clone();
            let holder = holder.clone();
            tokio::task::spawn_blocking(move || shared.try_take(&holder))
        };
        let lease = match tokio::time::timeout(CHECK_TIMEOUT, attempt).await {
            Ok(Ok(Ok(Some(lease)))) => lease,
            Ok(Ok(Ok(None))) => {
                if last_problem.take().is_some() {
                    info!("the shared directory is available again");
                }
                let holder_now = shared.holder();
                if holder_now.as_deref().is_some_and(|h| is_ours(h, &holder)) {
                    // Our own earlier term still holds it (its database could not be closed):
                    // only the process exit lets go of it.
                    error!("this process still holds the shared directory's lock from its last term; exiting so that it is released");
                    std::process::exit(1);
                }
                view.set_standby(None, holder_now);
                if pause(&stop, POLL).await {
                    break Ok(());
                }
                continue;
            }
            outcome => {
                let problem = match outcome {
                    Ok(Ok(Err(e))) => e.to_string(),
                    Ok(Err(e)) => format!("the takeover attempt failed: {e}"),
                    Err(_) => format!(
                        "taking the lock did not finish within {CHECK_TIMEOUT:?} (hung storage?)"
                    ),
                    Ok(Ok(Ok(_))) => unreachable!("handled above"),
                };
                if last_problem.as_ref() != Some(&problem) {
                    warn!("{problem}; staying standby");
                }
                view.set_standby(Some(problem.clone()), None);
                last_problem = Some(problem);
                if pause(&stop, RETRY).await {
                    break Ok(());
                }
                continue;
            }
        };
        let lease_info = lease.info();
        info!(
            fence_epoch = lease_info.epoch,
            "took the shared directory's lock: becoming active"
        );
        match serve_active(
            &config,
            &shared,
            lease_info,
            lease.into_lock(),
            &view,
            &stop,
        )
        .await
        {
            Ok(None) => break Ok(()),
            Ok(Some(problem)) => {
                // (Logged by whoever found it.)
                // The log is closed and the lock released: the other node may take over if
                // the directory works for it.
                view.set_standby(Some(problem.clone()), None);
                last_problem = Some(problem);
                if pause(&stop, RETRY).await {
                    break Ok(());
                }
            }
            Err(e) => break Err(e),
        }
    };
    http.stop().await;
    info!("stopped");
    result
}

/// Whether the lock file's holder text is this process (same name and pid).
fn is_ours(holder_text: &str, name: &str) -> bool {
    holder_text.starts_with(&format!("{name} pid={} ", std::process::id()))
}

/// Sleeps for `period` unless a stop signal comes first; true if it did.
async fn pause(stop: &Stop, period: Duration) -> bool {
    tokio::select! {
        _ = stop.clone().wait() => true,
        _ = tokio::time::sleep(period) => false,
    }
}

/// One term as the active: opens the log under the lock, serves until a stop signal
/// (`Ok(None)`) or until the directory fails (`Ok(Some(why))`).
async fn serve_active(
    config: &ServeConfig,
    shared: &SharedDir,
    lease: LeaseInfo,
    lock: raftmq_raft::DataDirLock,
    view: &Arc<NodeView>,
    stop: &Stop,
) -> Result<Option<String>> {
    let dispatcher = Arc::new(Dispatcher::new());
    let log = match LogNode::open_locked(
        log_config(config, SHARED_MEMBER_ID),
        dispatcher.clone(),
        lock,
    )
    .await
    {
        Ok(log) => log,
        Err(e) => {
            // The lock went with the failed open.
            let problem = format!("cannot open the log in the shared directory: {e}");
            error!("{problem}");
            return Ok(Some(problem));
        }
    };
    if let Err(e) = shared.mark_formed() {
        warn!(error = %e, "cannot record that the shared log was formed");
    }
    let amqp = match bind_amqp(config).await {
        Ok(listener) => listener,
        Err(e) => {
            log.shutdown().await;
            return Err(e);
        }
    };
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<String>();
    // Set once serving ends (a stop signal or a storage problem): from then on the log is
    // closing on purpose, and the watchdog only keeps watching for fencing.
    let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = tokio::spawn(watch_storage(
        shared.clone(),
        lease,
        log.status(),
        view.clone(),
        lost_tx,
        closing.clone(),
    ));
    let lost = Arc::new(std::sync::Mutex::new(None::<String>));
    let until = {
        let lost = lost.clone();
        let stop = stop.clone();
        let closing = closing.clone();
        async move {
            tokio::select! {
                _ = stop.wait() => {}
                Ok(problem) = lost_rx => {
                    *lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(problem);
                }
            }
            closing.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let served = serve_log(
        config,
        log,
        dispatcher,
        amqp,
        view,
        Some(lease.epoch),
        until,
    )
    .await;
    watchdog.abort();
    served?;
    let problem = lost.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(problem) = &problem {
        info!("no longer active ({problem}); the shared directory's lock is released");
    }
    Ok(problem)
}

/// Checks the directory every [`CHECK_EVERY`] while this process is active, until its log is
/// closed. A fenced process exits on the spot, also while its log is closing. A directory that
/// fails (or a log that stopped on a storage error) is reported once through `lost`, so the
/// active stops serving; the fencing checks go on while it closes.
async fn watch_storage(
    shared: SharedDir,
    lease: LeaseInfo,
    log: LogStatus,
    view: Arc<NodeView>,
    lost: tokio::sync::oneshot::Sender<String>,
    closing: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut lost = Some(lost);
    // A check that hangs (hung storage) is not started again until it returns.
    let mut hanging: Option<tokio::task::JoinHandle<Result<(), SharedError>>> = None;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let is_closing = closing.load(std::sync::atomic::Ordering::Relaxed);
        let problem = if !is_closing && log.role() == Role::Shutdown {
            Some(
                "the log stopped (a storage write failed); not confirming anything more"
                    .to_string(),
            )
        } else {
            let mut check = match hanging.take() {
                Some(check) => check,
                None => {
                    let shared = shared.clone();
                    tokio::task::spawn_blocking(move || shared.check(&lease))
                }
            };
            match tokio::time::timeout(CHECK_TIMEOUT, &mut check).await {
                Ok(Ok(Ok(()))) => None,
                Ok(Ok(Err(SharedError::Fenced { dir, reason }))) => {
                    // Another process may be the writer now: not one more byte from this
                    // one, not even a clean close of the database.
                    error!(dir = %dir.display(), "fenced: {reason}; exiting at once");
                    // SAFETY: _exit ends the process without running any handler or flush.
                    unsafe { libc::_exit(EXIT_FENCED) };
                }
                Ok(Ok(Err(e))) => Some(format!("{e}; not confirming anything more")),
                Ok(Err(e)) => Some(format!("the storage check failed: {e}")),
                Err(_) => {
                    hanging = Some(check);
                    Some(format!(
                        "a write to the shared directory did not finish within {CHECK_TIMEOUT:?} (hung storage?); not confirming anything more"
                    ))
                }
            }
        };
        if let (Some(problem), false) = (problem, is_closing) {
            if let Some(lost) = lost.take() {
                error!("{problem}");
                view.set_problem(problem.clone());
                let _ = lost.send(problem);
            }
        }
    }
}
