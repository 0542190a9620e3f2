//! Group commit of writes: concurrent writes are proposed together as one entry.
//!
//! A write joins its node's queue. Whoever finds a free proposal slot takes everything queued
//! and proposes it as one [`Command::Batch`] (a single write goes as it is), in a task of its
//! own so that a caller going away does not cancel the others' writes; the rest wait for
//! their outcome. While one proposal commits, the next batch gathers, so under load each
//! entry (one append, one durable commit, one fsync, one forwarded RPC) carries many writes,
//! and a lone write waits for nothing. A batch applies as its commands would one by one, at
//! one index ([`Outcome::Each`] gives each its outcome).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use atoll_cluster::ClusterError;
use atoll_state::{Command, Outcome};
use parking_lot::Mutex;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

type Reply = Result<(Outcome, u64), ClusterError>;

/// Most commands in one batch.
const MAX_COMMANDS: usize = 1024;
/// Most bytes of KV values in one batch (an entry should cross the network in one
/// heartbeat interval); a single larger write still goes, alone.
const MAX_VALUE_BYTES: usize = 512 * 1024;

/// A write waiting in the queue: its commands (a batch of its own is flattened into the
/// group's and gets its slice of outcomes back as [`Outcome::Each`]).
struct Waiting {
    commands: Vec<Command>,
    batched: bool,
    reply: oneshot::Sender<Reply>,
}

/// How a batch is proposed: one command in, its outcome and index out. A proposer that would
/// try again (no leader yet) first asks [`Wanted::still`]: once every caller of the batch has
/// gone away, nothing is sent again, so a write whose client gave up is not applied later.
pub(crate) type Propose =
    Arc<dyn Fn(Command, Wanted) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// Whether anybody still waits for a proposal's outcome.
#[derive(Clone)]
pub(crate) struct Wanted(Arc<Mutex<Vec<oneshot::Sender<Reply>>>>);

impl Wanted {
    /// Whether at least one caller of the batch still waits for it.
    pub(crate) fn still(&self) -> bool {
        self.0.lock().iter().any(|reply| !reply.is_closed())
    }
}

/// One queue of writes and the proposals in flight for it.
pub(crate) struct WriteGroup {
    queue: Mutex<Vec<Waiting>>,
    slots: Arc<Semaphore>,
    propose: Propose,
    /// Whether the write that took a free slot first yields once to the runtime, so that
    /// requests that arrived meanwhile join its batch.
    gather: bool,
}

impl WriteGroup {
    /// A group proposing through `propose`, with at most `in_flight` proposals at once.
    pub(crate) fn new(in_flight: usize, propose: Propose) -> Self {
        WriteGroup {
            queue: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(in_flight)),
            propose,
            gather: false,
        }
    }

    /// The same group, gathering (see `gather`) when `gather` is true.
    pub(crate) fn gathering(mut self, gather: bool) -> Self {
        self.gather = gather;
        self
    }

    /// Writes `command` with whatever else is queued, and returns its own outcome.
    pub(crate) async fn write(&self, command: Command) -> Reply {
        let (reply, mut outcome) = oneshot::channel();
        let (commands, batched) = match command {
            Command::Batch(commands) => (commands, true),
            single => (vec![single], false),
        };
        self.queue.lock().push(Waiting {
            commands,
            batched,
            reply,
        });
        let slot = tokio::select! {
            // Taken by a proposal already under way.
            done = &mut outcome => return done.unwrap_or_else(|_| Err(dropped())),
            slot = self.slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else {
            return Err(ClusterError::Stopped("write group closed".into()));
        };
        if self.gather {
            // tokio polls its I/O driver before running a yielded task again: requests
            // already on their sockets are read and queued first.
            tokio::task::yield_now().await;
        }
        self.start_next(slot);
        outcome.await.unwrap_or_else(|_| Err(dropped()))
    }

    /// Takes what is queued (up to the batch limits) and proposes it in a task of its own;
    /// what the limits left behind waits for the next free slot.
    fn start_next(&self, slot: OwnedSemaphorePermit) {
        let group = {
            let mut queue = self.queue.lock();
            // A write whose caller went away before it was proposed is never proposed.
            queue.retain(|waiting| !waiting.reply.is_closed());
            let mut taken = 0;
            let mut commands = 0;
            let mut bytes = 0;
            for waiting in queue.iter() {
                let size: usize = waiting.commands.iter().map(value_bytes).sum();
                if taken > 0
                    && (commands + waiting.commands.len() > MAX_COMMANDS
                        || bytes + size > MAX_VALUE_BYTES)
                {
                    break;
                }
                taken += 1;
                commands += waiting.commands.len();
                bytes += size;
            }
            queue.drain(..taken).collect::<Vec<_>>()
        };
        if group.is_empty() {
            return;
        }
        let propose = self.propose.clone();
        tokio::spawn(async move {
            let _slot = slot;
            settle(group, propose).await;
        });
    }
}

fn dropped() -> ClusterError {
    ClusterError::Stopped("the proposal of this write was dropped".into())
}

/// The bytes a command adds to an entry beyond its fixed part.
fn value_bytes(command: &Command) -> usize {
    match command {
        Command::KvSet { key, value, .. } => key.len() + value.len(),
        _ => 0,
    }
}

/// Proposes the group and gives each waiting write its outcome.
async fn settle(group: Vec<Waiting>, propose: Propose) {
    let single = group.len() == 1 && !group[0].batched && group[0].commands.len() == 1;
    let mut shapes = Vec::with_capacity(group.len());
    let mut commands = Vec::new();
    let mut replies = Vec::with_capacity(group.len());
    for waiting in group {
        shapes.push((waiting.commands.len(), waiting.batched));
        commands.extend(waiting.commands);
        replies.push(waiting.reply);
    }
    let wanted = Wanted(Arc::new(Mutex::new(replies)));
    let command = match (single, commands.pop()) {
        (true, Some(command)) => command,
        (_, last) => Command::Batch(commands.into_iter().chain(last).collect()),
    };
    let result = propose(command, wanted.clone()).await;
    let replies = std::mem::take(&mut *wanted.0.lock());
    match result {
        Ok((Outcome::Each(outcomes), index)) if !single => {
            let mut outcomes = outcomes.into_iter();
            for ((count, batched), reply) in shapes.into_iter().zip(replies) {
                let mine: Vec<Outcome> = outcomes.by_ref().take(count).collect();
                let outcome = match (batched, <[Outcome; 1]>::try_from(mine)) {
                    (false, Ok([one])) => one,
                    (_, Ok(one)) => Outcome::Each(one.into()),
                    (_, Err(several)) => Outcome::Each(several),
                };
                let _ = reply.send(Ok((outcome, index)));
            }
        }
        // A single write's outcome, or a batch refused whole (only a malformed one is).
        other => {
            for reply in replies {
                let _ = reply.send(other.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn set(key: &str, cas: Option<u64>) -> Command {
        Command::KvSet {
            key: key.into(),
            value: b"v".to_vec(),
            flags: 0,
            cas,
        }
    }

    /// A proposer that applies to a state, counting entries, after a pause that lets
    /// concurrent writes queue up behind the first.
    fn proposer(entries: Arc<AtomicUsize>) -> Propose {
        let state = Arc::new(Mutex::new(atoll_state::State::default()));
        Arc::new(move |command, _| {
            let state = state.clone();
            let entries = entries.clone();
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                let index = entries.fetch_add(1, Ordering::SeqCst) as u64 + 1;
                let (outcome, _) = state.lock().apply(index, &command);
                Ok((outcome, index))
            })
        })
    }

    /// A write through `group` on a task of its own.
    fn spawn_write(group: &Arc<WriteGroup>, command: Command) -> tokio::task::JoinHandle<Reply> {
        let group = group.clone();
        tokio::spawn(async move { group.write(command).await })
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_writes_share_entries_and_each_gets_its_own_outcome() {
        let entries = Arc::new(AtomicUsize::new(0));
        let group = Arc::new(WriteGroup::new(1, proposer(entries.clone())));
        let mut writes = Vec::new();
        for i in 0..50 {
            // Every key twice, create-only: exactly one of each pair succeeds.
            writes.push(spawn_write(&group, set(&format!("k{}", i % 25), Some(0))));
        }
        let mut held = 0;
        for write in writes {
            match write.await.unwrap().unwrap() {
                (Outcome::Condition(true), _) => held += 1,
                (Outcome::Condition(false), _) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(held, 25);
        // The first write went alone; the other 49 queued behind it went together.
        assert_eq!(entries.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_in_a_group_gets_its_slice_of_outcomes() {
        let entries = Arc::new(AtomicUsize::new(0));
        let group = Arc::new(WriteGroup::new(1, proposer(entries.clone())));
        let first = spawn_write(&group, set("a", None));
        tokio::task::yield_now().await;
        let batch = spawn_write(
            &group,
            Command::Batch(vec![set("b", Some(0)), set("b", Some(0))]),
        );
        let single = spawn_write(&group, set("c", Some(0)));
        assert_eq!(first.await.unwrap().unwrap().0, Outcome::Done);
        let (batch, index) = batch.await.unwrap().unwrap();
        assert_eq!(
            batch,
            Outcome::Each(vec![Outcome::Condition(true), Outcome::Condition(false)])
        );
        assert_eq!(
            single.await.unwrap().unwrap(),
            (Outcome::Condition(true), index)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_reaches_every_write_of_the_batch() {
        let failing: Propose = Arc::new(|_, _| Box::pin(async { Err(ClusterError::Timeout) }));
        let group = Arc::new(WriteGroup::new(1, failing));
        let writes: Vec<_> = (0..5)
            .map(|i| spawn_write(&group, set(&format!("k{i}"), None)))
            .collect();
        for write in writes {
            assert_eq!(write.await.unwrap(), Err(ClusterError::Timeout));
        }
    }

    #[test]
    fn batches_stop_at_the_value_budget_but_a_large_write_goes_alone() {
        let big = |key: &str| Command::KvSet {
            key: key.into(),
            value: vec![0; MAX_VALUE_BYTES],
            flags: 0,
            cas: None,
        };
        assert!(value_bytes(&big("a")) > MAX_VALUE_BYTES);
        let group = WriteGroup::new(
            1,
            Arc::new(|_, _| Box::pin(async { Err(ClusterError::Timeout) })),
        );
        let mut callers = Vec::new();
        for key in ["a", "b"] {
            let (reply, caller) = oneshot::channel();
            callers.push(caller);
            group.queue.lock().push(Waiting {
                commands: vec![big(key)],
                batched: false,
                reply,
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let slot = group.slots.clone().acquire_owned().await.unwrap();
            group.start_next(slot);
        });
        assert_eq!(group.queue.lock().len(), 1);
        drop(callers);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_whose_caller_went_away_is_not_proposed_and_not_retried() {
        let entries = Arc::new(AtomicUsize::new(0));
        let group = Arc::new(WriteGroup::new(1, proposer(entries.clone())));
        let first = spawn_write(&group, set("a", None));
        tokio::task::yield_now().await;
        // Queued behind the first proposal, then abandoned by its caller.
        let abandoned = spawn_write(&group, set("b", None));
        tokio::task::yield_now().await;
        abandoned.abort();
        let _ = abandoned.await;
        first.await.unwrap().unwrap();
        let after = spawn_write(&group, set("c", None));
        after.await.unwrap().unwrap();
        // "a" alone, then "c" alone: "b" was dropped from the queue, never proposed.
        assert_eq!(entries.load(Ordering::SeqCst), 2);

        // A proposer that would retry asks first whether anybody still waits.
        let asked = Arc::new(AtomicUsize::new(0));
        let retrying: Propose = {
            let asked = asked.clone();
            Arc::new(move |_, wanted: Wanted| {
                let asked = asked.clone();
                Box::pin(async move {
                    while wanted.still() {
                        asked.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Err(ClusterError::Timeout)
                })
            })
        };
        let group = Arc::new(WriteGroup::new(1, retrying));
        let write = spawn_write(&group, set("d", None));
        tokio::time::sleep(std::time::Duration::from_millis(350)).await;
        write.abort();
        let _ = write.await;
        let before = asked.load(Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert_eq!(
            asked.load(Ordering::SeqCst),
            before,
            "kept retrying for nobody"
        );
    }
}
