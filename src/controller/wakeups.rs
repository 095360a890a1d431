//! Passes planned for later: the periodic read of a Ready instance, the recheck of what may be
//! fixed outside Kubernetes, a long backoff.
//!
//! kube's controller keeps a requeue as a request in its scheduler: two copies of the instance's
//! reference (four strings each) in a hash map and a delay queue, about 0.7 KiB per instance; with
//! every Ready instance waiting for its periodic read, that was 7 MiB at 10,000 instances. A wait
//! of [`LONG_WAIT`] or more is kept instead as one number in what the operator remembers of the
//! instance ([`super::context::Memory::wake`]: the second, counted from the process's start, when
//! its pass is due). Once a second [`due_passes`] takes the instances whose second has come and
//! hands their references to the controller; a pass that starts for any reason clears its
//! instance's wake-up first (as the scheduler merges a request with the one it holds), and the
//! pass's outcome plans the next. Shorter waits stay with kube's scheduler (precise, and few at a
//! time).

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::time::Instant;

use super::cache::CachedInstance;
use super::context::Memories;

/// Waits of this length or more are kept as a wake-up second; shorter ones go to kube's scheduler.
pub const LONG_WAIT: Duration = Duration::from_secs(10);

/// How often the wake-ups are looked at (with due seconds rounded up, a pass starts up to two
/// seconds late).
const SWEEP: Duration = Duration::from_secs(1);

/// The start of the seconds counted in wake-ups.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The second a pass `after` from `now` is due in (rounded up: never early); never 0.
pub fn due_second(now: Instant, after: Duration) -> NonZeroU32 {
    let due = now.saturating_duration_since(epoch()).saturating_add(after);
    let second = due.as_secs().saturating_add(u64::from(due.subsec_nanos() > 0));
    NonZeroU32::new(u32::try_from(second).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
}

/// The second `now` is in.
fn current_second(now: Instant) -> u32 {
    u32::try_from(now.saturating_duration_since(epoch()).as_secs()).unwrap_or(u32::MAX)
}

/// The controller's action for a pass of instance `uid` to come `after` from `now`: a long wait
/// is remembered as its wake-up (and the controller waits for a change or the wake-up), a short
/// one goes to the controller's scheduler.
pub fn later(memories: &Memories, uid: &str, after: Duration, now: Instant) -> Action {
    if after < LONG_WAIT || uid.is_empty() {
        return Action::requeue(after);
    }
    let due = due_second(now, after);
    memories.update(uid, |memory| memory.wake = Some(due));
    Action::await_change()
}

/// The references of the instances whose wake-up has come, once a second (see the module).
pub fn due_passes(
    memories: Memories,
    instances: Store<CachedInstance>,
) -> impl Stream<Item = ObjectRef<CachedInstance>> + Send + 'static {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures::stream::unfold(tick, move |mut tick| {
        let (memories, instances) = (memories.clone(), instances.clone());
        async move {
            tick.tick().await;
            Some((futures::stream::iter(take_due(&memories, &instances, Instant::now())), tick))
        }
    })
    .flatten()
}

/// The references of the instances due at `now`, their wake-ups cleared. One due but not in the
/// cache (the watch has not caught up) keeps its wake-up for the next sweep.
fn take_due(
    memories: &Memories,
    instances: &Store<CachedInstance>,
    now: Instant,
) -> Vec<ObjectRef<CachedInstance>> {
    let second = current_second(now);
    let mut due: HashSet<String> = memories.take_due(second);
    if due.is_empty() {
        return Vec::new();
    }
    let references: Vec<_> = instances
        .state()
        .iter()
        .filter(|ci| ci.meta().uid.as_ref().is_some_and(|uid| due.remove(uid)))
        .map(|ci| super::turns::reference(ci.as_ref()))
        .collect();
    // What is left was not found in the cache.
    let next = NonZeroU32::new(second.saturating_add(1)).unwrap_or(NonZeroU32::MIN);
    for uid in &due {
        memories.set_wake(uid, Some(next));
    }
    references
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConnectorInstance;
    use kube::runtime::watcher;

    fn instance(name: &str, uid: &str) -> CachedInstance {
        let ci: ConnectorInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
            "metadata": { "name": name, "namespace": "n", "uid": uid },
            "spec": { "platformRef": { "name": "p" }, "connector": "echo" },
        }))
        .unwrap();
        CachedInstance::new(&ci)
    }

    fn names(references: &[ObjectRef<CachedInstance>]) -> Vec<&str> {
        let mut names: Vec<&str> = references.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn a_due_second_is_never_early() {
        let start = epoch();
        let cases = [
            (Duration::ZERO, Duration::from_secs(10), 10),
            (Duration::from_millis(1), Duration::from_secs(10), 11),
            (Duration::from_millis(999), Duration::from_secs(600), 601),
            (Duration::from_secs(5), Duration::from_millis(10_500), 16),
        ];
        for (elapsed, after, second) in cases {
            let now = start + elapsed;
            assert_eq!(due_second(now, after).get(), second, "{elapsed:?} + {after:?}");
            assert!(current_second(now + after) <= second);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_wait_is_a_wake_up_and_a_short_one_a_requeue() {
        let memories = Memories::default();
        let now = Instant::now();
        assert_eq!(
            later(&memories, "u-1", Duration::from_secs(2), now),
            Action::requeue(Duration::from_secs(2))
        );
        assert_eq!(memories.read("u-1", |m| m.wake), None, "a short wait leaves nothing remembered");
        assert_eq!(later(&memories, "u-1", Duration::from_secs(60), now), Action::await_change());
        assert_eq!(memories.read("u-1", |m| m.wake), Some(due_second(now, Duration::from_secs(60))));
        // No UID (never from the API server): the scheduler, not a memory under "".
        assert_eq!(
            later(&memories, "", Duration::from_secs(60), now),
            Action::requeue(Duration::from_secs(60))
        );
        assert_eq!(memories.read("", |m| m.wake), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_comes_once_when_its_second_has_come() {
        let memories = Memories::default();
        let (instances, mut writer) = kube::runtime::reflector::store::<CachedInstance>();
        for (name, uid) in [("a", "u-a"), ("b", "u-b"), ("c", "u-c")] {
            writer.apply_watcher_event(&watcher::Event::Apply(instance(name, uid)));
        }
        // Seconds count from the process's epoch, which another test may have set after this
        // test's paused clock started: a time after it.
        let now = epoch() + Duration::from_secs(100);
        later(&memories, "u-a", Duration::from_secs(10), now);
        later(&memories, "u-b", Duration::from_secs(20), now);
        later(&memories, "u-c", Duration::from_secs(20), now);
        // Planned, then started for another reason (a change): its wake-up is cleared.
        memories.set_wake("u-c", None);
        // Due, but deleted meanwhile (its memory forgotten): nothing.
        later(&memories, "u-gone", Duration::from_secs(10), now);
        memories.remove("u-gone");
        // Due, but not in the cache yet: kept for the next sweep.
        later(&memories, "u-d", Duration::from_secs(10), now);

        let at = |seconds| now + Duration::from_secs(seconds);
        assert!(take_due(&memories, &instances, at(9)).is_empty(), "nothing before its second");
        assert_eq!(names(&take_due(&memories, &instances, at(10))), ["a"], "d is not in the cache yet");
        writer.apply_watcher_event(&watcher::Event::Apply(instance("d", "u-d")));
        assert_eq!(names(&take_due(&memories, &instances, at(11))), ["d"], "d, once in the cache");
        assert!(take_due(&memories, &instances, at(12)).is_empty(), "each once");
        assert_eq!(names(&take_due(&memories, &instances, at(20))), ["b"], "c was cleared");
        assert!(take_due(&memories, &instances, at(30)).is_empty());
        assert_eq!(memories.read("u-gone", |m| m.wake), None);
        assert!(memories.read("u-a", |m| m.wake).is_none(), "taken once");
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_hands_on_what_is_due() {
        let memories = Memories::default();
        let (instances, mut writer) = kube::runtime::reflector::store::<CachedInstance>();
        writer.apply_watcher_event(&watcher::Event::Apply(instance("a", "u-a")));
        let mut due = Box::pin(due_passes(memories.clone(), instances));
        later(&memories, "u-a", Duration::from_secs(30), Instant::now());
        let next = tokio::time::timeout(Duration::from_secs(29), due.next()).await;
        assert!(next.is_err(), "not before its second");
        let next = tokio::time::timeout(Duration::from_secs(3), due.next()).await;
        assert_eq!(next.unwrap().unwrap().name, "a");
    }
}
