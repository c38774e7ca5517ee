//! Helpers shared by the unit tests of the sub-states (test builds only).

use core::fmt::Debug;
use core::hash::{Hash, Hasher};
use std::hash::DefaultHasher;

/// The hash of `value` with a fixed hasher.
pub(crate) fn hash_of(value: &impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// `a` and `b` (which differ in `what`) compare unequal and hash differently:
/// the field counts for the explorer's recognition of states.
#[track_caller]
pub(crate) fn assert_differs<T: PartialEq + Hash + Debug>(a: &T, b: &T, what: &str) {
    assert_ne!(a, b, "{what} must count for equality");
    assert_ne!(hash_of(a), hash_of(b), "{what} must count for hashing");
}

/// `a` and `b` compare equal and hash the same.
#[track_caller]
pub(crate) fn assert_same<T: PartialEq + Hash + Debug>(a: &T, b: &T, what: &str) {
    assert_eq!(a, b, "{what}");
    assert_eq!(
        hash_of(a),
        hash_of(b),
        "{what}: equal values must hash the same"
    );
}

/// A named change to a value of type `T`, for tables of one-field variants.
pub(crate) type Change<T> = (&'static str, fn(&mut T));
