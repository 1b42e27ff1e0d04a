//! What the Services writer still has to send: the last pass's writes,
//! grouped by Service, sent in the pass's order, never two requests to one
//! Service at once. A pass does not wait for its writes: the next pass
//! starts while they are in flight, and its own writes replace the ones
//! still waiting (a pass writes what the caches lack, so a write an
//! earlier pass wanted and this one does not is done or no longer wanted:
//! the Service is gone, or this node stopped leading).

use std::collections::{HashMap, HashSet, VecDeque};

use super::model::SvcKey;

#[derive(Debug)]
pub struct WriteQueue<T> {
    /// Services whose writes may go, first first.
    order: VecDeque<SvcKey>,
    waiting: HashMap<SvcKey, Vec<T>>,
    /// Services with a request in flight: their next writes wait.
    in_flight: HashSet<SvcKey>,
}

impl<T> Default for WriteQueue<T> {
    fn default() -> Self {
        WriteQueue {
            order: VecDeque::new(),
            waiting: HashMap::new(),
            in_flight: HashSet::new(),
        }
    }
}

impl<T> WriteQueue<T> {
    /// A pass's writes, in its order, instead of those still waiting.
    pub fn replace(&mut self, writes: impl IntoIterator<Item = (SvcKey, T)>) {
        self.order.clear();
        self.waiting.clear();
        for (key, write) in writes {
            let queued = self.waiting.entry(key.clone()).or_default();
            if queued.is_empty() && !self.in_flight.contains(&key) {
                self.order.push_back(key);
            }
            queued.push(write);
        }
    }

    /// The next Service's writes, unless `limit` Services are in flight.
    pub fn next(&mut self, limit: usize) -> Option<(SvcKey, Vec<T>)> {
        if self.in_flight.len() >= limit {
            return None;
        }
        let key = self.order.pop_front()?;
        let writes = self.waiting.remove(&key).unwrap_or_default();
        self.in_flight.insert(key.clone());
        Some((key, writes))
    }

    /// `key`'s writes are done: its next ones, if a pass queued any, may go.
    pub fn done(&mut self, key: &SvcKey) {
        self.in_flight.remove(key);
        if self.waiting.contains_key(key) {
            self.order.push_back(key.clone());
        }
    }

    /// Nothing waiting and nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.in_flight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SvcKey {
        SvcKey {
            namespace: "d".into(),
            name: name.into(),
        }
    }

    fn names(q: &mut WriteQueue<u32>, limit: usize) -> Vec<(String, Vec<u32>)> {
        std::iter::from_fn(|| q.next(limit))
            .map(|(k, w)| (k.name, w))
            .collect()
    }

    #[test]
    fn a_pass_replaces_what_waits_and_keeps_its_order() {
        let mut q = WriteQueue::default();
        q.replace([(key("a"), 1), (key("b"), 2), (key("a"), 3)]);
        // The next pass no longer wants b (done, or not leading any more).
        q.replace([(key("c"), 4), (key("a"), 5)]);
        assert_eq!(
            names(&mut q, 10),
            vec![("c".into(), vec![4]), ("a".into(), vec![5])]
        );
    }

    #[test]
    fn one_request_per_service_at_once_and_at_most_limit_services() {
        let mut q = WriteQueue::default();
        q.replace([(key("a"), 1), (key("b"), 2), (key("c"), 3)]);
        assert_eq!(
            names(&mut q, 2),
            vec![("a".into(), vec![1]), ("b".into(), vec![2])]
        );
        // A pass wants a again while a is in flight: it waits for it.
        q.replace([(key("a"), 4), (key("c"), 5)]);
        assert_eq!(names(&mut q, 3), vec![("c".into(), vec![5])]);
        assert!(!q.is_idle());
        q.done(&key("a"));
        assert_eq!(names(&mut q, 3), vec![("a".into(), vec![4])]);
        for k in ["a", "b", "c"] {
            q.done(&key(k));
        }
        assert!(q.is_idle() && q.next(3).is_none());
    }
}
