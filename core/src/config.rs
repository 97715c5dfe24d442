//! Node configuration: registered sub-protocols, timeouts and every memory limit.

use alloc::vec::Vec;
use core::time::Duration;

use core::fmt;

use crate::protocol::{Hello, Protocol, ProtocolId, MAX_PROTOCOL_NAME};

/// Largest plaintext a record can carry: a frame body is at most 65535
/// bytes, of which 16 are the authentication tag.
pub const MAX_RECORD_PLAINTEXT: usize = 65535 - TAG;

/// The authentication tag ending every record.
const TAG: usize = 16;

/// Configuration of a [`Node`](crate::Node), grouped by concern. Every
/// limit has a safe default; see each field. [`Config::validate`] says
/// whether a node can run with it ([`Node::new`](crate::Node::new) calls it).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Config {
    /// The sub-protocols this node speaks, in [`ProtocolId`](crate::ProtocolId)
    /// order: add them with [`register`](Config::register), which returns
    /// each one's id.
    pub protocols: Vec<Protocol>,
    /// Memory and count limits: what a peer, or all peers together, can make the node hold.
    pub limits: Limits,
    /// Timeouts and keepalive.
    pub timeouts: Timeouts,
    /// How messages are packed into records and records into transmits, and how protocols share the link.
    pub records: Records,
    /// Flow control: per-protocol credit windows.
    pub flow: Flow,
    /// Traffic shaping: padding, rate caps and cover traffic, to hide the traffic's shape. Off by default.
    pub shaping: Shaping,
    /// When a sending key is replaced (the first limit reached).
    pub rekey: Rekey,
    /// Resumption tickets (prior knowledge from a previous session).
    pub resumption: Resumption,
}

/// Memory and count limits: what a peer, or all peers together, can make the node hold.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Largest message payload accepted from a peer, and advertised to it
    /// (default 4 MiB, at least 1 MiB is recommended).
    pub max_message_size: u64,
    /// Most bytes queued for sending to one peer before `send` returns
    /// [`SendError::QueueFull`](crate::SendError::QueueFull) (default 8 MiB).
    /// Every queue limit counts a message's payload plus
    /// [`MESSAGE_OVERHEAD`](crate::MESSAGE_OVERHEAD) (16) bytes, as flow
    /// control does, so that a queue of empty messages is bounded too.
    /// A protocol with nothing queued may still queue one message, so that
    /// protocols the peer stopped granting credit cannot starve the others;
    /// a peer's queue is thus at most this plus one message per protocol.
    pub max_queued_per_peer: usize,
    /// Most bytes queued for sending to all peers together (default 256
    /// MiB), counted as [`max_queued_per_peer`](Limits::max_queued_per_peer) says.
    pub max_queued_total: usize,
    /// Most bytes queued for one protocol to one peer (counted as
    /// [`max_queued_per_peer`](Limits::max_queued_per_peer) says; default
    /// 4 MiB), so that a protocol the peer stops accepting (no flow-control
    /// credit) cannot take the whole peer queue from the others.
    pub max_queued_per_protocol: usize,
    /// Most bytes of partly received messages held for one peer (default 8 MiB);
    /// a peer exceeding it is disconnected with `ResourceLimit`.
    pub max_reassembly_per_peer: usize,
    /// Most connections, in any state (default 1024).
    pub max_connections: usize,
    /// Most connections still handshaking (default 128); further inbound
    /// connections are refused by `accept`.
    pub max_handshaking: usize,
    /// Most protocol entries accepted in a peer's hello (default 1024).
    pub max_peer_protocols: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 4 << 20,
            max_queued_per_peer: 8 << 20,
            max_queued_total: 256 << 20,
            max_queued_per_protocol: 4 << 20,
            max_reassembly_per_peer: 8 << 20,
            max_connections: 1024,
            max_handshaking: 128,
            max_peer_protocols: 1024,
        }
    }
}

/// Timeouts and keepalive.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Timeouts {
    /// A connection that has not completed its handshake by then is closed (default 10 s).
    pub handshake: Duration,
    /// A connection on which nothing arrives for this long is closed (default 60 s).
    pub idle: Duration,
    /// Interval between keepalive pings (default 15 s).
    pub keepalive: Duration,
    /// How long a closing connection may take to flush its `DISCONNECT` (default 2 s).
    pub close: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            keepalive: Duration::from_secs(15),
            close: Duration::from_secs(2),
        }
    }
}

/// How messages are packed into records and records into transmits, and how protocols share the link.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Records {
    /// Largest record plaintext this node sends (default and maximum
    /// [`MAX_RECORD_PLAINTEXT`], 65,519 bytes). Smaller records bound how long one large
    /// message delays others; larger ones cost fewer AEAD calls.
    pub max_record_size: usize,
    /// Most bytes `poll_transmit` writes into one buffer (default 256 KiB).
    /// On a slow link this, not the record size, bounds how long a newly
    /// queued message waits behind bytes already handed to the transport.
    pub max_transmit_size: usize,
    /// Bytes a protocol of weight 1 sends per scheduling round when several
    /// protocols have data queued (default 64 KiB, about one full record).
    pub scheduler_quantum: usize,
    /// A protocol whose next message has at most this many bytes left is
    /// served before the round robin (default 512): small, latency-sensitive
    /// messages overtake bulk transfers of other protocols.
    pub priority_message_size: usize,
}

impl Default for Records {
    fn default() -> Self {
        Records {
            max_record_size: MAX_RECORD_PLAINTEXT,
            max_transmit_size: 256 << 10,
            scheduler_quantum: 64 << 10,
            priority_message_size: 512,
        }
    }
}

/// Flow control: per-protocol credit windows.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Flow {
    /// Flow control: the credit, in payload bytes plus 16 per message, that
    /// each peer gets per protocol for messages this node has not consumed
    /// yet (default 4 MiB). It is what a protocol's slow consumer may have
    /// waiting, per peer: at most the larger of this and `max_message_size`
    /// plus 16. Larger windows keep fast links busy over long round trips.
    pub receive_window: u64,
    /// Flow control, sending side: the credit that the protocols with
    /// messages queued for one peer may have outstanding (sent, not yet
    /// returned) together, split evenly between them (default 8 MiB). A
    /// protocol sending alone may use the peer's whole window; with many
    /// busy protocols each keeps less in flight, which bounds what waits
    /// unconsumed at the peer (and keeps it in cache). A channel with
    /// nothing outstanding may always start a message. With
    /// `manual_consume`, an application that consumes a protocol's messages
    /// only once it holds more than this divided by the number of busy
    /// protocols (several messages' worth) waits for good: consume messages
    /// as they arrive, or raise this limit.
    pub max_in_flight_per_peer: u64,
    /// Flow control: when false (the default) a message is consumed, and its
    /// credit goes back to the sender, as soon as
    /// [`Node::poll_event`](crate::Node::poll_event) returns it. When true
    /// the application says when with [`Node::consume`](crate::Node::consume);
    /// the runtimes do so when their application takes the message.
    pub manual_consume: bool,
}

impl Default for Flow {
    fn default() -> Self {
        Flow { receive_window: 4 << 20, max_in_flight_per_peer: 8 << 20, manual_consume: false }
    }
}

/// Traffic shaping: padding, rate caps and cover traffic, to hide the traffic's shape. Off by default.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Shaping {
    /// Traffic shaping: if not empty, every record's frame body (ciphertext
    /// and tag) is padded to the smallest of these sizes that holds it, and
    /// records are no larger than the largest (each 17 to 65,535 bytes).
    /// Hides message sizes from an observer. Default: no padding.
    pub padding_buckets: Vec<usize>,
    /// Traffic shaping: most bytes per second written on one connection
    /// (token bucket with a burst of one transmit). Default: unlimited.
    pub max_connection_rate: Option<u64>,
    /// Traffic shaping: most bytes per second written by the whole node.
    /// Default: unlimited.
    pub max_node_rate: Option<u64>,
    /// Traffic shaping: when set, a connection with nothing to send sends a
    /// padding-only record at this interval (cover traffic), so that, with
    /// `padding_buckets` and a rate cap, the link looks the same busy or
    /// idle. Default: off.
    pub cover_traffic_interval: Option<Duration>,
}

/// When a sending key is replaced (the first limit reached).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Rekey {
    /// A sending key is replaced after this many bytes (default 1 GiB).
    pub after_bytes: u64,
    /// ... or after this long (default 1 hour).
    pub after_time: Duration,
    /// ... or after this many records (default 2^32; the nonce space is 2^64).
    pub after_records: u64,
}

impl Default for Rekey {
    fn default() -> Self {
        Rekey { after_bytes: 1 << 30, after_time: Duration::from_secs(3600), after_records: 1 << 32 }
    }
}

/// Resumption tickets (prior knowledge from a previous session).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Resumption {
    /// How long a resumption secret stays valid (default 24 hours).
    pub lifetime: Duration,
    /// Most resumption secrets kept (default 4096); the oldest is evicted first.
    pub max_tickets: usize,
}

impl Default for Resumption {
    fn default() -> Self {
        Resumption { lifetime: Duration::from_secs(24 * 3600), max_tickets: 4096 }
    }
}

impl Config {
    /// True if `protocol` is one of `protocols` (its index there).
    pub fn registers(&self, protocol: ProtocolId) -> bool {
        usize::from(protocol.0) < self.protocols.len()
    }

    /// A default configuration speaking `protocols`: their ids are their
    /// positions in the list (see [`register`](Self::register) for a
    /// handle that cannot drift when the list changes).
    pub fn with_protocols(protocols: Vec<Protocol>) -> Self {
        Config { protocols, ..Config::default() }
    }

    /// Registers `protocol` and returns the id to send and receive it
    /// with: the way to address a protocol that stays right however the
    /// registrations are ordered.
    ///
    /// ```
    /// use devp2p_core::{Config, Protocol};
    /// let mut config = Config::default();
    /// let chat = config.register(Protocol::new("chat", 1, 1));
    /// let blocks = config.register(Protocol::new("blocks", 2, 8));
    /// assert_eq!(config.protocol_id("blocks", 2), Some(blocks));
    /// assert_ne!(chat, blocks);
    /// ```
    ///
    /// More than 65,535 registrations make [`validate`](Self::validate)
    /// fail with [`ConfigError::TooManyProtocols`]; the ids past that are
    /// not distinct.
    pub fn register(&mut self, protocol: Protocol) -> ProtocolId {
        self.protocols.push(protocol);
        ProtocolId(u16::try_from(self.protocols.len() - 1).unwrap_or(u16::MAX))
    }

    /// The id of the registered protocol `name` at `version`, if any.
    pub fn protocol_id(&self, name: &str, version: u32) -> Option<ProtocolId> {
        let i = self.protocols.iter().position(|p| p.name == name && p.version == version)?;
        u16::try_from(i).ok().map(ProtocolId)
    }

    /// The record plaintext size actually used: `max_record_size` clamped to
    /// `64..=MAX_RECORD_PLAINTEXT`, and to the largest padding bucket.
    pub(crate) fn record_size(&self) -> usize {
        let size = self.records.max_record_size.clamp(64, MAX_RECORD_PLAINTEXT);
        match self.shaping.padding_buckets.iter().max() {
            Some(&b) => size.min(b - TAG),
            None => size,
        }
    }

    /// The padded plaintext length for a record of `plain` bytes.
    pub(crate) fn padded_len(&self, plain: usize) -> usize {
        self.shaping.padding_buckets.iter().map(|b| b - TAG).filter(|&b| b >= plain).min().unwrap_or(plain)
    }
}

/// Room the handshake needs besides the hello: kind byte, ticket id, two
/// keys and two tags.
const HANDSHAKE_OVERHEAD: usize = 1 + 16 + 32 + 48 + 16;

/// A configuration the node cannot run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A protocol name is empty or longer than 64 bytes.
    BadProtocolName,
    /// The hello listing every protocol does not fit in one handshake frame,
    /// or more than 65535 protocols are registered.
    TooManyProtocols,
    /// The same protocol name and version is registered twice.
    DuplicateProtocol,
    /// `max_message_size` exceeds `max_reassembly_per_peer` (messages the
    /// node advertises as acceptable would be refused), or
    /// `max_transmit_size` is zero, or a padding bucket is outside 80..=65535.
    InconsistentLimits,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigError::BadProtocolName => "protocol names must be 1 to 64 bytes",
            ConfigError::TooManyProtocols => "the registered protocols do not fit in a handshake",
            ConfigError::DuplicateProtocol => "a protocol name and version is registered twice",
            ConfigError::InconsistentLimits => "max_message_size exceeds max_reassembly_per_peer",
        })
    }
}

impl core::error::Error for ConfigError {}

impl Config {
    /// Checks that a node can run with this configuration: protocol names
    /// of 1 to 64 bytes, no protocol registered twice, a hello that fits
    /// every handshake frame (SPEC.md §5.4), consistent limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.protocols.iter().any(|p| p.name.is_empty() || p.name.len() > MAX_PROTOCOL_NAME) {
            return Err(ConfigError::BadProtocolName);
        }
        if self.protocols.len() > usize::from(u16::MAX) {
            return Err(ConfigError::TooManyProtocols);
        }
        for (i, p) in self.protocols.iter().enumerate() {
            if self.protocols[..i].iter().any(|q| q.name == p.name && q.version == p.version) {
                return Err(ConfigError::DuplicateProtocol);
            }
        }
        if self.limits.max_message_size > self.limits.max_reassembly_per_peer as u64
            || self.records.max_transmit_size == 0
            || self.shaping.padding_buckets.iter().any(|b| !(64 + 16..=65_535).contains(b))
        {
            return Err(ConfigError::InconsistentLimits);
        }
        let mut hello = Vec::new();
        Hello::local(&self.protocols, self.limits.max_message_size, self.flow.receive_window)
            .encode(&mut hello);
        if hello.len() + HANDSHAKE_OVERHEAD > usize::from(u16::MAX) {
            return Err(ConfigError::TooManyProtocols);
        }
        Ok(())
    }

    /// The burst of a bandwidth cap: one full record and its framing.
    pub(crate) fn burst(&self) -> u64 {
        (self.record_size() + 18) as u64
    }
}
