//! Bytes read back as the records of the Raft log store (an entry, a vote, a committed or
//! purged log id, a snapshot's metadata), through the same versioned decoder. Arbitrary
//! bytes give an error, never a panic; what decodes encodes back to the same record; a
//! decoded command applies to a catalog, and one refused there changes nothing.
#![no_main]

use std::fmt::Debug;
use std::sync::OnceLock;

use atoll_cluster::Member;
use atoll_raft::TypeConfig;
use atoll_state::snapshot::{decode, encode};
use atoll_state::{Outcome, State};
use libfuzzer_sys::fuzz_target;
use openraft::{Entry, EntryPayload, LogId, SnapshotMeta, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn catalog() -> &'static State {
    static CATALOG: OnceLock<State> = OnceLock::new();
    CATALOG.get_or_init(atoll_fuzz::snapshot_state)
}

/// Decodes `bytes` as a `T`; if that works, the record must survive being stored again.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) -> Option<T> {
    let value: T = decode(bytes).ok()?;
    let encoded = encode(&value).expect("a decoded record encodes");
    let again: T = decode(&encoded).expect("a re-encoded record decodes");
    // A command's float read as NaN (a resource figure) is never equal to itself, so such a
    // record differs from its copy as a value; it must still encode to the same bytes.
    assert!(
        again == value || encode(&again).ok().as_ref() == Some(&encoded),
        "record changed on re-encoding: {value:?} -> {again:?}"
    );
    Some(value)
}

fuzz_target!(|bytes: &[u8]| {
    if let Some(entry) = round_trip::<Entry<TypeConfig>>(bytes) {
        if let EntryPayload::Normal(command) = &entry.payload {
            let mut state = catalog().clone();
            let (outcome, changes) = state.apply(entry.log_id.index, command);
            if matches!(outcome, Outcome::Rejected(_) | Outcome::Condition(false)) {
                assert!(state == *catalog(), "a refused command changed the state");
                assert!(changes.is_empty(), "a refused command reported changes");
            }
        }
    }
    let _ = round_trip::<Vote<u64>>(bytes);
    let _ = round_trip::<Option<LogId<u64>>>(bytes);
    let _ = round_trip::<SnapshotMeta<u64, Member>>(bytes);
});
