//! Block assignment for several worker pairs (scale-out, issue 16): the
//! leader's coordinator hands an epoch's data blocks to worker pairs on
//! demand, so faster pairs take more, and every block is finished exactly
//! once per epoch. A state machine without I/O: inputs are a worker's
//! request, its report that a block is done, and the loss of a worker;
//! outputs are grants. Leader worker *i* names its granted block to
//! follower worker *i* over their pair's link, so both read the same block.
//!
//! Every grant carries a lease number; a worker reports a block done under
//! its lease, so a report from a worker's earlier life (lost, then back at
//! the same index and granted the same block again) is refused.
//!
//! Determinism: the grants depend only on the epoch's block order (the
//! same seeded shuffle a single pair uses) and on the order of the
//! requests. In synchronous mode the pairs advance in lockstep, so the
//! requests of one step are known together; [`Assigner::grant_in_order`]
//! serves them by worker index, and a run with the same N grants the same
//! blocks to the same workers.
//!
//! A lost worker's block goes back to the front of the queue and is
//! trained again from its start by whoever asks next: exactly once holds
//! for finished blocks; in an asynchronous run the lost worker's partial
//! updates of that block stay applied (in synchronous mode the job resumes
//! from its coordinated checkpoint instead, see docs/scale-out.md).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// An answer to a worker's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Train this block (index in the epoch's order, and its id); report
    /// it done under `lease`.
    Block { index: usize, id: String, lease: u64 },
    /// Nothing to hand out now, but blocks are in flight: one may come
    /// back if its worker is lost. Ask again later.
    Wait,
    /// Every block of the epoch is done.
    EpochDone,
}

/// Refusals: a worker that breaks the protocol, or a bad checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error("worker {worker}: there are only {workers} workers")]
    UnknownWorker { worker: usize, workers: usize },
    #[error("worker {worker} asked for a block while it holds block {holds}")]
    AlreadyHolds { worker: usize, holds: usize },
    #[error("worker {worker} appears twice among one step's requests")]
    DuplicateRequest { worker: usize },
    #[error("worker {worker} reported block {index} (lease {lease}) done, but holds {holds}")]
    NotHeld {
        worker: usize,
        index: usize,
        lease: u64,
        holds: String,
    },
    #[error("assignment state of a checkpoint: {why}")]
    BadState { why: &'static str },
}

/// Where an epoch's assignment stands, for checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AssignState {
    /// Blocks not yet granted, in the order they will be (returned blocks
    /// first).
    pub queue: Vec<usize>,
    /// Worker -> (the block it holds, its lease).
    pub held: BTreeMap<usize, (usize, u64)>,
    /// How many blocks are done.
    pub done: usize,
    /// The next lease number.
    pub next_lease: u64,
}

/// One epoch's assignment of blocks to `workers` worker pairs.
#[derive(Clone, Debug)]
pub struct Assigner {
    order: Vec<String>,
    workers: usize,
    queue: VecDeque<usize>,
    held: BTreeMap<usize, (usize, u64)>,
    done: usize,
    next_lease: u64,
}

impl Assigner {
    /// An epoch over `order` (the block ids, already in the epoch's
    /// order) for `workers` worker pairs.
    pub fn new(order: Vec<String>, workers: usize) -> Self {
        let n = order.len();
        Assigner {
            order,
            workers,
            queue: (0..n).collect(),
            held: BTreeMap::new(),
            done: 0,
            next_lease: 1,
        }
    }

    /// Resumes an epoch from a checkpoint's state (over the same `order`).
    /// Blocks that were held stay with their workers, which resume them at
    /// their recorded positions under their leases.
    pub fn restore(order: Vec<String>, workers: usize, st: &AssignState) -> Result<Self, AssignError> {
        let mut a = Assigner::new(order, workers);
        for &w in st.held.keys() {
            a.check_worker(w)?;
        }
        let n = a.order.len();
        let bad = |why| Err(AssignError::BadState { why });
        if st.done.saturating_add(st.queue.len()).saturating_add(st.held.len()) != n {
            return bad("its done, queued and held blocks do not add up to the epoch's blocks");
        }
        let mut seen = BTreeSet::new();
        for &i in st.queue.iter().chain(st.held.values().map(|(i, _)| i)) {
            if i >= n {
                return bad("a block index past the epoch's blocks");
            }
            if !seen.insert(i) {
                return bad("a block listed twice");
            }
        }
        if st.held.values().any(|&(_, lease)| lease >= st.next_lease) {
            return bad("a lease not yet handed out");
        }
        a.queue = st.queue.iter().copied().collect();
        a.held = st.held.clone();
        a.done = st.done;
        a.next_lease = st.next_lease;
        Ok(a)
    }

    /// The state to checkpoint.
    pub fn state(&self) -> AssignState {
        AssignState {
            queue: self.queue.iter().copied().collect(),
            held: self.held.clone(),
            done: self.done,
            next_lease: self.next_lease,
        }
    }

    fn check_worker(&self, worker: usize) -> Result<(), AssignError> {
        if worker >= self.workers {
            return Err(AssignError::UnknownWorker {
                worker,
                workers: self.workers,
            });
        }
        Ok(())
    }

    fn check_request(&self, worker: usize) -> Result<(), AssignError> {
        self.check_worker(worker)?;
        match self.held.get(&worker) {
            Some(&(holds, _)) => Err(AssignError::AlreadyHolds { worker, holds }),
            None => Ok(()),
        }
    }

    /// A worker asks for its next block.
    pub fn grant(&mut self, worker: usize) -> Result<Grant, AssignError> {
        self.check_request(worker)?;
        if let Some(index) = self.queue.pop_front() {
            let lease = self.next_lease;
            self.next_lease += 1;
            self.held.insert(worker, (index, lease));
            return Ok(Grant::Block {
                index,
                id: self.order[index].clone(),
                lease,
            });
        }
        Ok(if self.epoch_done() {
            Grant::EpochDone
        } else {
            Grant::Wait
        })
    }

    /// Serves the requests of one synchronous step by worker index (so the
    /// grants do not depend on which request arrived first). All or
    /// nothing: every request is checked before any block is granted.
    pub fn grant_in_order(&mut self, workers: &[usize]) -> Result<Vec<(usize, Grant)>, AssignError> {
        let mut sorted = workers.to_vec();
        sorted.sort_unstable();
        for pair in sorted.windows(2) {
            if pair[0] == pair[1] {
                return Err(AssignError::DuplicateRequest { worker: pair[0] });
            }
        }
        for &w in &sorted {
            self.check_request(w)?;
        }
        sorted.into_iter().map(|w| Ok((w, self.grant(w)?))).collect()
    }

    /// A worker has trained block `index`, granted under `lease`, to the
    /// end.
    pub fn finish(&mut self, worker: usize, index: usize, lease: u64) -> Result<(), AssignError> {
        self.check_worker(worker)?;
        match self.held.get(&worker) {
            Some(&held) if held == (index, lease) => {
                self.held.remove(&worker);
                self.done += 1;
                Ok(())
            }
            other => Err(AssignError::NotHeld {
                worker,
                index,
                lease,
                holds: other.map_or("nothing".into(), |(i, l)| format!("block {i} under lease {l}")),
            }),
        }
    }

    /// A worker is gone: its block goes back to the front of the queue.
    /// Returns that block, if it held one.
    pub fn lost(&mut self, worker: usize) -> Option<usize> {
        let (index, _) = self.held.remove(&worker)?;
        self.queue.push_front(index);
        Some(index)
    }

    /// Whether every block of the epoch is done.
    pub fn epoch_done(&self) -> bool {
        self.done == self.order.len()
    }

    /// The block a worker holds, with its lease.
    pub fn held_by(&self, worker: usize) -> Option<(usize, u64)> {
        self.held.get(&worker).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("b{i}")).collect()
    }

    /// The block and lease of a grant.
    fn block(g: Grant) -> (usize, u64) {
        match g {
            Grant::Block { index, lease, .. } => (index, lease),
            other => panic!("expected a block, got {other:?}"),
        }
    }

    #[test]
    fn hands_out_every_block_then_ends_the_epoch() {
        let mut a = Assigner::new(ids(3), 2);
        assert_eq!(
            a.grant(0).unwrap(),
            Grant::Block {
                index: 0,
                id: "b0".into(),
                lease: 1
            }
        );
        let (b1, l1) = block(a.grant(1).unwrap());
        a.finish(1, b1, l1).unwrap();
        let (b2, l2) = block(a.grant(1).unwrap());
        assert_eq!(b2, 2);
        a.finish(1, b2, l2).unwrap();
        // Block 0 is still in flight: the faster worker waits.
        assert_eq!(a.grant(1).unwrap(), Grant::Wait);
        a.finish(0, 0, 1).unwrap();
        assert_eq!(a.grant(1).unwrap(), Grant::EpochDone);
        assert!(a.epoch_done());
    }

    #[test]
    fn a_worker_that_asks_twice_is_refused() {
        let mut a = Assigner::new(ids(3), 2);
        a.grant(0).unwrap();
        assert_eq!(a.grant(0), Err(AssignError::AlreadyHolds { worker: 0, holds: 0 }));
    }

    #[test]
    fn an_unknown_worker_is_refused() {
        let mut a = Assigner::new(ids(3), 2);
        assert_eq!(a.grant(2), Err(AssignError::UnknownWorker { worker: 2, workers: 2 }));
    }

    #[test]
    fn finishing_a_block_not_held_is_refused() {
        let mut a = Assigner::new(ids(3), 2);
        let (b, l) = block(a.grant(0).unwrap());
        assert!(matches!(
            a.finish(0, b + 1, l),
            Err(AssignError::NotHeld { index: 1, .. })
        ));
        assert!(matches!(a.finish(1, b, l), Err(AssignError::NotHeld { worker: 1, .. })));
    }

    #[test]
    fn a_late_report_from_a_lost_workers_earlier_life_is_refused() {
        let mut a = Assigner::new(ids(2), 1);
        let (b, old) = block(a.grant(0).unwrap());
        assert_eq!(a.lost(0), Some(b));
        // Back at the same index, granted the same block again.
        let (again, new) = block(a.grant(0).unwrap());
        assert_eq!(again, b);
        assert!(matches!(a.finish(0, b, old), Err(AssignError::NotHeld { .. })));
        a.finish(0, b, new).unwrap();
    }

    #[test]
    fn a_lost_workers_block_is_handed_out_next() {
        let mut a = Assigner::new(ids(4), 2);
        a.grant(0).unwrap();
        let (b1, l1) = block(a.grant(1).unwrap());
        assert_eq!(a.lost(0), Some(0));
        assert_eq!(a.lost(0), None);
        a.finish(1, b1, l1).unwrap();
        assert_eq!(block(a.grant(1).unwrap()).0, 0);
    }

    #[test]
    fn a_synchronous_step_is_served_by_worker_index() {
        let mut a = Assigner::new(ids(4), 3);
        let g = a.grant_in_order(&[2, 0, 1]).unwrap();
        let got: Vec<(usize, usize)> = g.into_iter().map(|(w, g)| (w, block(g).0)).collect();
        assert_eq!(got, [(0, 0), (1, 1), (2, 2)]);
    }

    #[test]
    fn a_refused_synchronous_step_grants_nothing() {
        let mut a = Assigner::new(ids(4), 3);
        a.grant(2).unwrap();
        let before = a.state();
        assert_eq!(
            a.grant_in_order(&[0, 1, 2]),
            Err(AssignError::AlreadyHolds { worker: 2, holds: 0 })
        );
        assert_eq!(
            a.grant_in_order(&[1, 0, 1]),
            Err(AssignError::DuplicateRequest { worker: 1 })
        );
        assert_eq!(a.state(), before);
    }

    #[test]
    fn state_round_trips_through_a_checkpoint() {
        let mut a = Assigner::new(ids(5), 2);
        a.grant(0).unwrap();
        let (b, l) = block(a.grant(1).unwrap());
        a.finish(1, b, l).unwrap();
        a.grant(1).unwrap();
        let st = a.state();
        let text = serde_json::to_string(&st).unwrap();
        let back: AssignState = serde_json::from_str(&text).unwrap();
        let mut r = Assigner::restore(ids(5), 2, &back).unwrap();
        assert_eq!(r.state(), st);
        assert_eq!((r.held_by(0), r.held_by(1)), (Some((0, 1)), Some((2, 3))));
        r.finish(0, 0, 1).unwrap();
        a.finish(0, 0, 1).unwrap();
        assert_eq!(r.grant(0).unwrap(), a.grant(0).unwrap());
    }

    #[test]
    fn a_checkpoint_naming_an_unknown_worker_is_refused() {
        let st = AssignState {
            held: BTreeMap::from([(7, (0, 1))]),
            done: 1,
            next_lease: 2,
            ..Default::default()
        };
        assert!(matches!(
            Assigner::restore(ids(2), 2, &st),
            Err(AssignError::UnknownWorker { worker: 7, .. })
        ));
    }

    #[test]
    fn a_checkpoint_listing_a_block_twice_is_refused() {
        let st = AssignState {
            queue: vec![1],
            held: BTreeMap::from([(0, (1, 1))]),
            done: 0,
            next_lease: 2,
        };
        assert!(matches!(
            Assigner::restore(ids(2), 2, &st),
            Err(AssignError::BadState { .. })
        ));
    }

    #[test]
    fn a_checkpoint_with_a_block_past_the_epoch_is_refused() {
        let st = AssignState {
            queue: vec![5, 0],
            ..Default::default()
        };
        assert!(matches!(
            Assigner::restore(ids(2), 2, &st),
            Err(AssignError::BadState { .. })
        ));
    }

    #[test]
    fn a_checkpoint_of_another_block_list_is_refused() {
        // Taken over two blocks, restored over three: the third is neither
        // done, queued nor held.
        let st = Assigner::new(ids(2), 1).state();
        assert!(matches!(
            Assigner::restore(ids(3), 1, &st),
            Err(AssignError::BadState { .. })
        ));
    }

    #[test]
    fn a_checkpoint_with_a_lease_from_the_future_is_refused() {
        let st = AssignState {
            queue: vec![1],
            held: BTreeMap::from([(0, (0, 9))]),
            done: 0,
            next_lease: 2,
        };
        assert!(matches!(
            Assigner::restore(ids(2), 1, &st),
            Err(AssignError::BadState { .. })
        ));
    }

    /// One simulated epoch: worker speeds (ticks per block), losses (worker,
    /// tick as a fraction of the expected epoch, ticks away), and a tick at
    /// which the assigner is checkpointed and restored.
    struct Sim {
        a: Assigner,
        busy: Vec<Option<(usize, u64, u32)>>,
        away: Vec<u32>,
        finished: Vec<u32>,
        taken: Vec<usize>,
    }

    impl Sim {
        fn tick(&mut self, blocks: usize, speeds: &[u32]) -> Result<(), proptest::test_runner::TestCaseError> {
            for (w, &speed) in speeds.iter().enumerate() {
                if self.away[w] > 0 {
                    self.away[w] -= 1;
                    continue;
                }
                match self.busy[w] {
                    Some((i, lease, 1)) => {
                        self.a.finish(w, i, lease).unwrap();
                        self.finished[i] += 1;
                        self.busy[w] = None;
                    }
                    Some((i, lease, left)) => self.busy[w] = Some((i, lease, left - 1)),
                    None => {}
                }
                if self.busy[w].is_none()
                    && let Grant::Block { index, lease, .. } = self.a.grant(w).unwrap()
                {
                    proptest::prop_assert!(index < blocks);
                    self.busy[w] = Some((index, lease, speed));
                    self.taken[w] += 1;
                }
                // The assigner agrees with the workers on who holds what.
                proptest::prop_assert_eq!(self.a.held_by(w), self.busy[w].map(|(i, l, _)| (i, l)));
            }
            Ok(())
        }
    }

    proptest::proptest! {
        /// Workers of uneven speeds, some lost for a while (their block
        /// given to whoever asks next) and back, the assigner checkpointed
        /// and restored once: every block is finished exactly once, the
        /// assigner and the workers always agree on who holds what, and
        /// without losses faster workers take more.
        #[test]
        fn every_block_exactly_once_under_uneven_speeds(
            blocks in 1usize..40,
            speeds in proptest::collection::vec(1u32..6, 1..6),
            losses in proptest::collection::vec((0usize..64, 0.0f64..1.0, 1u32..8), 0..4),
            restore_at in 0.0f64..1.0,
        ) {
            let workers = speeds.len();
            let mut sim = Sim {
                a: Assigner::new(ids(blocks), workers),
                busy: vec![None; workers],
                away: vec![0; workers],
                finished: vec![0; blocks],
                taken: vec![0; workers],
            };
            // About how many ticks the epoch takes.
            let rate: f64 = speeds.iter().map(|&s| 1.0 / f64::from(s)).sum();
            let expect = (blocks as f64 / rate).ceil() + 1.0;
            let at = |f: f64| (f * expect) as u32;
            for tick in 0..100_000u32 {
                for &(w, when, gone) in &losses {
                    if at(when) == tick {
                        let w = w % workers;
                        let lost = sim.a.lost(w);
                        proptest::prop_assert_eq!(lost, sim.busy[w].map(|b| b.0));
                        sim.busy[w] = None;
                        sim.away[w] = gone;
                    }
                }
                if at(restore_at) == tick {
                    let st = sim.a.state();
                    sim.a = Assigner::restore(ids(blocks), workers, &st).unwrap();
                    proptest::prop_assert_eq!(sim.a.state(), st);
                }
                sim.tick(blocks, &speeds)?;
                if sim.a.epoch_done() {
                    break;
                }
            }
            proptest::prop_assert!(sim.a.epoch_done());
            proptest::prop_assert!(sim.finished.iter().all(|&f| f == 1), "{:?}", sim.finished);
            for w in 0..workers {
                proptest::prop_assert_eq!(sim.a.grant(w).unwrap(), Grant::EpochDone);
            }
            // Without losses, a strictly faster worker never took fewer
            // blocks than a slower one (give or take the one in flight).
            if losses.is_empty() {
                for x in 0..workers {
                    for y in 0..workers {
                        if speeds[x] < speeds[y] {
                            proptest::prop_assert!(sim.taken[x] + 1 >= sim.taken[y], "{:?} {:?}", speeds, sim.taken);
                        }
                    }
                }
            }
        }
    }
}
