//! Batches gathered on the proxy worker that logged them, as Kong's queues are per worker: each
//! entry is written straight into its worker's batch (no entry is queued, woken for or copied a
//! second time on its own), and only whole batches cross to the sink's task. A worker's batch
//! leaves when it holds `max_batch_size` entries, or `max_coalescing_delay` after its first entry
//! (a task on the worker sees to that), or when the sink goes away.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::super::log::{self, dropped, write_entry};
use crate::clock::deadline;

/// A batch's body (a JSON array of entries when batching, else the one entry) and its count.
#[derive(Debug)]
pub struct Batch {
    pub body: Vec<u8>,
    pub entries: usize,
}

/// What a worker needs to gather for a sink and hand its batches on.
#[derive(Debug)]
pub struct Sink {
    /// Tells one sink's batches from another's on a worker.
    id: u64,
    tx: tokio::sync::mpsc::Sender<Batch>,
    /// Dropped with the sink: wakes every worker's watcher to send what it gathered.
    gone: tokio::sync::watch::Sender<()>,
    custom: Map<String, Value>,
    max_batch_size: usize,
    max_bytes: Option<usize>,
    delay: Duration,
}

/// One worker's batch being gathered for a sink.
struct Gathering {
    sink: u64,
    /// Wakes the worker's watcher when a batch starts (it sleeps while there is none).
    started: Arc<tokio::sync::Notify>,
    body: Vec<u8>,
    entries: usize,
    /// When its first entry came.
    since: Instant,
    /// The last batch's size, to size the next one's buffer at once.
    last_size: usize,
}

thread_local! {
    static GATHERING: RefCell<Vec<Gathering>> = const { RefCell::new(Vec::new()) };
}

impl Sink {
    /// A sink handing its batches to `tx` (its bounded queue).
    pub fn new(
        tx: tokio::sync::mpsc::Sender<Batch>,
        custom: Map<String, Value>,
        max_batch_size: usize,
        max_bytes: Option<usize>,
        delay: Duration,
    ) -> Sink {
        static IDS: AtomicU64 = AtomicU64::new(0);
        let gone = tokio::sync::watch::Sender::new(());
        Sink { id: IDS.fetch_add(1, Ordering::Relaxed), tx, gone, custom, max_batch_size, max_bytes, delay }
    }

    fn batching(&self) -> bool {
        self.max_batch_size > 1
    }

    /// Adds an entry's text; never waits. What the sink's queue cannot take is dropped and counted.
    pub fn push(self: &Arc<Self>, text: &[u8]) {
        if !self.batching() || self.delay.is_zero() {
            return self.send_alone(text);
        }
        let full = GATHERING.with_borrow_mut(|list| {
            let i = match list.iter().position(|g| g.sink == self.id) {
                Some(i) => i,
                None => {
                    // Gathering needs a task on this very thread to send a batch whose delay is
                    // over: a worker's single-threaded runtime (asked once per worker and sink).
                    let on_worker = tokio::runtime::Handle::try_current()
                        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
                    if !on_worker {
                        return Err(());
                    }
                    let started = Arc::new(tokio::sync::Notify::new());
                    self.watch(started.clone());
                    list.push(Gathering {
                        sink: self.id,
                        started,
                        body: Vec::new(),
                        entries: 0,
                        since: Instant::now(),
                        last_size: 2048,
                    });
                    list.len() - 1
                }
            };
            let g = &mut list[i];
            if g.entries == 0 {
                g.since = Instant::now();
                g.started.notify_one();
                g.body.reserve(g.last_size + g.last_size / 4);
            }
            if self.add(&mut g.body, g.entries, text) {
                g.entries += 1;
            }
            Ok((g.entries >= self.max_batch_size).then(|| take(g)))
        });
        match full {
            Ok(Some((body, entries))) => self.send(close(body, true), entries),
            Ok(None) => {}
            // Anywhere but on a worker, each entry leaves alone.
            Err(()) => self.send_alone(text),
        }
    }

    /// An entry sent as a batch of its own.
    fn send_alone(&self, text: &[u8]) {
        let mut body = Vec::with_capacity(text.len() + 2);
        if self.add(&mut body, 0, text) {
            self.send(close(body, self.batching()), 1);
        }
    }

    /// Writes an entry into a body holding `entries` already (with the custom fields); false when
    /// it could not be written or would pass `max_bytes` (then it is dropped and counted).
    fn add(&self, body: &mut Vec<u8>, entries: usize, text: &[u8]) -> bool {
        let before = body.len();
        if self.batching() {
            body.push(if entries == 0 { b'[' } else { b',' });
        }
        let start = body.len();
        write_entry(text, &self.custom, body);
        // `max_bytes` bounds the entries' text, as Kong counts it (without brackets and commas).
        let text_len = body.len() - start;
        let total = body.len() - entries - usize::from(self.batching());
        if text_len == 0 || self.max_bytes.is_some_and(|max| total > max) {
            body.truncate(before);
            dropped().http_log.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn send(&self, body: Vec<u8>, entries: usize) {
        hand_on(&self.tx, body, entries);
    }

    /// The task that sends this worker's batch once its delay is over, and what is left when the
    /// sink goes away; it runs on this worker, beside the batch, and sleeps while there is none.
    fn watch(self: &Arc<Self>, started: Arc<tokio::sync::Notify>) {
        let sink = Arc::downgrade(self);
        let (id, delay, tx, mut goes) = (self.id, self.delay, self.tx.clone(), self.gone.subscribe());
        tokio::spawn(async move {
            loop {
                let due = GATHERING.with_borrow(|list| {
                    list.iter().find(|g| g.sink == id).filter(|g| g.entries > 0).map(|g| deadline(g.since, delay))
                });
                tokio::select! {
                    () = async {
                        match due {
                            Some(at) => tokio::time::sleep_until(at.into()).await,
                            None => started.notified().await,
                        }
                    } => {}
                    _ = goes.changed() => {}
                }
                let gone = Weak::strong_count(&sink) == 0;
                let ready = GATHERING.with_borrow_mut(|list| {
                    let i = list.iter().position(|g| g.sink == id)?;
                    let g = &mut list[i];
                    let ready = (g.entries > 0 && (gone || g.since.elapsed() >= delay)).then(|| take(g));
                    if gone {
                        list.swap_remove(i);
                    }
                    ready
                });
                if let Some((body, entries)) = ready {
                    hand_on(&tx, close(body, true), entries);
                }
                if gone {
                    return;
                }
            }
        });
    }
}

impl log::Sink for Arc<Sink> {
    fn push(&self, text: &[u8]) {
        Sink::push(self, text);
    }
}

/// Hands a batch to the sink's task; when its queue is full the batch is dropped and counted.
fn hand_on(tx: &tokio::sync::mpsc::Sender<Batch>, body: Vec<u8>, entries: usize) {
    if tx.try_send(Batch { body, entries }).is_err() {
        dropped().http_log.fetch_add(entries as u64, Ordering::Relaxed);
    }
}

/// The gathered body and its count, leaving the gathering empty.
fn take(g: &mut Gathering) -> (Vec<u8>, usize) {
    g.last_size = g.body.len();
    let entries = std::mem::take(&mut g.entries);
    (std::mem::take(&mut g.body), entries)
}

/// A batch's body closed: `]` after a JSON array.
fn close(mut body: Vec<u8>, batching: bool) -> Vec<u8> {
    if batching {
        body.push(b']');
    }
    body
}
