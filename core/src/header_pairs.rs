//! A header map as the proxy-wasm ABI hands it over (`proxy_get_header_map_pairs`): one host call
//! returns every header, so the filter reads a request's headers once instead of once per name.
//!
//! Layout, all sizes little-endian `u32`: the pair count `n`; `n` (name size, value size) pairs;
//! then each name and each value in order, every one followed by a NUL byte. The bytes come from
//! the host, so a layout that does not add up is treated as an empty map, never trusted.

use crate::decide::RequestView;

/// A serialized header map, checked once on construction and read without copying.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderPairs<'a> {
    /// The (name size, value size) pairs, 8 bytes each.
    sizes: &'a [u8],
    data: &'a [u8],
}

impl<'a> HeaderPairs<'a> {
    /// Reads `bytes`; a truncated or inconsistent layout gives an empty map.
    pub fn parse(bytes: &'a [u8]) -> Self {
        Self::checked(bytes).unwrap_or_default()
    }

    fn checked(bytes: &'a [u8]) -> Option<Self> {
        let (count, rest) = split_u32(bytes)?;
        let count = usize::try_from(count).ok()?;
        let sizes = rest.get(..count.checked_mul(8)?)?;
        let data = rest.get(sizes.len()..)?;
        let mut needed = 0usize;
        for size in sizes.chunks_exact(4) {
            let size = usize::try_from(split_u32(size)?.0).ok()?;
            needed = needed.checked_add(size)?.checked_add(1)?;
        }
        (needed <= data.len()).then_some(HeaderPairs { sizes, data })
    }

    /// Every (name, value) pair in the order the host gave them.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        let mut data = self.data;
        self.sizes.chunks_exact(8).map_while(move |sizes| {
            let name_size = usize::try_from(split_u32(sizes)?.0).ok()?;
            let value_size = usize::try_from(split_u32(sizes.get(4..)?)?.0).ok()?;
            let name = data.get(..name_size)?;
            data = data.get(name_size.checked_add(1)?..)?;
            let value = data.get(..value_size)?;
            data = data.get(value_size.checked_add(1)?..)?;
            Some((name, value))
        })
    }

    /// The first value of header `name` (ASCII case-insensitive).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        let name = name.as_bytes();
        self.iter()
            .find(|(candidate, _)| candidate.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// Whether header `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

impl RequestView for HeaderPairs<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.get(name)
    }
}

fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*head), rest))
}

/// Serializes pairs in the ABI's layout: what the host does, for tests and fuzzing.
pub fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let size = |len: usize| u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
    bytes.extend(size(pairs.len()));
    for (name, value) in pairs {
        bytes.extend(size(name.len()));
        bytes.extend(size(value.len()));
    }
    for (name, value) in pairs {
        bytes.extend_from_slice(name);
        bytes.push(0);
        bytes.extend_from_slice(value);
        bytes.push(0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAIRS: &[(&[u8], &[u8])] = &[
        (b":authority", b"shop.example"),
        (b"x-user-id", b"alice"),
        (b"cookie", b"a=1; uid=bob"),
        (b"x-empty", b""),
        (b"x-user-id", b"second"),
        (b"x-raw", b"\xff\x00\xfe"),
    ];

    #[test]
    fn reads_what_the_host_serialized() {
        let bytes = serialize(PAIRS);
        let map = HeaderPairs::parse(&bytes);
        assert_eq!(map.iter().collect::<Vec<_>>(), PAIRS);
        assert_eq!(map.get(":authority"), Some(&b"shop.example"[..]));
        assert_eq!(
            map.get("X-User-Id"),
            Some(&b"alice"[..]),
            "first value wins"
        );
        assert_eq!(map.get("x-empty"), Some(&b""[..]));
        assert_eq!(map.get("x-raw"), Some(&b"\xff\x00\xfe"[..]));
        assert_eq!(map.get("x-missing"), None);
        assert!(map.contains("cookie"));
    }

    #[test]
    fn empty_and_malformed_layouts_read_as_empty() {
        let good = serialize(PAIRS);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("no bytes", vec![]),
            ("short count", vec![1, 0]),
            ("zero pairs", serialize(&[])),
            ("count beyond the sizes", {
                let mut bytes = good.clone();
                bytes[0] = 200;
                bytes
            }),
            ("huge count", {
                let mut bytes = good.clone();
                bytes[..4].copy_from_slice(&u32::MAX.to_le_bytes());
                bytes
            }),
            ("size beyond the data", {
                let mut bytes = good.clone();
                bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
                bytes
            }),
            ("truncated data", good[..good.len() - 1].to_vec()),
        ];
        for (case, bytes) in cases {
            let map = HeaderPairs::parse(&bytes);
            assert_eq!(map.iter().count(), 0, "{case}");
            assert_eq!(map.get(":authority"), None, "{case}");
        }
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let mut bytes = serialize(PAIRS);
        bytes.extend_from_slice(b"trailing");
        assert_eq!(HeaderPairs::parse(&bytes).iter().count(), PAIRS.len());
    }
}
