//! The order in which ConnectorInstance passes start: first come, first served, at a bounded cost.
//!
//! kube's controller, at its concurrency limit, holds the due requests in a hash set and starts
//! them in no order: in a burst of creates the first instances waited as long as the last. Without
//! a limit it starts every request at once and keeps each waiting pass in a map that it polls whole
//! on every wake-up: with 10,000 passes waiting that is quadratic (a fifth of the operator's CPU
//! in a burst of 10,000 creates went to polling passes that were only waiting for their turn).
//!
//! So two things bound the passes. The changes of the instance watch (creates, edits, and every
//! instance listed at start-up) reach the controller through [`fifo`]: they wait in a queue, in
//! the order they came (one entry per instance, however many changes it has), and are handed on
//! while fewer than twice `--concurrency` passes are under way. What is handed on is a reference:
//! the controller reads the object from its cache when the pass starts (during a list the cache
//! is filled only at its end). Every pass, whatever started it (the queue, an owned or a
//! referenced Secret, a platform, a requeue), then takes one of `--concurrency` permits of a fair
//! semaphore ([`Turns::enter`], [`UnderWay::permit`]).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How often changes handed on but whose pass was never seen starting are forgotten (the
/// controller drops a request for an instance deleted meanwhile, or merges it with one it holds).
const FORGET_HANDED_ON: Duration = Duration::from_secs(1);

/// The passes under way and the permits they take.
#[derive(Debug)]
pub struct Turns {
    permits: Arc<Semaphore>,
    /// Queued changes are handed on while `under_way + handed_on` is below this.
    limit: usize,
    /// Passes started by the controller (waiting for a permit or running).
    under_way: AtomicUsize,
    /// Changes handed on to the controller whose pass has not started yet (approximate: any pass
    /// that starts counts one off; reset every [`FORGET_HANDED_ON`]).
    handed_on: AtomicUsize,
    /// Woken when a pass ends.
    room: Notify,
}

impl Turns {
    /// `concurrency` passes run at once; twice that many may be under way.
    pub fn new(concurrency: u16) -> Arc<Self> {
        let concurrency = usize::from(concurrency.max(1));
        Arc::new(Turns {
            permits: Arc::new(Semaphore::new(concurrency)),
            limit: concurrency * 2,
            under_way: AtomicUsize::new(0),
            handed_on: AtomicUsize::new(0),
            room: Notify::new(),
        })
    }

    /// A pass the controller started: under way until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> UnderWay {
        self.under_way.fetch_add(1, Ordering::SeqCst);
        let _ = self.handed_on.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        UnderWay { turns: self.clone() }
    }

    /// No pass gets a permit any more (shutting down): those waiting end at once.
    pub fn close(&self) {
        self.permits.close();
    }

    fn has_room(&self) -> bool {
        self.under_way.load(Ordering::SeqCst) + self.handed_on.load(Ordering::SeqCst) < self.limit
    }
}

/// A pass under way (see [`Turns::enter`]).
#[derive(Debug)]
pub struct UnderWay {
    turns: Arc<Turns>,
}

impl UnderWay {
    /// Waits for the pass's turn to run: a permit, in the order asked for. `None` once closed.
    pub async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.turns.permits.clone().acquire_owned().await.ok()
    }
}

impl Drop for UnderWay {
    fn drop(&mut self) {
        self.turns.under_way.fetch_sub(1, Ordering::SeqCst);
        self.turns.room.notify_one();
    }
}

/// What woke the queue.
enum Woke<T> {
    Change(Option<T>),
    Room,
    Forget,
}

struct Queue<S, K: Resource<DynamicType = ()> + 'static> {
    /// `None` once the changes have ended.
    changes: Option<S>,
    order: VecDeque<ObjectRef<K>>,
    queued: HashSet<ObjectRef<K>>,
    turns: Arc<Turns>,
    forget: tokio::time::Interval,
}

/// The objects that `changes` reports, each handed on (as a reference: the controller reads the
/// object from its cache when it starts the pass) once there is room (see [`Turns`]), in the order
/// they came. An object changed again while it waits keeps its place and is handed on once.
/// Errors of the watch are logged (it retries on its own). Ends when `changes` ends and the queue
/// is empty.
pub fn fifo<S, K, E>(changes: S, turns: Arc<Turns>) -> impl Stream<Item = ObjectRef<K>> + Send
where
    S: Stream<Item = Result<K, E>> + Send + Unpin,
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
    E: std::fmt::Display + Send,
{
    let start = tokio::time::Instant::now() + FORGET_HANDED_ON;
    let mut forget = tokio::time::interval_at(start, FORGET_HANDED_ON);
    forget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let queue =
        Queue { changes: Some(changes), order: VecDeque::new(), queued: HashSet::new(), turns, forget };
    futures::stream::unfold(queue, |mut q| async move {
        loop {
            if q.turns.has_room()
                && let Some(next) = q.order.pop_front()
            {
                q.queued.remove(&next);
                q.turns.handed_on.fetch_add(1, Ordering::SeqCst);
                return Some((next, q));
            }
            let waiting = !q.order.is_empty();
            if q.changes.is_none() && !waiting {
                return None;
            }
            let woke = {
                let Queue { changes, turns, forget, .. } = &mut q;
                let change = async {
                    match changes.as_mut() {
                        Some(changes) => changes.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    change = change => Woke::Change(change),
                    () = turns.room.notified(), if waiting => Woke::Room,
                    _ = forget.tick(), if waiting => Woke::Forget,
                }
            };
            match woke {
                Woke::Change(None) => q.changes = None,
                Woke::Change(Some(Err(err))) => tracing::debug!(%err, "instance watch"),
                Woke::Change(Some(Ok(object))) => {
                    let key = reference(&object);
                    if q.queued.insert(key.clone()) {
                        q.order.push_back(key);
                    }
                }
                Woke::Room => {}
                Woke::Forget => q.turns.handed_on.store(0, Ordering::SeqCst),
            }
        }
    })
}

/// A reference to `object` by namespace and name only: kube's `ObjectRef::from_obj` copies its
/// resourceVersion and UID in as well, two strings more in every queued and scheduled request
/// (the controller keeps a resync's request, two copies, for every Ready instance). Equal to
/// kube's reference (which compares namespace and name only).
pub fn reference<K: Resource<DynamicType = ()>>(object: &K) -> ObjectRef<K> {
    let name = object.meta().name.as_deref().unwrap_or_default();
    let reference = ObjectRef::new(name);
    match object.meta().namespace.as_deref() {
        Some(namespace) => reference.within(namespace),
        None => reference,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn object(name: &str) -> ConfigMap {
        let mut object = ConfigMap::default();
        object.metadata.name = Some(name.into());
        object.metadata.namespace = Some("ns".into());
        object
    }

    /// What the queue hands on without waiting, by name.
    fn ready<S: Stream<Item = ObjectRef<ConfigMap>> + Unpin>(stream: &mut S) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(Some(next)) = stream.next().now_or_never() {
            out.push(next.name);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_handed_on_in_order_while_there_is_room() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<ConfigMap, String>>();
        let turns = Turns::new(1); // two under way at most
        let mut queue = Box::pin(fifo(rx, turns.clone()));
        let send = |name: &str| tx.unbounded_send(Ok(object(name))).unwrap();
        for name in ["a", "b", "c", "d"] {
            send(name);
        }
        // c changes twice more while it waits; a watch error in between is not handed on.
        send("c");
        tx.unbounded_send(Err("watch error".into())).unwrap();
        send("c");
        assert_eq!(ready(&mut queue), ["a", "b"], "two handed on, none started yet");

        // The controller starts a and b: still no room.
        let a = turns.enter();
        let b = turns.enter();
        assert!(ready(&mut queue).is_empty());
        drop(a);
        assert_eq!(ready(&mut queue), ["c"], "c keeps its place, once");
        let c = turns.enter();
        drop(b);
        assert_eq!(ready(&mut queue), ["d"]);
        let d = turns.enter();
        send("a");
        assert!(ready(&mut queue).is_empty(), "a changed again: it waits its turn");
        drop((c, d));
        assert_eq!(ready(&mut queue), ["a"]);
        drop(tx);
        assert!(matches!(queue.next().now_or_never(), Some(None)), "ends with its changes, queue empty");
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_whose_pass_never_starts_holds_no_room_for_long() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<ConfigMap, String>>();
        let turns = Turns::new(1);
        let mut queue = Box::pin(fifo(rx, turns.clone()));
        for name in ["a", "b", "c"] {
            tx.unbounded_send(Ok(object(name))).unwrap();
        }
        assert_eq!(ready(&mut queue), ["a", "b"]);
        // The controller dropped a and b (deleted meanwhile, or merged with requests it held):
        // their passes never start. Within a second they are forgotten and c goes on.
        let next = tokio::time::timeout(FORGET_HANDED_ON * 2, queue.next()).await;
        assert_eq!(next.unwrap().unwrap().name, "c");
    }

    #[test]
    fn a_reference_names_the_object_only() {
        let mut named = object("a");
        named.metadata.namespace = Some("n".into());
        named.metadata.uid = Some("u-1".into());
        named.metadata.resource_version = Some("7".into());
        for object in [named, object("b")] {
            let kept = reference(&object);
            assert_eq!(kept, ObjectRef::from_obj(&object));
            assert_eq!(Some(kept.name.as_str()), object.metadata.name.as_deref());
            assert_eq!(kept.namespace, object.metadata.namespace);
            assert_eq!((kept.extra.uid, kept.extra.resource_version), (None, None));
        }
    }

    #[tokio::test]
    async fn a_pass_waits_for_a_permit_in_order_and_none_once_closed() {
        let turns = Turns::new(1);
        let first = turns.enter();
        let permit = first.permit().await.expect("a permit");
        let second = turns.enter();
        let mut waiting = Box::pin(second.permit());
        assert!(waiting.as_mut().now_or_never().is_none(), "one at a time");
        drop(permit);
        assert!(waiting.await.is_some());
        turns.close();
        assert!(turns.enter().permit().await.is_none());
    }
}
