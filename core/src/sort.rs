//! One small sort for the whole crate: a heapsort.
//!
//! The standard library's `sort`/`sort_unstable` (and `BTreeMap`'s `collect`, which sorts) bring
//! several kilobytes of code per element type into the filter's .wasm; the list sorted here (the
//! allow-list) is read once per config, where O(n log n) without allocation is all it needs.

/// Sorts `v` so that no element is `less` than the one before it. Not stable: elements that
/// compare equal may be reordered.
pub(crate) fn sort_by<T>(v: &mut [T], mut less: impl FnMut(&T, &T) -> bool) {
    let len = v.len();
    for node in (0..len / 2).rev() {
        sift_down(v, node, &mut less);
    }
    for end in (1..len).rev() {
        v.swap(0, end);
        if let Some(heap) = v.get_mut(..end) {
            sift_down(heap, 0, &mut less);
        }
    }
}

/// Moves `v[node]` down the max-heap `v` until both its children are not greater.
fn sift_down<T>(v: &mut [T], mut node: usize, less: &mut impl FnMut(&T, &T) -> bool) {
    loop {
        let mut child = 2 * node + 1;
        let (Some(left), right) = (v.get(child), v.get(child + 1)) else {
            return;
        };
        if right.is_some_and(|right| less(left, right)) {
            child += 1;
        }
        match (v.get(node), v.get(child)) {
            (Some(parent), Some(larger)) if less(parent, larger) => v.swap(node, child),
            _ => return,
        }
        node = child;
    }
}

#[cfg(test)]
mod tests {
    use super::sort_by;

    #[test]
    fn sorts_like_the_standard_library() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..200 {
            let mut v: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 16) as u8
                })
                .collect();
            let mut want = v.clone();
            want.sort_unstable();
            sort_by(&mut v, |a, b| a < b);
            assert_eq!(v, want);
        }
    }

    #[test]
    fn sorts_byte_strings_lexicographically() {
        let mut v: Vec<Vec<u8>> = ["bob", "alice", "", "bo", "bob", "zed"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        sort_by(&mut v, |a, b| a < b);
        assert_eq!(v, [&b""[..], b"alice", b"bo", b"bob", b"bob", b"zed"]);
    }
}
