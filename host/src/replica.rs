//! This host process as a replica of the store: its lease, taking over the executions of
//! replicas that died, and what other replicas tell it.
//!
//! The lease is one row per replica, renewed every third of its TTL: one write per interval
//! covers every execution the replica drives (each of them carries the epoch under which it was
//! taken, and every write the driver makes checks it). A replica whose lease could not be
//! renewed in time lets go of everything it drives, and joins again. Each replica looks for
//! expired leases every [`Leases::scan`]; whoever finds one first takes that replica's
//! unfinished executions over under a new epoch and takes them up through [`recovery`], the
//! same path a restart takes. So a dead replica's executions move within TTL + scan.
//!
//! On a shared store, finishes, registrations and freed slots elsewhere arrive as events; a
//! periodic re-read covers events that were missed.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::control_plane::ControlPlane;
use crate::recovery;
use crate::store::{Event, TakeOver};

/// Lease timing.
#[derive(Clone, Copy, Debug)]
pub struct Leases {
    /// How long a lease lasts without renewal.
    pub ttl: Duration,
    /// How often other replicas' leases are checked.
    pub scan: Duration,
}

impl Leases {
    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }
}

/// How often executions held for a waiter are re-read, in case an event was missed.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// Joins the store as a replica and takes over what earlier host processes left: on an
/// embedded store everything unfinished (its lock proves they are gone), on a shared one what
/// expired leases left. Returns what recovery did.
pub async fn join(cp: &ControlPlane, leases: Leases, machine: &str) -> anyhow::Result<recovery::Recovered> {
    let store = cp.store();
    let me = cp.ledger().replica().to_string();
    store.join(&me, leases.ttl).await?;
    let scope = if store.info().shared { TakeOver::Expired } else { TakeOver::AllOthers };
    let taken = store.take_over(&me, scope).await?;
    if !taken.replicas.is_empty() {
        cp.metrics().takeovers.with_label_values(&["restart"]).inc_by(taken.replicas.len() as u64);
    }
    Ok(recovery::take_up(cp, taken, machine).await)
}

/// Runs the lease loops until `stop`. `events` is the store's event stream, subscribed to
/// before the functions were loaded, so that no registration made elsewhere in between is missed.
pub async fn run(
    cp: ControlPlane,
    leases: Leases,
    machine: String,
    mut events: Option<tokio::sync::broadcast::Receiver<Event>>,
    stop: CancellationToken,
) {
    let store = cp.store().clone();
    if !store.info().durable {
        return;
    }
    let me = cp.ledger().replica().to_string();
    let mut renew = tokio::time::interval(leases.renew_every());
    let mut scan = tokio::time::interval(leases.scan);
    let mut refresh = tokio::time::interval(REFRESH_EVERY);
    let shared = store.info().shared;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = renew.tick() => match store.renew(&me, leases.ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(replica = %me, "this replica's lease expired; handing its executions over");
                    cp.ledger().hand_over("this replica lost its lease").await;
                    if let Err(e) = store.join(&me, leases.ttl).await {
                        tracing::warn!(error = %e, "cannot join the store again");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew this replica's lease"),
            },
            _ = scan.tick(), if shared => match store.take_over(&me, TakeOver::Expired).await {
                Ok(taken) if !taken.records.is_empty() || !taken.replicas.is_empty() => {
                    tracing::warn!(replicas = ?taken.replicas, executions = taken.records.len(),
                        "taking over the executions of replicas whose lease expired");
                    cp.metrics().takeovers.with_label_values(&["expired"]).inc_by(taken.replicas.len() as u64);
                    // Off this loop: taking up may wait for the Kubernetes watches, and the
                    // lease must go on being renewed meanwhile.
                    let (cp, machine) = (cp.clone(), machine.clone());
                    tokio::spawn(async move { recovery::take_up(&cp, taken, &machine).await });
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot look for expired leases"),
            },
            _ = refresh.tick(), if shared => cp.ledger().refresh_remote().await,
            event = next_event(&mut events) => match event {
                Some(event) => handle(&cp, event).await,
                None => events = None,
            },
        }
    }
}

async fn next_event(events: &mut Option<tokio::sync::broadcast::Receiver<Event>>) -> Option<Event> {
    let Some(rx) = events else { return std::future::pending().await };
    match rx.recv().await {
        Ok(event) => Some(event),
        // Some were dropped: re-read instead.
        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some(Event::Resync),
        Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
    }
}

async fn handle(cp: &ControlPlane, event: Event) {
    match event {
        Event::Finished(id) => cp.ledger().finished_elsewhere(&id).await,
        Event::SlotFreed(_) => cp.ledger().slot_freed(),
        Event::Function(name) => {
            if let Err(e) = cp.reload_function(&name).await {
                tracing::warn!(function = %name, error = %e, "cannot reload a function");
            }
        }
        Event::Resync => {
            cp.ledger().slot_freed();
            cp.ledger().refresh_remote().await;
            if let Err(e) = cp.reload_functions().await {
                tracing::warn!(error = %e, "cannot reload the functions");
            }
        }
    }
}
