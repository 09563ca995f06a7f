//! When a workspace may free the buffers it outgrew, apart from the device calls that do it (so that a test
//! checks the order without a GPU).
//!
//! A workspace allocates and frees on its loss's own stream (cudarc frees with `cuMemFreeAsync` there), while
//! the kernels that use the buffers run on the stream of each call, often another one (the C ABI's losses live
//! on the legacy default stream, PyTorch's calls come on its current stream, a non-blocking side stream in
//! many training loops). Without ordering, a call that grows the workspace frees memory a kernel of an
//! earlier call may still be using. So, before the old buffers are freed, the own stream waits for the work
//! queued so far on the growing call's stream: the raw layer's contract ("order calls on different streams")
//! puts every earlier call's work before that stream's queued work, and that stream is the one the caller has
//! just handed over, so it is alive. Dropping the workspace cannot count on the last call's stream being
//! alive, so it waits for the whole context instead (loss objects are dropped rarely; the C ABI synchronises
//! the context before it drops one anyway).

use crate::error::Result;

/// A stream's identity: its `CUstream` handle as an integer (0: the legacy default stream).
pub(crate) type StreamId = usize;

/// Which of a workspace's two buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// f32 words, uninitialised (kernels write before they read).
    Floats,
    /// u32 counters, zeroed.
    Counters,
}

/// The device operations growth needs.
pub(crate) trait Memory {
    type Buffer;
    /// The stream buffers are allocated and freed on.
    fn own_stream(&self) -> StreamId;
    /// A buffer of `len` words of `kind` on the own stream, and its device address.
    fn alloc(&mut self, kind: Kind, len: usize) -> Result<(Self::Buffer, u64)>;
    /// Makes the own stream's later work (the frees) wait for the work queued so far on `stream`.
    fn order_after(&mut self, stream: StreamId) -> Result<()>;
    /// Waits for every stream of the context (before the frees of a drop, when no live stream is known).
    fn synchronize_all(&mut self) -> Result<()>;
    /// Makes freshly allocated (and zeroed) buffers usable from any stream of the context.
    fn publish(&mut self) -> Result<()>;
    /// Frees `buffer` on the own stream, after the work queued there so far.
    fn free(&mut self, buffer: Self::Buffer);
}

struct Held<B> {
    buffer: B,
    len: usize,
    address: u64,
}

/// A workspace's two buffers, grown on demand, and the stream of the latest call that used them.
pub(crate) struct Growth<M: Memory> {
    memory: M,
    floats: Option<Held<M::Buffer>>,
    counters: Option<Held<M::Buffer>>,
    /// The stream of the latest call given the current buffers.
    last_launch: Option<StreamId>,
}

impl<M: Memory> Growth<M> {
    pub(crate) fn new(memory: M) -> Self {
        Growth { memory, floats: None, counters: None, last_launch: None }
    }

    pub(crate) fn memory(&self) -> &M {
        &self.memory
    }

    /// `(floats, counters)` held now.
    pub(crate) fn lens(&self) -> (usize, usize) {
        (self.floats.as_ref().map_or(0, |h| h.len), self.counters.as_ref().map_or(0, |h| h.len))
    }

    /// The counters' address and length, once allocated.
    pub(crate) fn counters(&self) -> Option<(u64, usize)> {
        self.counters.as_ref().map(|h| (h.address, h.len))
    }

    /// Whether a call needing `floats` and `counters` would allocate.
    pub(crate) fn must_grow(&self, floats: usize, counters: usize) -> bool {
        let (have_floats, have_counters) = self.lens();
        self.floats.is_none() || have_floats < floats || self.counters.is_none() || have_counters < counters
    }

    /// Grows to at least `floats` and `counters` for a call on `launch`, and returns the buffers' addresses
    /// (floats, counters) for that call's kernels.
    pub(crate) fn prepare(&mut self, floats: usize, counters: usize, launch: StreamId) -> Result<(u64, u64)> {
        self.grow(floats, counters, Some(launch))?;
        self.last_launch = Some(launch);
        let address = |h: &Option<Held<M::Buffer>>| h.as_ref().map_or(0, |h| h.address);
        Ok((address(&self.floats), address(&self.counters)))
    }

    /// Grows to at least `floats` and `counters` outside a call (sizing a loss up front). No stream of the
    /// caller is known to be alive here, so a growth after a call on another stream waits for the context.
    pub(crate) fn reserve(&mut self, floats: usize, counters: usize) -> Result<()> {
        self.grow(floats, counters, None)
    }

    /// Allocates what is missing, orders the frees of the outgrown buffers after the work that may use them
    /// (the queued work of `launch`, or everything), frees them, and publishes the new ones.
    fn grow(&mut self, floats: usize, counters: usize, launch: Option<StreamId>) -> Result<()> {
        if !self.must_grow(floats, counters) {
            return Ok(());
        }
        let (have_floats, have_counters) = self.lens();
        let grow_floats = self.floats.is_none() || have_floats < floats;
        let grow_counters = self.counters.is_none() || have_counters < counters;
        // Allocate first: on failure the old buffers stay, still valid for the calls in flight.
        let fresh_floats = if grow_floats { Some(self.alloc(Kind::Floats, floats.max(1))?) } else { None };
        let fresh_counters = match grow_counters.then(|| self.alloc(Kind::Counters, counters.max(1))) {
            Some(Ok(held)) => Some(held),
            Some(Err(e)) => {
                if let Some(f) = fresh_floats {
                    self.memory.free(f.buffer);
                }
                return Err(e);
            }
            None => None,
        };
        let own = self.memory.own_stream();
        match (self.last_launch, launch) {
            (Some(_), Some(launch)) if launch != own => self.memory.order_after(launch)?,
            (Some(last), None) if last != own => self.memory.synchronize_all()?,
            _ => {}
        }
        if let Some(fresh) = fresh_floats {
            if let Some(old) = self.floats.replace(fresh) {
                self.memory.free(old.buffer);
            }
        }
        if let Some(fresh) = fresh_counters {
            if let Some(old) = self.counters.replace(fresh) {
                self.memory.free(old.buffer);
            }
        }
        self.memory.publish()
    }

    fn alloc(&mut self, kind: Kind, len: usize) -> Result<Held<M::Buffer>> {
        let (buffer, address) = self.memory.alloc(kind, len)?;
        Ok(Held { buffer, len, address })
    }
}

impl<M: Memory> Drop for Growth<M> {
    fn drop(&mut self) {
        let own = self.memory.own_stream();
        if self.last_launch.is_some_and(|s| s != own) {
            // Nothing to report an error to: a failed wait is followed by the frees regardless, as cudarc
            // does when it drops a slice.
            let _ = self.memory.synchronize_all();
        }
        for held in [self.floats.take(), self.counters.take()].into_iter().flatten() {
            self.memory.free(held.buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    //! A model of stream ordering: every stream counts the work queued on it and knows, per other stream,
    //! how much of that stream's work comes before its own next work (a vector clock). A free is an error
    //! unless the own stream's clock covers every use of the buffer.

    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    use super::*;
    use crate::error::KdError;

    const OWN: StreamId = 0;
    const A: StreamId = 0xA;
    const B: StreamId = 0xB;

    #[derive(Default)]
    struct Model {
        /// Work queued so far per stream.
        queued: HashMap<StreamId, u64>,
        /// Per stream: how much of each stream's work precedes its next work.
        clock: HashMap<StreamId, HashMap<StreamId, u64>>,
        /// Per live buffer (by address): its uses (stream, work number).
        uses: HashMap<u64, Vec<(StreamId, u64)>>,
        next_address: u64,
        errors: Vec<String>,
        fail_alloc: bool,
    }

    impl Model {
        fn covered(&self, stream: StreamId, other: StreamId, n: u64) -> bool {
            stream == other || self.clock.get(&stream).and_then(|c| c.get(&other)).is_some_and(|&m| m >= n)
        }

        /// `after`'s later work waits for the work queued so far on `before` (an event and a wait).
        fn wait(&mut self, after: StreamId, before: StreamId) {
            let mut merged = self.clock.get(&before).cloned().unwrap_or_default();
            merged.insert(before, self.queued.get(&before).copied().unwrap_or(0));
            let clock = self.clock.entry(after).or_default();
            for (s, n) in merged {
                let e = clock.entry(s).or_insert(0);
                *e = (*e).max(n);
            }
        }

        /// A kernel on `stream` using the buffers at `addresses`.
        fn launch(&mut self, stream: StreamId, addresses: &[u64]) {
            let n = self.queued.entry(stream).or_insert(0);
            *n += 1;
            let n = *n;
            for a in addresses {
                match self.uses.get_mut(a) {
                    Some(uses) => uses.push((stream, n)),
                    None => self.errors.push(format!("a kernel on stream {stream:#x} uses freed buffer {a:#x}")),
                }
            }
        }

        fn free_on_own(&mut self, address: u64) {
            let uses = self.uses.remove(&address).unwrap_or_default();
            for (stream, n) in uses {
                if !self.covered(OWN, stream, n) {
                    self.errors.push(format!(
                        "buffer {address:#x} freed while work {n} of stream {stream:#x} may still use it"
                    ));
                }
            }
        }
    }

    struct MockMemory(Rc<RefCell<Model>>);

    impl Memory for MockMemory {
        type Buffer = u64;
        fn own_stream(&self) -> StreamId {
            OWN
        }
        fn alloc(&mut self, _kind: Kind, _len: usize) -> Result<(u64, u64)> {
            let mut m = self.0.borrow_mut();
            if m.fail_alloc {
                return Err(KdError::Cuda { op: "cuMemAlloc (mock)", error: "out of memory".into() });
            }
            m.next_address += 0x1000;
            let a = m.next_address;
            m.uses.insert(a, Vec::new());
            Ok((a, a))
        }
        fn order_after(&mut self, stream: StreamId) -> Result<()> {
            self.0.borrow_mut().wait(OWN, stream);
            Ok(())
        }
        fn synchronize_all(&mut self) -> Result<()> {
            let mut m = self.0.borrow_mut();
            let streams: Vec<StreamId> = m.queued.keys().copied().collect();
            for s in streams {
                m.wait(OWN, s);
            }
            Ok(())
        }
        fn publish(&mut self) -> Result<()> {
            Ok(())
        }
        fn free(&mut self, buffer: u64) {
            self.0.borrow_mut().free_on_own(buffer);
        }
    }

    fn growth() -> (Growth<MockMemory>, Rc<RefCell<Model>>) {
        let model = Rc::new(RefCell::new(Model::default()));
        (Growth::new(MockMemory(model.clone())), model)
    }

    /// One call: prepare on `stream`, then a kernel there using both buffers.
    fn call(g: &mut Growth<MockMemory>, model: &Rc<RefCell<Model>>, floats: usize, stream: StreamId) {
        let (f, c) = g.prepare(floats, 1, stream).unwrap();
        model.borrow_mut().launch(stream, &[f, c]);
    }

    /// The model catches the bug of the review: freeing what a kernel on another stream may still use.
    #[test]
    fn the_model_catches_a_free_without_ordering() {
        let (mut g, model) = growth();
        call(&mut g, &model, 10, A);
        let (f, _) = g.prepare(10, 1, A).unwrap();
        model.borrow_mut().free_on_own(f);
        let errors = std::mem::take(&mut model.borrow_mut().errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("may still use it"), "{errors:?}");
        std::mem::forget(g); // its buffer is already freed by hand
    }

    #[test]
    fn growth_on_a_side_stream_frees_after_its_kernels() {
        let (mut g, model) = growth();
        call(&mut g, &model, 10, A);
        call(&mut g, &model, 10, A);
        call(&mut g, &model, 1000, A);
        call(&mut g, &model, 1000, A);
        drop(g);
        assert_eq!(model.borrow().errors, Vec::<String>::new());
    }

    /// Calls that move from stream A to B (the caller orders B after A, as the contract asks) and grow on B.
    #[test]
    fn growth_after_a_change_of_stream_frees_after_both() {
        let (mut g, model) = growth();
        call(&mut g, &model, 10, A);
        model.borrow_mut().wait(B, A);
        call(&mut g, &model, 1000, B);
        model.borrow_mut().wait(OWN, B);
        call(&mut g, &model, 100_000, OWN);
        assert_eq!(model.borrow().errors, Vec::<String>::new());
        model.borrow_mut().wait(A, OWN);
        call(&mut g, &model, 1_000_000, A);
        drop(g);
        assert_eq!(model.borrow().errors, Vec::<String>::new());
    }

    #[test]
    fn dropping_after_a_side_stream_call_waits_for_it() {
        let (mut g, model) = growth();
        call(&mut g, &model, 10, B);
        drop(g);
        assert_eq!(model.borrow().errors, Vec::<String>::new());
    }

    /// Calls on the own stream need no ordering: the frees queue behind their kernels.
    #[test]
    fn own_stream_calls_need_no_wait() {
        let (mut g, model) = growth();
        call(&mut g, &model, 10, OWN);
        call(&mut g, &model, 1000, OWN);
        drop(g);
        let m = model.borrow();
        assert_eq!(m.errors, Vec::<String>::new());
        assert!(m.clock.is_empty(), "no wait was needed: {:?}", m.clock);
    }

    /// `reserve` between calls knows no live stream of the caller: it waits for the context.
    #[test]
    fn reserve_after_a_side_stream_call_waits_for_it() {
        let (mut g, model) = growth();
        call(&mut g, &model, 10, A);
        g.reserve(1000, 4).unwrap();
        assert_eq!(g.lens(), (1000, 4));
        assert_eq!(model.borrow().errors, Vec::<String>::new());
        call(&mut g, &model, 1000, A);
        drop(g);
        assert_eq!(model.borrow().errors, Vec::<String>::new());
    }

    #[test]
    fn a_failed_allocation_keeps_the_old_buffers() {
        let (mut g, model) = growth();
        call(&mut g, &model, 10, A);
        model.borrow_mut().fail_alloc = true;
        assert!(g.prepare(1000, 1, A).is_err());
        assert_eq!(g.lens(), (10, 1));
        model.borrow_mut().fail_alloc = false;
        call(&mut g, &model, 10, A);
        drop(g);
        assert_eq!(model.borrow().errors, Vec::<String>::new());
    }
}
