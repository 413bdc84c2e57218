//! Per-function admission: a bounded queue in front of a fixed number of concurrency slots.
//!
//! Each function has its own slots (`concurrency`) and its own queue bound (`queueSize`), so a
//! saturated function never delays another. Admission is decided when a request arrives: a free
//! slot is taken at once; otherwise the execution waits in the queue if there is room; otherwise
//! the request is refused (429) before any execution exists. Slots are owned permits released
//! on drop, so no code path can leak one — an execution that ends in any way gives its slot back.
//!
//! With a store shared by several replicas the bounds hold across all of them, so they are kept
//! by the store instead (in the same transaction as the executions they count): such a queue
//! admits everything locally ([`Admission::Shared`]) and the ledger asks the store for slots.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

pub struct FunctionQueue {
    /// Bounds kept by a shared store, not here.
    shared: bool,
    slots: Arc<Semaphore>,
    waiting: AtomicU32,
    queue_size: u32,
    concurrency: u32,
    queue_depth: IntGauge,
    in_flight: IntGauge,
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overload {
    /// Every slot is busy and the queue is full.
    QueueFull { concurrency: u32, queue_size: u32 },
}

/// An admitted execution's claim on its function's capacity.
pub enum Admission {
    /// A slot was free.
    Running(Slot),
    /// Waiting in the queue; turns into a slot with [`Admission::slot`].
    Queued(QueueTicket),
    /// Admitted by a shared store, which also grants the slot (see `ledger`).
    Shared,
}

/// A held concurrency slot; released when dropped (a shared store's slot is released by the
/// terminal write of its execution).
pub struct Slot {
    _permit: Option<OwnedSemaphorePermit>,
    in_flight: IntGauge,
}

/// A place in a function's queue; given up when dropped.
pub struct QueueTicket {
    queue: Arc<FunctionQueue>,
}

impl FunctionQueue {
    pub fn new(function: &str, concurrency: u32, queue_size: u32, metrics: &Metrics) -> Arc<Self> {
        Self::with_mode(function, concurrency, queue_size, metrics, false)
    }

    /// A queue whose bounds a shared store keeps.
    pub fn shared(function: &str, concurrency: u32, queue_size: u32, metrics: &Metrics) -> Arc<Self> {
        Self::with_mode(function, concurrency, queue_size, metrics, true)
    }

    fn with_mode(function: &str, concurrency: u32, queue_size: u32, metrics: &Metrics, shared: bool) -> Arc<Self> {
        Arc::new(Self {
            shared,
            slots: Arc::new(Semaphore::new(concurrency as usize)),
            waiting: AtomicU32::new(0),
            queue_size,
            concurrency,
            queue_depth: metrics.queue_depth.with_label_values(&[function]),
            in_flight: metrics.in_flight.with_label_values(&[function]),
        })
    }

    /// Takes a slot, or a place in the queue, or refuses.
    pub fn admit(self: &Arc<Self>) -> Result<Admission, Overload> {
        if self.shared {
            return Ok(Admission::Shared);
        }
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Admission::Running(self.slot(permit)));
        }
        let queued = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| (w < self.queue_size).then_some(w + 1))
            .is_ok();
        if !queued {
            return Err(Overload::QueueFull { concurrency: self.concurrency, queue_size: self.queue_size });
        }
        self.queue_depth.inc();
        Ok(Admission::Queued(QueueTicket { queue: self.clone() }))
    }

    /// Admits an execution that was accepted before (taken up after a restart): never refused.
    pub fn readmit(self: &Arc<Self>) -> Admission {
        if self.shared {
            return Admission::Shared;
        }
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Admission::Running(self.slot(permit));
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        self.queue_depth.inc();
        Admission::Queued(QueueTicket { queue: self.clone() })
    }

    /// The most executions that may hold a slot at once.
    pub fn concurrency(&self) -> u32 {
        self.concurrency
    }

    /// The most unfinished executions (running and queued).
    pub fn capacity(&self) -> u32 {
        self.concurrency + self.queue_size
    }

    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// A slot granted by a shared store.
    pub fn shared_slot(&self) -> Slot {
        self.in_flight.inc();
        Slot { _permit: None, in_flight: self.in_flight.clone() }
    }

    /// Executions waiting for a slot.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Acquire)
    }

    /// Slots in use.
    pub fn busy(&self) -> u32 {
        self.concurrency - self.slots.available_permits() as u32
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> Slot {
        self.in_flight.inc();
        Slot { _permit: Some(permit), in_flight: self.in_flight.clone() }
    }
}

impl Admission {
    /// Waits in the queue (first come, first served) until a slot is free. `None` for a shared
    /// admission, whose slot the store grants.
    pub async fn slot(self) -> Option<Slot> {
        match self {
            Admission::Running(slot) => Some(slot),
            Admission::Queued(ticket) => {
                let permit = ticket.queue.slots.clone().acquire_owned().await.expect("slots are never closed");
                Some(ticket.queue.slot(permit))
            }
            Admission::Shared => None,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
        self.queue.queue_depth.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_then_queue_then_refusal() {
        let metrics = Metrics::new();
        let q = FunctionQueue::new("f", 2, 1, &metrics);
        let a = q.admit().unwrap();
        let b = q.admit().unwrap();
        assert!(matches!((&a, &b), (Admission::Running(_), Admission::Running(_))));
        let c = q.admit().unwrap();
        assert!(matches!(c, Admission::Queued(_)));
        assert_eq!(q.admit().err(), Some(Overload::QueueFull { concurrency: 2, queue_size: 1 }));
        assert_eq!((q.busy(), q.waiting()), (2, 1));

        // Freeing a slot lets the queued one run, and makes room in the queue again.
        let a = a.slot().await;
        drop(a);
        let c = c.slot().await;
        assert!(c.is_some());
        assert_eq!((q.busy(), q.waiting()), (2, 0));
        assert!(matches!(q.admit().unwrap(), Admission::Queued(_)));
        drop((b, c));
        assert_eq!((q.busy(), q.waiting()), (0, 0));
        assert_eq!(metrics.in_flight.with_label_values(&["f"]).get(), 0);
        assert_eq!(metrics.queue_depth.with_label_values(&["f"]).get(), 0);
    }

    #[tokio::test]
    async fn a_dropped_queued_execution_gives_back_its_place() {
        let metrics = Metrics::new();
        let q = FunctionQueue::new("f", 1, 1, &metrics);
        let _running = q.admit().unwrap().slot().await;
        let queued = q.admit().unwrap();
        assert!(q.admit().is_err());
        drop(queued);
        let _queued = q.admit().unwrap();
        // An execution taken up again after a restart is admitted past the bound.
        let _readmitted = q.readmit();
        assert_eq!(q.waiting(), 2);
    }

    #[tokio::test]
    async fn a_shared_queue_leaves_the_bounds_to_the_store() {
        let metrics = Metrics::new();
        let q = FunctionQueue::shared("f", 1, 0, &metrics);
        assert!(matches!(q.admit(), Ok(Admission::Shared)));
        assert!(matches!(q.admit(), Ok(Admission::Shared)), "refusals come from the store");
        assert!(q.admit().unwrap().slot().await.is_none());
        assert_eq!(q.capacity(), 1);
    }

    #[tokio::test]
    async fn zero_queue_refuses_when_busy() {
        let metrics = Metrics::new();
        let q = FunctionQueue::new("f", 1, 0, &metrics);
        let _running = q.admit().unwrap();
        assert!(q.admit().is_err());
    }
}
