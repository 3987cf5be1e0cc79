//! A byte-bounded least-recently-used cache of decoded tiles, shared by every thread reading
//! one slide.
//!
//! In: decoded RGB8 tiles keyed by (level, [`TileIndex`]). Out: shared references to them.
//! The cache never holds more than its byte budget (a tile larger than the whole budget is
//! simply not kept); eviction drops the least recently used tiles first.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::geom::TileIndex;

/// Cache key: level index and tile position.
pub type TileKey = (usize, TileIndex);

struct State {
    map: HashMap<TileKey, (Arc<Vec<u8>>, u64)>,
    order: BTreeMap<u64, TileKey>,
    bytes: u64,
    tick: u64,
}

/// The tile cache.
pub struct TileCache {
    capacity: u64,
    state: Mutex<State>,
}

impl TileCache {
    /// A cache holding at most `capacity` bytes of tiles.
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            state: Mutex::new(State {
                map: HashMap::new(),
                order: BTreeMap::new(),
                bytes: 0,
                tick: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way that
        // matters for a cache, so a poisoned lock is recovered.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tile, if cached; marks it as recently used.
    pub fn get(&self, key: &TileKey) -> Option<Arc<Vec<u8>>> {
        let mut s = self.lock();
        s.tick += 1;
        let tick = s.tick;
        let (tile, old) = {
            let entry = s.map.get_mut(key)?;
            let old = entry.1;
            entry.1 = tick;
            (entry.0.clone(), old)
        };
        s.order.remove(&old);
        s.order.insert(tick, *key);
        Some(tile)
    }

    /// Stores a tile, evicting the least recently used ones to stay within the budget.
    pub fn insert(&self, key: TileKey, tile: Arc<Vec<u8>>) {
        let size = tile.len() as u64;
        if size > self.capacity {
            return;
        }
        let mut s = self.lock();
        s.tick += 1;
        let tick = s.tick;
        if let Some((old, old_tick)) = s.map.insert(key, (tile, tick)) {
            s.bytes -= old.len() as u64;
            s.order.remove(&old_tick);
        }
        s.order.insert(tick, key);
        s.bytes += size;
        while s.bytes > self.capacity {
            let Some((_, victim)) = s.order.pop_first() else {
                break;
            };
            if let Some((t, _)) = s.map.remove(&victim) {
                s.bytes -= t.len() as u64;
            }
        }
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> TileKey {
        (0, TileIndex { col: i, row: 0 })
    }

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let c = TileCache::new(300);
        for i in 0..3 {
            c.insert(key(i), vec![i as u8; 100].into());
        }
        assert_eq!(c.bytes(), 300);
        assert!(c.get(&key(0)).is_some()); // 0 is now the most recent
        c.insert(key(3), vec![3; 100].into()); // evicts 1
        assert!(c.get(&key(1)).is_none());
        assert!(c.get(&key(0)).is_some() && c.get(&key(2)).is_some() && c.get(&key(3)).is_some());
        assert_eq!(c.bytes(), 300);
        c.insert(key(9), vec![9; 301].into()); // larger than the budget: not kept
        assert!(c.get(&key(9)).is_none());
        c.insert(key(2), vec![2; 50].into()); // replacing updates the byte count
        assert_eq!(c.bytes(), 250);
    }
}
