//! `max_connections`: a cap on the connections open to one target, and the queue of requests
//! waiting for one of them, first come first served.
//!
//! Every connection of a capped target holds a [`Slot`] for as long as it is open: in use,
//! idle in the pool, or kept for a client connection. A request that finds no idle connection
//! and no free slot waits; the next connection to come back to the pool is handed to it, or
//! the slot of the next one to close. Connections kept for one client's requests
//! (`reuse_after_body = "same_client"`) would otherwise hold their slots while that client is
//! quiet: a waiting request closes one of them and takes its slot.
//!
//! Locks: `Limit::state`, then `Pool::idle`, then `Owner::kept`. A connection is never
//! dropped while one of them is held, because dropping its slot takes `Limit::state`.

use super::{Conn, ConnectError, Idle, Owner, Pool};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::oneshot;

pub struct Limit {
    max: usize,
    /// How long a request waits for a connection (`queue_timeout`).
    wait: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Connections open or being opened: slots given out.
    open: usize,
    /// Requests waiting, oldest first; a sender whose request gave up is skipped.
    waiters: VecDeque<oneshot::Sender<Room>>,
    /// Client connections that may hold idle connections of this target kept for them.
    keepers: Vec<Weak<Owner>>,
}

/// What a waiting request gets: an idle connection, or a slot to open a new one with.
pub enum Room {
    Idle(Conn),
    New(Slot),
}

/// One of a capped target's connections, counted while it is open.
pub struct Slot {
    limit: Option<Arc<Limit>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(limit) = self.limit.take() {
            limit.free();
        }
    }
}

impl Room {
    /// The connection of a room that could not be handed over; a slot is given back
    /// without freeing it, since the caller still counts it.
    fn take_back(self) -> Option<Conn> {
        match self {
            Room::Idle(conn) => Some(conn),
            Room::New(mut slot) => {
                slot.limit = None;
                None
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Limit {
    pub fn new(max: usize, wait: Duration) -> Arc<Limit> {
        Arc::new(Limit {
            max,
            wait,
            state: Mutex::default(),
        })
    }

    /// An idle connection of `pool` or a slot for a new one, waiting at most `wait` for
    /// one of them in turn.
    pub async fn room(self: &Arc<Self>, pool: &Pool) -> Result<Room, ConnectError> {
        let receiver = match self.now_or_wait(pool) {
            Ok(room) => return Ok(room),
            Err(receiver) => receiver,
        };
        match tokio::time::timeout(self.wait, receiver).await {
            Ok(Ok(room)) => Ok(room),
            _ => Err(ConnectError::Busy {
                max: self.max,
                waited: self.wait,
            }),
        }
    }

    fn now_or_wait(self: &Arc<Self>, pool: &Pool) -> Result<Room, oneshot::Receiver<Room>> {
        if let Some(room) = self.now(pool, None) {
            return Ok(room);
        }
        if let Some(slot) = self.reclaim(pool) {
            return Ok(Room::New(slot));
        }
        let (sender, receiver) = oneshot::channel();
        match self.now(pool, Some(sender)) {
            Some(room) => Ok(room),
            None => Err(receiver),
        }
    }

    /// A slot while fewer than `max` connections are open, else an idle connection; when
    /// there is neither, `waiter` joins the queue.
    fn now(self: &Arc<Self>, pool: &Pool, waiter: Option<oneshot::Sender<Room>>) -> Option<Room> {
        // Declared before the lock, so that stale connections close after it is released.
        let mut stale: Vec<Idle> = Vec::new();
        let mut state = lock(&self.state);
        if state.open < self.max {
            state.open += 1;
            return Some(Room::New(Slot {
                limit: Some(self.clone()),
            }));
        }
        if let Some(conn) = pool.take_shared(&mut stale) {
            return Some(Room::Idle(conn));
        }
        state.waiters.extend(waiter);
        None
    }

    /// The slot of an idle connection kept for some client connection, closed for it.
    /// Client connections found keeping none are dropped from the list.
    fn reclaim(&self, pool: &Pool) -> Option<Slot> {
        let keepers = lock(&self.state).keepers.clone();
        let mut empty = HashSet::new();
        let mut slot = None;
        for keeper in keepers {
            let conn = keeper.upgrade().and_then(|owner| owner.give_up(pool));
            match conn {
                Some(mut conn) => {
                    tracing::debug!(upstream = %pool.upstream, address = %pool.address, "closed a connection kept for a quiet client: a request waits for one under max_connections");
                    slot = conn.slot.take();
                    break;
                }
                None => {
                    empty.insert(keeper.as_ptr());
                }
            }
        }
        if !empty.is_empty() {
            let mut state = lock(&self.state);
            state
                .keepers
                .retain(|known| !empty.contains(&known.as_ptr()));
        }
        slot
    }

    /// Closes every idle connection kept for a client connection (the pool is going).
    pub fn close_kept(&self, pool: &Pool) {
        let keepers = lock(&self.state).keepers.clone();
        for owner in keepers.iter().filter_map(Weak::upgrade) {
            while owner.give_up(pool).is_some() {}
        }
    }

    /// A slot is free: it goes to the oldest waiting request, if any.
    fn free(self: &Arc<Self>) {
        let mut state = lock(&self.state);
        while let Some(waiter) = state.waiters.pop_front() {
            let slot = Slot {
                limit: Some(self.clone()),
            };
            match waiter.send(Room::New(slot)) {
                Ok(()) => return,
                Err(room) => {
                    room.take_back();
                }
            }
        }
        state.open -= 1;
    }

    /// Hands a connection that came back to the oldest waiting request, or else to `idle`
    /// (called under the lock, so that no request starts waiting meanwhile). Returns the
    /// connection if neither took it, to be closed by the caller.
    pub fn offer(&self, conn: Conn, idle: impl FnOnce(Conn) -> Option<Conn>) -> Option<Conn> {
        let mut state = lock(&self.state);
        let mut conn = conn;
        while let Some(waiter) = state.waiters.pop_front() {
            match waiter.send(Room::Idle(conn)) {
                Ok(()) => return None,
                Err(room) => conn = room.take_back()?,
            }
        }
        idle(conn)
    }

    /// Whether a request would get a connection at once: fewer than `max` are open, or
    /// one is idle in `pool`.
    pub fn has_room(&self, pool: &Pool) -> bool {
        let state = lock(&self.state);
        state.open < self.max || pool.has_idle()
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        let state = lock(&self.state);
        state.waiters.iter().filter(|w| !w.is_closed()).count()
    }

    /// Whether a request is waiting; a connection kept for a client then closes instead,
    /// to give it its slot.
    pub fn has_waiters(&self) -> bool {
        let mut state = lock(&self.state);
        state.waiters.retain(|waiter| !waiter.is_closed());
        !state.waiters.is_empty()
    }

    /// `owner` keeps an idle connection of this target.
    pub fn add_keeper(&self, owner: &Weak<Owner>) {
        let mut state = lock(&self.state);
        if state.keepers.iter().any(|known| known.ptr_eq(owner)) {
            return;
        }
        // Each keeper holds at least one slot while it matters, so the list stays near
        // `max` once the gone ones are dropped.
        if state.keepers.len() >= 2 * self.max {
            state.keepers.retain(|known| known.strong_count() > 0);
        }
        state.keepers.push(owner.clone());
    }
}
