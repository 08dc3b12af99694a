//! Upstream across nodes: a backend's `SEND` for a WebSocket on another node, and a
//! client's message for a backend on another node, as NATS requests between the nodes'
//! backplane threads (tasks of [`super::nats`]'s `LocalSet`).
//!
//! Subjects, outside every ringcast stream (whose subjects are the two tokens
//! `<stream>.<topic>`; see [`subject::node_sends`] and [`subject::upstream`]):
//!
//! - `ringcast-relay.<stream>.send.<node>`: each node subscribes to its own. A request
//!   carries the payload and the local connection id (`Ringcast-Conn`); the node hands it
//!   to its ingest thread, whose `send_down` result is the answer.
//! - `ringcast-relay.<stream>.up`: every node with a local backend subscribes, in the
//!   queue group [`QUEUE_GROUP`], so NATS gives each message to one of them. A request
//!   carries the payload, `Ringcast-From: <node>/<loop>.<slot>.<generation>` and
//!   `Ringcast-Kind: text|binary` (and with subscriber auth `Ringcast-Sub`); the node pushes
//!   it to a backend as a `MSG` with that id.
//!
//! Answers are `+OK` or `-ERR <reason>`. Requests go out from one task in the order the
//! ingest thread made them, with replies to one inbox per node (`<inbox>.<token>`), so a
//! backend's SENDs to one connection reach it in order while many are in flight. Every
//! request ends: answered by the other node, by NATS when nobody subscribes (no
//! responders: no such node, or no backend anywhere), or by the deadline
//! (`--backplane-timeout-ms`), and gives back its room in [`super::InFlight`].
//!
//! It never blocks on the ingest thread: what arrives for it waits in
//! [`super::ToIngest`], bounded by [`super::INBOUND_MESSAGES_MAX`] and
//! [`super::INBOUND_BYTES_MAX`]; beyond them the node answers that it is busy.
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Message, StatusCode, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;

use super::nats::Node;
use super::{subject, Ack, Acked, Asker, InboundSend, InboundUp, RelaySend, RelayUp, Undelivered};
use crate::upstream::ConnId;

/// The queue group of the nodes that have a backend listening.
pub const QUEUE_GROUP: &str = "backends";
/// Header of a relayed SEND: the connection's id on its node.
const CONN_HEADER: &str = "Ringcast-Conn";
/// Header of a relayed client message: its connection's id, with the node.
const FROM_HEADER: &str = "Ringcast-From";
/// Header of a relayed client message: `text` or `binary`.
const KIND_HEADER: &str = "Ringcast-Kind";
/// A relayed client message's sender, percent-encoded (see `upstream::encode_sub`).
const SUB_HEADER: &str = "Ringcast-Sub";
/// Header of the start's question whether a node of this name is already running.
const PROBE_HEADER: &str = "Ringcast-Probe";
/// The longest reason taken from another node's answer.
const REASON_MAX: usize = 200;
/// How often requests past their deadline are looked for.
const EXPIRE_EVERY: Duration = Duration::from_millis(100);
/// How long a queue subscription being left may still deliver what was in flight.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// What the ordered sending task sends.
pub(super) enum Outgoing {
    Send(RelaySend),
    Up(RelayUp),
    Answer {
        reply: String,
        result: Result<(), String>,
    },
}

/// A changed count of local backends, for the queue group.
pub(super) enum Listening {
    Listen(Asker),
    Unlisten,
}

/// A relayed request awaiting its answer.
enum Pending {
    Send {
        asker: Asker,
        node: Box<str>,
        bytes: usize,
    },
    Up {
        from: ConnId,
        bytes: usize,
    },
}

/// Why a relayed request failed.
enum Failure {
    /// Nobody subscribes to the subject.
    NoResponders,
    /// No answer by the deadline.
    TimedOut,
    /// Not connected to NATS, or the request could not be sent.
    Down(String),
    /// The other node answered `-ERR <reason>`.
    Refused(String),
}

/// The requests in flight, by token: tokens rise, so the map's order is also the order
/// of the deadlines (one timeout for all).
pub(super) struct Relay {
    inbox: String,
    next_token: Cell<u64>,
    pending: RefCell<BTreeMap<u64, (Instant, Pending)>>,
}

impl Relay {
    /// A relay whose answers come to `<inbox>.<token>`.
    pub(super) fn new(inbox: String) -> Relay {
        Relay {
            inbox,
            next_token: Cell::new(0),
            pending: RefCell::new(BTreeMap::new()),
        }
    }

    /// The wildcard of the answers' subjects.
    pub(super) fn replies_subject(inbox: &str) -> String {
        format!("{inbox}.*")
    }
}

/// Asks whether a node named `node` already serves `stream`: true when one answers. No
/// responders or no answer (a connection NATS has not yet seen go) say no.
pub(super) async fn another_runs_as(
    client: &async_nats::Client,
    stream: &str,
    node: &str,
    timeout: Duration,
) -> bool {
    let mut headers = HeaderMap::new();
    headers.insert(PROBE_HEADER, "1");
    let request = async_nats::Request::new()
        .headers(headers)
        .payload(Bytes::new())
        .timeout(Some(timeout));
    client
        .send_request(subject::node_sends(stream, node), request)
        .await
        .is_ok()
}

// ----- asking other nodes -------------------------------------------------------------

/// Sends the ingest thread's relays and answers, one at a time in order.
pub(super) async fn outbound(node: Rc<Node>, mut rx: UnboundedReceiver<Outgoing>) {
    while let Some(out) = rx.recv().await {
        match out {
            Outgoing::Answer { reply, result } => {
                let line = match result {
                    Ok(()) => Bytes::from_static(b"+OK"),
                    Err(reason) => Bytes::from(format!("-ERR {reason}")),
                };
                // A lost answer ends at the asker's deadline.
                let _ = node.client.publish(reply, line).await;
            }
            Outgoing::Send(s) => {
                let mut headers = HeaderMap::new();
                headers.insert(CONN_HEADER, s.conn.to_string().as_str());
                let subject = subject::node_sends(&node.settings.stream, &s.node);
                let pending = Pending::Send {
                    asker: s.asker,
                    node: s.node,
                    bytes: s.payload.len(),
                };
                node.backplane
                    .status
                    .sends_relayed
                    .fetch_add(1, Ordering::Relaxed);
                request(&node, subject, headers, s.payload, pending).await;
            }
            Outgoing::Up(u) => {
                let mut headers = HeaderMap::new();
                headers.insert(FROM_HEADER, format!("{}/{}", node.settings.node, u.from).as_str());
                headers.insert(KIND_HEADER, if u.text { "text" } else { "binary" });
                if let Some(sub) = &u.sub {
                    headers.insert(SUB_HEADER, crate::upstream::encode_sub(sub).as_str());
                }
                let pending = Pending::Up {
                    from: u.from,
                    bytes: u.payload.len(),
                };
                node.backplane
                    .status
                    .upstream_relayed
                    .fetch_add(1, Ordering::Relaxed);
                request(
                    &node,
                    subject::upstream(&node.settings.stream),
                    headers,
                    u.payload,
                    pending,
                )
                .await;
            }
        }
    }
}

/// Sends one request with its answer due at `<inbox>.<token>`, or fails it at once when
/// NATS cannot take it.
async fn request(node: &Node, subject: String, headers: HeaderMap, payload: Bytes, pending: Pending) {
    if !node.connected() {
        return settle(node, pending, Err(Failure::Down(node.down_reason())));
    }
    let relay = &node.relay;
    let token = relay.next_token.get();
    relay.next_token.set(token + 1);
    let deadline = Instant::now() + node.settings.timeout;
    relay.pending.borrow_mut().insert(token, (deadline, pending));
    let reply = format!("{}.{token}", relay.inbox);
    let sent = node
        .client
        .publish_with_reply_and_headers(subject, reply, headers, payload)
        .await;
    if let Err(e) = sent {
        let pending = relay.pending.borrow_mut().remove(&token);
        if let Some((_, pending)) = pending {
            settle(node, pending, Err(Failure::Down(e.to_string())));
        }
    }
}

/// Matches answers to their requests.
pub(super) async fn answers(node: Rc<Node>, mut replies: Subscriber) {
    while let Some(message) = replies.next().await {
        let token = message
            .subject
            .rsplit('.')
            .next()
            .and_then(|t| t.parse::<u64>().ok());
        let Some(token) = token else { continue };
        // None: it came after its deadline and was already settled.
        let pending = node.relay.pending.borrow_mut().remove(&token);
        let Some((_, pending)) = pending else { continue };
        let result = match message.status {
            Some(StatusCode::NO_RESPONDERS) => Err(Failure::NoResponders),
            Some(status) if status != StatusCode::OK => Err(Failure::Down(format!(
                "NATS answered {status} {}",
                message.description.as_deref().unwrap_or_default()
            ))),
            _ => parse_answer(&message.payload),
        };
        settle(&node, pending, result);
    }
}

/// Fails requests past their deadline.
pub(super) async fn expire(node: Rc<Node>) {
    let mut tick = tokio::time::interval(EXPIRE_EVERY);
    loop {
        tick.tick().await;
        let now = Instant::now();
        loop {
            let due = {
                let mut pending = node.relay.pending.borrow_mut();
                match pending.first_key_value() {
                    Some((_, (deadline, _))) if *deadline <= now => pending.pop_first(),
                    _ => None,
                }
            };
            let Some((_, (_, pending))) = due else { break };
            settle(&node, pending, Err(Failure::TimedOut));
        }
    }
}

/// `+OK...` or `-ERR <reason>`; the reason is kept to one short line of text, since it
/// goes into a reply line and a client's JSON.
fn parse_answer(payload: &[u8]) -> Result<(), Failure> {
    if payload.starts_with(b"+OK") {
        return Ok(());
    }
    let Some(reason) = payload.strip_prefix(b"-ERR ") else {
        return Err(Failure::Refused("the other node's answer was unreadable".into()));
    };
    let reason: String = String::from_utf8_lossy(reason)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(REASON_MAX)
        .collect();
    Err(Failure::Refused(reason))
}

/// Ends a request: the asker's acknowledgement for a SEND, the client told for a message
/// no backend took; its room is given back.
fn settle(node: &Node, pending: Pending, result: Result<(), Failure>) {
    let status = &node.backplane.status;
    if result.is_err() {
        status.relay_failed.fetch_add(1, Ordering::Relaxed);
    }
    let timeout_ms = node.settings.timeout.as_millis();
    match pending {
        Pending::Send {
            asker,
            node: to,
            bytes,
        } => {
            // The acknowledgement rings the ingest thread, which resumes what waits.
            node.backplane.relaying.give_back(bytes);
            let result = result.map(|()| Acked::Sent).map_err(|f| match f {
                Failure::NoResponders => format!("no such node: {to}"),
                Failure::TimedOut => format!(
                    "backplane unavailable: node {to} did not answer within {timeout_ms} ms; the message may still have been delivered"
                ),
                Failure::Down(why) => format!("backplane unavailable: {why}"),
                Failure::Refused(why) => why,
            });
            node.ack([Ack { asker, result }]);
        }
        Pending::Up { from, bytes } => {
            let wanted = node.backplane.relaying.give_back(bytes);
            let Err(failure) = result else {
                if wanted {
                    node.ring_ingest();
                }
                return;
            };
            let reason = match failure {
                Failure::NoResponders => crate::ingest::NO_BACKEND.to_owned(),
                Failure::TimedOut => format!(
                    "backplane unavailable: no backend answered within {timeout_ms} ms; the message may still have been delivered"
                ),
                Failure::Down(why) => format!("backplane unavailable: {why}"),
                Failure::Refused(why) => why,
            };
            node.backplane
                .to_ingest
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .undelivered
                .push_back(Undelivered { from, reason });
            node.ring_ingest();
        }
    }
}

// ----- answering other nodes ----------------------------------------------------------

/// What another node relayed to this one.
enum Inbound {
    Send(InboundSend),
    Up(InboundUp),
}

/// Takes the SENDs other nodes relay for this node's connections (and the probes of
/// nodes starting with this node's name).
pub(super) async fn sends_in(node: Rc<Node>, mut sends: Subscriber) {
    while let Some(message) = sends.next().await {
        let Some(reply) = message.reply.as_ref().map(|r| r.to_string()) else {
            continue;
        };
        if header(&message, PROBE_HEADER).is_some() {
            let _ = node.client.publish(reply, Bytes::from_static(b"+OK")).await;
            continue;
        }
        let Some(conn) = header(&message, CONN_HEADER).and_then(ConnId::parse) else {
            answer(&node, reply, "invalid connection id").await;
            continue;
        };
        node.backplane
            .status
            .sends_received
            .fetch_add(1, Ordering::Relaxed);
        let inbound = Inbound::Send(InboundSend {
            conn,
            payload: message.payload,
            reply,
        });
        hand_in(&node, inbound).await;
    }
}

/// Joins the queue group while this node has a backend, and answers each `UPSTREAM`
/// once the subscription has reached NATS, so that clients on every node can reach it.
pub(super) async fn listeners(node: Rc<Node>, mut rx: UnboundedReceiver<Listening>) {
    let mut count = 0usize;
    let mut leave: Option<tokio::sync::oneshot::Sender<()>> = None;
    while let Some(change) = rx.recv().await {
        match change {
            Listening::Listen(asker) => {
                count += 1;
                if leave.is_none() {
                    leave = join_group(&node).await;
                }
                // A PING round trip: the SUB before it has been processed.
                let _ = tokio::time::timeout(node.settings.timeout, node.client.flush()).await;
                node.ack([Ack {
                    asker,
                    result: Ok(Acked::Listening),
                }]);
            }
            Listening::Unlisten => {
                count = count.saturating_sub(1);
                if count == 0 {
                    if let Some(leave) = leave.take() {
                        let _ = leave.send(());
                    }
                }
            }
        }
    }
}

/// Subscribes to the queue group and starts taking its messages; the sender ends it.
async fn join_group(node: &Rc<Node>) -> Option<tokio::sync::oneshot::Sender<()>> {
    let subject = subject::upstream(&node.settings.stream);
    match node.client.queue_subscribe(subject, QUEUE_GROUP.into()).await {
        Ok(sub) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::task::spawn_local(upstream_in(Rc::clone(node), sub, rx));
            Some(tx)
        }
        Err(e) => {
            eprintln!(
                "ringcast: backplane: cannot take client messages from other nodes ({e}); backends here get this node's only"
            );
            None
        }
    }
}

/// Takes client messages other nodes relay for this node's backends until told to
/// leave; then unsubscribes and still takes what was already on its way.
async fn upstream_in(node: Rc<Node>, mut sub: Subscriber, mut leave: tokio::sync::oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            message = sub.next() => match message {
                Some(message) => take_up(&node, message).await,
                None => return,
            },
            _ = &mut leave => break,
        }
    }
    if sub.drain().await.is_err() {
        return;
    }
    while let Ok(Some(message)) = tokio::time::timeout(DRAIN_WAIT, sub.next()).await {
        take_up(&node, message).await;
    }
}

async fn take_up(node: &Node, message: Message) {
    let Some(reply) = message.reply.as_ref().map(|r| r.to_string()) else {
        return;
    };
    // The id goes into a MSG line as it is: it must be one a backend can SEND to.
    let from = header(&message, FROM_HEADER)
        .filter(|f| matches!(ConnId::parse_addressed(f), Some((Some(_), _))))
        .map(str::to_owned);
    let text = match header(&message, KIND_HEADER) {
        Some("text") => Some(true),
        Some("binary") => Some(false),
        _ => None,
    };
    let (Some(from), Some(text)) = (from, text) else {
        answer(node, reply, "invalid relayed message: no origin or kind").await;
        return;
    };
    if text && std::str::from_utf8(&message.payload).is_err() {
        answer(node, reply, "invalid relayed message: text that is not UTF-8").await;
        return;
    }
    node.backplane
        .status
        .upstream_received
        .fetch_add(1, Ordering::Relaxed);
    // It goes into a MSG line too: only the encoding's own bytes.
    let sub = header(&message, SUB_HEADER)
        .filter(|s| {
            !s.is_empty() && s.len() <= 3 * crate::auth::SUB_MAX && s.bytes().all(crate::upstream::sub_byte)
        })
        .map(str::to_owned);
    let inbound = Inbound::Up(InboundUp {
        from,
        text,
        payload: message.payload,
        sub,
        reply,
    });
    hand_in(node, inbound).await;
}

/// Queues what another node relayed for the ingest thread, or answers at once that this
/// node is busy.
async fn hand_in(node: &Node, inbound: Inbound) {
    let refused = {
        let mut to_ingest = node
            .backplane
            .to_ingest
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let bytes = match &inbound {
            Inbound::Send(s) => s.payload.len(),
            Inbound::Up(u) => u.payload.len(),
        };
        let waiting = to_ingest.sends.len() + to_ingest.upstream.len();
        if waiting >= super::INBOUND_MESSAGES_MAX
            || to_ingest.inbound_bytes + bytes > super::INBOUND_BYTES_MAX
        {
            Some(inbound)
        } else {
            to_ingest.inbound_bytes += bytes;
            match inbound {
                Inbound::Send(s) => to_ingest.sends.push_back(s),
                Inbound::Up(u) => to_ingest.upstream.push_back(u),
            }
            None
        }
    };
    match refused {
        None => node.ring_ingest(),
        Some(Inbound::Send(s)) => answer(node, s.reply, &busy(node)).await,
        Some(Inbound::Up(u)) => answer(node, u.reply, &busy(node)).await,
    }
}

fn busy(node: &Node) -> String {
    format!(
        "node {} is busy: too many relayed messages wait for it; try again",
        node.settings.node
    )
}

async fn answer(node: &Node, reply: String, reason: &str) {
    let _ = node
        .client
        .publish(reply, Bytes::from(format!("-ERR {reason}")))
        .await;
}

fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message.headers.as_ref()?.get(name).map(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_ok_or_a_one_line_reason() {
        assert!(parse_answer(b"+OK").is_ok());
        assert!(parse_answer(b"+OK sent").is_ok());
        let Err(Failure::Refused(why)) = parse_answer(b"-ERR no such\r\nconnection") else {
            panic!("a refusal");
        };
        assert_eq!(why, "no such  connection");
        let Err(Failure::Refused(why)) = parse_answer(&[b'-', b'E', b'R', b'R', b' ', b'x'].repeat(100))
        else {
            panic!("a refusal");
        };
        assert_eq!(why.chars().count(), REASON_MAX);
        assert!(matches!(parse_answer(b"hello"), Err(Failure::Refused(_))));
    }
}
