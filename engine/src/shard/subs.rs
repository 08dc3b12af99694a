//! A loop's subscriptions: which local connections follow which topic.
//!
//! Each topic keeps a dense array of subscriber slab indices, so fan-out walks contiguous
//! memory. Each subscription is a 16-byte node threaded through its connection's chain
//! (u32 links, no per-connection allocation) and knowing its position in the topic's
//! array, so that closing a connection removes each of its subscriptions in O(1).
use std::collections::HashMap;

use slab::Slab;

use crate::conn::{Conn, NIL};

struct Node {
    conn: u32,
    topic: u32,
    /// Position in the topic's `conns` and `nodes` arrays.
    pos: u32,
    /// The connection's next subscription.
    next: u32,
}

struct Topic {
    name: Box<str>,
    /// Subscriber slab indices; `nodes[i]` is the subscription of `conns[i]`.
    conns: Vec<u32>,
    nodes: Vec<u32>,
}

#[derive(Default)]
pub struct Subscriptions {
    topics: Slab<Topic>,
    by_name: HashMap<Box<str>, u32>,
    nodes: Slab<Node>,
}

impl Subscriptions {
    /// Room for `n` subscriptions reserved up front (virtual memory, touched on use).
    pub fn with_capacity(n: usize) -> Self {
        Subscriptions {
            nodes: Slab::with_capacity(n),
            ..Default::default()
        }
    }

    /// Subscribes connection `conn` to `name`. The caller passes each topic once.
    pub fn add(&mut self, conns: &mut Slab<Conn>, conn: u32, name: &str) {
        let topic = match self.by_name.get(name) {
            Some(&t) => t,
            None => {
                let t = self.topics.insert(Topic {
                    name: name.into(),
                    conns: Vec::new(),
                    nodes: Vec::new(),
                }) as u32;
                self.by_name.insert(name.into(), t);
                t
            }
        };
        let record = &mut conns[conn as usize];
        let entry = &mut self.topics[topic as usize];
        let node = self.nodes.insert(Node {
            conn,
            topic,
            pos: entry.conns.len() as u32,
            next: record.first_sub,
        }) as u32;
        entry.conns.push(conn);
        entry.nodes.push(node);
        record.first_sub = node;
    }

    /// The topics connection `conn` follows, in its chain's order.
    pub fn topics_of<'a>(&'a self, conns: &Slab<Conn>, conn: u32) -> impl Iterator<Item = &'a str> + 'a {
        let mut link = conns[conn as usize].first_sub;
        std::iter::from_fn(move || {
            if link == NIL {
                return None;
            }
            let node = &self.nodes[link as usize];
            link = node.next;
            Some(&*self.topics[node.topic as usize].name)
        })
    }

    /// Removes connection `conn`'s subscription to `name`; false if it had none.
    pub fn remove_one(&mut self, conns: &mut Slab<Conn>, conn: u32, name: &str) -> bool {
        let Some(&topic) = self.by_name.get(name) else {
            return false;
        };
        let mut prev = NIL;
        let mut link = conns[conn as usize].first_sub;
        while link != NIL && self.nodes[link as usize].topic != topic {
            prev = link;
            link = self.nodes[link as usize].next;
        }
        if link == NIL {
            return false;
        }
        let next = self.nodes[link as usize].next;
        if prev == NIL {
            conns[conn as usize].first_sub = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        self.unlink(link);
        true
    }

    /// Takes subscription node `link` out of its topic's arrays and frees it.
    fn unlink(&mut self, link: u32) {
        let node = self.nodes.remove(link as usize);
        let topic = &mut self.topics[node.topic as usize];
        let pos = node.pos as usize;
        topic.conns.swap_remove(pos);
        topic.nodes.swap_remove(pos);
        if let Some(&moved) = topic.nodes.get(pos) {
            self.nodes[moved as usize].pos = pos as u32;
        }
        if topic.conns.is_empty() {
            let topic = self.topics.remove(node.topic as usize);
            self.by_name.remove(&topic.name);
        }
    }

    /// Removes every subscription of connection `conn`; topics left empty are dropped.
    pub fn remove_all(&mut self, conns: &mut Slab<Conn>, conn: u32) {
        let record = &mut conns[conn as usize];
        let mut link = std::mem::replace(&mut record.first_sub, NIL);
        while link != NIL {
            let node = &self.nodes[link as usize];
            debug_assert_eq!(node.conn, conn, "subscription chain crosses connections");
            let next = node.next;
            self.unlink(link);
            link = next;
        }
    }

    /// Lends out the subscriber list of `name`; give it back with [`Self::put_back`]
    /// before changing any subscription.
    pub fn take(&mut self, name: &str) -> Option<(u32, Vec<u32>)> {
        let &topic = self.by_name.get(name)?;
        Some((topic, std::mem::take(&mut self.topics[topic as usize].conns)))
    }

    pub fn put_back(&mut self, topic: u32, conns: Vec<u32>) {
        self.topics[topic as usize].conns = conns;
    }

    pub fn topic_names(&self) -> Vec<Box<str>> {
        self.topics.iter().map(|(_, t)| t.name.clone()).collect()
    }

    #[cfg(test)]
    pub fn subscribers(&self, name: &str) -> usize {
        self.by_name
            .get(name)
            .map_or(0, |&t| self.topics[t as usize].conns.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<u32>) -> Vec<u32> {
        v.sort_unstable();
        v
    }

    #[test]
    fn removal_keeps_positions_consistent() {
        let mut conns = Slab::new();
        let ids: Vec<u32> = (0..6).map(|i| conns.insert(Conn::new(i, 0, 0)) as u32).collect();
        let mut subs = Subscriptions::default();
        for &c in &ids {
            subs.add(&mut conns, c, "a");
            if c % 2 == 0 {
                subs.add(&mut conns, c, "b");
            }
        }
        subs.remove_all(&mut conns, ids[0]);
        subs.remove_all(&mut conns, ids[3]);
        let (t, a) = subs.take("a").unwrap();
        assert_eq!(sorted(a.clone()), vec![1, 2, 4, 5]);
        subs.put_back(t, a);
        let (t, b) = subs.take("b").unwrap();
        assert_eq!(sorted(b.clone()), vec![2, 4]);
        subs.put_back(t, b);
        for &c in &[1, 2, 4, 5] {
            subs.remove_all(&mut conns, c);
        }
        assert!(
            subs.take("a").is_none() && subs.take("b").is_none(),
            "empty topics are dropped"
        );
        assert_eq!(subs.nodes.len(), 0);
        assert_eq!(subs.subscribers("a"), 0);
    }
}
