//! A drain for lock-free readers: a reader marks itself in flight for a
//! short section ([`enter`]), and a writer that has just taken something
//! away from readers (an unmapped area, a detached table) waits with
//! [`wait`] until every section that was in flight when it started has
//! ended. A quiescent-state scheme in the style of RCU, reduced to what the
//! access copy fast path needs.
//!
//! **Why not the read lock.** The copy of [`crate::access::Access::rw`]
//! used to run under two read locks (the access's and the IO page table's),
//! four locked read-modify-writes on shared cache lines for an 8-byte copy,
//! most of its cost. A section here costs one store to the thread's own
//! cache line and one fence; no cache line is shared between readers.
//!
//! **How.** Every thread that enters a section owns a slot: a sequence
//! number, odd while the thread is inside a section. [`enter`] makes it odd
//! and then issues a `SeqCst` fence before the section reads anything
//! shared; leaving makes it even again with a `Release` store. [`wait`]
//! issues a `SeqCst` fence, then reads every slot and, for each odd one,
//! waits until it changes.
//!
//! **Why it drains.** A writer first makes the old state unreachable for
//! new sections (it removes the area and moves the table's generation, or
//! clears the access's table pointer), then calls [`wait`]. Take a reader
//! whose section reads that state: its slot store, fence, shared load
//! against the writer's store, fence, slot load. By the fences' total
//! order either the reader's load sees the writer's store (the reader does
//! not use the old state) or the writer's slot load sees the odd sequence
//! (the writer waits for the section to end, and the `Release`/`Acquire`
//! pair makes everything the section did happen before the writer goes
//! on). A section that starts later sees the new state. The writer waits
//! only for sections already in flight, each one copy long: a stream of
//! new sections cannot starve it, since each changes the sequence.
//!
//! **Rules.** A section never blocks on a lock that a waiter may hold
//! while it waits (sections here only look up and copy, and take at most
//! the leaf lock of the access write log; waiters hold no such lock), and
//! [`wait`] is never called inside a section (it would wait for itself).
//! Sections do not nest: [`enter`] inside a section returns a guard that
//! does nothing.
//!
//! **Fork.** A child keeps the parent's slots; a thread that was inside a
//! section when another forked does not exist in the child, so its slot
//! stays odd there and a [`wait`] in the child would wait for it forever.
//! Under the preload no thread is in a section at a fork (sections run
//! inside the shim's hooks, which its `pthread_atfork` prepare handler
//! waits for). A Rust program that forks while other threads copy by IOVA
//! must, as POSIX asks of any multi-threaded fork, only exec in the child.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicU64, Ordering};

use parking_lot::Mutex;

/// One thread's sequence, alone on its cache lines (128 bytes: adjacent-line
/// prefetch pairs 64-byte lines) so that readers share no line.
#[repr(align(128))]
struct Slot {
    seq: AtomicU64,
}

/// Every slot ever handed out (scanned by [`wait`]), and those free for a
/// new thread (a thread's slot is returned when it exits). Slots are leaked
/// on purpose: there are at most as many as threads ever alive at once.
struct Registry {
    all: Vec<&'static Slot>,
    free: Vec<&'static Slot>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    all: Vec::new(),
    free: Vec::new(),
});

/// The calling thread's slot, taken on its first section.
struct Local {
    slot: Cell<Option<&'static Slot>>,
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(s) = self.slot.take() {
            // even here: a guard cannot outlive the thread's sections
            REGISTRY.lock().free.push(s);
        }
    }
}

thread_local! {
    static LOCAL: Local = const { Local { slot: Cell::new(None) } };
}

#[cold]
#[inline(never)]
fn register() -> &'static Slot {
    let mut r = REGISTRY.lock();
    if let Some(s) = r.free.pop() {
        return s;
    }
    let s: &'static Slot = Box::leak(Box::new(Slot {
        seq: AtomicU64::new(0),
    }));
    r.all.push(s);
    s
}

/// A section in flight (see the module docs); it ends when dropped. Tied
/// to its thread.
pub(crate) struct Guard {
    /// The slot to make even again; `None` for a nested guard.
    slot: Option<&'static Slot>,
    _not_send: PhantomData<*const ()>,
}

impl Guard {
    /// Whether this guard opened the section (not a nested one).
    #[cfg(test)]
    pub(crate) fn is_outer(&self) -> bool {
        self.slot.is_some()
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        if let Some(s) = self.slot {
            // Only the owning thread writes its slot: a plain increment.
            // Release: what the section read and wrote happens before a
            // waiter that sees the new value.
            s.seq
                .store(s.seq.load(Ordering::Relaxed) + 1, Ordering::Release);
        }
    }
}

/// Start a section: until the guard is dropped, a [`wait`] that begins
/// after this returns waits for it. `None` only while the thread is being
/// torn down (its thread-local storage is gone): take the locked path then.
#[inline]
pub(crate) fn enter() -> Option<Guard> {
    LOCAL
        .try_with(|l| {
            let s = match l.slot.get() {
                Some(s) => s,
                None => {
                    let s = register();
                    l.slot.set(Some(s));
                    s
                }
            };
            let seq = s.seq.load(Ordering::Relaxed);
            if seq & 1 == 1 {
                // nested: the outer guard ends the section
                return Guard {
                    slot: None,
                    _not_send: PhantomData,
                };
            }
            s.seq.store(seq + 1, Ordering::Relaxed);
            // Orders the odd sequence before every shared load of the
            // section (see the module docs).
            fence(Ordering::SeqCst);
            Guard {
                slot: Some(s),
                _not_send: PhantomData,
            }
        })
        .ok()
}

/// Whether the calling thread is inside a section.
fn in_section() -> bool {
    LOCAL
        .try_with(|l| {
            l.slot
                .get()
                .is_some_and(|s| s.seq.load(Ordering::Relaxed) & 1 == 1)
        })
        .unwrap_or(false)
}

/// Wait until every section in flight when this was called has ended.
/// Call it after making the old state unreachable; never inside a section
/// (it would wait for itself: a panic in debug builds).
pub(crate) fn wait() {
    debug_assert!(!in_section(), "drain::wait inside a section");
    // Orders the caller's stores (the state it took away) before the slot
    // loads below (see the module docs).
    fence(Ordering::SeqCst);
    let r = REGISTRY.lock();
    for s in &r.all {
        let seq = s.seq.load(Ordering::Acquire);
        if seq & 1 == 0 {
            continue;
        }
        let mut spins = 0u32;
        while s.seq.load(Ordering::Acquire) == seq {
            if spins < 128 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                // a section descheduled mid-copy, or a long copy
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn nested_sections_end_with_the_outer_guard() {
        let g = enter().unwrap();
        assert!(g.is_outer());
        assert!(in_section());
        let inner = enter().unwrap();
        assert!(!inner.is_outer());
        drop(inner);
        assert!(in_section());
        drop(g);
        assert!(!in_section());
        // nothing in flight: returns at once
        wait();
    }

    #[test]
    fn wait_waits_for_a_section_in_flight() {
        let inside = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let t = {
            let (inside, done) = (inside.clone(), done.clone());
            std::thread::spawn(move || {
                let g = enter().unwrap();
                inside.store(true, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(50));
                done.store(true, Ordering::SeqCst);
                drop(g);
            })
        };
        while !inside.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        wait();
        assert!(done.load(Ordering::SeqCst), "wait returned mid-section");
        t.join().unwrap();
    }

    #[test]
    fn slots_of_exited_threads_are_reused() {
        std::thread::spawn(|| drop(enter())).join().unwrap();
        let before = REGISTRY.lock().all.len();
        std::thread::spawn(|| drop(enter())).join().unwrap();
        // another test's thread may have registered meanwhile, but this
        // thread's slot came from the free list when one was there
        assert!(REGISTRY.lock().all.len() <= before + 1);
    }
}
