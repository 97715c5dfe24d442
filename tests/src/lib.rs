//! Shared helpers for the cross-crate integration tests.

use std::time::Duration;

use devp2p_tokio::{Config, Event, Events, Keypair, Node, NodeConfig, Protocol};

/// The protocols every test node registers.
pub fn protocols() -> Vec<Protocol> {
    vec![Protocol::new("chat", 1, 4), Protocol::new("blocks", 1, 8), Protocol::new("state", 2, 2)]
}

/// Starts a tokio node listening on `listen`.
pub async fn spawn(listen: &str) -> (Node, Events) {
    let cfg = NodeConfig::new(Config::with_protocols(protocols())).listen(listen.parse().expect("addr"));
    Node::spawn(cfg).await.expect("spawn")
}

/// Starts a tokio node with identity `key` listening on `listen`.
pub async fn spawn_with(listen: &str, key: Keypair) -> (Node, Events) {
    let cfg = NodeConfig::new(Config::with_protocols(protocols()))
        .listen(listen.parse().expect("addr"))
        .keypair(key);
    Node::spawn(cfg).await.expect("spawn")
}

/// Waits for the first event matching `f`, failing after 30 s.
pub async fn expect_event(events: &mut Events, mut f: impl FnMut(&Event) -> bool) -> Event {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let e = events.next().await.expect("events ended");
            if f(&e) {
                return e;
            }
        }
    })
    .await
    .expect("timed out waiting for event")
}
