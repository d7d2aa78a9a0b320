//! Label values: sanitizing untrusted bytes so they cannot break Istio's name encoding
//! (`name=.=value;.;`), and interning them per label under a cardinality cap.

use std::collections::HashMap;

use crate::names::OTHER;

/// Id of the empty value (the label is absent in Prometheus terms).
pub const EMPTY_ID: u32 = 0;
/// Id of `_OTHER`.
pub const OTHER_ID: u32 = 1;

/// Makes `raw` safe to splice into an encoded stat name and print as a label value.
///
/// Keeps printable ASCII except `;` and `=` (the encoding's separators), `"` and `\` (quoting),
/// and replaces every other byte (controls, newlines, non-ASCII) with `_`; cuts at `max_len`.
/// Returns the input unchanged, without allocating, when nothing needs replacing.
pub fn sanitize(raw: &[u8], max_len: usize) -> std::borrow::Cow<'_, str> {
    let raw = &raw[..raw.len().min(max_len)];
    if raw.iter().all(|&b| is_safe(b)) {
        // All bytes are ASCII, so this cannot fail.
        if let Ok(s) = std::str::from_utf8(raw) {
            return std::borrow::Cow::Borrowed(s);
        }
    }
    std::borrow::Cow::Owned(
        raw.iter()
            .map(|&b| if is_safe(b) { b as char } else { '_' })
            .collect(),
    )
}

/// [`sanitize`] for a value that is text already (every value the engine resolves): the common
/// case, nothing to replace, is one scan and no UTF-8 validation.
pub fn sanitize_str(raw: &str, max_len: usize) -> std::borrow::Cow<'_, str> {
    let cut = raw.len().min(max_len);
    if raw.as_bytes()[..cut].iter().all(|&b| is_safe(b)) {
        // Safe bytes are ASCII, so `cut` is a char boundary.
        return std::borrow::Cow::Borrowed(&raw[..cut]);
    }
    sanitize(raw.as_bytes(), max_len)
}

fn is_safe(b: u8) -> bool {
    SAFE[b as usize]
}

/// [`sanitize`]'s rule as a table: every value of every request is scanned with it.
static SAFE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0x21;
    while b <= 0x7e {
        table[b] = !matches!(b as u8, b';' | b'=' | b'"' | b'\\');
        b += 1;
    }
    table
};

/// Outcome of interning one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interned {
    pub id: u32,
    /// The value was replaced by `_OTHER` because the label's budget or allow-list refused it.
    pub overflowed: bool,
}

/// An Fx-style word-at-a-time mix: fast, and weak against chosen inputs, so only for keys we
/// assign (series keys) or where a collision costs a cache miss and nothing else (the memo).
pub(crate) fn fast_mix(mut state: u64, bytes: &[u8]) -> u64 {
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        state = (state.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    state
}

/// Slots of a table's memo (a power of two).
const MEMO_SLOTS: usize = 64;

/// A value's memo slot: the top bits of the mix, which depend on every input bit (the low bits
/// of a multiply depend only on the low bits of its input: `200` and `204` would share a slot).
fn memo_slot(value: &str) -> usize {
    (fast_mix(value.len() as u64, value.as_bytes()) >> (64 - MEMO_SLOTS.trailing_zeros())) as usize
}
const MEMO_EMPTY: u32 = u32::MAX;

/// The distinct values one label has taken, capped at `max_values` (plus the empty value and
/// `_OTHER`, which are always present and do not count).
#[derive(Debug)]
pub struct ValueTable {
    /// Keyed (SipHash): values come from requests, and a chosen-collision flood must not turn
    /// every lookup into a scan of the table.
    ids: HashMap<Box<str>, u32>,
    /// A direct-mapped cache of recent lookups in front of `ids`, by a fast unkeyed hash: the
    /// per-request path asks for the same few values again and again, and SipHash was the
    /// largest single cost of a request in the core. A slot holds an id whose value is compared
    /// in full before use, so a collision (chosen or not) only sends the lookup on to `ids`.
    memo: [u32; MEMO_SLOTS],
    values: Vec<Box<str>>,
    max_values: usize,
    /// Values the contract fixed (not counted against `max_values`).
    fixed: usize,
    /// With an allow-list, only these values are ever admitted.
    closed: bool,
}

impl ValueTable {
    pub fn new(max_values: u32, allowed: Option<&[String]>) -> ValueTable {
        let mut table = ValueTable {
            ids: HashMap::new(),
            memo: [MEMO_EMPTY; MEMO_SLOTS],
            values: Vec::new(),
            max_values: max_values as usize,
            fixed: 0,
            closed: false,
        };
        table.insert("");
        table.insert(OTHER);
        if let Some(allowed) = allowed {
            for value in allowed {
                table.insert(value);
            }
            table.closed = true;
        }
        table
    }

    fn insert(&mut self, value: &str) -> u32 {
        if let Some(&id) = self.ids.get(value) {
            return id;
        }
        let id = self.values.len() as u32;
        self.values.push(value.into());
        self.ids.insert(value.into(), id);
        id
    }

    /// Number of values traffic has added (excluding the empty value, `_OTHER` and fixed values).
    pub fn admitted(&self) -> usize {
        self.values.len() - 2 - self.fixed
    }

    /// Id for an already sanitized value, admitting it if the budget allows.
    pub fn intern(&mut self, value: &str) -> Interned {
        self.intern_with(value, |_| true)
    }

    /// Like [`intern`](Self::intern), but a value new to this table is admitted only if `admit`
    /// agrees too: the budget is shared by every Wasm VM of the process, and `admit` asks it.
    pub fn intern_with(&mut self, value: &str, admit: impl FnOnce(&str) -> bool) -> Interned {
        let slot = memo_slot(value);
        let cached = self.memo[slot];
        if cached != MEMO_EMPTY && *self.values[cached as usize] == *value {
            return Interned { id: cached, overflowed: false };
        }
        if let Some(&id) = self.ids.get(value) {
            self.memo[slot] = id;
            return Interned { id, overflowed: false };
        }
        if self.closed || self.admitted() >= self.max_values || !admit(value) {
            return Interned { id: OTHER_ID, overflowed: true };
        }
        let id = self.insert(value);
        self.memo[slot] = id;
        Interned { id, overflowed: false }
    }

    /// Admits a value the contract itself fixed (a route template, a known method) regardless of
    /// the budget: the contract, not traffic, decided it exists.
    pub fn intern_fixed(&mut self, value: &str) -> u32 {
        let before = self.values.len();
        let id = self.insert(value);
        self.fixed += self.values.len() - before;
        id
    }

    pub fn value(&self, id: u32) -> &str {
        self.values.get(id as usize).map_or("", |v| v)
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn sanitize_keeps_ordinary_values_borrowed() {
        let v = sanitize(b"/users/{id}", 64);
        assert!(matches!(v, std::borrow::Cow::Borrowed(_)));
        assert_eq!(v, "/users/{id}");
    }

    #[test]
    fn sanitize_neutralizes_encoding_separators() {
        let v = sanitize(b"a;.;k8s_pod_name=.=evil", 64);
        assert_eq!(v, "a_._k8s_pod_name_._evil");
        assert!(!v.contains(";.;") && !v.contains("=.="));
    }

    #[test]
    fn sanitize_replaces_quotes_controls_and_non_ascii() {
        assert_eq!(sanitize(b"x\"y\\z\n\r\t \x00", 64), "x_y_z_____");
        assert_eq!(sanitize("é".as_bytes(), 64), "__");
    }

    #[test]
    fn sanitize_cuts_at_the_limit() {
        assert_eq!(sanitize(b"abcdef", 3), "abc");
    }

    #[test]
    fn short_values_spread_over_the_memo() {
        // The values of a request's labels are short: they must not pile into a few slots.
        let values = ["GET", "POST", "PUT", "PATCH", "DELETE", "200", "201", "204", "404", "500", "503", "1.1", "2", "http", "https"];
        let slots: std::collections::HashSet<_> = values.iter().map(|v| memo_slot(v)).collect();
        assert!(slots.len() >= 12, "{} slots for {} values", slots.len(), values.len());
    }

    #[test]
    fn values_sharing_a_memo_slot_keep_their_ids() {
        // Find values that collide in the memo, then alternate between them: every lookup must
        // still give each value its own id, and a refused value must not take a cached id.
        let first = "v0".to_string();
        let twins: Vec<String> = (1..100_000).map(|i| format!("v{i}")).filter(|v| memo_slot(v) == memo_slot(&first)).take(2).collect();
        assert_eq!(twins.len(), 2);
        let mut t = ValueTable::new(2, None);
        let a = t.intern(&first).id;
        let b = t.intern(&twins[0]).id;
        assert_ne!(a, b);
        for _ in 0..3 {
            assert_eq!(t.intern(&first), Interned { id: a, overflowed: false });
            assert_eq!(t.intern(&twins[0]), Interned { id: b, overflowed: false });
            assert_eq!(t.intern(&twins[1]), Interned { id: OTHER_ID, overflowed: true }, "over the budget of 2");
        }
        assert_eq!((t.value(a), t.value(b)), (first.as_str(), twins[0].as_str()));
    }

    #[test]
    fn safe_bytes_are_printable_ascii_but_the_separators_and_quoting() {
        for b in 0..=255u8 {
            let expected = (0x21..=0x7e).contains(&b) && !matches!(b, b';' | b'=' | b'"' | b'\\');
            assert_eq!(is_safe(b), expected, "byte {b:#04x}");
        }
    }

    #[test]
    fn sanitize_str_agrees_with_sanitize() {
        for (raw, max) in [("/users/{id}", 64), ("a;.;b=.=c", 64), ("abcdef", 3), ("é/x", 1), ("xé", 2), ("tab\there", 5), ("", 4)] {
            assert_eq!(sanitize_str(raw, max), sanitize(raw.as_bytes(), max), "{raw:?} cut at {max}");
        }
        assert!(matches!(sanitize_str("/users/{id}", 64), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn intern_caps_distinct_values() {
        let mut t = ValueTable::new(2, None);
        assert_eq!(t.intern("a"), Interned { id: 2, overflowed: false });
        assert_eq!(t.intern("b"), Interned { id: 3, overflowed: false });
        assert_eq!(t.intern("c"), Interned { id: OTHER_ID, overflowed: true });
        assert_eq!(t.intern("a"), Interned { id: 2, overflowed: false });
        assert_eq!(t.intern(""), Interned { id: EMPTY_ID, overflowed: false });
        assert_eq!(t.value(3), "b");
        assert_eq!(t.value(OTHER_ID), "_OTHER");
    }

    #[test]
    fn allow_list_refuses_everything_else() {
        let allowed = vec!["gold".to_string(), "silver".to_string()];
        let mut t = ValueTable::new(100, Some(&allowed));
        assert!(!t.intern("gold").overflowed);
        assert_eq!(t.intern("bronze"), Interned { id: OTHER_ID, overflowed: true });
    }

    #[test]
    fn fixed_values_bypass_the_budget() {
        let mut t = ValueTable::new(0, None);
        let id = t.intern_fixed("/users/{id}");
        assert_eq!(t.intern("/users/{id}"), Interned { id, overflowed: false });
        assert!(t.intern("/x").overflowed);
        assert_eq!(t.admitted(), 0);
    }

    #[test]
    fn a_refused_admission_overflows_and_is_not_remembered() {
        let mut t = ValueTable::new(10, None);
        assert_eq!(t.intern_with("x", |_| false), Interned { id: OTHER_ID, overflowed: true });
        assert_eq!(t.intern_with("x", |_| true), Interned { id: 2, overflowed: false });
        // Known values never ask again.
        assert_eq!(t.intern_with("x", |_| unreachable!()), Interned { id: 2, overflowed: false });
    }
}
