//! The per-core connection table: every flow a worker forwards, found from either direction, with its IPVS-style
//! TCP state, its timeout and, for FULLNAT, the local port it owns.
//!
//! Layout, built for one or two cache misses per lookup and all of it allocated at construction:
//! - `key.rs`: a compact canonical key, both families as 16-byte addresses, hashed once per packet by a seeded
//!   multiply-fold hash.
//! - `index.rs`: 64-byte buckets of eight 16-bit signatures and `u32` entry numbers, at most half full, linear
//!   probing over buckets with exact overflow counts instead of tombstones.
//! - `entry.rs`: one 64-byte cache-line entry per key. A connection is a primary entry keyed by its client key,
//!   plus for NAT and FULLNAT a second entry keyed by its reply key (and for DR or TUN to an IPv6 backend an
//!   unindexed one holding the address); the two link to each other.
//! - `lists.rs`: the eviction lists and the occupancy bitmap, in side arrays a plain hit never touches.
//! - `memory.rs`: every array allocated once at construction, hinted for transparent huge pages on Linux.
//!
//! Memory per connection at capacity, index included: 88 bytes for a one-entry connection in a table sized for
//! them ([`ConnTable::with_two_entry_limit`] with no two-entry connections), 168 bytes in a table where every
//! connection may have two entries (the default of [`ConnTable::new`]).
//!
//! Time is whatever the caller passes as `now`, in milliseconds from any fixed origin; the table never reads a
//! clock. A connection whose `expires_at <= now` is dead: lookups no longer see it (the expiry is kept in the
//! connection's primary entry only, which a client lookup reads anyway and a reply lookup reads to forward), and it
//! is removed by the budgeted clock hand of [`ConnTable::expire`], by an insert of the same key, or by eviction,
//! whichever comes first. Every removal is reported to the caller (callback) so
//! per-backend connection counts stay right, and frees the FULLNAT local port.
//!
//! When the table is full, an insert evicts the connection that entered the sacrificable class (half-open or
//! closing TCP, any UDP or ICMP flow) longest ago; established TCP flows are never evicted, and when nothing else
//! is left the insert fails with [`InsertError::TableFull`].

mod conn;
mod entry;
mod index;
mod key;
mod lists;
mod memory;
mod prefetch;
mod table;
mod tcp_state;
#[cfg(test)]
mod tests;

pub use conn::{
    reply_flow, ClientEndpoints, ClientHit, Conn, ConnId, Endpoint, Forwarding, Hit, Inserted,
    RemovedConn, ReplyPath, Target, Transition, WireEndpoints,
};
pub use key::ConnKey;
pub use memory::EdgeHooks;
pub use table::{Candidates, ConnTable, InsertError, TableConfigError, TableStats};
pub use tcp_state::{tcp_flags, Direction, TcpState, Timeouts, TrackedPath};
