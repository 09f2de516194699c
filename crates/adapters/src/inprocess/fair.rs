//! Fair dispatch of the in-process orchestrator's export slots. Each tenant scope waits in a
//! FIFO of its own; a free slot goes to the waiting scope served longest ago (a newcomer first)
//! among those running fewer than their `max_running`: round-robin between the scopes with
//! work. So one tenant's backlog never stands in front of another tenant's export, and no
//! tenant holds more than its `max_running` slots while others could use them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use domain::{QuotaBook, Scope};
use tokio::sync::oneshot;

/// The slots of one orchestrator.
pub(crate) struct FairSlots {
    state: Mutex<State>,
    quotas: Arc<QuotaBook>,
}

#[derive(Default)]
struct State {
    free: usize,
    running: HashMap<Scope, usize>,
    /// Only non-empty FIFOs.
    waiting: HashMap<Scope, VecDeque<oneshot::Sender<Slot>>>,
    /// When each scope with work was last granted a slot (`clock` ticks); the turn order.
    served: HashMap<Scope, u64>,
    clock: u64,
}

/// One held slot; dropping it frees the slot for the next in turn.
pub(crate) struct Slot {
    slots: Arc<FairSlots>,
    scope: Scope,
    /// False for a slot that was never handed over (its grant is undone under the lock).
    armed: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.slots.lock();
            state.release(&self.scope);
            self.slots.dispatch(&mut state);
        }
    }
}

impl State {
    fn release(&mut self, scope: &Scope) {
        self.free += 1;
        if let Some(running) = self.running.get_mut(scope) {
            *running -= 1;
            if *running == 0 {
                self.running.remove(scope);
                if !self.waiting.contains_key(scope) {
                    self.served.remove(scope);
                }
            }
        }
    }
}

impl FairSlots {
    pub(crate) fn new(capacity: usize, quotas: Arc<QuotaBook>) -> Arc<Self> {
        let state = State { free: capacity.max(1), ..State::default() };
        Arc::new(Self { state: Mutex::new(state), quotas })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a slot for an export of `scope`. Cancel-safe: a waiter dropped before its turn
    /// takes nothing, and a slot granted to a dropped waiter is freed again.
    pub(crate) async fn acquire(self: &Arc<Self>, scope: &Scope) -> Slot {
        loop {
            let turn = {
                let (tx, rx) = oneshot::channel();
                let mut state = self.lock();
                state.waiting.entry(scope.clone()).or_default().push_back(tx);
                self.dispatch(&mut state);
                rx
            };
            // A sender is only dropped unsent when its receiver is gone, so this always gets
            // its slot; if it ever did not, waiting again is the safe answer.
            if let Ok(slot) = turn.await {
                return slot;
            }
        }
    }

    /// Hands free slots to waiters: each to the scope served longest ago among those under
    /// their `max_running`.
    fn dispatch(self: &Arc<Self>, state: &mut State) {
        while state.free > 0 {
            let next = state
                .waiting
                .keys()
                .filter(|scope| {
                    let limit = self.quotas.for_scope(scope).max_running.max(1) as usize;
                    state.running.get(*scope).copied().unwrap_or(0) < limit
                })
                .min_by_key(|scope| (state.served.get(*scope).copied().unwrap_or(0), *scope))
                .cloned();
            let Some(scope) = next else { return };
            let Some(fifo) = state.waiting.get_mut(&scope) else { return };
            let waiter = fifo.pop_front();
            if fifo.is_empty() {
                state.waiting.remove(&scope);
            }
            let Some(waiter) = waiter else { continue };
            state.free -= 1;
            *state.running.entry(scope.clone()).or_default() += 1;
            let slot = Slot { slots: Arc::clone(self), scope: scope.clone(), armed: true };
            if let Err(mut unsent) = waiter.send(slot) {
                // Its waiter gave up: undo the grant here, under the lock we hold.
                unsent.armed = false;
                state.release(&unsent.scope);
                continue;
            }
            state.clock += 1;
            let clock = state.clock;
            state.served.insert(scope, clock);
        }
    }

    /// Exports of `scope` holding a slot now.
    #[cfg(test)]
    fn running(&self, scope: &Scope) -> usize {
        self.lock().running.get(scope).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use domain::TenantQuotas;

    use super::*;

    fn scope(raw: &str) -> Scope {
        Scope::parse(raw).unwrap()
    }

    fn slots(capacity: usize, max_running: u32) -> Arc<FairSlots> {
        let quotas = QuotaBook::uniform(TenantQuotas { max_running, ..TenantQuotas::default() });
        FairSlots::new(capacity, Arc::new(quotas))
    }

    /// Acquires on a task and reports the order slots were granted in.
    fn spawn_waiter(
        slots: &Arc<FairSlots>,
        scope: Scope,
        order: &Arc<Mutex<Vec<String>>>,
        hold: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let (slots, order) = (Arc::clone(slots), Arc::clone(order));
        tokio::spawn(async move {
            let _slot = slots.acquire(&scope).await;
            order.lock().unwrap().push(scope.to_string());
            tokio::time::sleep(hold).await;
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_with_a_backlog_does_not_go_before_a_newcomer() {
        let slots = slots(1, 1);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..5 {
            tasks.push(spawn_waiter(&slots, scope("a/p"), &order, Duration::from_secs(1)));
            tokio::task::yield_now().await;
        }
        tasks.push(spawn_waiter(&slots, scope("b/p"), &order, Duration::from_secs(1)));
        for task in tasks {
            task.await.unwrap();
        }
        // A's first was running; B is next in the ring, before A's other four.
        assert_eq!(order.lock().unwrap()[..2], ["a/p", "b/p"]);
    }

    #[tokio::test(start_paused = true)]
    async fn one_scope_never_holds_more_than_its_max_running() {
        let slots = slots(4, 2);
        let a = scope("a/p");
        let (first, second) = (slots.acquire(&a).await, slots.acquire(&a).await);
        let third = tokio::time::timeout(Duration::from_secs(1), slots.acquire(&a)).await;
        assert!(third.is_err(), "a third slot of a/p must wait");
        assert_eq!(slots.running(&a), 2);
        // Another scope still finds the free slots.
        let _b = tokio::time::timeout(Duration::from_secs(1), slots.acquire(&scope("b/p"))).await.unwrap();
        drop(first);
        let _third = tokio::time::timeout(Duration::from_secs(1), slots.acquire(&a)).await.unwrap();
        drop(second);
        assert_eq!(slots.running(&a), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_takes_no_slot() {
        let slots = slots(1, 1);
        let held = slots.acquire(&scope("a/p")).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(10), slots.acquire(&scope("b/p"))).await;
        assert!(gave_up.is_err());
        drop(held);
        let next = tokio::time::timeout(Duration::from_secs(1), slots.acquire(&scope("c/p"))).await;
        assert!(next.is_ok(), "the slot went to a waiter that was gone");
        assert_eq!(slots.lock().free, 0);
        drop(next);
        assert_eq!(slots.lock().free, 1);
    }
}
