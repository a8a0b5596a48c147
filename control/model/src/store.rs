//! Publishing snapshots: one writer (control), many lock-free readers (data planes).

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::Snapshot;

/// The single place a new snapshot is published. Held by control.
pub struct SnapshotStore {
    current: Arc<ArcSwap<Snapshot>>,
    tx: watch::Sender<u64>,
}

/// A data plane's read handle: `load()` is lock-free; `changed()` waits for the next publication.
#[derive(Clone)]
pub struct SnapshotReader {
    current: Arc<ArcSwap<Snapshot>>,
    rx: watch::Receiver<u64>,
}

impl SnapshotStore {
    /// A store holding `initial`.
    pub fn new(initial: Snapshot) -> SnapshotStore {
        let (tx, _) = watch::channel(initial.generation);
        SnapshotStore { current: Arc::new(ArcSwap::from_pointee(initial)), tx }
    }

    /// Publishes `snapshot`; readers see it on their next `load()` and `changed()` wakes them.
    pub fn publish(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        let gen = snapshot.generation;
        let snap = Arc::new(snapshot);
        self.current.store(snap.clone());
        self.tx.send_replace(gen);
        snap
    }

    /// The snapshot in force.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A new reader.
    pub fn reader(&self) -> SnapshotReader {
        SnapshotReader { current: self.current.clone(), rx: self.tx.subscribe() }
    }
}

impl SnapshotReader {
    /// The snapshot in force (cheap: an atomic load and a reference count).
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Waits until a snapshot newer than the last one seen by this reader is published.
    /// Returns `false` when the store is gone (shutdown).
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// Marks the current generation as seen.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }
}
