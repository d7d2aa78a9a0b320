//! Cardinality budgets shared by every Wasm VM of a sidecar. Envoy runs one VM per worker
//! thread, and a budget (at most N values of a label, at most N series of a metric) must hold for
//! the sidecar as a whole, so its state lives in a key-value store all the VMs see — Envoy's
//! shared data in the filter ([`SharedStore`] over proxy-wasm), a map in the tests — updated by
//! compare-and-swap.
//!
//! A budget `scope` keeps one key per admitted member (`metricpact.{scope}.member.{member}`) and
//! a little-endian u32 count (`metricpact.{scope}.count`).
//!
//! Two limits of the ABI, both erring towards more series, never towards a refused request:
//! - A CAS token of 0 means "write unconditionally", and a key that does not exist yet has no
//!   other token, so the first write of a count cannot be conditional: a VM that read "absent"
//!   overwrites whatever other VMs added since (a test shows it). This can happen only while the
//!   count is being created, once per scope; the additions lost then are admitted members the
//!   count does not know, so the budget is exceeded by that many.
//! - Two VMs admitting the same new member at the same instant both find no member key and both
//!   count it: the budget then fills one place early.

/// The store refused the read (shared data unavailable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// What a conditional write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Stored,
    /// Someone wrote the key since the token was read.
    CasMismatch,
    Failed,
}

/// A key-value store with compare-and-swap, shared by every VM of the sidecar.
pub trait SharedStore {
    /// The value at `key` (`None` when absent) and its CAS token (0 when absent).
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), Unavailable>;
    /// Writes `value` if the key's token is still `cas`; a `cas` of 0 writes unconditionally.
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> SetOutcome;
}

/// What adding to a count did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The count holds the sum now.
    Stored,
    /// The addition would have taken it above the limit: unchanged.
    Full,
    /// The store refused the read or the write, or the count kept changing under us.
    Unavailable,
}

/// How often [`add`] retries a write another VM got in before: beyond that the store is treated
/// as unavailable (and the budget fails open) rather than spinning in a request.
pub const CAS_ATTEMPTS: usize = 16;

/// Adds `delta` to the u32 count at `key` by compare-and-swap, unless the result would exceed
/// `max`; a missing count is 0, and the result never goes below 0 nor above `u32::MAX`.
pub fn add(store: &mut dyn SharedStore, key: &str, delta: i64, max: u32) -> Added {
    for _ in 0..CAS_ATTEMPTS {
        let (count, cas) = match store.get(key) {
            Ok((data, cas)) => (data.and_then(|d| <[u8; 4]>::try_from(d.as_slice()).ok()).map_or(0, u32::from_le_bytes), cas),
            Err(Unavailable) => return Added::Unavailable,
        };
        let next = (i64::from(count) + delta).clamp(0, i64::from(u32::MAX)) as u32;
        if delta > 0 && next > max {
            return Added::Full;
        }
        match store.set(key, &next.to_le_bytes(), cas) {
            SetOutcome::Stored => return Added::Stored,
            SetOutcome::CasMismatch => continue,
            SetOutcome::Failed => return Added::Unavailable,
        }
    }
    Added::Unavailable
}

/// Admits `member` into the budget `scope` of at most `max` members: a member admitted before
/// (by any VM) is admitted again without counting; a new one takes a place if one is left. When
/// the store is unavailable the budget fails open: a request is never refused for it.
pub fn admit(store: &mut dyn SharedStore, scope: &str, member: &str, max: u32) -> bool {
    let member_key = format!("metricpact.{scope}.member.{member}");
    if let Ok((Some(_), _)) = store.get(&member_key) {
        return true;
    }
    match add(store, &format!("metricpact.{scope}.count"), 1, max) {
        Added::Stored => {
            store.set(&member_key, b"1", 0);
            true
        }
        Added::Full => false,
        Added::Unavailable => true,
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    use super::*;

    /// Envoy's shared data as proxy-wasm-cpp-host implements it (src/shared_data.cc): one token
    /// counter for the whole store, starting at 1 and never 0; `set` with a non-zero token that
    /// is not the key's current one is a CasMismatch, a token of 0 always writes.
    #[derive(Default)]
    struct Store {
        entries: HashMap<String, (Vec<u8>, u32)>,
        next_cas: u32,
        down: bool,
    }

    impl Store {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), Unavailable> {
            if self.down {
                return Err(Unavailable);
            }
            Ok(self.entries.get(key).map_or((None, 0), |(v, cas)| (Some(v.clone()), *cas)))
        }

        fn set(&mut self, key: &str, value: &[u8], cas: u32) -> SetOutcome {
            if self.down {
                return SetOutcome::Failed;
            }
            if cas != 0 && self.entries.get(key).is_some_and(|(_, current)| *current != cas) {
                return SetOutcome::CasMismatch;
            }
            self.next_cas = self.next_cas.wrapping_add(1).max(1);
            self.entries.insert(key.to_string(), (value.to_vec(), self.next_cas));
            SetOutcome::Stored
        }

        fn count(&self, key: &str) -> u32 {
            self.entries.get(key).map_or(0, |(v, _)| u32::from_le_bytes(v.as_slice().try_into().unwrap()))
        }
    }

    /// What another VM does to the store between this VM's read and its write.
    type Rival = Box<dyn FnMut(&mut Store)>;

    /// One VM's view of a store shared with others. `rival` runs between this VM's read and its
    /// write, as another worker would: the contention a CAS loop exists for.
    struct Vm {
        store: Rc<RefCell<Store>>,
        rival: Option<Rival>,
        rival_runs: usize,
    }

    impl Vm {
        fn new(store: &Rc<RefCell<Store>>) -> Vm {
            Vm { store: store.clone(), rival: None, rival_runs: 0 }
        }
    }

    impl SharedStore for Vm {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), Unavailable> {
            self.store.borrow().get(key)
        }

        fn set(&mut self, key: &str, value: &[u8], cas: u32) -> SetOutcome {
            if let Some(rival) = self.rival.as_mut() {
                self.rival_runs += 1;
                rival(&mut self.store.borrow_mut());
            }
            self.store.borrow_mut().set(key, value, cas)
        }
    }

    const COUNT: &str = "metricpact.s.count";

    #[test]
    fn a_count_stops_at_its_limit() {
        let store = Rc::new(RefCell::new(Store::default()));
        let mut vm = Vm::new(&store);
        assert_eq!(add(&mut vm, COUNT, 1, 2), Added::Stored);
        assert_eq!(add(&mut vm, COUNT, 1, 2), Added::Stored);
        assert_eq!(add(&mut vm, COUNT, 1, 2), Added::Full);
        assert_eq!(store.borrow().count(COUNT), 2);
        // Removals are never refused and never go below 0.
        assert_eq!(add(&mut vm, COUNT, -5, 2), Added::Stored);
        assert_eq!(store.borrow().count(COUNT), 0);
    }

    #[test]
    fn a_write_another_vm_got_in_before_is_retried_on_the_new_count() {
        let store = Rc::new(RefCell::new(Store::default()));
        Vm::new(&store).set(COUNT, &5u32.to_le_bytes(), 0);
        let mut vm = Vm::new(&store);
        // Three times another VM adds 1 between this VM's read and its write.
        let mut left = 3;
        vm.rival = Some(Box::new(move |s: &mut Store| {
            if left > 0 {
                left -= 1;
                let (v, cas) = s.get(COUNT).unwrap();
                let n = u32::from_le_bytes(v.unwrap().as_slice().try_into().unwrap());
                assert_eq!(s.set(COUNT, &(n + 1).to_le_bytes(), cas), SetOutcome::Stored);
            }
        }));
        assert_eq!(add(&mut vm, COUNT, 1, 100), Added::Stored);
        assert_eq!(vm.rival_runs, 4, "three mismatches, then the write");
        assert_eq!(store.borrow().count(COUNT), 5 + 3 + 1, "no addition lost");
    }

    #[test]
    fn the_limit_is_judged_on_the_count_another_vm_left() {
        let store = Rc::new(RefCell::new(Store::default()));
        Vm::new(&store).set(COUNT, &9u32.to_le_bytes(), 0);
        let mut vm = Vm::new(&store);
        // Another VM takes the last place between this VM's read (9 of 10) and its write.
        let mut once = true;
        vm.rival = Some(Box::new(move |s: &mut Store| {
            if std::mem::take(&mut once) {
                let (_, cas) = s.get(COUNT).unwrap();
                s.set(COUNT, &10u32.to_le_bytes(), cas);
            }
        }));
        assert_eq!(add(&mut vm, COUNT, 1, 10), Added::Full);
        assert_eq!(store.borrow().count(COUNT), 10);
    }

    #[test]
    fn a_count_that_keeps_changing_gives_up_and_fails_open() {
        let store = Rc::new(RefCell::new(Store::default()));
        Vm::new(&store).set(COUNT, &0u32.to_le_bytes(), 0);
        let mut vm = Vm::new(&store);
        vm.rival = Some(Box::new(|s: &mut Store| {
            let (v, cas) = s.get(COUNT).unwrap();
            s.set(COUNT, &v.unwrap(), cas);
        }));
        assert_eq!(add(&mut vm, COUNT, 1, 100), Added::Unavailable);
        assert_eq!(vm.rival_runs, CAS_ATTEMPTS);
        assert!(admit(&mut vm, "s", "a", 100), "an unavailable budget admits");
    }

    #[test]
    fn members_are_counted_once_across_vms() {
        let store = Rc::new(RefCell::new(Store::default()));
        let (mut a, mut b) = (Vm::new(&store), Vm::new(&store));
        assert!(admit(&mut a, "s", "/users", 2));
        assert!(admit(&mut b, "s", "/users", 2), "admitted by another VM: admitted again");
        assert!(admit(&mut b, "s", "/orders", 2));
        assert!(!admit(&mut a, "s", "/carts", 2), "full");
        assert!(admit(&mut a, "s", "/orders", 2), "known members stay admitted when full");
        assert_eq!(store.borrow().count(COUNT), 2);
        assert!(store.borrow().entries.contains_key("metricpact.s.member./users"));
        assert!(!store.borrow().entries.contains_key("metricpact.s.member./carts"));
    }

    #[test]
    fn an_unavailable_store_fails_open() {
        let store = Rc::new(RefCell::new(Store { down: true, ..Store::default() }));
        let mut vm = Vm::new(&store);
        assert_eq!(add(&mut vm, COUNT, 1, 0), Added::Unavailable);
        assert!(admit(&mut vm, "s", "x", 0));
    }

    #[test]
    fn creating_a_count_is_not_atomic_under_the_abi() {
        // The limit the module doc states: another VM creates the count between this VM's read
        // (absent, token 0) and its write, which token 0 makes unconditional.
        let store = Rc::new(RefCell::new(Store::default()));
        let mut vm = Vm::new(&store);
        let mut once = true;
        vm.rival = Some(Box::new(move |s: &mut Store| {
            if std::mem::take(&mut once) {
                s.set(COUNT, &1u32.to_le_bytes(), 0);
            }
        }));
        assert_eq!(add(&mut vm, COUNT, 1, 10), Added::Stored);
        assert_eq!(store.borrow().count(COUNT), 1, "two additions, one counted");
        // Once the count exists every write is conditional: the same race loses nothing.
        let mut other = Vm::new(&store);
        let mut once = true;
        other.rival = Some(Box::new(move |s: &mut Store| {
            if std::mem::take(&mut once) {
                let (_, cas) = s.get(COUNT).unwrap();
                s.set(COUNT, &2u32.to_le_bytes(), cas);
            }
        }));
        assert_eq!(add(&mut other, COUNT, 1, 10), Added::Stored);
        assert_eq!(other.rival_runs, 2, "one mismatch, then the write");
        assert_eq!(store.borrow().count(COUNT), 3);
    }
}
