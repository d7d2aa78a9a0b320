//! Lookups in a header map as the proxy-wasm ABI serializes it (what
//! `proxy_get_header_map_pairs` returns): a little-endian u32 `count`, then `count` pairs of u32
//! key and value sizes, then each key and each value followed by a NUL. The filter reads a
//! request's map once and looks its headers up in place, without copying it apart. The bytes
//! come from the host but are checked as if hostile: every size is checked against the buffer,
//! and a malformed map just finds nothing.

pub struct HeaderPairs(pub Vec<u8>);

impl HeaderPairs {
    /// The value of the first header named `name` (names compared byte for byte: Envoy hands
    /// them over lower-cased).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let bytes = &self.0;
        let word = |at: usize| -> Option<usize> { Some(u32::from_le_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?) as usize) };
        let count = word(0)?;
        let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
        for i in 0..count {
            let key_size = word(4 + i * 8)?;
            let value_size = word(8 + i * 8)?;
            let key = bytes.get(data..data.checked_add(key_size)?)?;
            let value_start = data.checked_add(key_size)?.checked_add(1)?;
            let value_end = value_start.checked_add(value_size)?;
            if key == name.as_bytes() {
                return bytes.get(value_start..value_end);
            }
            data = value_end.checked_add(1)?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// The ABI's serialization (proxy-wasm-cpp-host's `PairsUtil::marshalPairs`).
    fn serialized(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend((k.len() as u32).to_le_bytes());
            out.extend((v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend(k.as_bytes());
            out.push(0);
            out.extend(*v);
            out.push(0);
        }
        out
    }

    #[test]
    fn finds_each_header_and_nothing_else() {
        let map = HeaderPairs(serialized(&[(":method", b"GET"), (":path", b"/users/1?x=1"), ("x-empty", b""), ("x-dup", b"1"), ("x-dup", b"2")]));
        assert_eq!(map.get(":method"), Some(&b"GET"[..]));
        assert_eq!(map.get(":path"), Some(&b"/users/1?x=1"[..]));
        assert_eq!(map.get("x-empty"), Some(&b""[..]));
        assert_eq!(map.get("x-dup"), Some(&b"1"[..]), "the first of repeated headers");
        assert_eq!(map.get(":Method"), None);
        assert_eq!(map.get(":metho"), None);
        assert_eq!(map.get("missing"), None);
    }

    #[test]
    fn values_may_hold_any_byte() {
        let map = HeaderPairs(serialized(&[("x-bin", b"a\0b\xff"), ("after", b"ok")]));
        assert_eq!(map.get("x-bin"), Some(&b"a\0b\xff"[..]));
        assert_eq!(map.get("after"), Some(&b"ok"[..]));
    }

    #[test]
    fn a_malformed_map_finds_nothing() {
        let good = serialized(&[("a", b"1"), ("b", b"22")]);
        assert_eq!(HeaderPairs(Vec::new()).get("a"), None);
        assert_eq!(HeaderPairs(vec![1, 0]).get("a"), None);
        // Every truncation: whatever is still whole may be found, nothing reads past the end.
        for cut in 0..good.len() {
            let map = HeaderPairs(good[..cut].to_vec());
            assert!(map.get("b").is_none_or(|v| v == b"22"), "cut at {cut}");
            let _ = map.get("a");
        }
        // A count or a size beyond the buffer, or one that overflows the arithmetic.
        let mut huge_count = good.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderPairs(huge_count).get("zzz"), None);
        let mut huge_size = good.clone();
        huge_size[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderPairs(huge_size).get("b"), None);
        let mut huge_value = good;
        huge_value[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(HeaderPairs(huge_value.clone()).get("a"), None);
        assert_eq!(HeaderPairs(huge_value).get("b"), None);
    }
}
