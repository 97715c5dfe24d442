//! Transport connections: the table of them and their admission
//! (`table`), one connection's framing and phases (`connection`), and
//! the first-packet paths of its handshake (`handshake`).

pub(crate) mod connection;
pub(crate) mod handshake;
pub(crate) mod table;
