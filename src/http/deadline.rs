//! Deadlines that cost no timer-wheel work per request.
//!
//! Every request arms two deadlines that almost never fire: hyper's header-read timeout, armed
//! while a connection waits for the next request's head, and the upstream response timeout. A
//! tokio `Sleep` per deadline enters the runtime's timer wheel when first polled and leaves it
//! when dropped; with hyper's boxing that was about 1,600 instructions per request, 3 % of the
//! proxy's. Here a deadline is an entry in its thread's list: arming one is a lock and a slab
//! insert, dropping one a lock and a removal. One task per thread sleeps until the earliest entry
//! and wakes those that are due; it wakes about once per timeout period, not per request.
//!
//! Time is tokio's ([`tokio::time::Instant`]), so tests with a paused clock see deadlines fire
//! when the clock is advanced, as with `tokio::time::sleep`.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;
use tokio::sync::Notify;
use tokio::time::Instant;

/// One thread's deadlines and the task that serves them.
struct List {
    state: Mutex<State>,
    /// Wakes the task when an entry earlier than the instant it sleeps until arrives.
    earlier: Notify,
    /// Cleared when the task ends (its runtime shut down): the thread then starts a new list.
    served: AtomicBool,
}

struct State {
    entries: Slab<Entry>,
    /// When the task wakes next; `None` while it waits for an entry.
    wakes_at: Option<Instant>,
}

struct Entry {
    at: Instant,
    /// Taken when the task wakes it; the owner removes the entry.
    waker: Option<Waker>,
}

impl List {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the slab consistent: carry on.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes that an entry is due at `at`, waking the task if it sleeps past that.
    fn armed(&self, state: &mut State, at: Instant) {
        if state.wakes_at.is_none_or(|wakes_at| at < wakes_at) {
            state.wakes_at = Some(at);
            self.earlier.notify_one();
        }
    }
}

thread_local! {
    static LIST: RefCell<Option<Arc<List>>> = const { RefCell::new(None) };
}

/// This thread's list, with its task started on the current runtime if none serves it.
fn list() -> Arc<List> {
    LIST.with(|list| {
        let mut list = list.borrow_mut();
        if let Some(current) = &*list
            && current.served.load(Ordering::Acquire)
        {
            return current.clone();
        }
        let fresh = Arc::new(List {
            state: Mutex::new(State {
                entries: Slab::new(),
                wakes_at: None,
            }),
            earlier: Notify::new(),
            served: AtomicBool::new(true),
        });
        tokio::spawn(serve(fresh.clone()));
        *list = Some(fresh.clone());
        fresh
    })
}

/// Clears `served` when the task ends, however it ends.
struct Served(Arc<List>);

impl Drop for Served {
    fn drop(&mut self) {
        self.0.served.store(false, Ordering::Release);
    }
}

/// The task: wakes every entry that is due, then sleeps until the earliest one left (or until an
/// earlier one arrives).
async fn serve(list: Arc<List>) {
    let _served = Served(list.clone());
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    loop {
        // Created before the scan: an entry armed after it still wakes this loop.
        let earlier = list.earlier.notified();
        tokio::pin!(earlier);
        earlier.as_mut().enable();
        let next = {
            let mut state = list.state();
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for (_, entry) in state.entries.iter_mut() {
                if entry.at <= now {
                    if let Some(waker) = entry.waker.take() {
                        waker.wake();
                    }
                } else {
                    next = Some(next.map_or(entry.at, |next| next.min(entry.at)));
                }
            }
            state.wakes_at = next;
            next
        };
        match next {
            Some(at) => {
                sleep.as_mut().reset(at);
                tokio::select! {
                    () = sleep.as_mut() => {}
                    () = earlier => {}
                }
            }
            None => earlier.await,
        }
    }
}

/// A future that completes at a given instant, like [`tokio::time::sleep_until`]. Must first be
/// polled inside a tokio runtime.
pub struct Deadline {
    at: Instant,
    /// The list and key of this deadline's entry, once polled before it was due.
    entry: Option<(Arc<List>, usize)>,
}

impl Deadline {
    pub fn at(at: Instant) -> Deadline {
        Deadline { at, entry: None }
    }

    pub fn after(duration: Duration) -> Deadline {
        Deadline::at(Instant::now() + duration)
    }

    /// Moves the deadline to `at`.
    pub fn reset(&mut self, at: Instant) {
        self.at = at;
        if let Some((list, key)) = &self.entry {
            let mut state = list.state();
            if let Some(entry) = state.entries.get_mut(*key) {
                entry.at = at;
            }
            list.armed(&mut state, at);
        }
    }

    fn release(&mut self) {
        if let Some((list, key)) = self.entry.take() {
            list.state().entries.try_remove(key);
        }
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.at {
            this.release();
            return Poll::Ready(());
        }
        match &this.entry {
            Some((list, key)) => {
                let mut state = list.state();
                if let Some(entry) = state.entries.get_mut(*key) {
                    match &entry.waker {
                        Some(waker) if waker.will_wake(cx.waker()) => {}
                        _ => entry.waker = Some(cx.waker().clone()),
                    }
                }
            }
            None => {
                let list = list();
                let key = {
                    let mut state = list.state();
                    let key = state.entries.insert(Entry {
                        at: this.at,
                        waker: Some(cx.waker().clone()),
                    });
                    list.armed(&mut state, this.at);
                    key
                };
                this.entry = Some((list, key));
            }
        }
        Poll::Pending
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.release();
    }
}

impl hyper::rt::Sleep for Deadline {}

/// hyper's timer (the server's header-read timeout) on [`Deadline`]s.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineTimer;

impl hyper::rt::Timer for DeadlineTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::after(duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Deadline::at(Instant::from_std(deadline)))
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<Deadline>() {
            Some(deadline) => deadline.get_mut().reset(Instant::from_std(new_deadline)),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `future` once, returning whether it completed.
    fn ready(future: Pin<&mut (impl Future<Output = ()> + ?Sized)>) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        future.poll(&mut cx).is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_completes_at_its_instant_and_not_before() {
        let start = Instant::now();
        Deadline::after(Duration::from_secs(30)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
        // Already due: at once.
        Deadline::at(start).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_armed_later_is_not_kept_waiting() {
        let start = Instant::now();
        let late = tokio::spawn(Deadline::after(Duration::from_secs(60)));
        tokio::task::yield_now().await;
        Deadline::after(Duration::from_secs(5)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        late.await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_deadlines_leave_no_entry_and_others_still_fire() {
        let start = Instant::now();
        for _ in 0..1000 {
            let mut deadline = std::pin::pin!(Deadline::after(Duration::from_secs(1)));
            assert!(!ready(deadline.as_mut()));
        }
        assert_eq!(list().state().entries.len(), 0);
        let mut moved = Deadline::after(Duration::from_secs(90));
        moved.reset(start + Duration::from_secs(2));
        moved.await;
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        assert_eq!(list().state().entries.len(), 0);
    }

    #[test]
    fn a_new_runtime_on_the_same_thread_gets_a_new_task() {
        for _ in 0..2 {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async {
                let start = Instant::now();
                Deadline::after(Duration::from_secs(3)).await;
                assert_eq!(Instant::now() - start, Duration::from_secs(3));
            });
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hyper_timer_sleeps_and_resets() {
        use hyper::rt::Timer;
        let timer = DeadlineTimer;
        let start = Instant::now();
        let mut sleep = timer.sleep_until(timer.now() + Duration::from_secs(100));
        assert!(!ready(sleep.as_mut()));
        timer.reset(&mut sleep, timer.now() + Duration::from_secs(7));
        sleep.await;
        assert_eq!(Instant::now() - start, Duration::from_secs(7));
    }
}
