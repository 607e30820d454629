//! Keeping the last good version: an object whose new version is refused keeps serving its
//! previous one. It works on the model, which translation builds without side effects, so the
//! refused version costs nothing but a second translation; what serves is compiled once, from
//! the model kept.

use super::status::Statuses;
use crate::store::{Rejection, Store};

/// What is built from a store and lists the objects it could not use.
pub trait Rejects {
    fn rejections_mut(&mut self) -> &mut Vec<Rejection>;
    /// The objects' conditions (status), if it has them.
    fn statuses_mut(&mut self) -> Option<&mut Statuses> {
        None
    }
}

/// Builds `build(&store)`; an object whose new version is rejected while `previous` held another
/// version of it is put back to that version (its rejection kept, with a note), and the result
/// built again, so a mistake never takes working configuration down. Returns the store that was
/// built (the next call's `previous`).
pub fn build_keeping_last_good<M: Rejects>(
    mut store: Store,
    previous: &Store,
    build: impl Fn(&Store) -> M,
) -> (Store, M) {
    let mut built = build(&store);
    let mut kept = vec![];
    for r in built.rejections_mut().iter() {
        if !r.served && !r.name.is_empty() && store.restore_from(previous, &r.kind, &r.namespace, &r.name) {
            kept.push(r.clone());
        }
    }
    if kept.is_empty() {
        return (store, built);
    }
    let mut first = built;
    let mut built = build(&store);
    // the status of a kept object is its refused version's: that is what its author applied
    if let (Some(refused), Some(statuses)) = (first.statuses_mut(), built.statuses_mut()) {
        for r in &kept {
            if let Some(status) = refused.get(&r.kind, &r.namespace, &r.name) {
                *statuses.of(&r.kind, &r.namespace, &r.name) = status.clone();
            }
        }
    }
    let rejections = built.rejections_mut();
    for mut r in kept {
        r.reason.push_str("; the previous version keeps serving until this is fixed");
        rejections.push(r);
    }
    rejections.sort();
    rejections.dedup();
    (store, built)
}
