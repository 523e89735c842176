//! Connection limits: a cap on open connections in all, and one per source address, so that one
//! client (an anonymous one, holding connections open with a request every few seconds) cannot
//! take every slot. A connection holds its [`Slot`] until it closes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Open connections per source address.
type OpenByAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

pub struct Limits {
    total: Arc<Semaphore>,
    /// 0: no cap per address.
    per_address: usize,
    open: OpenByAddress,
}

/// One open connection's place under both caps.
pub struct Slot {
    _total: OwnedSemaphorePermit,
    address: Option<(OpenByAddress, IpAddr)>,
}

impl Limits {
    pub fn new(total: usize, per_address: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total)),
            per_address,
            open: Arc::default(),
        }
    }

    /// Waits for room under the total cap (before accepting: excess connections wait in the
    /// kernel's backlog instead of being accepted and refused).
    pub async fn room(&self) -> Option<OwnedSemaphorePermit> {
        self.total.clone().acquire_owned().await.ok()
    }

    /// The slot of a connection from `peer`, or `None` when that address holds its share.
    pub fn admit(&self, total: OwnedSemaphorePermit, peer: IpAddr) -> Option<Slot> {
        if self.per_address == 0 {
            return Some(Slot {
                _total: total,
                address: None,
            });
        }
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(peer).or_insert(0);
        if *count >= self.per_address {
            return None;
        }
        *count += 1;
        Some(Slot {
            _total: total,
            address: Some((self.open.clone(), peer)),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((open, peer)) = &self.address {
            let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = open.get_mut(peer) {
                *count -= 1;
                if *count == 0 {
                    open.remove(peer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_gets_its_share_and_no_more_and_a_closed_connection_frees_it() {
        let limits = Limits::new(10, 2);
        let (a, b) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );
        let first = limits
            .admit(limits.room().await.expect("room"), a)
            .expect("first");
        let _second = limits
            .admit(limits.room().await.expect("room"), a)
            .expect("second");
        assert!(
            limits
                .admit(limits.room().await.expect("room"), a)
                .is_none()
        );
        assert!(
            limits
                .admit(limits.room().await.expect("room"), b)
                .is_some(),
            "another address"
        );
        drop(first);
        assert!(
            limits
                .admit(limits.room().await.expect("room"), a)
                .is_some()
        );
        // Only `_second` holds room now: refused and dropped ones gave theirs back.
        assert_eq!(limits.total.available_permits(), 10 - 1);
    }
}
