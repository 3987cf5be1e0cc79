//! A byte-bounded least-recently-used cache of decoded tiles, shared by every thread reading
//! one slide.
//!
//! In: decoded RGB8 tiles keyed by (level, [`TileIndex`]). Out: shared references to them.
//! The cache never holds more than its byte budget (a tile larger than the whole budget is
//! simply not kept); eviction drops the least recently used tiles first.
//!
//! [`TileCache::get_or_decode`] also decodes each missing tile once however many threads ask
//! for it at the same moment (neighbouring patches of one batch share tiles): the first
//! decodes, the others wait for its result.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex};

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
    in_flight: Mutex<HashMap<TileKey, Arc<Flight>>>,
}

/// A decode in progress: `None` until it ends, then `Some(tile)` (`Some(None)` when it
/// failed or found no tile; waiters then decode for themselves and get their own error).
#[derive(Default)]
struct Flight {
    result: Mutex<Option<Option<Arc<Vec<u8>>>>>,
    done: Condvar,
}

impl Flight {
    fn finish(&self, tile: Option<Arc<Vec<u8>>>) {
        let mut r = self.result.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            *r = Some(tile);
        }
        self.done.notify_all();
    }

    fn wait(&self) -> Option<Arc<Vec<u8>>> {
        let mut r = self.result.lock().unwrap_or_else(|e| e.into_inner());
        while r.is_none() {
            r = self.done.wait(r).unwrap_or_else(|e| e.into_inner());
        }
        r.clone().flatten()
    }
}

/// Ends a flight however the decode ends (an error, or a panic unwinding through it), so that
/// no waiter waits forever.
struct Landing<'a> {
    cache: &'a TileCache,
    key: TileKey,
    flight: Arc<Flight>,
    tile: Option<Arc<Vec<u8>>>,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.cache
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
        self.flight.finish(self.tile.take());
    }
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
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The tile from the cache, or from `decode` (`Ok(None)`: no tile there), which runs once
    /// for concurrent requests of the same key: later callers wait for the first one's tile.
    /// A decoded tile is cached before anyone else sees it.
    ///
    /// Waiters block their thread. That is safe because `decode` never hands work to the
    /// thread pool its callers run on; a decoder that did (rayon jobs on the same pool) could
    /// have a waiting thread pick up the job for its own tile and wait for itself.
    pub fn get_or_decode<E>(
        &self,
        key: TileKey,
        decode: impl FnOnce() -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Option<Arc<Vec<u8>>>, E> {
        if let Some(tile) = self.get(&key) {
            return Ok(Some(tile));
        }
        let (flight, first) = {
            let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            match f.get(&key) {
                Some(flight) => (flight.clone(), false),
                None => {
                    let flight = Arc::new(Flight::default());
                    f.insert(key, flight.clone());
                    (flight, true)
                }
            }
        };
        if !first {
            if let Some(tile) = flight.wait() {
                return Ok(Some(tile));
            }
            // The first decode failed (or found nothing): decode here, for this caller's own
            // result or error.
            return Ok(decode()?.map(|buf| self.keep(key, buf)));
        }
        let mut landing = Landing {
            cache: self,
            key,
            flight,
            tile: None,
        };
        // Another thread may have cached it between the first look and taking the flight.
        if let Some(tile) = self.get(&key) {
            landing.tile = Some(tile.clone());
            return Ok(Some(tile));
        }
        let tile = decode()?.map(|buf| self.keep(key, buf));
        landing.tile = tile.clone();
        Ok(tile)
    }

    /// Caches a freshly decoded tile and returns it (moved into the Arc, not copied).
    fn keep(&self, key: TileKey, buf: Vec<u8>) -> Arc<Vec<u8>> {
        let tile = Arc::new(buf);
        self.insert(key, tile.clone());
        tile
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

    #[test]
    fn concurrent_requests_for_one_tile_decode_it_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let c = TileCache::new(1 << 20);
        let decodes = AtomicUsize::new(0);
        let barrier = std::sync::Barrier::new(8);
        let tiles: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        c.get_or_decode(key(7), || -> Result<_, ()> {
                            decodes.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(50));
                            Ok(Some(vec![7u8; 64]))
                        })
                        .unwrap()
                        .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(decodes.load(Ordering::SeqCst), 1);
        assert!(tiles
            .iter()
            .all(|t| Arc::ptr_eq(t, &tiles[0]) && t[..] == [7u8; 64]));
        assert!(c.in_flight.lock().unwrap().is_empty());
    }

    #[test]
    fn a_failed_or_panicking_decode_releases_its_waiters() {
        let c = TileCache::new(1 << 20);
        // An error: nothing cached, nothing left in flight, the next caller decodes again.
        let r: Result<_, &str> = c.get_or_decode(key(1), || Err("bad tile"));
        assert_eq!(r.unwrap_err(), "bad tile");
        assert!(c.in_flight.lock().unwrap().is_empty());
        // A panic inside the decode unwinds through the flight and still lands it.
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = c.get_or_decode(key(2), || -> Result<Option<Vec<u8>>, ()> { panic!("boom") });
        }));
        assert!(caught.is_err());
        assert!(c.in_flight.lock().unwrap().is_empty());
        let t = c.get_or_decode(key(2), || -> Result<_, ()> { Ok(Some(vec![2u8; 4])) });
        assert_eq!(t.unwrap().unwrap()[..], [2u8; 4]);
        // A missing tile (no bytes) is not cached and not an error.
        let none = c.get_or_decode(key(3), || -> Result<_, ()> { Ok(None) });
        assert!(none.unwrap().is_none());
    }
}
